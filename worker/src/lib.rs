//! Tally's worker: reads the partitions it owns, in order, and applies their commands to
//! Postgres in batches, one transaction per batch.
//!
//! Three kinds of task:
//! - the **manager** keeps the heartbeat, takes and gives up partitions ([`ownership`]), and
//!   starts one reader per owned partition;
//! - a **reader** per partition follows the partition's subject with an ordered consumer that
//!   starts right after the partition's last applied sequence (read from Postgres);
//! - the **applier** drains what the readers queued, applies it in one transaction
//!   ([`store::apply_batch`]), then publishes each command's answer to its requester.
//!
//! Nothing is acknowledged to the broker: the applied position of each partition lives in
//! Postgres, advanced in the same transaction as the effects, so a crash at any point either
//! loses the whole batch (it is read again) or none of it.

pub mod ledger;
pub mod ownership;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use futures::StreamExt;
use sqlx::PgPool;
use tally_common::command::{Envelope, HEADER_REPLY_TO};
use tally_common::config::CommonConfig;
use tally_common::partition::Names;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::ownership::{Membership, HEARTBEAT_INTERVAL};
use crate::store::{Item, StoreError};

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
            metrics_addr: None,
        }
    }
}

/// Longest wait between two retries of a batch that failed for a passing reason.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// How often a batch that keeps failing for a non-passing reason is tried before its commands
/// are tried one by one, and a single command before it is dead-lettered.
const ATTEMPTS_BEFORE_ISOLATING: u32 = 3;

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

/// Longest wait for replies to reach the broker (they are best effort: results are durable).
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// What readers and the manager tell the applier, in one ordered queue.
#[derive(Debug)]
enum Event {
    /// This worker now owns `partition`, applied up to `last_seq`.
    Acquired {
        partition: u32,
        generation: u64,
        last_seq: u64,
    },
    /// This worker no longer owns `partition`.
    Released { partition: u32 },
    /// A message read from `partition` under ownership `generation`.
    Message { generation: u64, item: Box<Item> },
}

/// What the applier tells the manager: these partitions were fenced and must be re-read.
type Resync = Vec<u32>;

/// Runs a worker until `shutdown` resolves, then finishes in-flight batches and leaves.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let names = Names::new(&config.common.namespace);
    let pool =
        tally_common::db::connect(&config.common.database_url, config.common.db_pool_size).await?;
    tally_common::db::migrate(&pool).await?;
    let client = tally_common::broker::connect(&config.common.nats_url, "tally-worker").await?;
    let js = jetstream::new(client.clone());
    let stream = tally_common::broker::provision(&js, &names, config.common.partitions).await?;

    let worker_id = Uuid::now_v7();
    let stream_name = names.command_stream();
    tracing::info!(worker.id = %worker_id, stream = %stream_name, "worker started");

    let (events_tx, events_rx) = mpsc::channel::<Event>(config.batch_max * 4);
    let (resync_tx, resync_rx) = mpsc::unbounded_channel::<Resync>();
    let applier = tokio::spawn(applier(
        pool.clone(),
        client.clone(),
        names.clone(),
        stream_name.clone(),
        config.batch_max,
        events_rx,
        resync_tx,
    ));
    let manager = Manager {
        membership: Membership::new(worker_id, &stream_name, &config.common.database_url),
        pool: pool.clone(),
        stream,
        names,
        stream_name,
        partitions: config.common.partitions,
        events: events_tx,
        owned: BTreeMap::new(),
        generation: 0,
    };
    let sweeper = tokio::spawn(sweep_forever(pool.clone()));
    let mut membership = manager.run(resync_rx, shutdown).await;
    // A sweep interrupted here rolls back; another worker (or the next start) redoes it.
    sweeper.abort();
    // The manager dropped every sender: the applier finishes what is queued, then returns.
    applier.await.context("applier task failed")?;
    membership.leave(&pool).await;
    // Replies are best effort (results are durable in Postgres): never wait long for a broker
    // that may already be gone.
    let _ = tokio::time::timeout(REPLY_FLUSH_TIMEOUT, client.flush()).await;
    tracing::info!(worker.id = %worker_id, "worker stopped");
    Ok(())
}

struct Owned {
    reader: JoinHandle<()>,
}

