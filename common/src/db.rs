//! Postgres connection and schema migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::STARTUP_CONNECT_TIMEOUT;

/// How long a service's query waits for a connection before it fails (and its request is
/// refused with `503`): shorter than the sync timeout, so an unreachable database is reported
/// while the client still waits. The pool keeps trying to reconnect meanwhile.
pub const SERVICE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The schema, embedded at build time. Migrations are append-only: never edit an applied one.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How a pool's sessions plan their queries.
///
/// The services reach every row by key, and their plans must use the indexes whatever the
/// tables' statistics say: a deployment starts with empty tables, statistics may be stale or
/// absent (autovacuum off), and a plan made while a table was tiny — then cached as a generic
/// plan for the life of the connection — would otherwise keep scanning it as it grows, making
/// every command cost more as the history grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planning {
    /// Postgres's defaults: for the CLI's reports and checks, which read whole tables.
    Default,
    /// Sequential scans off: a lookup by key is an index scan from the first execution on,
    /// and its generic plan (no planning per execution) stays right at any size. The ingress.
    Lookups,
    /// Sequential scans off, and every execution planned for its own arguments against the
    /// tables' current sizes (`force_custom_plan`): the batch statements join arrays to
    /// tables, and only a plan that knows the arrays' length picks per-key index probes at
    /// every size (a generic plan guesses, and may read a whole index per batch). Planning
    /// costs a fraction of a millisecond per statement, shared by the whole batch. The worker.
    Batches,
}

/// Opens a pool; fails with one clear line when the database cannot be reached.
pub async fn connect(
    database_url: &str,
    pool_size: u32,
    planning: Planning,
) -> anyhow::Result<PgPool> {
    let mut options: PgConnectOptions = database_url
        .parse::<PgConnectOptions>()
        .context("TALLY_DATABASE_URL is not a valid Postgres URL")?
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
        .log_statements(tracing::log::LevelFilter::Trace);
    match planning {
        Planning::Default => {}
        Planning::Lookups => options = options.options([("enable_seqscan", "off")]),
        Planning::Batches => {
            options = options.options([
                ("enable_seqscan", "off"),
                ("plan_cache_mode", "force_custom_plan"),
            ])
        }
    }
    let acquire_timeout = match planning {
        Planning::Default => STARTUP_CONNECT_TIMEOUT,
        Planning::Lookups | Planning::Batches => SERVICE_ACQUIRE_TIMEOUT,
    };
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        // No ping before every checkout: it doubled the round trips of every query. A
        // connection that broke while idle fails its next query, which the caller's error
        // handling already covers (sqlx then discards it).
        .test_before_acquire(false)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options);
    // At start the database gets the whole start-up timeout to answer.
    let started = std::time::Instant::now();
    loop {
        match pool.acquire().await {
            Ok(_) => return Ok(pool),
            Err(error) if started.elapsed() >= STARTUP_CONNECT_TIMEOUT => {
                return Err(error)
                    .with_context(|| format!("cannot reach Postgres at {}", redact(database_url)))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Applies pending migrations. Safe when many processes start at once (sqlx takes an advisory
/// lock around the run).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("database migration failed")
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}
