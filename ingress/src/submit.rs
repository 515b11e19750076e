//! The write path shared by every command: idempotency, publish, wait, answer.
//!
//! 1. With an `Idempotency-Key`, claim the key for a new command id (one insert). If the key was
//!    claimed before: a different request is a conflict; a finished command is replayed; an
//!    unfinished one is published again under its first id (the broker and the worker both
//!    dedupe by id, so this can only help it along).
//! 2. Publish to the user's partition and wait for the broker's durable acknowledgement.
//!    If the broker cannot be reached, cancel the command in Postgres — a `cancelled` dedupe
//!    record that makes a worker skip it, should the message have been stored after all — and
//!    answer 503. If the cancellation loses the race to a worker, the command was applied:
//!    answer its result instead.
//! 3. Answer 202 at once (`Prefer: respond-async`), or wait for the worker's reply up to the
//!    sync timeout, then 202.

pub mod batch;

use std::collections::HashMap;
use std::time::Instant;

use axum::response::{IntoResponse, Response};
use serde_json::json;
use tally_common::command::{Command, Envelope, Origin, Outcome, Status};
use uuid::Uuid;

use crate::error::ApiError;
use crate::responses::json_response;
use crate::AppState;

pub struct Submission {
    pub app_id: Uuid,
    pub command: Command,
    /// `(key, request hash)` when the request carried an `Idempotency-Key`.
    pub idempotency: Option<(String, String)>,
    pub respond_async: bool,
    /// The `source` of the entries the command writes.
    pub origin: Origin,
}

/// What a submitted command came to, before it becomes an HTTP response.
#[derive(Debug)]
pub enum Answer {
    /// The command finished (now, or before: a replay): the worker's result.
    Finished(Outcome),
    /// Accepted and not finished yet: its result will be at `/commands/{command_id}`.
    Accepted { command_id: Uuid },
}

impl Answer {
    /// The status and body this answer has as a response of its own.
    pub fn status_and_body(self) -> (u16, serde_json::Value) {
        match self {
            Answer::Finished(outcome) => (outcome.http_status, outcome.body),
            Answer::Accepted { command_id } => (202, accepted_body(command_id)),
        }
    }
}

/// The body of a `202`: where the command's result will be.
pub fn accepted_body(command_id: Uuid) -> serde_json::Value {
    json!({ "success": true, "status": "accepted", "command_id": command_id,
            "status_url": format!("/commands/{command_id}") })
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        json_response(status, body)
    }
}

/// [`answer`] as the HTTP response.
pub async fn submit(state: &AppState, submission: Submission) -> Result<Response, ApiError> {
    answer(state, submission)
        .await
        .map(IntoResponse::into_response)
}

/// Submits a command and returns what it came to.
pub async fn answer(state: &AppState, submission: Submission) -> Result<Answer, ApiError> {
    let Submission {
        app_id,
        command,
        idempotency,
        respond_async,
        origin,
    } = submission;
    let mut command_id = state.command_ids.mint(app_id);
    if let Some((key, hash)) = &idempotency {
        match claim_key(state, app_id, key, hash, command_id).await? {
            Claim::New => {}
            Claim::Existing { command_id: first } => {
                if let Some(outcome) = finished(state, app_id, first).await? {
                    return Ok(Answer::Finished(outcome));
                }
                command_id = first;
            }
        }
    }
    let envelope = Envelope {
        command_id,
        app_id,
        request_hash: idempotency.as_ref().map(|(_, hash)| hash.clone()),
        accepted_at: chrono::Utc::now(),
        command,
        origin,
    };
    metrics::counter!("tally_commands_submitted_total", "kind" => envelope.command.kind())
        .increment(1);
    if respond_async {
        // The id itself says `pending` at `/commands/{id}` (`command_ids`): nothing to write.
        if let Err(error) = state.bus.publish(&envelope, None).await {
            return refuse(state, &envelope, idempotency.as_ref(), error).await;
        }
        return Ok(Answer::Accepted { command_id });
    }
    let waiter = state.bus.waiter();
    if let Err(error) = state.bus.publish(&envelope, Some(&waiter)).await {
        return refuse(state, &envelope, idempotency.as_ref(), error).await;
    }
    // A worker answers every command it reads, a republished one with its stored answer.
    let started = Instant::now();
    if let Some(outcome) = waiter.wait(state.config.sync_timeout()).await {
        metrics::histogram!("tally_sync_wait_seconds").record(started.elapsed().as_secs_f64());
        return Ok(Answer::Finished(outcome));
    }
    Ok(Answer::Accepted { command_id })
}

