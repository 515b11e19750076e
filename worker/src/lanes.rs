//! The apply lanes: one ordered queue per applier, which the reader and the manager feed with
//! the events of that lane's share of the partitions (`partition % lanes`).

use tokio::sync::mpsc;

use crate::store::Item;

/// Messages queued per applier lane, at most: past it the reader waits (backpressure).
const LANE_QUEUE_MESSAGES_MAX: usize = 1024;

/// What the reader and the manager tell the applier, in one ordered queue.
#[derive(Debug)]
pub(crate) enum Event {
    /// The reader was restarted under `generation`: messages of earlier generations are stale.
    /// `acquired` partitions are now owned, applied up to the given sequence.
    Restarted {
        generation: u64,
        acquired: Vec<(u32, u64)>,
    },
    /// This worker no longer owns `partition`.
    Released { partition: u32 },
    /// One stream message, decoded: its commands, of any partition.
    Message {
        generation: u64,
        stream_seq: u64,
        items: Vec<Item>,
    },
}

/// The appliers, each applying the partitions `p` with `p % lanes == lane` in transactions of
/// its own, so one lane's commit (a WAL flush) overlaps the others' work: per-partition order
/// holds within a lane, and lanes share nothing but the database, which flushes their commits
/// together. Every lane sees every message (possibly with none of its commands), so each
/// knows how far it has read.
#[derive(Clone)]
pub(crate) struct Lanes {
    senders: Vec<mpsc::Sender<Event>>,
}

impl Lanes {
    /// `count` lanes, and the receiving end of each, in lane order.
    pub(crate) fn new(count: usize) -> (Self, Vec<mpsc::Receiver<Event>>) {
        assert!(count > 0, "at least one lane");
        let (senders, receivers) = (0..count)
            .map(|_| mpsc::channel::<Event>(LANE_QUEUE_MESSAGES_MAX))
            .unzip();
        (Self { senders }, receivers)
    }

    fn lane(&self, partition: u32) -> usize {
        partition as usize % self.senders.len()
    }

    pub(crate) async fn restarted(
        &self,
        generation: u64,
        acquired: &[(u32, u64)],
    ) -> anyhow::Result<()> {
        for (lane, sender) in self.senders.iter().enumerate() {
            let acquired = acquired
                .iter()
                .filter(|(p, _)| self.lane(*p) == lane)
                .copied()
                .collect();
            sender
                .send(Event::Restarted {
                    generation,
                    acquired,
                })
                .await
                .map_err(|_| anyhow::anyhow!("applier stopped"))?;
        }
        Ok(())
    }

    pub(crate) async fn released(&self, partition: u32) {
        let _ = self.senders[self.lane(partition)]
            .send(Event::Released { partition })
            .await;
    }

    pub(crate) async fn message(
        &self,
        generation: u64,
        stream_seq: u64,
        items: Vec<Item>,
    ) -> anyhow::Result<()> {
        let mut per_lane: Vec<Vec<Item>> = (0..self.senders.len()).map(|_| Vec::new()).collect();
        for item in items {
            per_lane[self.lane(item.partition)].push(item);
        }
        for (sender, items) in self.senders.iter().zip(per_lane) {
            sender
                .send(Event::Message {
                    generation,
                    stream_seq,
                    items,
                })
                .await
                .map_err(|_| anyhow::anyhow!("applier stopped"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions_of(event: Event) -> Vec<u32> {
        match event {
            Event::Restarted { acquired, .. } => acquired.iter().map(|(p, _)| *p).collect(),
            Event::Released { partition } => vec![partition],
            Event::Message { items, .. } => items.iter().map(|i| i.partition).collect(),
        }
    }

    #[tokio::test]
    async fn every_lane_sees_every_message_with_only_its_own_partitions() {
        let (lanes, mut receivers) = Lanes::new(2);
        let items = [1, 2, 3, 4, 5].map(|p| Item::at(p, 7)).to_vec();

        lanes.message(1, 7, items).await.unwrap();

        assert_eq!(partitions_of(receivers[0].try_recv().unwrap()), vec![2, 4]);
        assert_eq!(
            partitions_of(receivers[1].try_recv().unwrap()),
            vec![1, 3, 5]
        );
    }

    #[tokio::test]
    async fn a_restart_tells_each_lane_of_its_own_acquired_partitions_and_a_release_only_one() {
        let (lanes, mut receivers) = Lanes::new(2);

        lanes.restarted(3, &[(4, 10), (5, 20)]).await.unwrap();
        lanes.released(7).await;

        assert_eq!(partitions_of(receivers[0].try_recv().unwrap()), vec![4]);
        assert_eq!(partitions_of(receivers[1].try_recv().unwrap()), vec![5]);
        assert_eq!(partitions_of(receivers[1].try_recv().unwrap()), vec![7]);
        assert!(
            receivers[0].try_recv().is_err(),
            "the release went to one lane"
        );
    }
}
