//! The manager: keeps this worker's heartbeat, takes and gives up partitions ([`ownership`]),
//! and (re)starts the reader whenever it takes a partition or the reader stops.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy};
use sqlx::PgPool;
use tally_common::partition::Names;
use tally_common::routing;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::lanes::Lanes;
use crate::ownership::{Membership, HEARTBEAT_INTERVAL};
use crate::reader::{read_stream, Watch};
use crate::store;

/// What an applier tells the manager: these partitions were fenced and must be re-read.
pub(crate) type Resync = Vec<u32>;

/// What this worker owns and the reader it runs for it.
pub(crate) struct Manager {
    /// This worker's heartbeat and partition locks.
    membership: Membership,
    /// For heartbeats and the offsets a reader starts from.
    pool: PgPool,
    /// The command stream, which each reader follows with a consumer of its own.
    stream: jetstream::stream::Stream,
    names: Names,
    /// The command stream's name, under which the offsets are kept.
    stream_name: String,
    /// How many partitions there are in all.
    partitions: u32,
    /// Where acquired and released partitions, and what the reader reads, are told.
    lanes: Lanes,
    /// The partitions this worker holds the lock of and has told the lanes about.
    owned: BTreeSet<u32>,
    reader: Option<JoinHandle<()>>,
    /// Signalled by a reader that stopped, so the manager reads again at once.
    reader_stopped: Arc<Notify>,
    /// The broker connection, which a reader watches for reconnects.
    client: async_nats::Client,
    /// Counts reader starts: the appliers drop messages read by an earlier reader.
    generation: u64,
}

impl Manager {
    pub(crate) fn new(
        membership: Membership,
        pool: PgPool,
        stream: jetstream::stream::Stream,
        names: Names,
        partitions: u32,
        lanes: Lanes,
        client: async_nats::Client,
    ) -> Self {
        Self {
            membership,
            pool,
            stream,
            stream_name: names.command_stream(),
            names,
            partitions,
            lanes,
            owned: BTreeSet::new(),
            reader: None,
            reader_stopped: Arc::new(Notify::new()),
            client,
            generation: 0,
        }
    }

    /// Manages ownership until `shutdown` resolves, then stops the reader and hands back the
    /// membership, for the caller to leave once the appliers are done.
    pub(crate) async fn run(
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
        let live = self
            .membership
            .heartbeat(&self.pool, routing::shard_count(self.partitions))
            .await?;
        if !self.owned.is_empty() && !self.membership.locks_alive().await {
            tracing::warn!("lost the lock connection; giving up every partition");
            self.stop_reader().await;
            for partition in std::mem::take(&mut self.owned) {
                self.lanes.released(partition).await;
            }
        }
        let wanted = routing::assigned(self.membership.worker_id, &live, self.partitions);
        let surplus: Vec<u32> = self.owned.difference(&wanted).copied().collect();
        let released = !surplus.is_empty();
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
        // A release restarts the reader too, so that its filter stops taking the shards given up.
        let restart = !acquired.is_empty() || released || reader_stopped;
        if self.owned.is_empty() && acquired.is_empty() {
            self.stop_reader().await;
        } else if restart {
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
        let filters = self.filters();
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subjects: filters.clone(),
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
                names: self.names.clone(),
                filters,
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

    /// The subjects the reader takes: the routed subjects marking a shard of an owned partition,
    /// and the three-token subjects every worker reads (earlier ingresses' batches, single
    /// republished commands). Owning every shard, simply every command subject.
    fn filters(&self) -> Vec<String> {
        let shards = routing::shard_count(self.partitions);
        let owned: BTreeSet<u32> = self
            .owned
            .iter()
            .map(|partition| routing::shard_of(*partition, shards))
            .collect();
        if owned.len() == shards as usize {
            return vec![self.names.command_all_wildcard()];
        }
        std::iter::once(self.names.command_subjects_wildcard())
            .chain(
                owned
                    .into_iter()
                    .map(|shard| self.names.command_shard_filter(shard, shards)),
            )
            .collect()
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
