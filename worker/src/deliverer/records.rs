//! The deliverer's statements: a delivery, its endpoint and its event as an attempt needs
//! them, and what each attempt leaves behind (the delivery's status and counters, the
//! endpoint's `failing_since`, and disabling an endpoint that has failed for too long). Loads
//! and records go through [`Records`], which serves the attempts in flight in groups.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tally_common::{events, group};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::call::Answer;

/// An endpoint whose deliveries have all failed for this long is disabled.
pub(crate) const FAILING_DAYS_BEFORE_DISABLING: i64 = 5;

/// Why an endpoint was disabled by the deliverer, as `disabled_reason` shows it.
const DISABLED_REASON: &str = "every delivery failed for 5 days";

/// A delivery with what an attempt needs of its endpoint.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct Target {
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub app_id: Uuid,
    pub status: String,
    /// Attempts made so far: the schedule goes by this, never by the broker's count.
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub url: String,
    pub enabled: bool,
    pub deleted: bool,
    pub secret: String,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret: Option<String>,
}

/// A delivery as an attempt needs it: with its endpoint, and its event's envelope (`None`:
/// the event is gone).
pub(crate) struct Loaded {
    pub target: Target,
    pub envelope: Option<Value>,
}

/// A row of [`load_all`].
#[derive(sqlx::FromRow)]
struct TargetRow {
    id: Uuid,
    #[sqlx(flatten)]
    target: Target,
}

/// Reads the deliveries `ids` with their endpoints and their events' envelopes, in one
/// statement per app (one, in practice); a delivery that does not exist is left out.
async fn load_all(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, Loaded>> {
    let rows: Vec<TargetRow> = sqlx::query_as(
        "SELECT d.id, d.event_id, d.endpoint_id, d.app_id, d.status, d.attempts,
                d.next_attempt_at, e.url, e.enabled, e.deleted_at IS NOT NULL AS deleted, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END
                    AS previous_secret
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    let mut events_by_app: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for row in &rows {
        events_by_app
            .entry(row.target.app_id)
            .or_default()
            .push(row.target.event_id);
    }
    let mut envelopes = HashMap::new();
    for (app_id, event_ids) in events_by_app {
        envelopes.extend(events::envelopes(pool, app_id, &event_ids).await?);
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let envelope = envelopes.get(&row.target.event_id).cloned();
            (
                row.id,
                Loaded {
                    target: row.target,
                    envelope,
                },
            )
        })
        .collect())
}

/// Closes a pending delivery that will not be attempted (its endpoint was deleted or
/// disabled, its event is gone) with `status` and the reason; no attempt is counted.
pub(crate) async fn close_unsent(
    pool: &PgPool,
    id: Uuid,
    status: &str,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_deliveries SET status = $2, last_error = $3, next_attempt_at = NULL
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// What becomes of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Succeeded,
    /// Failed; tried again after this long.
    Retry(Duration),
    /// Failed for good: the schedule is exhausted, it was a one-off redelivery, or its
    /// endpoint has just been disabled.
    Failed,
}

/// One finished attempt, to record.
pub(crate) struct Attempt {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    /// The delivery's attempts when it was loaded: recorded only if no other attempt was since.
    pub attempts_before: i32,
    pub at: DateTime<Utc>,
    pub answer: Answer,
    /// When it failed: the wait before the next attempt, `None` if there is none.
    pub retry_after: Option<Duration>,
}

