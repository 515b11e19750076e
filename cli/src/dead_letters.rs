//! `tally dead-letters`: the commands a worker set aside after its bounded retries, and their
//! replay.
//!
//! A dead-lettered command has two records, written together by the worker: its failure (a
//! `rejected` 500 in `processed_commands`, the answer its requester got) and its row in
//! `dead_letters` (migration 0006_dead_letters). A retry, in one transaction, removes the
//! failure record, marks the row `retried` and keeps a receipt so `GET /commands/{id}` says
//! `pending`; then it publishes the original envelope (same command id) again. The worker
//! applies it like any command: once, since from then on its dedupe record is the new answer
//! and every later copy (a second retry, a redelivery) finds it. If it fails again it is parked
//! again.

use anyhow::{bail, Context};
use async_nats::jetstream;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use tally_common::partition::Names;
use uuid::Uuid;

/// Most dead letters one `list` prints.
pub const LIST_LIMIT_MAX: i64 = 10_000;

/// One dead letter as `list` reports it.
type Row = (
    Uuid,
    Uuid,
    i32,
    i64,
    Value,
    String,
    i32,
    String,
    i32,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<i16>,
);

/// The dead letters, oldest first, optionally of one app and in one state (`parked`,
/// `retrying`: replayed and not applied yet, `resolved`: replayed and answered).
pub async fn list(
    pool: &PgPool,
    app: Option<Uuid>,
    state: Option<&str>,
    limit: i64,
) -> anyhow::Result<Value> {
    if let Some(state) = state {
        if !["parked", "retrying", "resolved"].contains(&state) {
            bail!("--state must be parked, retrying or resolved");
        }
    }
    if !(1..=LIST_LIMIT_MAX).contains(&limit) {
        bail!("--limit must be 1 to {LIST_LIMIT_MAX}");
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT d.command_id, d.app_id, d.partition, d.stream_seq, d.envelope, d.error, d.attempts,
                d.state, d.retries, d.dead_lettered_at, d.retried_at, p.status, p.http_status
         FROM dead_letters d LEFT JOIN processed_commands p ON p.command_id = d.command_id
         WHERE ($1::uuid IS NULL OR d.app_id = $1)
           AND ($2::text IS NULL OR $2 = CASE WHEN d.state = 'parked' THEN 'parked'
                                              WHEN p.command_id IS NULL THEN 'retrying'
                                              ELSE 'resolved' END)
         ORDER BY d.created_at, d.command_id
         LIMIT $3",
    )
    .bind(app)
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    let letters: Vec<Value> = rows
        .into_iter()
        .map(
            |(
                command_id,
                app_id,
                partition,
                stream_seq,
                envelope,
                error,
                attempts,
                state,
                retries,
                dead_lettered_at,
                retried_at,
                status,
                http_status,
            )| {
                let (state, outcome) = match (state.as_str(), status) {
                    ("parked", _) => ("parked", Value::Null),
                    (_, None) => ("retrying", Value::Null),
                    (_, Some(status)) => (
                        "resolved",
                        json!({ "status": status, "http_status": http_status }),
                    ),
                };
                json!({
                    "command_id": command_id,
                    "app_id": app_id,
                    "kind": envelope["command"]["kind"],
                    "user_id": envelope["command"]["user_id"],
                    "partition": partition,
                    "stream_seq": stream_seq,
                    "error": error,
                    "attempts": attempts,
                    "state": state,
                    "outcome": outcome,
                    "retries": retries,
                    "dead_lettered_at": time(dead_lettered_at),
                    "retried_at": retried_at.map(time),
                })
            },
        )
        .collect();
    Ok(json!({ "count": letters.len(), "dead_letters": letters }))
}

