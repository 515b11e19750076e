//! Tally's worker: reads the partitions it owns, in order, and applies their commands to
//! Postgres in batches, one transaction per batch.
//!
//! Three kinds of task, each in a module of its own:
//! - the **manager** (`manager`) keeps the heartbeat, takes and gives up partitions
//!   ([`ownership`]), and (re)starts the reader whenever it takes a partition;
//! - the **reader** (`reader`) follows the command stream with one ordered consumer filtered on
//!   the subjects of the owned shards ([`tally_common::routing`]), from right after the lowest
//!   last applied sequence of the owned partitions (read from Postgres), decodes each message
//!   (a batch of commands of one or more partitions) and hands each apply lane (`lanes`) its
//!   share;
//! - the **applier** (`applier`, one per lane) keeps the commands of the partitions this worker
//!   owns (`positions`), applies what queued up in one transaction
//!   ([`store::Store::apply_batch`]), then answers each ingress that waits for some of them with
//!   one message.
//!
//! Beside them the **sweeper** (`sweeper`) expires the due lots and holds of users nobody
//! touches; the **relay** (`relay`) hands the events the batches record to the broker, one
//! delivery per subscribed endpoint, with [`event_rules`] telling what each app records; the
//! **deliverer** (`deliverer`) calls the apps' endpoints with those deliveries, on connections
//! and a pool of its own. [`store`] holds every statement, [`ledger`] the pure fold, `config`
//! the settings.
//!
//! Nothing is acknowledged to the broker: the applied position of each partition lives in
//! Postgres, advanced in the same transaction as the effects, so a crash at any point either
//! loses the whole batch (it is read again) or none of it.

mod applier;
mod charger;
mod config;
mod deliverer;
pub mod event_rules;
mod lanes;
pub mod ledger;
mod manager;
pub mod ownership;
mod positions;
mod reader;
mod relay;
pub mod store;
mod sweeper;

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use tally_common::partition::Names;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

pub use crate::config::WorkerConfig;
use crate::deliverer::Deliverer;
pub use crate::deliverer::{RetrySchedule, RETRY_SCHEDULE_DEFAULT};
use crate::lanes::Lanes;
use crate::manager::{Manager, Resync};
use crate::ownership::Membership;
use crate::store::{Pools, Store};

/// Longest wait for replies to reach the broker at shutdown (they are best effort: results
/// are durable).
const REPLY_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

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
    let lane_count = config.apply_lanes.max(1);
    let pools = Pools {
        full: pool.clone(),
        fast: tally_common::db::connect(
            &config.common.database_url,
            lane_count as u32,
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

    let rules = event_rules::start(pool.clone())
        .await
        .context("cannot load the apps' event rules")?;
    let relay = relay::start(pool.clone(), js.clone(), names.clone());
    let deliverer = Deliverer::start(&config, &names).await?;

    let worker_id = Uuid::now_v7();
    let stream_name = names.command_stream();
    tracing::info!(worker.id = %worker_id, stream = %stream_name, "worker started");

    let (resync_tx, resync_rx) = mpsc::unbounded_channel::<Resync>();
    let (lanes, lane_events) = Lanes::new(lane_count);
    let mut appliers = Vec::new();
    for (lane, events) in lane_events.into_iter().enumerate() {
        appliers.push(tokio::spawn(applier::run(
            Store::new(pools.clone(), stream_name.clone(), rules.clone()),
            client.clone(),
            names.clone(),
            applier::Batching {
                max: config.batch_max,
                linger: Duration::from_millis(config.apply_linger_ms),
            },
            events,
            resync_tx.clone(),
            relay.clone(),
        )));
        tracing::debug!(lane, "applier started");
    }
    drop(resync_tx);
    let charger = charger::Charger::new(pool.clone(), js.clone(), names.clone(), &config);
    let manager = Manager::new(
        Membership::new(worker_id, &stream_name, &config.common.database_url),
        pool.clone(),
        stream,
        names,
        config.common.partitions,
        lanes,
        client.clone(),
    );
    let sweeper = tokio::spawn(sweeper::sweep_forever(pool.clone(), rules, relay));
    let (stop_delivering, stop) = watch::channel(false);
    let charger = tokio::spawn(charger.run(stop.clone()));
    let deliverer = tokio::spawn(deliverer.run(stop));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_delivering.send(true);
    };
    let mut membership = manager.run(resync_rx, shutdown).await;
    // A sweep interrupted here rolls back; another worker (or the next start) redoes it.
    sweeper.abort();
    // The manager dropped every sender: the appliers finish what is queued, then return.
    for applier in appliers {
        applier.await.context("applier task failed")?;
    }
    membership.leave(&pool).await;
    // Attempts in flight end within their timeout and are recorded.
    deliverer.await.context("deliverer task failed")?;
    // A call in flight is abandoned with the task; its claim lapses and another worker asks
    // Stripe again, under the same idempotency key.
    charger.abort();
    // Replies are best effort (results are durable in Postgres): never wait long for a broker
    // that may already be gone.
    let _ = tokio::time::timeout(REPLY_FLUSH_TIMEOUT, client.flush()).await;
    tracing::info!(worker.id = %worker_id, "worker stopped");
    Ok(())
}
