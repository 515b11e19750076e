//! The applier of one lane: applies what queued up in batches, one transaction each, retries
//! and isolates failures, dead-letters a command that cannot be applied, and answers the
//! requesters.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tally_common::command::{Outcome, Reply, ReplyTo};
use tally_common::partition::Names;
use tokio::sync::mpsc;

use crate::lanes::Event;
use crate::manager::Resync;
use crate::positions::Positions;
use crate::relay::RelayHandle;
use crate::store::{self, Item, Store, StoreError};

/// Longest wait between two retries of a batch that failed for a passing reason.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
/// How often a batch that keeps failing for a non-passing reason is tried before its commands
/// are tried one by one, and a single command before it is dead-lettered (parked in
/// `dead_letters` for `tally dead-letters`). Between attempts the wait doubles from
/// [`RETRY_DELAY_MIN`], so a poison command holds its partition up for well under a second.
const ATTEMPTS_BEFORE_ISOLATING: u32 = 3;
/// First wait before a failed batch is tried again; it doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(20);

/// One lane's applier.
struct Applier {
    store: Store,
    /// For the replies and the dead-letter notices.
    client: async_nats::Client,
    names: Names,
    /// Where fenced partitions are reported, for the manager to read them again.
    resync: mpsc::UnboundedSender<Resync>,
    positions: Positions,
    /// Where committed events go, to be handed to the broker.
    relay: RelayHandle,
}

/// How a lane forms its batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batching {
    /// Most commands in one transaction.
    pub(crate) max: usize,
    /// How long a batch that no requester waits on may wait for more commands, when the lane
    /// is busy (see [`LINGER_AFTER`]); zero: never.
    pub(crate) linger: Duration,
}

/// A lane lingers only after a batch of at least this many commands: under load. When idle a
/// command waits for nobody.
const LINGER_AFTER: usize = 16;

/// Applies the lane's `events` in batches (see [`Batching`]), until every sender of `events`
/// is gone and nothing is left queued.
pub(crate) async fn run(
    store: Store,
    client: async_nats::Client,
    names: Names,
    batching: Batching,
    mut events: mpsc::Receiver<Event>,
    resync: mpsc::UnboundedSender<Resync>,
    relay: RelayHandle,
) {
    let mut applier = Applier {
        store,
        client,
        names,
        resync,
        positions: Positions::default(),
        relay,
    };
    let mut batch: Vec<Item> = Vec::with_capacity(batching.max);
    let mut previous_len = 0;
    while let Some(first) = events.recv().await {
        let busy = previous_len >= LINGER_AFTER;
        gather(
            first,
            &mut events,
            batching,
            busy,
            &mut batch,
            |event, batch| {
                for partition in applier.positions.take(event, batch) {
                    applier.store.partition_changed_hands(partition);
                }
            },
        )
        .await;
        let offsets = applier.positions.planned_offsets(&batch);
        if batch.is_empty() && offsets.is_empty() {
            continue;
        }
        previous_len = batch.len();
        let items = std::mem::take(&mut batch);
        applier.apply_with_retries(items, offsets).await;
    }
}

/// Forms the next batch from `first` and what follows it on `events`, handing each event to
/// `take` (which adds its commands to `batch`). What is already queued is taken without
/// waiting: under load batches grow by themselves while the previous transaction commits. A
/// `busy` lane's batch that nobody waits on (fire-and-forget commands only) also waits up to
/// `batching.linger` for more: fewer, larger transactions cost less per command, and a
/// requester's command ends the wait as soon as it comes.
async fn gather(
    first: Event,
    events: &mut mpsc::Receiver<Event>,
    batching: Batching,
    busy: bool,
    batch: &mut Vec<Item>,
    mut take: impl FnMut(Event, &mut Vec<Item>),
) {
    let mut next = Some(first);
    let mut linger_until = None;
    loop {
        while let Some(event) = next.take() {
            take(event, batch);
            if batch.len() < batching.max {
                next = events.try_recv().ok();
            }
        }
        let linger = busy
            && !batching.linger.is_zero()
            && !batch.is_empty()
            && batch.len() < batching.max
            && batch.iter().all(|item| item.reply_to.is_none());
        if !linger {
            return;
        }
        let deadline =
            *linger_until.get_or_insert_with(|| tokio::time::Instant::now() + batching.linger);
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => next = Some(event),
            // The wait is over, or the lane is closing: apply what is here.
            Ok(None) | Err(_) => return,
        }
    }
}

