//! Which worker reads which partition.
//!
//! Every worker refreshes a heartbeat row every [`HEARTBEAT_INTERVAL`]; the workers seen within
//! [`HEARTBEAT_TTL`] share the shards of partitions by rendezvous hashing with a bounded load
//! ([`tally_common::routing`]). A worker takes a partition by taking a session advisory lock on
//! a dedicated connection — a crashed worker's locks vanish with its connection — and gives it up
//! when the assignment says so.
//!
//! The lock is only the polite half of exclusivity. The other half, which needs no timing
//! assumption, is the fence in [`crate::store::Store::apply_batch`]: a batch commits only if
//! every partition's offset is still where this worker last left it.

use sqlx::{Connection, PgConnection, PgPool};
use tally_common::partition::fnv1a32;
use tally_common::routing::{live_workers, LiveWorker};
pub use tally_common::routing::{HEARTBEAT_INTERVAL, HEARTBEAT_TTL};
use uuid::Uuid;

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

    /// Refreshes this worker's heartbeat, which says it routes by `shards` shards, and returns
    /// the live workers (this one included).
    pub async fn heartbeat(
        &self,
        pool: &PgPool,
        shards: u32,
    ) -> Result<Vec<LiveWorker>, sqlx::Error> {
        sqlx::query(
            "INSERT INTO worker_heartbeats (stream, worker_id, last_seen, shards)
             VALUES ($1, $2, now(), $3)
             ON CONFLICT (stream, worker_id) DO UPDATE SET last_seen = now(), shards = $3",
        )
        .bind(&self.stream)
        .bind(self.worker_id)
        .bind(shards as i32)
        .execute(pool)
        .await?;
        let mut live = live_workers(pool, &self.stream).await?;
        if !live.iter().any(|worker| worker.id == self.worker_id) {
            live.push(LiveWorker {
                id: self.worker_id,
                shards: Some(shards),
            });
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
