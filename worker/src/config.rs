//! The worker's settings: its flags, each also read from an environment variable.

use tally_common::config::CommonConfig;

use crate::deliverer::{RetrySchedule, RETRY_SCHEDULE_DEFAULT};

/// Worker settings.
#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "tally-worker",
    version,
    about = "Applies Tally's credit commands to Postgres and delivers outbound events"
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

    /// How long, in milliseconds, a busy apply lane lets a batch of fire-and-forget commands
    /// wait for more before it applies it: fewer, larger transactions cost the worker and
    /// Postgres less per command, at the price of this much more apply lag. A command someone
    /// waits on (a synchronous request) ends the wait; a lane that is not busy never waits.
    /// 0: never wait.
    #[arg(
        long,
        visible_alias = "tally-apply-linger-ms",
        env = "TALLY_APPLY_LINGER_MS",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(0..=1000)
    )]
    pub apply_linger_ms: u64,

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

    /// Delays between the attempts of an outbound event delivery, comma-separated, each a
    /// whole number of seconds, minutes or hours (`30s`, `5m`, `2h`): a failed attempt is
    /// retried after the next delay, and a delivery that fails once more than there are
    /// delays has failed. In all at most 6 days.
    #[arg(
        long,
        visible_alias = "tally-webhook-retry-schedule",
        env = "TALLY_WEBHOOK_RETRY_SCHEDULE",
        default_value = RETRY_SCHEDULE_DEFAULT
    )]
    pub webhook_retry_schedule: RetrySchedule,

    /// Most outbound event deliveries this worker attempts at once.
    #[arg(
        long,
        visible_alias = "tally-delivery-concurrency",
        env = "TALLY_DELIVERY_CONCURRENCY",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub delivery_concurrency: u32,

    /// Most deliveries this worker attempts at once to any one endpoint, so that a slow
    /// endpoint never holds every delivery slot.
    #[arg(
        long,
        visible_alias = "tally-delivery-endpoint-concurrency",
        env = "TALLY_DELIVERY_ENDPOINT_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..=1024)
    )]
    pub delivery_endpoint_concurrency: u32,

    /// Seconds after which an auto top-up charge that got no final answer from Stripe (a
    /// stopped worker, Stripe unreachable) is asked again, with the same idempotency key.
    #[arg(
        long,
        visible_alias = "tally-auto-topup-retry-secs",
        env = "TALLY_AUTO_TOPUP_RETRY_SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u32).range(1..=3600)
    )]
    pub auto_topup_retry_secs: u32,
}

impl WorkerConfig {
    /// `common` with every worker setting at its default.
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            batch_max: 256,
            apply_linger_ms: 20,
            apply_lanes: 1,
            metrics_addr: None,
            webhook_retry_schedule: RetrySchedule::default(),
            delivery_concurrency: 256,
            delivery_endpoint_concurrency: 16,
            auto_topup_retry_secs: 30,
        }
    }
}