impl Applier {
    /// Applies `items` and moves the partitions to `offsets`, until committed, fenced, or
    /// dead-lettered.
    async fn apply_with_retries(&mut self, mut items: Vec<Item>, mut offsets: BTreeMap<u32, u64>) {
        let mut delay = RETRY_DELAY_MIN;
        let mut failures = 0;
        loop {
            let positions = &self.positions;
            offsets.retain(|p, _| positions.owns(*p));
            items.retain(|item| positions.owns(item.partition));
            if items.is_empty() && offsets.is_empty() {
                return;
            }
            let expected = self.positions.expected(&offsets);
            let started = Instant::now();
            match self.store.apply_batch(&items, &expected, &offsets).await {
                Ok(committed) => {
                    record_batch(&committed, items.len(), started);
                    self.positions.committed(&committed.offsets);
                    reply(&self.client, committed.answers).await;
                    self.relay.relay(committed.events);
                    return;
                }
                // The next round applies what is left of the partitions still owned.
                Err(StoreError::Fenced(stale)) => self.fenced(stale),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, batch.len = items.len(), retry_in_ms = delay.as_millis() as u64, "batch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
                Err(error) => {
                    failures += 1;
                    tracing::error!(%error, batch.len = items.len(), "batch failed");
                    if failures < ATTEMPTS_BEFORE_ISOLATING {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(RETRY_DELAY_MAX);
                    } else if items.len() > 1 {
                        // Find the command at fault: apply one by one, in order, leaving the
                        // offsets where they are (a crash in between redoes the ones applied,
                        // which their dedupe records make harmless), then move the offsets.
                        for item in std::mem::take(&mut items) {
                            let Some(last_seq) = self.positions.last_seq(item.partition) else {
                                continue;
                            };
                            let unmoved = BTreeMap::from([(item.partition, last_seq)]);
                            Box::pin(self.apply_with_retries(vec![item], unmoved)).await;
                        }
                    } else if let Some(item) = items.pop() {
                        self.dead_letter(item, &error, failures).await;
                    } else {
                        // Only offsets, and they keep failing: leave them; a later batch moves
                        // them along with its own.
                        return;
                    }
                }
            }
        }
    }

    /// Gives up the partitions another worker advanced (`stale`, from the fence of a batch or of
    /// a dead letter): stops applying them, forgets their users and asks the manager to read
    /// them again from their offsets.
    fn fenced(&mut self, stale: Vec<u32>) {
        metrics::counter!("tally_worker_fenced_total").increment(1);
        for partition in &stale {
            self.positions.fenced(*partition);
            self.store.partition_changed_hands(*partition);
        }
        let _ = self.resync.send(stale);
    }

    /// Parks a command that cannot be applied: records it as failed and lists it in
    /// `dead_letters` (so its requester, `GET /commands/{id}` and `tally dead-letters` learn so),
    /// then copies it to the dead-letter subject as a notice for whoever listens. Recording is
    /// retried until it commits or the partition is lost: the command is never skipped
    /// unrecorded.
    async fn dead_letter(&mut self, item: Item, error: &StoreError, attempts: u32) {
        let reason = error.to_string();
        let mut delay = RETRY_DELAY_MIN;
        loop {
            let Some(last_seq) = self.positions.last_seq(item.partition) else {
                return;
            };
            let recorded = self
                .store
                .record_failure(&item, last_seq, &reason, attempts);
            match recorded.await {
                Ok(answer) => {
                    metrics::counter!("tally_worker_dead_letters_total").increment(1);
                    tracing::error!(
                        command.id = ?item.envelope.as_ref().map(|e| e.command_id),
                        partition = item.partition,
                        stream.seq = item.stream_seq,
                        attempts,
                        error = %reason,
                        "command dead-lettered"
                    );
                    let notice = serde_json::json!({ "partition": item.partition, "stream_seq": item.stream_seq,
                                                     "error": reason, "envelope": item.envelope });
                    let _ = self
                        .client
                        .publish(self.names.dead_letter_subject(), notice.to_string().into())
                        .await;
                    if let Some(answer) = answer {
                        reply(&self.client, vec![(item.reply_to.clone(), answer)]).await;
                    }
                    return;
                }
                Err(StoreError::Fenced(stale)) => {
                    self.fenced(stale);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "could not record a dead-lettered command; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_DELAY_MAX);
                }
            }
        }
    }
}

/// Counts a committed batch and its commands, and logs it.
fn record_batch(committed: &store::Committed, len: usize, started: Instant) {
    metrics::counter!("tally_worker_commands_total").increment(len as u64);
    metrics::counter!("tally_worker_batches_total").increment(1);
    metrics::histogram!("tally_worker_batch_seconds").record(started.elapsed().as_secs_f64());
    tracing::debug!(
        batch.len = len,
        entries = committed.entries_written,
        duration_ms = started.elapsed().as_millis() as u64,
        "batch committed"
    );
}

/// Answers the requesters of a committed batch: one message per ingress inbox, carrying every
/// outcome that ingress waits for.
async fn reply(client: &async_nats::Client, answers: Vec<(Option<ReplyTo>, Outcome)>) {
    for (inbox, replies) in by_inbox(answers) {
        let payload = serde_json::to_vec(&replies).expect("replies serialize");
        if let Err(error) = client.publish(inbox, payload.into()).await {
            tracing::warn!(%error, "could not publish replies; the results stay readable");
        }
    }
}

