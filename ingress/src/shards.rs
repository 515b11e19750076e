//! Where the ingress believes each shard's owner is ([`tally_common::routing`]): re-read from
//! the workers' heartbeats every [`HEARTBEAT_INTERVAL`], and used to group a publish's commands
//! into one message per owner. The belief only spares deliveries; a message always marks the
//! shards of all its commands, so a stale one is still read by every owner it concerns.

use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use tally_common::partition::Names;
use tally_common::routing::{
    self, all_shards, live_workers, shard_owners, ShardMask, HEARTBEAT_INTERVAL,
};

/// What the ingress knows of the shards' owners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Table {
    /// A live worker of an earlier version reads only the three-token subjects: publish there.
    Unrouted,
    /// Every live worker routes by shard. `owned[shard]` is the set of shards of that shard's
    /// owner; all shards when no worker is live (whichever comes first reads them all).
    Routed { shards: u32, owned: Vec<ShardMask> },
}

impl Table {
    /// The table for the live workers of a stream of `partitions` partitions.
    pub fn new(live: &[routing::LiveWorker], partitions: u32) -> Self {
        let shards = routing::shard_count(partitions);
        if !routing::all_shard(live, shards) {
            return Self::Unrouted;
        }
        let ids = routing::live_ids(live);
        let owners = shard_owners(&ids, shards);
        let owned = if owners.is_empty() {
            vec![all_shards(shards); shards as usize]
        } else {
            let mut by_owner = vec![0; ids.len()];
            for (shard, owner) in owners.iter().enumerate() {
                by_owner[*owner] |= 1 << shard;
            }
            owners.iter().map(|owner| by_owner[*owner]).collect()
        };
        Self::Routed { shards, owned }
    }

    /// The shards a message holding commands of `shards` marks: those of every believed owner of
    /// one of them (a superset of `shards`), so that messages for the same owners share one
    /// subject. `None` when unrouted.
    pub fn marks(&self, mask: ShardMask) -> Option<ShardMask> {
        match self {
            Self::Unrouted => None,
            Self::Routed { owned, .. } => Some(
                owned
                    .iter()
                    .enumerate()
                    .filter(|(shard, _)| mask & (1 << shard) != 0)
                    .fold(mask, |marks, (_, owner)| marks | owner),
            ),
        }
    }

    /// The subject of a message marking `marks` (from [`Table::marks`]).
    pub fn subject(&self, names: &Names, marks: Option<ShardMask>) -> String {
        match (self, marks) {
            (Self::Routed { shards, .. }, Some(marks)) => {
                names.command_routed_subject(marks, *shards)
            }
            _ => names.command_batch_subject(),
        }
    }
}

/// The current table, shared by the publisher and refreshed in the background.
#[derive(Clone)]
pub struct Shards {
    current: Arc<RwLock<Arc<Table>>>,
}

impl Shards {
    /// Reads the live workers once, then keeps re-reading them. A failed read keeps the table.
    pub async fn start(pool: PgPool, names: &Names, partitions: u32) -> Self {
        let stream = names.command_stream();
        let first = match live_workers(&pool, &stream).await {
            Ok(live) => Table::new(&live, partitions),
            Err(_) => Table::Unrouted,
        };
        let table = Self {
            current: Arc::new(RwLock::new(Arc::new(first))),
        };
        let refreshed = table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match live_workers(&pool, &stream).await {
                    Ok(live) => {
                        let table = Table::new(&live, partitions);
                        let mut current = refreshed.current.write().expect("shard table lock");
                        if **current != table {
                            tracing::debug!(workers = live.len(), "shard owners changed");
                            *current = Arc::new(table);
                        }
                    }
                    Err(error) => tracing::debug!(%error, "cannot read the live workers"),
                }
            }
        });
        table
    }

    /// The table as last read.
    pub fn table(&self) -> Arc<Table> {
        self.current.read().expect("shard table lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use tally_common::routing::LiveWorker;
    use uuid::Uuid;

    use super::*;

    fn workers(count: usize, shards: Option<u32>) -> Vec<LiveWorker> {
        (0..count)
            .map(|_| LiveWorker {
                id: Uuid::now_v7(),
                shards,
            })
            .collect()
    }

    #[test]
    fn a_message_marks_its_owners_shards_and_theirs_only() {
        let live = workers(2, Some(4));
        let table = Table::new(&live, 4);
        let Table::Routed { owned, .. } = &table else {
            panic!("routed")
        };
        // Each shard's owner set holds the shard, and the two owners split the four shards.
        for (shard, set) in owned.iter().enumerate() {
            assert!(set & (1 << shard) != 0);
        }
        assert_eq!(owned.iter().fold(0, |all, set| all | set), 0b1111);
        let first = owned[0];
        assert_eq!(table.marks(1), Some(first));
        assert_eq!(table.marks(0b1111), Some(0b1111));
        // Each worker's routing agrees with what it reads.
        for worker in &live {
            let mine = routing::assigned(worker.id, &live, 4);
            let mask = routing::mask_of(mine, 4);
            assert!(owned.contains(&mask));
        }
    }

    #[test]
    fn without_workers_every_shard_is_marked() {
        let table = Table::new(&[], 64);
        assert_eq!(table.marks(1), Some(all_shards(32)));
        let names = Names::new("t");
        assert_eq!(
            table.subject(&names, table.marks(1)),
            names.command_routed_subject(u64::from(u32::MAX), 32)
        );
    }

    #[test]
    fn an_earlier_worker_means_the_batch_subject() {
        let mut live = workers(2, Some(32));
        live.extend(workers(1, None));
        let table = Table::new(&live, 64);
        assert_eq!(table, Table::Unrouted);
        let names = Names::new("t");
        assert_eq!(
            table.subject(&names, table.marks(3)),
            names.command_batch_subject()
        );
    }
}
