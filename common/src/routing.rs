//! Which worker owns which partitions, and how the ingress routes a command to it.
//!
//! **Shards.** Partitions are grouped into `shards = min(partitions, SHARDS_MAX)` shards
//! (`shard = partition % shards`); a shard is the unit of ownership. The live workers (their
//! heartbeat rows) share the shards out by rendezvous hashing with a bounded load: each shard, in
//! order, goes to the worker with the highest score for it among those still below their share
//! (`⌊shards / workers⌋`, one more for the first `shards mod workers` to reach it), so shares
//! differ by at most one shard and every worker computes the same assignment from the same live
//! set. A worker owns every partition of its shards.
//!
//! **Routed subjects.** A batch message goes out on `<ns>.cmd.m.<t0>.<t1>…`, one token per
//! shard: `1` where the message may hold commands of that shard, `0` elsewhere. A worker's
//! consumer filters on one subject per shard it owns (`1` at that shard's token, `*` at every
//! other), so the broker delivers a message only to the workers owning a shard marked in it.
//! The ingress marks, for each message, every shard of every command in it — correctness needs
//! nothing more — and groups commands into messages by the workers it believes own them, marking
//! all of those workers' shards (so the number of distinct subjects stays that of the ownership
//! maps seen). A stale belief costs only deliveries: the message reaches every owner of a marked
//! shard, which takes its own partitions' commands, as before.
//!
//! **Mixed versions.** A worker writes its shard count in its heartbeat. While any live worker
//! has written none (an earlier version, which shares partitions one by one and reads only the
//! three-token subjects), every worker uses that earlier per-partition assignment and the ingress
//! publishes on the earlier batch subject, which every version reads.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::partition::fnv1a32;

/// Most shards, whatever the partition count: the tokens of a routed subject.
pub const SHARDS_MAX: u32 = 32;
/// How often a worker refreshes its heartbeat (and reconsiders its partitions), and the ingress
/// re-reads the live workers.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A worker whose heartbeat is older than this is considered gone.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);

/// The number of shards of a stream of `partitions` partitions.
pub fn shard_count(partitions: u32) -> u32 {
    partitions.clamp(1, SHARDS_MAX)
}

/// The shard of `partition`.
pub fn shard_of(partition: u32, shards: u32) -> u32 {
    partition % shards
}

/// One live worker, as its heartbeat row says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveWorker {
    pub id: Uuid,
    /// The shard count it routes by; `None` for a worker of an earlier version.
    pub shards: Option<u32>,
}

/// Whether every live worker shares shards (of `shards`), rather than partitions one by one.
pub fn all_shard(live: &[LiveWorker], shards: u32) -> bool {
    live.iter().all(|worker| worker.shards == Some(shards))
}

