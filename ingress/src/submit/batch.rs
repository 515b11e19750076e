//! Submitting many commands as one request (a non-atomic batch): every command is exactly the
//! command it would be alone — its own id, its own idempotency claim, its own answer — but
//! they are claimed, published and awaited together: a handful of statements and, unless the
//! batch is very large, one broker message for all of them.
//!
//! 1. With the batch's own `Idempotency-Key`, claim it with a command id for every operation,
//!    in order. A replay finds the answer of the first time and returns it as it was; if the
//!    first is still being answered it is `409 idempotency_in_progress`; if it never was (its
//!    ingress died), the batch runs again under the first ids, so nothing applies twice.
//! 2. Claim the operations' own keys in one statement: a key used before with another request
//!    answers that operation `409`; one used with the same request takes its first command id
//!    (replayed if finished, published again if not, as alone).
//! 3. Commands already finished are answered from their stored answers; the others are
//!    published together. A refused message's commands are cancelled (as a single refused
//!    command is) and answered `503`; if every command was refused, the whole request is a
//!    `503` and changed nothing.
//! 4. Answer at once (`Prefer: respond-async`: a `202` body per command), or
//!    wait for every answer up to the sync timeout; a command not answered by then is a `202`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_common::command::{Command, Envelope, Origin};
use uuid::Uuid;

use super::{finished_many, Answer};
use crate::bus::Waiter;
use crate::error::ApiError;
use crate::AppState;

/// How long after its claim a batch's key is taken to be still in progress, past the sync
/// timeout: a retry within it is `409 idempotency_in_progress`; after it, the batch is taken to
/// have been abandoned (its ingress stopped) and runs again under its first command ids.
pub const BATCH_IN_PROGRESS_SLACK: Duration = Duration::from_secs(10);

/// One operation of a batch, as a command with the idempotency claim of its own key, or the
/// answer it already has (e.g. `404` for an entry the app does not have).
pub type BatchOperation = Result<BatchCommand, ApiError>;

/// One command of a batch, with the idempotency claim of its operation, if any.
pub struct BatchCommand {
    pub command: Command,
    /// `(key, request hash)` of the operation's `idempotency_key`.
    pub idempotency: Option<(String, String)>,
}

/// What one command of a batch came to.
#[derive(Debug)]
pub enum BatchAnswer {
    Answer(Answer),
    /// Not applied: a conflicting idempotency key, a refused publish, an unknown entry or hold.
    Refused(ApiError),
}

/// What a batch came to.
#[derive(Debug)]
pub enum BatchResult {
    /// One answer per operation, in order.
    Answers(Vec<BatchAnswer>),
    /// The stored answer of the first request with the batch's key.
    Replayed(Value),
}

