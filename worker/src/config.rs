//! The worker's settings: its flags, each also read from an environment variable.

use tally_common::config::CommonConfig;

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
    /// `common` with every worker setting at its default.
    pub fn new(common: CommonConfig) -> Self {
        Self {
            common,
            batch_max: 256,
            apply_lanes: 1,
            metrics_addr: None,
        }
    }
}
