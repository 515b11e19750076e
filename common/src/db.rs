//! Postgres connection and schema migrations.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::STARTUP_CONNECT_TIMEOUT;

/// The schema, embedded at build time. Migrations are append-only: never edit an applied one.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool; fails with one clear line when the database cannot be reached.
pub async fn connect(database_url: &str, pool_size: u32) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url
        .parse::<PgConnectOptions>()
        .context("TALLY_DATABASE_URL is not a valid Postgres URL")?
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1))
        .log_statements(tracing::log::LevelFilter::Trace);
    PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(STARTUP_CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot reach Postgres at {}", redact(database_url)))
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