/// Submits `operations` together. `Err` only when nothing was done: the batch's own key
/// conflicts or is in use, the database is unreachable, or the broker refused every command.
pub async fn submit_batch(
    state: &AppState,
    app_id: Uuid,
    operations: Vec<BatchOperation>,
    batch_idempotency: Option<&(String, String)>,
    respond_async: bool,
    origin: Origin,
) -> Result<BatchResult, ApiError> {
    let mut ids: Vec<Uuid> = operations
        .iter()
        .map(|_| state.command_ids.mint(app_id))
        .collect();
    if let Some((key, hash)) = batch_idempotency {
        match claim_batch_key(state, app_id, key, hash, &ids).await? {
            BatchClaim::New => {}
            BatchClaim::Answered(body) => return Ok(BatchResult::Replayed(body)),
            BatchClaim::Abandoned(first) if first.len() == ids.len() => ids = first,
            BatchClaim::Abandoned(_) => return Err(ApiError::IdempotencyConflict),
        }
    }
    let mut answers: Vec<Option<BatchAnswer>> = Vec::with_capacity(operations.len());
    let mut commands: Vec<Option<BatchCommand>> = Vec::with_capacity(operations.len());
    for operation in operations {
        match operation {
            Ok(command) => {
                answers.push(None);
                commands.push(Some(command));
            }
            Err(error) => {
                answers.push(Some(BatchAnswer::Refused(error)));
                commands.push(None);
            }
        }
    }
    let reused = claim_operation_keys(state, app_id, &commands, &mut ids, &mut answers).await?;
    if let (true, Some((key, _))) = (reused, batch_idempotency) {
        // An operation's key was claimed before: the batch's claim must name that command.
        sqlx::query(
            "UPDATE idempotency_keys SET batch_command_ids = $3 WHERE app_id = $1 AND key = $2",
        )
        .bind(app_id)
        .bind(key)
        .bind(&ids)
        .execute(&state.pool)
        .await?;
    }

    let finished = finished_many(&state.pool, app_id, &ids).await?;
    let mut envelopes: Vec<(usize, Option<String>, Envelope)> = Vec::new();
    let now = chrono::Utc::now();
    for (index, command) in commands.into_iter().enumerate() {
        let Some(command) = command else { continue };
        if answers[index].is_some() {
            continue;
        }
        if let Some(outcome) = finished.get(&ids[index]) {
            answers[index] = Some(BatchAnswer::Answer(Answer::Finished(outcome.clone())));
            continue;
        }
        metrics::counter!("tally_commands_submitted_total", "kind" => command.command.kind())
            .increment(1);
        let (key, request_hash) = command.idempotency.unzip();
        envelopes.push((
            index,
            key,
            Envelope {
                command_id: ids[index],
                app_id,
                // As if sent alone: a worker tells a replay from a conflict by it.
                request_hash,
                accepted_at: now,
                command: command.command,
                origin,
            },
        ));
    }
    if !envelopes.is_empty() {
        publish_and_wait(state, app_id, &envelopes, respond_async, &mut answers).await?;
    }
    Ok(BatchResult::Answers(
        answers.into_iter().map(|a| a.expect("answered")).collect(),
    ))
}

/// Publishes the envelopes together and fills in their answers (see the module docs, 3–4).
async fn publish_and_wait(
    state: &AppState,
    app_id: Uuid,
    envelopes: &[(usize, Option<String>, Envelope)],
    respond_async: bool,
    answers: &mut [Option<BatchAnswer>],
) -> Result<(), ApiError> {
    let waiters: Vec<Option<Waiter>> = envelopes
        .iter()
        .map(|_| (!respond_async).then(|| state.bus.waiter()))
        .collect();
    let to_publish: Vec<(&Envelope, Option<&Waiter>)> = envelopes
        .iter()
        .zip(&waiters)
        .map(|((_, _, envelope), waiter)| (envelope, waiter.as_ref()))
        .collect();
    let published = state.bus.publish_many(&to_publish).await;
    let mut refused: Vec<usize> = Vec::new();
    let mut position = 0;
    for (count, result) in published {
        if let Err(error) = result {
            metrics::counter!("tally_publish_failures_total").increment(count as u64);
            tracing::warn!(%error, commands = count, "batch commands not accepted");
            refused.extend(position..position + count);
        }
        position += count;
    }
    let cancelled = match cancel(state, app_id, envelopes, &refused).await {
        Ok(cancelled) => cancelled,
        Err(error) => {
            tracing::error!(%error, commands = refused.len(), "could not cancel unacknowledged batch commands");
            refused.iter().map(|&i| envelopes[i].2.command_id).collect()
        }
    };
    if !refused.is_empty() && cancelled.len() == envelopes.len() {
        return Err(ApiError::Unavailable(
            "the broker is unreachable; no command of the batch was accepted".into(),
        ));
    }

    let outcomes: Vec<Option<tally_common::command::Outcome>> = if respond_async {
        envelopes.iter().map(|_| None).collect()
    } else {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + state.config.sync_timeout();
        let refused: HashSet<usize> = refused.iter().copied().collect();
        let refused = &refused;
        let outcomes = futures::future::join_all(waiters.into_iter().enumerate().map(
            |(i, waiter)| async move {
                match waiter {
                    Some(waiter) if !refused.contains(&i) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        waiter.wait(left).await
                    }
                    _ => None,
                }
            },
        ))
        .await;
        metrics::histogram!("tally_sync_wait_seconds").record(started.elapsed().as_secs_f64());
        outcomes
    };
    // A refused command that a worker applied anyway (its cancellation lost the race) is
    // answered with its result.
    let applied_anyway: Vec<Uuid> = refused
        .iter()
        .map(|&i| envelopes[i].2.command_id)
        .filter(|id| !cancelled.contains(id))
        .collect();
    let mut late = finished_many(&state.pool, app_id, &applied_anyway).await?;
    for ((index, _, envelope), outcome) in envelopes.iter().zip(outcomes) {
        let id = envelope.command_id;
        answers[*index] = Some(match outcome.or_else(|| late.remove(&id)) {
            Some(outcome) => BatchAnswer::Answer(Answer::Finished(outcome)),
            None if cancelled.contains(&id) => BatchAnswer::Refused(ApiError::Unavailable(
                "the broker is unreachable; the command was not accepted".into(),
            )),
            None => BatchAnswer::Answer(Answer::Accepted { command_id: id }),
        });
    }
    Ok(())
}