enum Claim {
    New,
    Existing { command_id: Uuid },
}

fn claim_key<'a>(
    state: &'a AppState,
    app_id: Uuid,
    key: &'a str,
    hash: &'a str,
    command_id: Uuid,
) -> futures::future::BoxFuture<'a, Result<Claim, ApiError>> {
    Box::pin(claim_key_once(state, app_id, key, hash, command_id))
}

async fn claim_key_once(
    state: &AppState,
    app_id: Uuid,
    key: &str,
    hash: &str,
    command_id: Uuid,
) -> Result<Claim, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (app_id, key, request_hash, command_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_id, key) DO NOTHING",
    )
    .bind(app_id)
    .bind(key)
    .bind(hash)
    .bind(command_id)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let row: Option<(String, Uuid)> = sqlx::query_as(
        "SELECT request_hash, command_id FROM idempotency_keys WHERE app_id = $1 AND key = $2",
    )
    .bind(app_id)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    match row {
        Some((stored_hash, _)) if stored_hash != hash => Err(ApiError::IdempotencyConflict),
        Some((_, command_id)) => Ok(Claim::Existing { command_id }),
        // Released by a cancellation in between: the caller may claim it again.
        None => claim_key(state, app_id, key, hash, command_id).await,
    }
}

/// The stored answer of a finished command; `None` while it is unfinished, or if it was
/// cancelled.
async fn finished(
    state: &AppState,
    app_id: Uuid,
    command_id: Uuid,
) -> Result<Option<Outcome>, ApiError> {
    Ok(finished_many(&state.pool, app_id, &[command_id])
        .await?
        .remove(&command_id))
}

/// The stored answers of the finished commands among `command_ids` (not the unfinished ones,
/// nor the cancelled ones).
async fn finished_many(
    pool: &sqlx::PgPool,
    app_id: Uuid,
    command_ids: &[Uuid],
) -> Result<HashMap<Uuid, Outcome>, ApiError> {
    let rows: Vec<(Uuid, String, Option<i16>, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT command_id, status, http_status, response FROM processed_commands
         WHERE command_id = ANY($1) AND app_id = $2 AND status <> 'cancelled'",
    )
    .bind(command_ids)
    .bind(app_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(command_id, status, http_status, body)| {
            let outcome = Outcome {
                command_id,
                status: if status == "applied" {
                    Status::Applied
                } else {
                    Status::Rejected
                },
                http_status: http_status.unwrap_or(200) as u16,
                body: body.unwrap_or_default(),
            };
            (command_id, outcome)
        })
        .collect())
}

/// The broker did not acknowledge: make sure the command can never take effect, then 503.
async fn refuse(
    state: &AppState,
    envelope: &Envelope,
    idempotency: Option<&(String, String)>,
    error: crate::bus::PublishError,
) -> Result<Answer, ApiError> {
    metrics::counter!("tally_publish_failures_total").increment(1);
    tracing::warn!(%error, command.id = %envelope.command_id, "command not accepted");
    let cancelled = sqlx::query(
        "INSERT INTO processed_commands (command_id, app_id, status) VALUES ($1, $2, 'cancelled')
         ON CONFLICT (command_id) DO NOTHING",
    )
    .bind(envelope.command_id)
    .bind(envelope.app_id)
    .execute(&state.pool)
    .await;
    match cancelled {
        Ok(done) if done.rows_affected() == 1 => {
            if let Some((key, _)) = idempotency {
                let _ = sqlx::query("DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2 AND command_id = $3")
                    .bind(envelope.app_id)
                    .bind(key)
                    .bind(envelope.command_id)
                    .execute(&state.pool)
                    .await;
            }
            Err(ApiError::Unavailable(
                "the broker is unreachable; the command was not accepted".into(),
            ))
        }
        // A worker applied it after all: its result is the answer.
        Ok(_) => match finished(state, envelope.app_id, envelope.command_id).await? {
            Some(outcome) => Ok(Answer::Finished(outcome)),
            None => Err(ApiError::Unavailable(
                "the broker is unreachable; the command was not accepted".into(),
            )),
        },
        Err(db_error) => {
            tracing::error!(%db_error, command.id = %envelope.command_id, "could not cancel an unacknowledged command");
            Err(ApiError::Unavailable(
                "the broker is unreachable; the command was not accepted".into(),
            ))
        }
    }
}
