//! The deliverer: calls the apps' endpoints with their events.
//!
//! The relay leaves one message per delivery (one event for one endpoint) on the delivery
//! stream, a work queue. Every worker's deliverer pulls from one durable consumer they share,
//! so each message goes to one worker at a time; an attempt (`attempt`) loads the delivery,
//! signs the event's envelope and POSTs it (`call`), records how it went (`records`), then
//! acks the message, or naks it with the delay of the retry schedule (`schedule`) so the
//! broker hands it out again when the next attempt is due. The delivery row, not the broker,
//! counts the attempts.
//!
//! Isolation: a worker makes at most `TALLY_DELIVERY_CONCURRENCY` attempts at once, at most
//! `TALLY_DELIVERY_ENDPOINT_CONCURRENCY` of them to one endpoint (`slots`); a delivery whose
//! endpoint is saturated is put back for a moment without an attempt. The deliverer has its
//! own NATS connection and its own small Postgres pool, and holds no connection during a call,
//! so no backlog of deliveries takes anything from the ledger's tasks.

mod attempt;
mod call;
mod records;
mod schedule;
mod signature;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use tally_common::partition::Names;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use self::schedule::{RetrySchedule, RETRY_SCHEDULE_DEFAULT};
use crate::config::WorkerConfig;
use tally_common::config::STARTUP_CONNECT_TIMEOUT;

/// How long the broker waits for an attempt's ack before handing its message to another
/// worker: longer than an attempt may take, with room to record it.
const ACK_WAIT: Duration = Duration::from_secs(call::ATTEMPT_TIMEOUT.as_secs() + 30);

/// How long one pull request waits for messages; also how soon the deliverer notices a stop
/// while nothing arrives.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Postgres connections of the deliverer, apart from the ledger's pool: an attempt holds one
/// only to load its delivery and to record it, never during the call.
const POOL_SIZE: u32 = 4;

/// Waits after the broker refused a pull, doubling up to the maximum.
const PULL_RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
const PULL_RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// What every attempt shares.
struct Shared {
    pool: sqlx::PgPool,
    records: records::Records,
    caller: call::Caller,
    slots: slots::EndpointSlots,
    schedule: RetrySchedule,
}

/// A started deliverer: its consumer exists; [`Deliverer::run`] delivers.
pub(crate) struct Deliverer {
    js: jetstream::Context,
    names: Names,
    consumer: PullConsumer,
    concurrency: usize,
    shared: Arc<Shared>,
}

/// The shared durable consumer of the delivery stream. Creating it again with the same
/// settings changes nothing, so any number of workers may do it at once.
async fn consumer(js: &jetstream::Context, names: &Names) -> anyhow::Result<PullConsumer> {
    let stream = js
        .get_stream(names.delivery_stream())
        .await
        .map_err(|error| anyhow::anyhow!("cannot read the delivery stream: {error}"))?;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(names.delivery_consumer()),
            description: Some("Tally deliverers: every worker pulls from it".to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Never dropped by the broker: the delivery row decides when to give up.
            max_deliver: -1,
            // A delivery waiting for its next attempt (up to hours) is unacknowledged all the
            // while; any cap would let a failing endpoint's backlog stop every delivery.
            max_ack_pending: -1,
            ..Default::default()
        })
        .await
        .map_err(|error| anyhow::anyhow!("cannot create the delivery consumer: {error}"))
}

impl Deliverer {
    /// Opens the deliverer's connections and its consumer; fails when either service is
    /// unreachable.
    pub async fn start(config: &WorkerConfig, names: &Names) -> anyhow::Result<Self> {
        let pool = tally_common::db::connect(
            &config.common.database_url,
            POOL_SIZE,
            tally_common::db::Planning::Batches,
        )
        .await?;
        let client =
            tally_common::broker::connect(&config.common.nats_url, "tally-worker-deliverer")
                .await?;
        let js = jetstream::new(client);
        // A cluster that has just elected its leaders may time out the first requests.
        let started = std::time::Instant::now();
        let consumer = loop {
            match consumer(&js, names).await {
                Ok(consumer) => break consumer,
                Err(error) if started.elapsed() < STARTUP_CONNECT_TIMEOUT => {
                    tracing::debug!(error = %format!("{error:#}"), "creating the delivery consumer; retrying");
                    tokio::time::sleep(PULL_RETRY_DELAY_MIN).await;
                }
                Err(error) => return Err(error),
            }
        };
        let caller = call::Caller::new(config.common.webhook_allow_private)
            .context("cannot build the delivery HTTP client")?;
        Ok(Self {
            js,
            names: names.clone(),
            consumer,
            concurrency: config.delivery_concurrency as usize,
            shared: Arc::new(Shared {
                records: records::Records::start(pool.clone()),
                pool,
                caller,
                slots: slots::EndpointSlots::new(config.delivery_endpoint_concurrency as usize),
                schedule: config.webhook_retry_schedule.clone(),
            }),
        })
    }

    /// Delivers until `stop` turns true (or its sender goes), then finishes the attempts in
    /// flight and puts back what arrives meanwhile.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let free = Arc::new(Semaphore::new(self.concurrency));
        let mut attempts = JoinSet::new();
        let mut retry_delay = PULL_RETRY_DELAY_MIN;
        'pulling: loop {
            while attempts.try_join_next().is_some() {}
            // Ask for no more than there is room for: nothing waits in a buffer while its ack
            // time runs.
            let room = free.available_permits();
            if room == 0 {
                tokio::select! {
                    permit = free.acquire() => drop(permit),
                    _ = stop.wait_for(|stopped| *stopped) => break 'pulling,
                }
                continue;
            }
            let request = self
                .consumer
                .batch()
                .max_messages(room)
                .expires(PULL_WAIT)
                .messages();
            let batch = tokio::select! {
                batch = request => batch,
                _ = stop.wait_for(|stopped| *stopped) => break 'pulling,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "cannot pull deliveries; retrying");
                    self.recover(&mut retry_delay, &mut stop).await;
                    continue;
                }
            };
            let mut stopping = false;
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    _ = stop.wait_for(|stopped| *stopped), if !stopping => {
                        stopping = true;
                        continue;
                    }
                };
                match next {
                    None => break,
                    // Stopping: what the pull still brings goes back at once, to another worker.
                    Some(Ok(message)) if stopping => {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                    }
                    Some(Ok(message)) => {
                        retry_delay = PULL_RETRY_DELAY_MIN;
                        let permit = free
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        let shared = self.shared.clone();
                        attempts.spawn(async move {
                            attempt::handle(&shared, message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "pulling deliveries failed; retrying");
                        self.recover(&mut retry_delay, &mut stop).await;
                        break;
                    }
                }
            }
            if stopping {
                break 'pulling;
            }
        }
        // Every attempt ends within its timeout, then records and acks.
        while attempts.join_next().await.is_some() {}
        tracing::debug!("deliverer stopped");
    }

    /// After a failed pull: waits (doubling the wait each time, unless stopped), then creates
    /// the consumer again in case it was lost.
    async fn recover(&mut self, delay: &mut Duration, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        *delay = (*delay * 2).min(PULL_RETRY_DELAY_MAX);
        match consumer(&self.js, &self.names).await {
            Ok(consumer) => self.consumer = consumer,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "delivery consumer unavailable")
            }
        }
    }
}
