//! Tally's worker: reads the partitions it owns, in order, and applies their commands to
//! Postgres in batches, one transaction per batch.
//!
//! Three kinds of task:
//! - the **manager** keeps the heartbeat, takes and gives up partitions ([`ownership`]), and
//!   (re)starts the reader whenever it takes a partition;
//! - the **reader** follows the whole command stream with one ordered consumer, from right
//!   after the lowest last applied sequence of the owned partitions (read from Postgres), and
//!   decodes each message (a batch of commands of many partitions);
//! - the **applier** keeps the commands of the partitions this worker owns, applies what
//!   queued up in one transaction ([`store::apply_batch`]), then answers each ingress that
//!   waits for some of them with one message.
//!
//! Nothing is acknowledged to the broker: the applied position of each partition lives in
//! Postgres, advanced in the same transaction as the effects, so a crash at any point either
//! loses the whole batch (it is read again) or none of it.

pub mod ledger;
pub mod ownership;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use serde_json::value::RawValue;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tally_common::command::{CommandBatch, Envelope, Reply, ReplyTo, HEADER_REPLY_TO};
use tally_common::config::CommonConfig;
use tally_common::partition::Names;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::ownership::{Membership, HEARTBEAT_INTERVAL};
use crate::store::{AccountCache, Item, Pools, StoreError};

/// Worker settings.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "tally-worker",
    version,
    about = "Applies Tally's credit commands to Postgres"
)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Most commands applied in one Postgres transaction.
    #[arg(
        long,
        visible_alias = "tally-batch-max",
        env = "TALLY_BATCH_MAX",
        default_value_t = 256
    )]
    pub batch_max: usize,

    /// Batches applied at once, each over its own share of the owned partitions
    /// (`partition % lanes`), so that one batch's work in Postgres overlaps the others'. Worth
    /// raising only when Postgres has idle cores: more lanes make smaller batches, which cost
    /// more per command.
    #[arg(
        long,
        visible_alias = "tally-apply-lanes",
        env = "TALLY_APPLY_LANES",
        default_value_t = 1
    )]
    pub apply_lanes: usize,

    /// Address to serve this worker's Prometheus metrics on (`/metrics`); unset: not served.
    #[arg(
        long,
        visible_alias = "tally-worker-metrics-addr",
        env = "TALLY_WORKER_METRICS_ADDR"
    )]
    pub metrics_addr: Option<String>,
}

impl WorkerConfig {
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            batch_max: 256,
            apply_lanes: 1,
            metrics_addr: None,
        }
    }
}

/// Longest wait between two retries of a batch that failed for a passing reason.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
/// How often a batch that keeps failing for a non-passing reason is tried before its commands
/// are tried one by one, and a single command before it is dead-lettered (parked in
/// `dead_letters` for `tally dead-letters`). Between attempts the wait doubles from
/// [`RETRY_DELAY_MIN`], so a poison command holds its partition up for well under a second.
const ATTEMPTS_BEFORE_ISOLATING: u32 = 3;
/// First wait before a failed batch is tried again; it doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(20);

/// How often due lots and holds are looked for. Expiries land within about this long (plus
/// one transaction) of their time.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Expires due lots and holds, forever. Every worker sweeps every user: the account locks make
/// concurrent sweeps (and the batches of the partition's owner) write each expiry once.
async fn sweep_forever(pool: PgPool) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Drain what is due, a bounded chunk per transaction.
        loop {
            match store::sweep(&pool, chrono::Utc::now()).await {
                Ok(swept) if swept as i64 >= store::SWEEP_USERS_MAX => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep failed; retrying");
                    break;
                }
            }
        }
    }
}

/// Longest wait for replies to reach the broker at shutdown (they are best effort: results
/// are durable).
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// How far (in stream messages) an owned partition's recorded offset may trail what this
/// worker has read before a batch moves it along, although none of its commands came by. The
/// reader starts from the lowest offset of the owned partitions, so this bounds what a
/// restart reads again, at the cost of an offset write per this many messages.
const IDLE_OFFSET_LAG_MAX: u64 = 1_000;

