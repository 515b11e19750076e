//! What an applier knows of its partitions and of the stream it reads — owned partitions,
//! their applied and queued positions, the reader generation — and the rules that form a batch
//! and plan its offsets: pure bookkeeping, apart from the IO so it can be tested on its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::lanes::Event;
use crate::store::Item;

/// How far (in stream messages) an owned partition's recorded offset may trail what this
/// worker has read before a batch moves it along, although none of its commands came by. The
/// reader starts from the lowest offset of the owned partitions, so this bounds what a
/// restart reads again, at the cost of an offset write per this many messages.
const IDLE_OFFSET_LAG_MAX: u64 = 1_000;

/// A partition as the applier sees it.
#[derive(Debug, PartialEq)]
struct Partition {
    /// Last stream sequence committed for it (as far as this worker knows: the fence checks).
    last_seq: u64,
    /// Last stream sequence whose commands for it are committed or in the forming batch.
    queued_seq: u64,
}

/// What an applier knows of its partitions and of the stream it reads: pure bookkeeping,
/// separate from the IO so its rules can be tested on their own.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    partitions: HashMap<u32, Partition>,
    /// The reader generation whose messages count.
    generation: u64,
    /// Highest stream sequence read under `generation`: every message up to it has been seen
    /// (the ordered consumer has no gaps), so every owned partition is covered up to it.
    seen_seq: u64,
}

