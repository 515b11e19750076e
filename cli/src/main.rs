//! `tally`: the admin CLI. Every command prints one JSON object on stdout.

mod dead_letters;
mod rate_limit;
mod verify;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use sqlx::PgPool;
use tally_common::config::CommonConfig;
use tally_common::partition::Names;
use tally_common::webhook::Provider;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(name = "tally", version, about = "Administer a Tally deployment")]
struct Cli {
    #[command(flatten)]
    common: CommonConfig,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Apply database migrations and provision NATS; idempotent.
    Migrate,
    /// Manage apps (tenants).
    #[command(subcommand)]
    App(AppCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check every ledger invariant; exit 1 with a report if any is violated.
    Verify,
    /// See and replay commands that workers set aside after their bounded retries.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
}

#[derive(Subcommand, Debug)]
enum DeadLettersCommand {
    /// List dead letters, oldest first (a table; JSON with --json).
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<Uuid>,
        /// Only those in this state: parked, retrying or resolved.
        #[arg(long)]
        state: Option<String>,
        /// Most rows printed.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replay dead-lettered commands (each applies once); prints {"count", "retried"}.
    Retry {
        /// Command ids to replay.
        command_ids: Vec<Uuid>,
        /// Replay every parked dead letter (of --app, if given).
        #[arg(long)]
        all: bool,
        /// Only this app's.
        #[arg(long)]
        app: Option<Uuid>,
    },
}

#[derive(Subcommand, Debug)]
enum AppCommand {
    /// Create an app and its first API key.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List apps.
    List,
    /// Add a payment webhook signing secret (the two newest per provider are accepted).
    SetWebhookSecret {
        #[arg(long)]
        app: Uuid,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        secret: String,
    },
    /// Set one app's API rate limit (requests/s and burst), or make it unlimited, or go back to
    /// the ingresses' default; effective within 2 s.
    SetRateLimit(rate_limit::SetRateLimit),
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create another API key for an app.
    Create {
        #[arg(long)]
        app: Uuid,
    },
    /// Revoke a key, given the key itself or its id; it stops working within 5 s.
    Revoke {
        #[arg(long)]
        key: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok((output, ok)) => {
            match output {
                // Text meant for a terminal (`dead-letters list` without --json).
                serde_json::Value::String(text) => println!("{text}"),
                output => println!("{output}"),
            }
            if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("tally: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<(serde_json::Value, bool)> {
    let pool = tally_common::db::connect(
        &cli.common.database_url,
        2,
        tally_common::db::Planning::Default,
    )
    .await?;
    if !matches!(cli.command, Top::Migrate) {
        tally_common::db::migrate(&pool).await?;
    }
    match cli.command {
        Top::Migrate => {
            tally_common::db::migrate(&pool).await?;
            let client = tally_common::broker::connect(&cli.common.nats_url, "tally-cli").await?;
            let names = Names::new(&cli.common.namespace);
            let js = async_nats_context(client);
            tally_common::broker::provision(
                &js,
                &names,
                cli.common.partitions,
                cli.common.stream_replicas,
                tally_common::broker::Replicas::Apply,
            )
            .await?;
            Ok((json!({ "ok": true }), true))
        }
        Top::App(AppCommand::Create { name }) => {
            if name.is_empty() || name.len() > 200 {
                bail!("--name must be 1 to 200 characters");
            }
            let app_id = Uuid::now_v7();
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO apps (id, name) VALUES ($1, $2)")
                .bind(app_id)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            let api_key = tally_common::apikey::insert(&mut *tx, app_id).await?;
            tx.commit().await?;
            Ok((
                json!({ "app_id": app_id, "name": name, "api_key": api_key }),
                true,
            ))
        }
        Top::App(AppCommand::List) => {
            let rows: Vec<(Uuid, String, chrono::DateTime<chrono::Utc>)> =
                sqlx::query_as("SELECT id, name, created_at FROM apps ORDER BY created_at, id")
                    .fetch_all(&pool)
                    .await?;
            let apps: Vec<_> = rows
                .into_iter()
                .map(|(id, name, created_at)| {
                    json!({ "app_id": id, "name": name,
                            "created_at": created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true) })
                })
                .collect();
            Ok((json!({ "apps": apps }), true))
        }
        Top::App(AppCommand::SetWebhookSecret {
            app,
            provider,
            secret,
        }) => {
            let provider =
                Provider::parse(&provider).context("--provider must be stripe or polar")?;
            if secret.trim().is_empty() {
                bail!("--secret must not be empty");
            }
            ensure_app(&pool, app).await?;
            sqlx::query("INSERT INTO webhook_secrets (id, app_id, provider, secret) VALUES ($1, $2, $3, $4)")
                .bind(Uuid::now_v7())
                .bind(app)
                .bind(provider.as_str())
                .bind(secret.trim())
                .execute(&pool)
                .await?;
            Ok((json!({ "ok": true }), true))
        }
        Top::App(AppCommand::SetRateLimit(args)) => Ok((rate_limit::set(&pool, args).await?, true)),
        Top::Key(KeyCommand::Create { app }) => {
            ensure_app(&pool, app).await?;
            let api_key = tally_common::apikey::insert(&pool, app).await?;
            Ok((json!({ "app_id": app, "api_key": api_key }), true))
        }
        Top::Key(KeyCommand::Revoke { key }) => {
            let revoked = match Uuid::parse_str(&key) {
                Ok(id) => sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .execute(&pool)
                    .await?,
                Err(_) => sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL")
                    .bind(&tally_common::apikey::hash(&key)[..])
                    .execute(&pool)
                    .await?,
            };
            if revoked.rows_affected() == 0 {
                bail!("no active key matches --key");
            }
            Ok((json!({ "ok": true }), true))
        }
        Top::DeadLetters(DeadLettersCommand::List {
            app,
            state,
            limit,
            json,
        }) => {
            let report = dead_letters::list(&pool, app, state.as_deref(), limit).await?;
            if json {
                Ok((report, true))
            } else {
                Ok((
                    serde_json::Value::String(dead_letters::table(&report)),
                    true,
                ))
            }
        }
        Top::DeadLetters(DeadLettersCommand::Retry {
            command_ids,
            all,
            app,
        }) => {
            let client = tally_common::broker::connect(&cli.common.nats_url, "tally-cli").await?;
            let names = Names::new(&cli.common.namespace);
            let js = async_nats_context(client.clone());
            let report = dead_letters::retry(&pool, &js, &names, command_ids, all, app).await?;
            client.flush().await?;
            Ok((report, true))
        }
        Top::Verify => {
            let report = verify::verify(&pool).await?;
            let ok = report.ok;
            Ok((serde_json::to_value(report)?, ok))
        }
    }
}

fn async_nats_context(client: async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client)
}

async fn ensure_app(pool: &PgPool, app: Uuid) -> anyhow::Result<()> {
    let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM apps WHERE id = $1")
        .bind(app)
        .fetch_optional(pool)
        .await?;
    if exists.is_none() {
        bail!("no app {app}");
    }
    Ok(())
}