/// Score of `worker` for `item` (a shard, or a partition in the per-partition assignment).
pub fn rendezvous_score(worker: Uuid, item: u32) -> u64 {
    let high = fnv1a32(worker.as_bytes().iter().copied().chain(item.to_be_bytes()));
    let low = fnv1a32(
        item.to_le_bytes()
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

/// The owner of each shard, as an index into `workers` (which must be sorted and distinct).
/// Empty when there are no workers.
pub fn shard_owners(workers: &[Uuid], shards: u32) -> Vec<usize> {
    if workers.is_empty() {
        return Vec::new();
    }
    // `low` shards each, and one more for `extra` of the workers: shares differ by one at most.
    let low = shards as usize / workers.len();
    let extra = shards as usize % workers.len();
    let mut load = vec![0usize; workers.len()];
    let mut above_low = 0;
    (0..shards)
        .map(|shard| {
            let owner = (0..workers.len())
                .filter(|&index| load[index] < low || (load[index] == low && above_low < extra))
                .max_by_key(|&index| (rendezvous_score(workers[index], shard), workers[index]))
                .expect("the caps leave room for every shard");
            if load[owner] == low {
                above_low += 1;
            }
            load[owner] += 1;
            owner
        })
        .collect()
}

/// The ids of `live`, sorted and distinct: the order [`shard_owners`] indexes.
pub fn live_ids(live: &[LiveWorker]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = live.iter().map(|worker| worker.id).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The partitions `me` should own among the `live` workers (`me` included).
pub fn assigned(me: Uuid, live: &[LiveWorker], partitions: u32) -> BTreeSet<u32> {
    let shards = shard_count(partitions);
    let ids = live_ids(live);
    if !all_shard(live, shards) {
        // The earlier assignment, partition by partition, which earlier workers still use.
        return (0..partitions)
            .filter(|&partition| {
                ids.iter()
                    .max_by_key(|worker| (rendezvous_score(**worker, partition), **worker))
                    == Some(&me)
            })
            .collect();
    }
    let Some(mine) = ids.iter().position(|id| *id == me) else {
        return BTreeSet::new();
    };
    let owners = shard_owners(&ids, shards);
    (0..partitions)
        .filter(|&partition| owners[shard_of(partition, shards) as usize] == mine)
        .collect()
}

/// The workers of `stream` whose heartbeat is recent.
pub async fn live_workers(pool: &PgPool, stream: &str) -> Result<Vec<LiveWorker>, sqlx::Error> {
    let rows: Vec<(Uuid, Option<i32>)> = sqlx::query_as(
        "SELECT worker_id, shards FROM worker_heartbeats
         WHERE stream = $1 AND last_seen > now() - make_interval(secs => $2::float8 / 1000)",
    )
    .bind(stream)
    .bind(HEARTBEAT_TTL.as_millis() as f64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, shards)| LiveWorker {
            id,
            shards: shards.and_then(|s| u32::try_from(s).ok()),
        })
        .collect())
}

/// A set of shards, one bit each.
pub type ShardMask = u64;

/// The shards of `partitions`, as a mask.
pub fn mask_of(partitions: impl IntoIterator<Item = u32>, shards: u32) -> ShardMask {
    partitions
        .into_iter()
        .fold(0, |mask, partition| mask | 1 << shard_of(partition, shards))
}

/// Every shard.
pub fn all_shards(shards: u32) -> ShardMask {
    if shards >= 64 {
        u64::MAX
    } else {
        (1 << shards) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(count: usize) -> Vec<LiveWorker> {
        (0..count)
            .map(|_| LiveWorker {
                id: Uuid::now_v7(),
                shards: Some(shard_count(64)),
            })
            .collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_are_even() {
        for workers in 1..=7 {
            let live = live(workers);
            let mut all = BTreeSet::new();
            let mut total = 0;
            let mut shares = Vec::new();
            for worker in &live {
                let mine = assigned(worker.id, &live, 64);
                total += mine.len();
                shares.push(mine.len());
                all.extend(mine);
            }
            assert_eq!((total, all.len()), (64, 64), "{workers} workers");
            let shards_each: Vec<usize> = shares.iter().map(|s| s / 2).collect();
            let (min, max) = (shards_each.iter().min(), shards_each.iter().max());
            assert!(
                max.unwrap() - min.unwrap() <= 1,
                "{workers} workers: {shares:?}"
            );
        }
    }

    #[test]
    fn a_worker_owns_whole_shards() {
        let live = live(3);
        for worker in &live {
            let mine = assigned(worker.id, &live, 64);
            for partition in &mine {
                assert!(mine.contains(&((partition + SHARDS_MAX) % 64)));
            }
        }
    }

    #[test]
    fn a_worker_joining_moves_few_shards() {
        let mut workers = live(3);
        let before: Vec<BTreeSet<u32>> = workers
            .iter()
            .map(|w| assigned(w.id, &workers, 64))
            .collect();
        workers.extend(live(1));
        let moved: usize = workers
            .iter()
            .take(3)
            .zip(&before)
            .map(|(w, old)| {
                let new = assigned(w.id, &workers, 64);
                old.iter().filter(|p| !new.contains(p)).count()
            })
            .sum();
        // The newcomer's share (8 of 32 shards, 16 partitions) must move; a few more may.
        assert!((16..=32).contains(&moved), "{moved} partitions moved");
    }

    #[test]
    fn an_earlier_worker_brings_back_the_per_partition_assignment() {
        let mut workers = live(2);
        workers[1].shards = None;
        let mine = assigned(workers[0].id, &workers, 64);
        let theirs = assigned(workers[1].id, &workers, 64);
        assert_eq!(mine.len() + theirs.len(), 64);
        let split_shards = mine.iter().any(|p| theirs.contains(&((p + 32) % 64)));
        assert!(split_shards, "per-partition shares split some shard");
    }

    #[test]
    fn few_partitions_make_few_shards() {
        assert_eq!(shard_count(4), 4);
        assert_eq!(shard_count(1024), SHARDS_MAX);
        assert_eq!(mask_of([0, 5, 32], 32), 0b100001);
        assert_eq!(all_shards(4), 0b1111);
    }

    #[test]
    fn no_workers_own_nothing() {
        assert!(shard_owners(&[], 32).is_empty());
        assert!(assigned(Uuid::now_v7(), &[], 64).is_empty());
    }
}