struct Manager {
    membership: Membership,
    pool: PgPool,
    stream: jetstream::stream::Stream,
    names: Names,
    stream_name: String,
    partitions: u32,
    events: mpsc::Sender<Event>,
    owned: BTreeMap<u32, Owned>,
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
            }
        }
        // Stop reading; the applier finishes what is queued once every sender is gone.
        for (_, owned) in std::mem::take(&mut self.owned) {
            owned.reader.abort();
            let _ = owned.reader.await;
        }
        self.membership
    }

    async fn rebalance(&mut self) -> Result<(), sqlx::Error> {
        let live = self.membership.heartbeat(&self.pool).await?;
        if !self.owned.is_empty() && !self.membership.locks_alive().await {
            tracing::warn!("lost the lock connection; giving up every partition");
            let owned: Vec<u32> = self.owned.keys().copied().collect();
            for partition in owned {
                self.stop_reader(partition).await;
            }
        }
        let wanted = ownership::assigned(self.membership.worker_id, &live, self.partitions);
        let finished: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, owned)| owned.reader.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in finished {
            tracing::warn!(partition, "reader stopped; reading the partition again");
            self.release(partition).await;
        }
        let surplus: Vec<u32> = self
            .owned
            .keys()
            .filter(|p| !wanted.contains(p))
            .copied()
            .collect();
        for partition in surplus {
            self.release(partition).await;
        }
        for partition in wanted {
            if self.owned.contains_key(&partition) {
                continue;
            }
            if self.membership.try_lock(partition).await? {
                if let Err(error) = self.acquire(partition).await {
                    tracing::warn!(partition, %error, "could not start reading partition");
                    let _ = self.membership.unlock(partition).await;
                }
            }
        }
        Ok(())
    }

    async fn acquire(&mut self, partition: u32) -> anyhow::Result<()> {
        let last_seq = store::partition_offset(&self.pool, &self.stream_name, partition).await?;
        self.generation += 1;
        let generation = self.generation;
        self.events
            .send(Event::Acquired {
                partition,
                generation,
                last_seq,
            })
            .await
            .context("applier stopped")?;
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: self.names.command_subject(partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: last_seq + 1,
                },
                ..Default::default()
            })
            .await
            .context("cannot create ordered consumer")?;
        let messages = consumer.messages().await.context("cannot read partition")?;
        let reader = tokio::spawn(read_partition(
            partition,
            generation,
            messages,
            self.events.clone(),
        ));
        self.owned.insert(partition, Owned { reader });
        tracing::debug!(partition, last_seq, "partition acquired");
        Ok(())
    }

    async fn stop_reader(&mut self, partition: u32) {
        if let Some(owned) = self.owned.remove(&partition) {
            owned.reader.abort();
            let _ = owned.reader.await;
            let _ = self.events.send(Event::Released { partition }).await;
        }
    }

    async fn release(&mut self, partition: u32) {
        self.stop_reader(partition).await;
        if let Err(error) = self.membership.unlock(partition).await {
            tracing::warn!(partition, %error, "could not unlock partition");
        }
        tracing::debug!(partition, "partition released");
    }
}

async fn read_partition(
    partition: u32,
    generation: u64,
    mut messages: jetstream::consumer::pull::Ordered,
    events: mpsc::Sender<Event>,
) {
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(partition, %error, "partition read failed");
                return;
            }
        };
        let stream_seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::warn!(partition, %error, "message without stream sequence");
                return;
            }
        };
        let reply_to = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(HEADER_REPLY_TO))
            .map(|value| value.as_str().to_string());
        let envelope = match serde_json::from_slice::<Envelope>(&message.payload) {
            Ok(envelope) => Some(envelope),
            Err(error) => {
                metrics::counter!("tally_worker_poison_messages_total").increment(1);
                tracing::error!(partition, stream.seq = stream_seq, %error, "undecodable command skipped");
                None
            }
        };
        let item = Box::new(Item {
            partition,
            stream_seq,
            envelope,
            reply_to,
        });
        if events
            .send(Event::Message { generation, item })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Ownership as the applier sees it.
struct Partition {
    generation: u64,
    last_seq: u64,
}

