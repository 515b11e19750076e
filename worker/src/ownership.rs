//! Which worker reads which partition.
//!
//! Every worker refreshes a heartbeat row every [`HEARTBEAT_INTERVAL`]; the workers seen within
//! [`HEARTBEAT_TTL`] share the partitions by rendezvous hashing (each partition goes to the live
//! worker with the highest score, so a join or a leave moves only that worker's share). A worker
//! takes a partition by taking a session advisory lock on a dedicated connection — a crashed
//! worker's locks vanish with its connection — and gives it up when the hash says so.
//!
//! The lock is only the polite half of exclusivity. The other half, which needs no timing
//! assumption, is the fence in [`crate::store::Store::apply_batch`]: a batch commits only if
//! every partition's offset is still where this worker last left it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tally_common::partition::fnv1a32;
use uuid::Uuid;

/// How often a worker refreshes its heartbeat and reconsiders its partitions.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A worker whose heartbeat is older than this is considered gone.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);

/// Score of `worker` for `partition`: the live worker with the highest score owns it.
pub fn rendezvous_score(worker: Uuid, partition: u32) -> u64 {
    let high = fnv1a32(
        worker
            .as_bytes()
            .iter()
            .copied()
            .chain(partition.to_be_bytes()),
    );
    let low = fnv1a32(
        partition
            .to_le_bytes()
            .into_iter()
            .chain(worker.as_bytes().iter().copied()),
    );
    splitmix64((u64::from(high) << 32) | u64::from(low))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The partitions `me` should own among `live` workers.
pub fn assigned(me: Uuid, live: &[Uuid], partitions: u32) -> BTreeSet<u32> {
    (0..partitions)
        .filter(|&partition| {
            live.iter()
                .max_by_key(|worker| (rendezvous_score(**worker, partition), **worker))
                == Some(&me)
        })
        .collect()
}

/// The advisory-lock key space of one stream (first half of the two-int lock key).
pub fn lock_space(stream: &str) -> i32 {
    fnv1a32(stream.bytes()) as i32
}

/// Heartbeats and the partition locks of one worker.
pub struct Membership {
    pub worker_id: Uuid,
    stream: String,
    database_url: String,
    lock_connection: Option<PgConnection>,
}

impl Membership {
    pub fn new(worker_id: Uuid, stream: &str, database_url: &str) -> Self {
        Self {
            worker_id,
            stream: stream.to_string(),
            database_url: database_url.to_string(),
            lock_connection: None,
        }
    }

    /// Refreshes this worker's heartbeat and returns the live workers (this one included).
    pub async fn heartbeat(&self, pool: &PgPool) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO worker_heartbeats (stream, worker_id, last_seen) VALUES ($1, $2, now())
             ON CONFLICT (stream, worker_id) DO UPDATE SET last_seen = now()",
        )
        .bind(&self.stream)
        .bind(self.worker_id)
        .execute(pool)
        .await?;
        let ttl_ms = HEARTBEAT_TTL.as_millis() as i64;
        let mut live: Vec<Uuid> = sqlx::query_scalar(
            "SELECT worker_id FROM worker_heartbeats
             WHERE stream = $1 AND last_seen > now() - make_interval(secs => $2::float8 / 1000)",
        )
        .bind(&self.stream)
        .bind(ttl_ms as f64)
        .fetch_all(pool)
        .await?;
        if !live.contains(&self.worker_id) {
            live.push(self.worker_id);
        }
        // Forget workers long gone, so the table stays small.
        sqlx::query(
            "DELETE FROM worker_heartbeats WHERE stream = $1 AND last_seen < now() - interval '1 hour'",
        )
        .bind(&self.stream)
        .execute(pool)
        .await?;
        Ok(live)
    }

    /// Removes this worker's heartbeat so the others take its partitions at once.
    pub async fn leave(&mut self, pool: &PgPool) {
        let _ = sqlx::query("DELETE FROM worker_heartbeats WHERE stream = $1 AND worker_id = $2")
            .bind(&self.stream)
            .bind(self.worker_id)
            .execute(pool)
            .await;
        if let Some(connection) = self.lock_connection.take() {
            let _ = connection.close().await;
        }
    }

    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        if self.lock_connection.is_none() {
            self.lock_connection = Some(PgConnection::connect(&self.database_url).await?);
        }
        Ok(self.lock_connection.as_mut().expect("just connected"))
    }

    /// Tries to take `partition`'s lock; `Ok(false)` when another worker holds it.
    pub async fn try_lock(&mut self, partition: u32) -> Result<bool, sqlx::Error> {
        let space = lock_space(&self.stream);
        let connection = self.connection().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(space)
            .bind(partition as i32)
            .fetch_one(connection)
            .await
            .inspect_err(|_| self.lock_connection = None)?;
        Ok(taken)
    }

    /// Gives `partition`'s lock back.
    pub async fn unlock(&mut self, partition: u32) -> Result<(), sqlx::Error> {
        let space = lock_space(&self.stream);
        let connection = self.connection().await?;
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(space)
            .bind(partition as i32)
            .execute(connection)
            .await
            .inspect_err(|_| self.lock_connection = None)?;
        Ok(())
    }

    /// Whether the lock connection is still the one the locks were taken on. When it was lost,
    /// every lock went with it.
    pub async fn locks_alive(&mut self) -> bool {
        match self.lock_connection.as_mut() {
            Some(connection) => {
                if connection.ping().await.is_ok() {
                    true
                } else {
                    self.lock_connection = None;
                    false
                }
            }
            None => false,
        }
    }
}

/// Summary for logs: how many partitions each live worker should own.
pub fn shares(live: &[Uuid], partitions: u32) -> BTreeMap<Uuid, usize> {
    live.iter()
        .map(|w| (*w, assigned(*w, live, partitions).len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner() {
        let live: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let mut all = BTreeSet::new();
        let mut total = 0;
        for worker in &live {
            let mine = assigned(*worker, &live, 64);
            total += mine.len();
            all.extend(mine);
        }
        assert_eq!(total, 64);
        assert_eq!(all.len(), 64);
    }

    #[test]
    fn a_worker_joining_moves_only_partitions_to_itself() {
        let mut live: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let before: Vec<BTreeSet<u32>> = live.iter().map(|w| assigned(*w, &live, 64)).collect();
        let newcomer = Uuid::now_v7();
        live.push(newcomer);
        for (index, worker) in live.iter().take(3).enumerate() {
            assert!(assigned(*worker, &live, 64).is_subset(&before[index]));
        }
        assert!(!assigned(newcomer, &live, 64).is_empty());
    }

    #[test]
    fn a_single_worker_owns_everything() {
        let me = Uuid::now_v7();
        assert_eq!(assigned(me, &[me], 64).len(), 64);
    }
}