impl Positions {
    /// Whether `partition` is owned (acquired, and neither released nor fenced since).
    pub(crate) fn owns(&self, partition: u32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Last stream sequence committed for `partition`, if owned.
    pub(crate) fn last_seq(&self, partition: u32) -> Option<u64> {
        self.partitions.get(&partition).map(|state| state.last_seq)
    }

    /// Stops counting `partition` as owned: another worker advanced it.
    pub(crate) fn fenced(&mut self, partition: u32) {
        self.partitions.remove(&partition);
    }

    /// Takes one event into `batch`. Returns the partitions whose ownership changed, whose
    /// remembered users must be forgotten.
    pub(crate) fn take(&mut self, event: Event, batch: &mut Vec<Item>) -> Vec<u32> {
        match event {
            Event::Restarted {
                generation,
                acquired,
            } => {
                self.generation = generation;
                self.seen_seq = 0;
                let mut changed = Vec::new();
                for (partition, last_seq) in acquired {
                    batch.retain(|item| item.partition != partition);
                    self.partitions.insert(
                        partition,
                        Partition {
                            last_seq,
                            queued_seq: last_seq,
                        },
                    );
                    changed.push(partition);
                }
                changed
            }
            Event::Released { partition } => {
                self.partitions.remove(&partition);
                batch.retain(|item| item.partition != partition);
                vec![partition]
            }
            Event::Message {
                generation,
                stream_seq,
                items,
            } => {
                if generation != self.generation {
                    return Vec::new();
                }
                self.seen_seq = self.seen_seq.max(stream_seq);
                let mut taken = BTreeSet::new();
                for item in items {
                    let fresh = self
                        .partitions
                        .get(&item.partition)
                        .is_some_and(|p| stream_seq > p.queued_seq);
                    if fresh {
                        taken.insert(item.partition);
                        batch.push(item);
                    }
                }
                for partition in taken {
                    if let Some(p) = self.partitions.get_mut(&partition) {
                        p.queued_seq = stream_seq;
                    }
                }
                Vec::new()
            }
        }
    }

    /// Where the batch moves each partition: those with commands in it, and those trailing
    /// the read position by more than [`IDLE_OFFSET_LAG_MAX`], up to what has been read.
    pub(crate) fn planned_offsets(&self, batch: &[Item]) -> BTreeMap<u32, u64> {
        let mut offsets = BTreeMap::new();
        for item in batch {
            let last = offsets.entry(item.partition).or_insert(item.stream_seq);
            *last = (*last).max(item.stream_seq);
        }
        for (partition, state) in &self.partitions {
            if offsets.contains_key(partition)
                || self.seen_seq > state.last_seq + IDLE_OFFSET_LAG_MAX
            {
                let last = offsets.entry(*partition).or_insert(state.last_seq);
                *last = (*last).max(self.seen_seq).max(state.last_seq);
            }
        }
        offsets
    }

    /// Where this worker left each partition of `offsets` (the fence checks it is still so).
    pub(crate) fn expected(&self, offsets: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
        offsets
            .keys()
            .filter_map(|p| self.partitions.get(p).map(|state| (*p, state.last_seq)))
            .collect()
    }

    /// Records a committed batch's offsets.
    pub(crate) fn committed(&mut self, offsets: &BTreeMap<u32, u64>) {
        for (partition, last_seq) in offsets {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.last_seq = *last_seq;
                state.queued_seq = state.queued_seq.max(*last_seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(generation: u64, stream_seq: u64, partitions: &[u32]) -> Event {
        Event::Message {
            generation,
            stream_seq,
            items: partitions
                .iter()
                .map(|p| Item::at(*p, stream_seq))
                .collect(),
        }
    }

    fn owning(acquired: &[(u32, u64)]) -> Positions {
        let mut positions = Positions::default();
        positions.take(
            Event::Restarted {
                generation: 1,
                acquired: acquired.to_vec(),
            },
            &mut Vec::new(),
        );
        positions
    }

    #[test]
    fn only_owned_partitions_past_their_offset_are_taken() {
        let mut positions = owning(&[(1, 10), (2, 0)]);
        let mut batch = Vec::new();
        positions.take(message(1, 10, &[1, 2, 3]), &mut batch);
        positions.take(message(1, 11, &[1, 1]), &mut batch);
        let taken: Vec<(u32, u64)> = batch.iter().map(|i| (i.partition, i.stream_seq)).collect();
        assert_eq!(taken, vec![(2, 10), (1, 11), (1, 11)]);
    }

    #[test]
    fn a_message_read_again_after_a_restart_is_not_taken_twice() {
        let mut positions = owning(&[(1, 0)]);
        let mut batch = Vec::new();
        positions.take(message(1, 5, &[1]), &mut batch);
        // Another partition is acquired: the reader restarts lower, and reads 5 again.
        positions.take(
            Event::Restarted {
                generation: 2,
                acquired: vec![(2, 3)],
            },
            &mut batch,
        );
        positions.take(message(1, 6, &[1]), &mut batch); // the old reader: stale
        positions.take(message(2, 4, &[2]), &mut batch);
        positions.take(message(2, 5, &[1, 2]), &mut batch);
        positions.take(message(2, 6, &[1]), &mut batch);
        let taken: Vec<(u32, u64)> = batch.iter().map(|i| (i.partition, i.stream_seq)).collect();
        assert_eq!(taken, vec![(1, 5), (2, 4), (2, 5), (1, 6)]);
    }

    #[test]
    fn offsets_cover_what_was_read_and_idle_partitions_catch_up() {
        let mut positions = owning(&[(1, 0), (2, 0)]);
        let mut batch = Vec::new();
        positions.take(message(1, 7, &[1]), &mut batch);
        positions.take(message(1, 9, &[3]), &mut batch);
        // Partition 1 moves to what was read; idle partition 2 is near enough to stay.
        assert_eq!(positions.planned_offsets(&batch), BTreeMap::from([(1, 9)]));
        positions.committed(&BTreeMap::from([(1, 9)]));
        let far = IDLE_OFFSET_LAG_MAX + 1;
        positions.take(message(1, far, &[3]), &mut Vec::new());
        assert_eq!(
            positions.planned_offsets(&[]),
            BTreeMap::from([(2, far)]),
            "only the partition trailing by more than the limit moves"
        );
    }

    #[test]
    fn a_released_partition_leaves_the_batch() {
        let mut positions = owning(&[(1, 0), (2, 0)]);
        let mut batch = Vec::new();
        positions.take(message(1, 1, &[1, 2]), &mut batch);
        let forget = positions.take(Event::Released { partition: 2 }, &mut batch);
        assert_eq!(forget, vec![2]);
        assert_eq!(batch.len(), 1);
        assert_eq!(
            positions.expected(&BTreeMap::from([(1, 1), (2, 1)])),
            BTreeMap::from([(1, 0)])
        );
    }

    #[test]
    fn a_fenced_partition_is_no_longer_owned_nor_taken_nor_moved() {
        let mut positions = owning(&[(1, 4), (2, 4)]);

        positions.fenced(2);

        assert!(positions.owns(1) && !positions.owns(2));
        assert_eq!(positions.last_seq(2), None);
        let mut batch = Vec::new();
        positions.take(message(1, 5, &[1, 2]), &mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(positions.planned_offsets(&batch), BTreeMap::from([(1, 5)]));
    }
}
