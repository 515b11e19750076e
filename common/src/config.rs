//! Settings every binary reads: each is a flag and an environment variable of the same name.

use std::time::Duration;

/// Where Tally's state lives. Flattened into each binary's own configuration.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonConfig {
    /// Postgres connection URL.
    #[arg(
        long,
        visible_alias = "tally-database-url",
        env = "TALLY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/tally"
    )]
    pub database_url: String,

    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        visible_alias = "tally-nats-url",
        env = "TALLY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,

    /// Prefix of every stream, subject and consumer, so several deployments share one NATS.
    #[arg(
        long,
        visible_alias = "tally-namespace",
        env = "TALLY_NAMESPACE",
        default_value = "tally"
    )]
    pub namespace: String,

    /// Number of partitions of the command stream; fixed once the stream exists.
    #[arg(
        long,
        visible_alias = "tally-partitions",
        env = "TALLY_PARTITIONS",
        default_value_t = crate::limits::PARTITIONS_DEFAULT
    )]
    pub partitions: u32,

    /// Log format: `text` or `json` (level from RUST_LOG, default info).
    #[arg(
        long,
        visible_alias = "tally-log-format",
        env = "TALLY_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: crate::telemetry::LogFormat,

    /// Largest number of database connections this process opens.
    #[arg(
        long,
        visible_alias = "tally-db-pool-size",
        env = "TALLY_DB_POOL_SIZE",
        default_value_t = 16
    )]
    pub db_pool_size: u32,

    /// Replicas of the command stream (1, or 3 on a NATS cluster so that losing a node costs a
    /// leader election, not the service). `tally migrate` moves an existing stream to it.
    #[arg(
        long,
        visible_alias = "tally-stream-replicas",
        env = "TALLY_STREAM_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=5)
    )]
    pub stream_replicas: u16,

    /// Outbound event endpoints may use `http` and loopback, private or link-local addresses
    /// (development, receivers inside the deployment's network). Off: `https` to public
    /// addresses only.
    #[arg(
        long,
        visible_alias = "tally-webhook-allow-private",
        env = "TALLY_WEBHOOK_ALLOW_PRIVATE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub webhook_allow_private: bool,

    /// Stripe's API, where auto top-up charges are made.
    #[arg(
        long,
        visible_alias = "tally-stripe-api-base",
        env = "TALLY_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,

    /// Encrypts the apps' Stripe secret keys at rest (AES-256-GCM under a key derived from it).
    /// Every process that sets or uses a key needs the same value.
    #[arg(
        long,
        visible_alias = "tally-secret-key",
        env = "TALLY_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<crate::plans::SecretKey>,
}

impl CommonConfig {
    /// Defaults for tests and embedding, pointed at the given services.
    pub fn new(database_url: &str, nats_url: &str, namespace: &str) -> Self {
        Self {
            database_url: database_url.to_string(),
            nats_url: nats_url.to_string(),
            namespace: namespace.to_string(),
            partitions: crate::limits::PARTITIONS_DEFAULT,
            log_format: crate::telemetry::LogFormat::Text,
            db_pool_size: 16,
            stream_replicas: 1,
            webhook_allow_private: false,
            stripe_api_base: "https://api.stripe.com".to_string(),
            secret_key: None,
        }
    }
}

/// How long a dependency may take to answer at start before the process gives up.
pub const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
