//! `tally`: the admin CLI. Every command prints one JSON object on stdout.

mod dead_letters;
mod rate_limit;
mod verify;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use sqlx::PgPool;
use tally_common::apps::{self, KeyRef};
use tally_common::config::CommonConfig;
use tally_common::partition::Names;
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
        /// The secret. Without it, it is read from standard input, which keeps it out of `ps`
        /// and the shell's history.
        #[arg(long)]
        secret: Option<String>,
    },
    /// Set one app's API rate limit (requests/s and burst), or make it unlimited, or go back to
    /// the ingresses' default; effective within 2 s.
    SetRateLimit(rate_limit::SetRateLimit),
    /// Set the app's Stripe secret key (auto top-up charges), read from standard input. It is
    /// encrypted at rest when TALLY_SECRET_KEY is set, and never shown again.
    SetStripeKey {
        #[arg(long)]
        app: Uuid,
    },
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
            let name = apps::check_name(&name).map_err(flag_error)?;
            let (app_id, api_key) = apps::create(&pool, &name).await?;
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
            let secret = match secret {
                Some(secret) => secret,
                None => read_stdin().context("cannot read the secret from standard input")?,
            };
            let (provider, secret) = apps::check_secret(&provider, &secret).map_err(flag_error)?;
            ensure_app(&pool, app).await?;
            apps::add_webhook_secret(&pool, app, provider, &secret).await?;
            Ok((json!({ "ok": true }), true))
        }
        Top::App(AppCommand::SetStripeKey { app }) => {
            let key = read_stdin().context("cannot read the Stripe key from standard input")?;
            let key = apps::check_stripe_key(key.trim()).map_err(|invalid| {
                anyhow::anyhow!("the key read from standard input {}", invalid.message)
            })?;
            ensure_app(&pool, app).await?;
            if cli.common.secret_key.is_none() {
                eprintln!(
                    "warning: TALLY_SECRET_KEY is not set, so the key is stored unencrypted; \
                     set it (the same value for every process) to encrypt keys at rest"
                );
            }
            apps::set_stripe_key(&pool, app, &key, cli.common.secret_key.as_ref()).await?;
            Ok((json!({ "ok": true }), true))
        }
        Top::App(AppCommand::SetRateLimit(args)) => Ok((rate_limit::set(&pool, args).await?, true)),
        Top::Key(KeyCommand::Create { app }) => {
            ensure_app(&pool, app).await?;
            let api_key = apps::insert_key(&pool, app).await?;
            Ok((json!({ "app_id": app, "api_key": api_key }), true))
        }
        Top::Key(KeyCommand::Revoke { key }) => {
            if !apps::revoke_key(&pool, None, KeyRef::parse(&key)).await? {
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
    if !apps::exists(pool, app).await? {
        bail!("no app {app}");
    }
    Ok(())
}

/// A refused value, named as the flag that carried it.
/// A secret piped in: standard input up to its end, without the line break that ends it.
fn read_stdin() -> std::io::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn flag_error(invalid: apps::Invalid) -> anyhow::Error {
    anyhow::anyhow!("--{} {}", invalid.field, invalid.message)
}