async fn applier(
    pool: PgPool,
    client: async_nats::Client,
    names: Names,
    stream: String,
    batch_max: usize,
    mut events: mpsc::Receiver<Event>,
    resync: mpsc::UnboundedSender<Resync>,
) {
    let mut partitions: HashMap<u32, Partition> = HashMap::new();
    let mut batch: Vec<Item> = Vec::with_capacity(batch_max);
    loop {
        let Some(first) = events.recv().await else {
            break;
        };
        let mut next = Some(first);
        // Take what is already queued, without waiting: under load batches grow by themselves
        // while the previous transaction commits; when idle a command waits for nobody.
        while let Some(event) = next.take() {
            match event {
                Event::Acquired {
                    partition,
                    generation,
                    last_seq,
                } => {
                    partitions.insert(
                        partition,
                        Partition {
                            generation,
                            last_seq,
                        },
                    );
                }
                Event::Released { partition } => {
                    partitions.remove(&partition);
                    batch.retain(|item| item.partition != partition);
                }
                Event::Message { generation, item } => {
                    let current = partitions.get(&item.partition);
                    if current
                        .is_some_and(|p| p.generation == generation && item.stream_seq > p.last_seq)
                    {
                        batch.push(*item);
                    }
                }
            }
            if batch.len() < batch_max {
                next = events.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let items = std::mem::take(&mut batch);
        apply_with_retries(
            &pool,
            &client,
            &names,
            &stream,
            items,
            &mut partitions,
            &resync,
        )
        .await;
    }
}

/// Applies `items` until they are committed, fenced, or dead-lettered.
async fn apply_with_retries(
    pool: &PgPool,
    client: &async_nats::Client,
    names: &Names,
    stream: &str,
    mut items: Vec<Item>,
    partitions: &mut HashMap<u32, Partition>,
    resync: &mpsc::UnboundedSender<Resync>,
) {
    let mut delay = Duration::from_millis(20);
    let mut failures = 0;
    while !items.is_empty() {
        let expected: BTreeMap<u32, u64> =
            partitions.iter().map(|(p, s)| (*p, s.last_seq)).collect();
        let started = Instant::now();
        match store::apply_batch(pool, stream, &items, &expected).await {
            Ok(committed) => {
                record_batch(&committed, items.len(), started);
                for (partition, last_seq) in &committed.offsets {
                    if let Some(state) = partitions.get_mut(partition) {
                        state.last_seq = *last_seq;
                    }
                }
                reply(client, committed.answers).await;
                return;
            }
            Err(StoreError::Fenced(stale)) => {
                metrics::counter!("tally_worker_fenced_total").increment(1);
                for partition in &stale {
                    partitions.remove(partition);
                }
                items.retain(|item| !stale.contains(&item.partition));
                let _ = resync.send(stale);
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
                    // Find the command at fault: apply one by one, in order.
                    for item in std::mem::take(&mut items) {
                        Box::pin(apply_with_retries(
                            pool,
                            client,
                            names,
                            stream,
                            vec![item],
                            partitions,
                            resync,
                        ))
                        .await;
                    }
                } else {
                    let item = items.pop().expect("one item");
                    dead_letter(pool, client, names, stream, item, partitions, &error).await;
                }
            }
        }
    }
}

/// Parks a command that cannot be applied: records it as failed (so its requester and
/// `GET /commands/{id}` learn so), advances the partition past it, and copies it to the
/// dead-letter subject for an operator.
async fn dead_letter(
    pool: &PgPool,
    client: &async_nats::Client,
    names: &Names,
    stream: &str,
    item: Item,
    partitions: &mut HashMap<u32, Partition>,
    error: &StoreError,
) {
    metrics::counter!("tally_worker_dead_letters_total").increment(1);
    tracing::error!(partition = item.partition, stream.seq = item.stream_seq, %error, "command dead-lettered");
    let Some(state) = partitions.get_mut(&item.partition) else {
        return;
    };
    let expected = state.last_seq;
    let payload = serde_json::json!({ "partition": item.partition, "stream_seq": item.stream_seq,
                                      "error": error.to_string(), "envelope": item.envelope });
    let _ = client
        .publish(names.dead_letter_subject(), payload.to_string().into())
        .await;
    match store::record_failure(pool, stream, &item, expected).await {
        Ok(answer) => {
            state.last_seq = item.stream_seq;
            if let Some(answer) = answer {
                reply(client, vec![(item.reply_to.clone(), answer)]).await;
            }
        }
        Err(error) => tracing::error!(%error, "could not record dead-lettered command"),
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

async fn reply(
    client: &async_nats::Client,
    answers: Vec<(Option<String>, tally_common::command::Outcome)>,
) {
    for (reply_to, outcome) in answers {
        let Some(reply_to) = reply_to else { continue };
        let payload = serde_json::to_vec(&outcome).expect("outcomes serialize");
        if let Err(error) = client.publish(reply_to, payload.into()).await {
            tracing::warn!(%error, "could not publish a reply; the result stays readable");
        }
    }
    let _ = tokio::time::timeout(REPLY_FLUSH_TIMEOUT, client.flush()).await;
}