/// What claiming a batch's key found.
enum BatchClaim {
    New,
    /// The first request with the key was answered: its answer.
    Answered(Value),
    /// The first request was never answered, and is not in progress any more: its ids.
    Abandoned(Vec<Uuid>),
}

/// Claims the batch's own key with `ids`.
async fn claim_batch_key(
    state: &AppState,
    app_id: Uuid,
    key: &str,
    hash: &str,
    ids: &[Uuid],
) -> Result<BatchClaim, ApiError> {
    type Row = (bool, String, Option<Vec<Uuid>>, Option<Value>, f64);
    let row: Row = sqlx::query_as(
        "WITH inserted AS (
             INSERT INTO idempotency_keys (app_id, key, request_hash, command_id, batch_command_ids)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (app_id, key) DO NOTHING
             RETURNING request_hash)
         SELECT true, request_hash, NULL::uuid[], NULL::jsonb, 0::float8 FROM inserted
         UNION ALL
         SELECT false, request_hash, batch_command_ids, batch_response,
                extract(epoch FROM now() - created_at)::float8
         FROM idempotency_keys
         WHERE app_id = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM inserted)",
    )
    .bind(app_id)
    .bind(key)
    .bind(hash)
    .bind(Uuid::now_v7())
    .bind(ids)
    .fetch_one(&state.pool)
    .await?;
    let in_progress = state.config.sync_timeout() + BATCH_IN_PROGRESS_SLACK;
    match row {
        (true, ..) => Ok(BatchClaim::New),
        (false, stored, ..) if stored != hash => Err(ApiError::IdempotencyConflict),
        // A single request's key, sent with the same body to the batch endpoint, cannot be:
        // the hash names the path.
        (false, _, None, ..) => Err(ApiError::IdempotencyConflict),
        (false, _, Some(_), Some(body), _) => Ok(BatchClaim::Answered(body)),
        (false, _, Some(_), None, age) if age < in_progress.as_secs_f64() => {
            Err(ApiError::IdempotencyInProgress)
        }
        (false, _, Some(first), None, _) => Ok(BatchClaim::Abandoned(first)),
    }
}

/// Keeps the batch's answer with its key, for replays.
pub async fn store_batch_answer(state: &AppState, app_id: Uuid, key: &str, body: &Value) {
    let stored = sqlx::query(
        "UPDATE idempotency_keys SET batch_response = $3 WHERE app_id = $1 AND key = $2",
    )
    .bind(app_id)
    .bind(key)
    .bind(body)
    .execute(&state.pool)
    .await;
    if let Err(error) = stored {
        // A replay will then run the batch again under the same ids, which applies nothing
        // twice; only its answer may differ (commands finished since are answered as such).
        tracing::warn!(%error, "could not keep a batch's answer for replays");
    }
}