/// What the reader and the manager tell the applier, in one ordered queue.
#[derive(Debug)]
enum Event {
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

/// What the applier tells the manager: these partitions were fenced and must be re-read.
type Resync = Vec<u32>;

/// Messages queued per applier lane, at most: past it the reader waits (backpressure).
const LANE_QUEUE_MESSAGES_MAX: usize = 1024;

/// The appliers, each applying the partitions `p` with `p % lanes == lane` in transactions of
/// its own, so one lane's commit (a WAL flush) overlaps the others' work: per-partition order
/// holds within a lane, and lanes share nothing but the database, which flushes their commits
/// together. Every lane sees every message (possibly with none of its commands), so each
/// knows how far it has read.
#[derive(Clone)]
struct Lanes {
    senders: Vec<mpsc::Sender<Event>>,
}

impl Lanes {
    fn lane(&self, partition: u32) -> usize {
        partition as usize % self.senders.len()
    }

    async fn restarted(&self, generation: u64, acquired: &[(u32, u64)]) -> anyhow::Result<()> {
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

    async fn released(&self, partition: u32) {
        let _ = self.senders[self.lane(partition)]
            .send(Event::Released { partition })
            .await;
    }

    async fn message(
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
/// Runs a worker until `shutdown` resolves, then finishes in-flight batches and leaves.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let names = Names::new(&config.common.namespace);
    let pool = tally_common::db::connect(
        &config.common.database_url,
        config.common.db_pool_size,
        tally_common::db::Planning::Batches,
    )
    .await?;
    let lanes = config.apply_lanes.max(1);
    let pools = Pools {
        full: pool.clone(),
        fast: tally_common::db::connect(
            &config.common.database_url,
            lanes as u32,
            tally_common::db::Planning::Lookups,
        )
        .await?,
    };
    tally_common::db::migrate(&pool).await?;
    let client = tally_common::broker::connect(&config.common.nats_url, "tally-worker").await?;
    let js = jetstream::new(client.clone());
    let stream = tally_common::broker::provision(
        &js,
        &names,
        config.common.partitions,
        config.common.stream_replicas,
        tally_common::broker::Replicas::Warn,
    )
    .await?;

    let worker_id = Uuid::now_v7();
    let stream_name = names.command_stream();
    tracing::info!(worker.id = %worker_id, stream = %stream_name, "worker started");

    let (resync_tx, resync_rx) = mpsc::unbounded_channel::<Resync>();
    let mut senders = Vec::new();
    let mut appliers = Vec::new();
    for lane in 0..lanes {
        let (events_tx, events_rx) = mpsc::channel::<Event>(LANE_QUEUE_MESSAGES_MAX);
        senders.push(events_tx);
        appliers.push(tokio::spawn(applier(
            pools.clone(),
            client.clone(),
            names.clone(),
            stream_name.clone(),
            config.batch_max,
            events_rx,
            resync_tx.clone(),
        )));
        tracing::debug!(lane, "applier started");
    }
    drop(resync_tx);
    let manager = Manager {
        membership: Membership::new(worker_id, &stream_name, &config.common.database_url),
        pool: pool.clone(),
        stream,
        names,
        stream_name,
        partitions: config.common.partitions,
        lanes: Lanes { senders },
        owned: BTreeSet::new(),
        reader: None,
        reader_stopped: Arc::new(Notify::new()),
        client: client.clone(),
        generation: 0,
    };
    let sweeper = tokio::spawn(sweep_forever(pool.clone()));
    let mut membership = manager.run(resync_rx, shutdown).await;
    // A sweep interrupted here rolls back; another worker (or the next start) redoes it.
    sweeper.abort();
    // The manager dropped every sender: the appliers finish what is queued, then return.
    for applier in appliers {
        applier.await.context("applier task failed")?;
    }
    membership.leave(&pool).await;
    // Replies are best effort (results are durable in Postgres): never wait long for a broker
    // that may already be gone.
    let _ = tokio::time::timeout(REPLY_FLUSH_TIMEOUT, client.flush()).await;
    tracing::info!(worker.id = %worker_id, "worker stopped");
    Ok(())
}

struct Manager {
    membership: Membership,
    pool: PgPool,
    stream: jetstream::stream::Stream,
    names: Names,
    stream_name: String,
    partitions: u32,
    lanes: Lanes,
    owned: BTreeSet<u32>,
    reader: Option<JoinHandle<()>>,
    /// Signalled by a reader that stopped, so the manager reads again at once.
    reader_stopped: Arc<Notify>,
    client: async_nats::Client,
    generation: u64,
}

impl Manager {
    async fn run(
        mut self,
        mut resync: mpsc::UnboundedReceiver<Resync>,
        shutdown: impl Future<Output = ()>,
    ) -> Membership {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(partitions) = resync.recv() => {
                    for partition in partitions {
                        tracing::warn!(partition, "partition advanced elsewhere; reading it again");
                        self.release(partition).await;
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.rebalance().await {
                        tracing::warn!(%error, "could not refresh partition ownership; retrying");
                    }
                }
                _ = self.reader_stopped.notified() => {
                    self.stop_reader().await;
                    if let Err(error) = self.rebalance().await {
                        tracing::warn!(%error, "could not refresh partition ownership; retrying");
                    }
                }
            }
        }
        // Stop reading; the applier finishes what is queued once every sender is gone.
        self.stop_reader().await;
        self.membership
    }

    async fn rebalance(&mut self) -> Result<(), sqlx::Error> {
        let live = self.membership.heartbeat(&self.pool).await?;
        if !self.owned.is_empty() && !self.membership.locks_alive().await {
            tracing::warn!("lost the lock connection; giving up every partition");
            self.stop_reader().await;
            for partition in std::mem::take(&mut self.owned) {
                self.lanes.released(partition).await;
            }
        }
        let wanted = ownership::assigned(self.membership.worker_id, &live, self.partitions);
        let surplus: Vec<u32> = self.owned.difference(&wanted).copied().collect();
        for partition in surplus {
            self.release(partition).await;
        }
        let mut acquired = Vec::new();
        for partition in wanted {
            if !self.owned.contains(&partition) && self.membership.try_lock(partition).await? {
                acquired.push(partition);
            }
        }
        let reader_stopped = self
            .reader
            .as_ref()
            .is_none_or(|reader| reader.is_finished());
        if !acquired.is_empty() || (reader_stopped && !self.owned.is_empty()) {
            if reader_stopped && self.reader.is_some() {
                tracing::warn!("reader stopped; reading the stream again");
            }
            if let Err(error) = self.restart_reader(&acquired).await {
                tracing::warn!(%error, "could not start reading the stream");
                for partition in acquired {
                    if !self.owned.contains(&partition) {
                        let _ = self.membership.unlock(partition).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Restarts the reader from right after the lowest applied sequence of the owned partitions
    /// and `acquired`, which this worker owns from now on.
    async fn restart_reader(&mut self, acquired: &[u32]) -> anyhow::Result<()> {
        self.stop_reader().await;
        let mut all: Vec<u32> = self.owned.iter().copied().collect();
        all.extend_from_slice(acquired);
        let offsets = store::partition_offsets(&self.pool, &self.stream_name, &all).await?;
        self.generation += 1;
        let generation = self.generation;
        if let Some(missing) = all.iter().find(|p| !offsets.contains_key(p)) {
            anyhow::bail!("no offset row for partition {missing}");
        }
        let acquired: Vec<(u32, u64)> = acquired.iter().map(|p| (*p, offsets[p])).collect();
        self.lanes.restarted(generation, &acquired).await?;
        self.owned.extend(acquired.iter().map(|(p, _)| *p));
        let start_sequence = offsets.values().min().copied().unwrap_or(0) + 1;
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: self.names.command_subjects_wildcard(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                ..Default::default()
            })
            .await
            .context("cannot create ordered consumer")?;
        let messages = consumer
            .messages()
            .await
            .context("cannot read the stream")?;
        self.reader = Some(tokio::spawn(read_stream(
            generation,
            messages,
            self.lanes.clone(),
            Watch {
                client: self.client.clone(),
                stream: self.stream.clone(),
                last_read: start_sequence - 1,
                stopped: self.reader_stopped.clone(),
            },
        )));
        tracing::debug!(
            generation,
            start_sequence,
            partitions = self.owned.len(),
            "reading the stream"
        );
        Ok(())
    }

    async fn stop_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
            let _ = reader.await;
        }
    }

    async fn release(&mut self, partition: u32) {
        if self.owned.remove(&partition) {
            self.lanes.released(partition).await;
        }
        if let Err(error) = self.membership.unlock(partition).await {
            tracing::warn!(partition, %error, "could not unlock partition");
        }
        tracing::debug!(partition, "partition released");
    }
}

/// How long the reader waits for a message before it checks that it is still being fed.
const READER_IDLE_CHECK: Duration = Duration::from_millis(500);
/// How long that check may wait for the broker.
const READER_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a reader needs to notice that its consumer is gone: a broker restart loses the ordered
/// consumer (it lives in the server's memory), and a cluster loses it with its node. The
/// client's own detection waits for two missed 15 s heartbeats; this notices within a second.
struct Watch {
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    /// Stream sequence of the last message read.
    last_read: u64,
    /// Told when the reader stops, whatever the reason.
    stopped: Arc<Notify>,
}

impl Watch {
    /// Whether the reader should start over: the connection was re-established since it began
    /// (the server may have lost its consumer), or the stream holds messages past the last one
    /// read and none arrived since the previous check either.
    async fn stalled(&self, connects_at_start: u64, behind_before: &mut bool) -> bool {
        if self.client.statistics().connects.load(Ordering::Relaxed) != connects_at_start {
            tracing::warn!("reconnected to the broker; reading the stream again");
            return true;
        }
        let behind = match tokio::time::timeout(READER_CHECK_TIMEOUT, self.stream.get_info()).await
        {
            Ok(Ok(info)) => info.state.last_sequence > self.last_read,
            // No answer (the broker or the stream's leader is away): nothing to conclude yet.
            _ => false,
        };
        if behind && *behind_before {
            tracing::warn!(
                stream.seq = self.last_read,
                "the stream is ahead of its reader, which gets nothing; reading it again"
            );
            return true;
        }
        *behind_before = behind;
        false
    }
}

/// Reads the command stream in order and hands each message's commands to the applier, until
/// the stream fails or stalls (see [`Watch`]); then tells the manager, which starts over.
async fn read_stream(
    generation: u64,
    mut messages: jetstream::consumer::pull::Ordered,
    lanes: Lanes,
    mut watch: Watch,
) {
    let connects_at_start = watch.client.statistics().connects.load(Ordering::Relaxed);
    let mut behind_before = false;
    loop {
        let message = match tokio::time::timeout(READER_IDLE_CHECK, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "stream read failed");
                break;
            }
            Ok(None) => break,
            Err(_idle) => {
                if watch.stalled(connects_at_start, &mut behind_before).await {
                    break;
                }
                continue;
            }
        };
        behind_before = false;
        let stream_seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::warn!(%error, "message without stream sequence");
                break;
            }
        };
        watch.last_read = stream_seq;
        let items = decode(&message, stream_seq);
        if lanes.message(generation, stream_seq, items).await.is_err() {
            break;
        }
    }
    watch.stopped.notify_one();
}