/// The answers that someone waits for, grouped by inbox, each inbox's in batch order.
fn by_inbox(answers: Vec<(Option<ReplyTo>, Outcome)>) -> HashMap<String, Vec<Reply>> {
    let mut by_inbox: HashMap<String, Vec<Reply>> = HashMap::new();
    for (reply_to, outcome) in answers {
        if let Some(ReplyTo { inbox, token }) = reply_to {
            by_inbox
                .entry(inbox)
                .or_default()
                .push(Reply { token, outcome });
        }
    }
    by_inbox
}

#[cfg(test)]
mod tests {
    use tally_common::command::Status;
    use uuid::Uuid;

    use super::*;

    fn answer(inbox: Option<&str>, token: u64) -> (Option<ReplyTo>, Outcome) {
        let reply_to = inbox.map(|inbox| ReplyTo {
            inbox: inbox.into(),
            token,
        });
        let outcome = Outcome {
            command_id: Uuid::now_v7(),
            status: Status::Applied,
            http_status: 200,
            body: serde_json::Value::Null,
        };
        (reply_to, outcome)
    }

    const BATCHING: Batching = Batching {
        max: 4,
        linger: Duration::from_millis(10),
    };

    fn message(seq: u64, waited_on: bool) -> Event {
        let mut item = Item::at(1, seq);
        if waited_on {
            item.reply_to = Some(ReplyTo {
                inbox: "_INBOX.a".into(),
                token: seq,
            });
        }
        Event::Message {
            generation: 0,
            stream_seq: seq,
            items: vec![item],
        }
    }

    /// Gathers a batch as the lane would from `message(1)`, with the events sent at the given
    /// times (ms after the first), and returns the sequences gathered and how long it took.
    async fn gather_from(busy: bool, later: Vec<(u64, Event)>) -> (Vec<u64>, Duration) {
        gather_after(message(1, false), busy, later).await
    }

    async fn gather_after(
        first: Event,
        busy: bool,
        later: Vec<(u64, Event)>,
    ) -> (Vec<u64>, Duration) {
        let (sender, mut events) = mpsc::channel(16);
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            for (at_ms, event) in later {
                tokio::time::sleep_until(started + Duration::from_millis(at_ms)).await;
                sender.send(event).await.unwrap();
            }
            // Kept open until the test is over, as a lane's senders are.
            std::future::pending::<()>().await;
        });
        let mut batch = Vec::new();
        let take = |event: Event, batch: &mut Vec<Item>| {
            if let Event::Message { items, .. } = event {
                batch.extend(items);
            }
        };
        gather(first, &mut events, BATCHING, busy, &mut batch, take).await;
        let seqs = batch.iter().map(|item| item.stream_seq).collect();
        (seqs, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_is_not_busy_applies_what_is_queued_without_waiting() {
        let (seqs, took) =
            gather_from(false, vec![(0, message(2, false)), (5, message(3, false))]).await;

        assert_eq!(seqs, [1]);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_lane_lets_fire_and_forget_commands_wait_for_more_until_the_linger_is_over() {
        let later = vec![
            (3, message(2, false)),
            (7, message(3, false)),
            (25, message(4, false)),
        ];

        let (seqs, took) = gather_from(true, later).await;

        assert_eq!(
            seqs,
            [1, 2, 3],
            "what came within the linger, not what came after"
        );
        assert_eq!(took, BATCHING.linger);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_someone_waits_on_ends_the_wait_at_once() {
        let later = vec![
            (2, message(2, false)),
            (4, message(3, true)),
            (6, message(4, false)),
        ];

        let (seqs, took) = gather_from(true, later).await;

        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(took, Duration::from_millis(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_with_no_commands_waits_for_nothing() {
        let released = Event::Released { partition: 1 };

        let (seqs, took) = gather_after(released, true, vec![(2, message(2, false))]).await;

        assert!(seqs.is_empty(), "{seqs:?} after {took:?}");
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_waits_for_nothing() {
        let later = vec![
            (1, message(2, false)),
            (2, message(3, false)),
            (3, message(4, false)),
            (4, message(5, false)),
        ];

        let (seqs, took) = gather_from(true, later).await;

        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(took, Duration::from_millis(3));
    }

    #[test]
    fn each_inbox_gets_its_answers_in_batch_order_and_unawaited_ones_go_nowhere() {
        let answers = vec![
            answer(Some("a"), 1),
            answer(Some("b"), 2),
            answer(None, 3),
            answer(Some("a"), 4),
        ];

        let grouped = by_inbox(answers);

        let tokens = |inbox: &str| -> Vec<u64> { grouped[inbox].iter().map(|r| r.token).collect() };
        assert_eq!(grouped.len(), 2);
        assert_eq!(tokens("a"), [1, 4]);
        assert_eq!(tokens("b"), [2]);
    }
}