/// Claims the operations' keys: a new key takes its command's id; a key claimed before with
/// the same request takes the first id; one claimed with another request answers `409`.
/// Returns whether any operation took an earlier id.
async fn claim_operation_keys(
    state: &AppState,
    app_id: Uuid,
    commands: &[Option<BatchCommand>],
    ids: &mut [Uuid],
    answers: &mut [Option<BatchAnswer>],
) -> Result<bool, ApiError> {
    let keyed: Vec<(usize, &str, &str)> = commands
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let (key, hash) = c.as_ref()?.idempotency.as_ref()?;
            Some((i, key.as_str(), hash.as_str()))
        })
        .collect();
    if keyed.is_empty() {
        return Ok(false);
    }
    let keys: Vec<&str> = keyed.iter().map(|(_, key, _)| *key).collect();
    let hashes: Vec<&str> = keyed.iter().map(|(_, _, hash)| *hash).collect();
    let wanted_ids: Vec<Uuid> = keyed.iter().map(|(i, _, _)| ids[*i]).collect();
    // One key may appear twice in a batch: the first occurrence claims it, the second finds
    // that claim (and is a replay or a conflict, as a second request would be).
    let rows: Vec<(String, String, Uuid)> = sqlx::query_as(
        "WITH wanted AS (
             SELECT DISTINCT ON (key) key, hash, id
             FROM UNNEST($2::text[], $3::text[], $4::uuid[]) WITH ORDINALITY AS w(key, hash, id, n)
             ORDER BY key, n),
         inserted AS (
             INSERT INTO idempotency_keys (app_id, key, request_hash, command_id)
             SELECT $1, key, hash, id FROM wanted
             ON CONFLICT (app_id, key) DO NOTHING
             RETURNING key, request_hash, command_id)
         SELECT key, request_hash, command_id FROM inserted
         UNION ALL
         SELECT k.key, k.request_hash, k.command_id FROM idempotency_keys k
         WHERE k.app_id = $1 AND k.key = ANY($2) AND k.key NOT IN (SELECT key FROM inserted)",
    )
    .bind(app_id)
    .bind(&keys)
    .bind(&hashes)
    .bind(&wanted_ids)
    .fetch_all(&state.pool)
    .await?;
    let claims: HashMap<String, (String, Uuid)> = rows
        .into_iter()
        .map(|(key, hash, id)| (key, (hash, id)))
        .collect();
    let mut reused = false;
    for (index, key, hash) in keyed {
        let id = match claims.get(key) {
            Some((stored, _)) if stored != hash => {
                answers[index] = Some(BatchAnswer::Refused(ApiError::IdempotencyConflict));
                continue;
            }
            Some((_, id)) => *id,
            // Released by a cancellation between the insert and the read: claim it alone.
            None => match super::claim_key(state, app_id, key, hash, ids[index]).await {
                Ok(super::Claim::New) => ids[index],
                Ok(super::Claim::Existing { command_id }) => command_id,
                Err(error) => {
                    answers[index] = Some(BatchAnswer::Refused(error));
                    continue;
                }
            },
        };
        reused |= id != ids[index];
        ids[index] = id;
    }
    Ok(reused)
}

/// Cancels the refused commands (positions in `envelopes`) so that no copy of them can take
/// effect, as a single refused command is cancelled, and their operations' keys are freed. Returns the ids cancelled; the others were applied by a worker.
async fn cancel(
    state: &AppState,
    app_id: Uuid,
    envelopes: &[(usize, Option<String>, Envelope)],
    refused: &[usize],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if refused.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = refused.iter().map(|&i| envelopes[i].2.command_id).collect();
    let cancelled: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_commands (command_id, app_id, status)
         SELECT id, $1, 'cancelled' FROM UNNEST($2::uuid[]) AS id
         ON CONFLICT (command_id) DO NOTHING RETURNING command_id",
    )
    .bind(app_id)
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let cancelled: HashSet<Uuid> = cancelled.into_iter().collect();
    let (keys, key_ids): (Vec<&str>, Vec<Uuid>) = refused
        .iter()
        .filter_map(|&i| {
            let (_, key, envelope) = &envelopes[i];
            let key = key.as_deref()?;
            cancelled
                .contains(&envelope.command_id)
                .then_some((key, envelope.command_id))
        })
        .unzip();
    if !keys.is_empty() {
        sqlx::query(
            "DELETE FROM idempotency_keys k USING UNNEST($2::text[], $3::uuid[]) AS r(key, id)
             WHERE k.app_id = $1 AND k.key = r.key AND k.command_id = r.id",
        )
        .bind(app_id)
        .bind(&keys)
        .bind(&key_ids)
        .execute(&state.pool)
        .await?;
    }
    Ok(cancelled)
}