/// The commands of one stream message: a batch (the batch subject), or a single command on a
/// partition subject as published by earlier versions. A command that cannot be decoded
/// becomes an item without envelope (recorded as poison, its partition moves on).
fn decode(message: &async_nats::jetstream::Message, stream_seq: u64) -> Vec<Item> {
    let poison = |error: &dyn std::fmt::Display| {
        metrics::counter!("tally_worker_poison_messages_total").increment(1);
        tracing::error!(stream.seq = stream_seq, %error, "undecodable command skipped");
    };
    if message.subject.ends_with(".batch") {
        return match serde_json::from_slice::<CommandBatch<Box<RawValue>>>(&message.payload) {
            Ok(batch) => batch
                .commands
                .into_iter()
                .map(|command| Item {
                    partition: command.partition,
                    stream_seq,
                    envelope: serde_json::from_str::<Envelope>(command.envelope.get())
                        .map_err(|error| poison(&error))
                        .ok(),
                    reply_to: command.reply_to,
                })
                .collect(),
            Err(error) => {
                poison(&error);
                Vec::new()
            }
        };
    }
    let Some(partition) = message
        .subject
        .rsplit('.')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        poison(&format!("unexpected subject {}", message.subject));
        return Vec::new();
    };
    let reply_to = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(HEADER_REPLY_TO))
        .and_then(|value| ReplyTo::parse_subject(value.as_str()));
    vec![Item {
        partition,
        stream_seq,
        envelope: serde_json::from_slice::<Envelope>(&message.payload)
            .map_err(|error| poison(&error))
            .ok(),
        reply_to,
    }]
}

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
struct Positions {
    partitions: HashMap<u32, Partition>,
    /// The reader generation whose messages count.
    generation: u64,
    /// Highest stream sequence read under `generation`: every message up to it has been seen
    /// (the ordered consumer has no gaps), so every owned partition is covered up to it.
    seen_seq: u64,
}