/// Records `attempts` and what follows from them, in one transaction: each one's [`Next`], or
/// `None` when another attempt of its delivery was recorded since it was loaded (a duplicate:
/// nothing is written for it).
async fn record_all(pool: &PgPool, attempts: &[Attempt]) -> sqlx::Result<Vec<Option<Next>>> {
    let mut tx = pool.begin().await?;
    // An endpoint that answered any attempt of the group is not failing; one that failed every
    // attempt of it fails since its first, unless it already was (and may be disabled now).
    let mut failed_since: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let mut answered: Vec<Uuid> = Vec::new();
    for attempt in attempts {
        if attempt.answer.succeeded() {
            answered.push(attempt.endpoint_id);
        } else {
            let since = failed_since
                .entry(attempt.endpoint_id)
                .or_insert(attempt.at);
            *since = (*since).min(attempt.at);
        }
    }
    answered.sort();
    answered.dedup();
    failed_since.retain(|endpoint, _| answered.binary_search(endpoint).is_err());
    if !answered.is_empty() {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL
             WHERE id = ANY($1) AND failing_since IS NOT NULL",
        )
        .bind(&answered)
        .execute(&mut *tx)
        .await?;
    }
    let mut disabled: Vec<(Uuid, Uuid)> = Vec::new();
    for (&endpoint_id, &at) in &failed_since {
        match disable_if_failing_too_long(&mut tx, endpoint_id, at).await? {
            Some(app_id) => disabled.push((endpoint_id, app_id)),
            None => {
                sqlx::query(
                    "UPDATE webhook_endpoints SET failing_since = $2
                     WHERE id = $1 AND failing_since IS NULL",
                )
                .bind(endpoint_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    let nexts: Vec<Next> = attempts
        .iter()
        .map(|attempt| {
            if attempt.answer.succeeded() {
                Next::Succeeded
            } else if disabled.iter().any(|(id, _)| *id == attempt.endpoint_id) {
                Next::Failed
            } else {
                attempt.retry_after.map_or(Next::Failed, Next::Retry)
            }
        })
        .collect();
    let mut columns = Columns::default();
    for (attempt, next) in attempts.iter().zip(&nexts) {
        let (status, next_attempt_at) = match next {
            Next::Succeeded => ("succeeded", None),
            Next::Retry(delay) => (
                "pending",
                Some(
                    attempt.at
                        + chrono::Duration::from_std(*delay).unwrap_or(chrono::TimeDelta::MAX),
                ),
            ),
            Next::Failed => ("failed", None),
        };
        columns.ids.push(attempt.delivery_id);
        columns.attempts.push(attempt.attempts_before);
        columns.statuses.push(status);
        columns.at.push(attempt.at);
        columns
            .codes
            .push(attempt.answer.status_code.map(|code| code as i16));
        columns.errors.push(attempt.answer.error.clone());
        columns.next_at.push(next_attempt_at);
    }
    let updated: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE webhook_deliveries d
         SET status = u.status, attempts = d.attempts + 1, last_attempt_at = u.at,
             last_status_code = u.code, last_error = u.error, next_attempt_at = u.next_at
         FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::int2[],
                     $6::text[], $7::timestamptz[])
              AS u(id, attempts, status, at, code, error, next_at)
         WHERE d.id = u.id AND d.attempts = u.attempts
         RETURNING d.id",
    )
    .bind(&columns.ids)
    .bind(&columns.attempts)
    .bind(&columns.statuses)
    .bind(&columns.at)
    .bind(&columns.codes)
    .bind(&columns.errors)
    .bind(&columns.next_at)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    for (endpoint_id, app_id) in disabled {
        tracing::warn!(
            endpoint.id = %endpoint_id, app.id = %app_id,
            "endpoint disabled: {DISABLED_REASON}"
        );
    }
    Ok(attempts
        .iter()
        .zip(nexts)
        .map(|(attempt, next)| updated.contains(&attempt.delivery_id).then_some(next))
        .collect())
}

/// The attempts of a group as `UNNEST` arrays.
#[derive(Default)]
struct Columns {
    ids: Vec<Uuid>,
    attempts: Vec<i32>,
    statuses: Vec<&'static str>,
    at: Vec<DateTime<Utc>>,
    codes: Vec<Option<i16>>,
    errors: Vec<Option<String>>,
    next_at: Vec<Option<DateTime<Utc>>>,
}

/// Disables the endpoint when it has failed without a success for
/// [`FAILING_DAYS_BEFORE_DISABLING`] days, and tells every worker to reload the app's event
/// configuration; the endpoint's app if it did.
async fn disable_if_failing_too_long(
    tx: &mut sqlx::PgConnection,
    endpoint_id: Uuid,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<Uuid>> {
    let cutoff = at - chrono::Duration::days(FAILING_DAYS_BEFORE_DISABLING);
    let disabled: Option<Uuid> = sqlx::query_scalar(
        "UPDATE webhook_endpoints
         SET enabled = false, disabled_reason = $3, updated_at = $4
         WHERE id = $1 AND enabled AND deleted_at IS NULL AND failing_since <= $2
         RETURNING app_id",
    )
    .bind(endpoint_id)
    .bind(cutoff)
    .bind(DISABLED_REASON)
    .bind(at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(app_id) = disabled else {
        return Ok(None);
    };
    sqlx::query(
        "INSERT INTO app_event_config (app_id) VALUES ($1)
         ON CONFLICT (app_id) DO UPDATE
         SET version = app_event_config.version + 1, updated_at = now()",
    )
    .bind(app_id)
    .execute(&mut *tx)
    .await?;
    Ok(Some(app_id))
}

/// Why a group's statement failed, for each of its attempts.
pub(crate) type GroupError = String;

type LoadReply = oneshot::Sender<Result<Option<Loaded>, GroupError>>;
type RecordReply = oneshot::Sender<Result<Option<Next>, GroupError>>;

/// Loads and records for every attempt in flight, in groups: concurrent attempts share one
/// statement (and one commit) instead of each paying its own.
#[derive(Clone)]
pub(crate) struct Records {
    loads: mpsc::Sender<(Uuid, LoadReply)>,
    records: mpsc::Sender<(Attempt, RecordReply)>,
}

/// Sizes of the deliverer's groups: as many as the deliverer attempts at once.
const GROUP: group::Limits = group::Limits {
    max: 512,
    queue: 4096,
    in_flight: 2,
};

impl Records {
    pub fn start(pool: PgPool) -> Self {
        let loading = pool.clone();
        let loads = group::start(GROUP, move |group: Vec<(Uuid, LoadReply)>| {
            let pool = loading.clone();
            async move {
                let ids: Vec<Uuid> = group.iter().map(|(id, _)| *id).collect();
                match load_all(&pool, &ids).await {
                    Ok(mut loaded) => {
                        for (id, reply) in group {
                            let _ = reply.send(Ok(loaded.remove(&id)));
                        }
                    }
                    Err(error) => {
                        for (_, reply) in group {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                }
            }
        });
        let records = group::start(GROUP, move |group: Vec<(Attempt, RecordReply)>| {
            let pool = pool.clone();
            async move {
                let (attempts, replies): (Vec<Attempt>, Vec<RecordReply>) =
                    group.into_iter().unzip();
                match record_all(&pool, &attempts).await {
                    Ok(nexts) => {
                        for (next, reply) in nexts.into_iter().zip(replies) {
                            let _ = reply.send(Ok(next));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                }
            }
        });
        Self { loads, records }
    }

    /// Delivery `id` with its endpoint and event; `None` if there is no such delivery.
    pub async fn load(&self, id: Uuid) -> Result<Option<Loaded>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.loads
            .send((id, reply))
            .await
            .map_err(|_| "the loader stopped".to_string())?;
        answer.await.map_err(|_| "the loader stopped".to_string())?
    }

    /// Records `attempt` and what follows from it; `None` when another attempt of the
    /// delivery was recorded since it was loaded (this one was a duplicate: nothing is
    /// written).
    pub async fn record(&self, attempt: Attempt) -> Result<Option<Next>, GroupError> {
        let (reply, answer) = oneshot::channel();
        self.records
            .send((attempt, reply))
            .await
            .map_err(|_| "the recorder stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the recorder stopped".to_string())?
    }
}