/// `list`'s report as a table for a terminal.
pub fn table(report: &Value) -> String {
    let mut out = format!(
        "{:<36}  {:<9}  {:<8}  {:<20}  {:>8}  {:<27}  error\n",
        "command_id", "state", "kind", "user_id", "attempts", "dead_lettered_at"
    );
    for letter in report["dead_letters"].as_array().into_iter().flatten() {
        let text = |key: &str| letter[key].as_str().unwrap_or("").to_string();
        out.push_str(&format!(
            "{:<36}  {:<9}  {:<8}  {:<20}  {:>8}  {:<27}  {}\n",
            text("command_id"),
            text("state"),
            text("kind"),
            text("user_id"),
            letter["attempts"],
            text("dead_lettered_at"),
            text("error"),
        ));
    }
    out.push_str(&format!("{} dead letter(s)", report["count"]));
    out
}

/// Replays `command_ids` (or, with `all`, every parked dead letter, of `app` if given). Returns
/// the replayed command ids.
pub async fn retry(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    command_ids: Vec<Uuid>,
    all: bool,
    app: Option<Uuid>,
) -> anyhow::Result<Value> {
    let ids = if all {
        if !command_ids.is_empty() {
            bail!("give command ids or --all, not both");
        }
        sqlx::query_scalar(
            "SELECT command_id FROM dead_letters
             WHERE state = 'parked' AND ($1::uuid IS NULL OR app_id = $1)
             ORDER BY created_at, command_id",
        )
        .bind(app)
        .fetch_all(pool)
        .await?
    } else {
        if command_ids.is_empty() {
            bail!("give the command id(s) to retry, or --all");
        }
        command_ids
    };
    let mut retried = Vec::new();
    for command_id in ids {
        retry_one(pool, js, names, command_id, app).await?;
        retried.push(command_id);
    }
    Ok(json!({ "count": retried.len(), "retried": retried }))
}

async fn retry_one(
    pool: &PgPool,
    js: &jetstream::Context,
    names: &Names,
    command_id: Uuid,
    app: Option<Uuid>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    let letter: Option<(Uuid, String, i32, Value, String)> = sqlx::query_as(
        "SELECT app_id, stream, partition, envelope, state FROM dead_letters
         WHERE command_id = $1 AND ($2::uuid IS NULL OR app_id = $2) FOR UPDATE",
    )
    .bind(command_id)
    .bind(app)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((app_id, stream, partition, envelope, state)) = letter else {
        bail!("no dead letter {command_id}");
    };
    if stream != names.command_stream() {
        bail!(
            "dead letter {command_id} belongs to stream {stream}, not {}: run with that deployment's TALLY_NAMESPACE",
            names.command_stream()
        );
    }
    let answer: Option<(String, Option<i16>)> = sqlx::query_as(
        "SELECT status, http_status FROM processed_commands WHERE command_id = $1 FOR UPDATE",
    )
    .bind(command_id)
    .fetch_optional(&mut *tx)
    .await?;
    match (state.as_str(), answer) {
        ("parked", Some((status, Some(500)))) if status == "rejected" => {
            sqlx::query("DELETE FROM processed_commands WHERE command_id = $1")
                .bind(command_id)
                .execute(&mut *tx)
                .await?;
        }
        ("parked", answer) => {
            bail!("dead letter {command_id} is parked but its recorded answer is {answer:?}, not its failure: left alone")
        }
        // Replayed before and not applied yet (say the publish failed): publish it again.
        (_, None) => {}
        (_, Some((status, http_status))) => {
            bail!("dead letter {command_id} was already retried and answered ({status}, {http_status:?})")
        }
    }
    sqlx::query(
        "INSERT INTO command_receipts (command_id, app_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(command_id)
    .bind(app_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE dead_letters SET state = 'retried', retries = retries + 1, retried_at = now()
         WHERE command_id = $1",
    )
    .bind(command_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    // After the commit: a copy applied before the failure record was gone would only have
    // found that record. Should the publish fail, the dead letter stays `retrying` and a
    // second retry publishes it again.
    tally_common::broker::publish_command(js, names, partition as u32, envelope, None)
        .await
        .with_context(|| format!("the replay of {command_id} was not confirmed; retry it again"))?;
    Ok(())
}