impl Positions {
    /// Takes one event into `batch`. Returns the partitions whose ownership changed, whose
    /// remembered users must be forgotten.
    fn take(&mut self, event: Event, batch: &mut Vec<Item>) -> Vec<u32> {
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
    fn planned_offsets(&self, batch: &[Item]) -> BTreeMap<u32, u64> {
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

    fn expected(&self, offsets: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
        offsets
            .keys()
            .filter_map(|p| self.partitions.get(p).map(|state| (*p, state.last_seq)))
            .collect()
    }

    /// Records a committed batch's offsets.
    fn committed(&mut self, offsets: &BTreeMap<u32, u64>) {
        for (partition, last_seq) in offsets {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.last_seq = *last_seq;
                state.queued_seq = state.queued_seq.max(*last_seq);
            }
        }
    }
}

struct Applier {
    pools: Pools,
    client: async_nats::Client,
    names: Names,
    stream: String,
    resync: mpsc::UnboundedSender<Resync>,
    positions: Positions,
    cache: AccountCache,
}

async fn applier(
    pools: Pools,
    client: async_nats::Client,
    names: Names,
    stream: String,
    batch_max: usize,
    mut events: mpsc::Receiver<Event>,
    resync: mpsc::UnboundedSender<Resync>,
) {
    let mut applier = Applier {
        pools,
        client,
        names,
        stream,
        resync,
        positions: Positions::default(),
        cache: AccountCache::default(),
    };
    let mut batch: Vec<Item> = Vec::with_capacity(batch_max);
    while let Some(first) = events.recv().await {
        let mut next = Some(first);
        // Take what is already queued, without waiting: under load batches grow by themselves
        // while the previous transaction commits; when idle a command waits for nobody.
        while let Some(event) = next.take() {
            for partition in applier.positions.take(event, &mut batch) {
                applier.cache.forget_partition(partition);
            }
            if batch.len() < batch_max {
                next = events.try_recv().ok();
            }
        }
        let offsets = applier.positions.planned_offsets(&batch);
        if batch.is_empty() && offsets.is_empty() {
            continue;
        }
        let items = std::mem::take(&mut batch);
        applier.apply_with_retries(items, offsets).await;
    }
}

impl Applier {
    /// Applies `items` and moves the partitions to `offsets`, until committed, fenced, or
    /// dead-lettered.
    async fn apply_with_retries(&mut self, mut items: Vec<Item>, mut offsets: BTreeMap<u32, u64>) {
        let mut delay = RETRY_DELAY_MIN;
        let mut failures = 0;
        loop {
            let owned = &self.positions.partitions;
            offsets.retain(|p, _| owned.contains_key(p));
            items.retain(|item| owned.contains_key(&item.partition));
            if items.is_empty() && offsets.is_empty() {
                return;
            }
            let expected = self.positions.expected(&offsets);
            let started = Instant::now();
            match store::apply_batch(
                &self.pools,
                &self.stream,
                &items,
                &expected,
                &offsets,
                &mut self.cache,
            )
            .await
            {
                Ok(committed) => {
                    record_batch(&committed, items.len(), started);
                    self.positions.committed(&committed.offsets);
                    reply(&self.client, committed.answers).await;
                    return;
                }
                Err(StoreError::Fenced(stale)) => {
                    metrics::counter!("tally_worker_fenced_total").increment(1);
                    for partition in &stale {
                        self.positions.partitions.remove(partition);
                        self.cache.forget_partition(*partition);
                    }
                    let _ = self.resync.send(stale);
                }
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
                            let Some(state) = self.positions.partitions.get(&item.partition) else {
                                continue;
                            };
                            let unmoved = BTreeMap::from([(item.partition, state.last_seq)]);
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

    /// Parks a command that cannot be applied: records it as failed and lists it in
    /// `dead_letters` (so its requester, `GET /commands/{id}` and `tally dead-letters` learn so),
    /// then copies it to the dead-letter subject as a notice for whoever listens. Recording is
    /// retried until it commits or the partition is lost: the command is never skipped
    /// unrecorded.
    async fn dead_letter(&mut self, item: Item, error: &StoreError, attempts: u32) {
        let reason = error.to_string();
        let mut delay = RETRY_DELAY_MIN;
        loop {
            let Some(state) = self.positions.partitions.get(&item.partition) else {
                return;
            };
            let recorded = store::record_failure(
                &self.pools.full,
                &self.stream,
                &item,
                state.last_seq,
                &reason,
                attempts,
            );
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
                    metrics::counter!("tally_worker_fenced_total").increment(1);
                    for partition in &stale {
                        self.positions.partitions.remove(partition);
                        self.cache.forget_partition(*partition);
                    }
                    let _ = self.resync.send(stale);
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
async fn reply(
    client: &async_nats::Client,
    answers: Vec<(Option<ReplyTo>, tally_common::command::Outcome)>,
) {
    let mut by_inbox: HashMap<String, Vec<Reply>> = HashMap::new();
    for (reply_to, outcome) in answers {
        if let Some(ReplyTo { inbox, token }) = reply_to {
            by_inbox
                .entry(inbox)
                .or_default()
                .push(Reply { token, outcome });
        }
    }
    for (inbox, replies) in by_inbox {
        let payload = serde_json::to_vec(&replies).expect("replies serialize");
        if let Err(error) = client.publish(inbox, payload.into()).await {
            tracing::warn!(%error, "could not publish replies; the results stay readable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(partition: u32, stream_seq: u64) -> Item {
        Item {
            partition,
            stream_seq,
            envelope: None,
            reply_to: None,
        }
    }

    fn message(generation: u64, stream_seq: u64, partitions: &[u32]) -> Event {
        Event::Message {
            generation,
            stream_seq,
            items: partitions.iter().map(|p| item(*p, stream_seq)).collect(),
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
}
