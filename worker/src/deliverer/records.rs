//! The deliverer's statements: a delivery and its endpoint as an attempt needs them, and what
//! each attempt leaves behind (the delivery's status and counters, the endpoint's
//! `failing_since`, and disabling an endpoint that has failed for too long).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
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

/// Reads delivery `id` with its endpoint; `None` if there is no such delivery.
pub(crate) async fn load(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Target>> {
    sqlx::query_as(
        "SELECT d.event_id, d.endpoint_id, d.app_id, d.status, d.attempts, d.next_attempt_at,
                e.url, e.enabled, e.deleted_at IS NOT NULL AS deleted, e.secret,
                CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END
                    AS previous_secret
         FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
         WHERE d.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
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
pub(crate) struct Attempt<'a> {
    pub delivery_id: Uuid,
    pub target: &'a Target,
    pub at: DateTime<Utc>,
    pub answer: &'a Answer,
    /// When it failed: the wait before the next attempt, `None` if there is none.
    pub retry_after: Option<Duration>,
}

/// Records `attempt` and what follows from it; `None` when another attempt of the delivery was
/// recorded since it was loaded (this one was a duplicate: nothing is written).
pub(crate) async fn record(pool: &PgPool, attempt: Attempt<'_>) -> sqlx::Result<Option<Next>> {
    let Attempt {
        delivery_id,
        target,
        at,
        answer,
        retry_after,
    } = attempt;
    let mut tx = pool.begin().await?;
    let mut disabled = None;
    let next = if answer.succeeded() {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL
             WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(target.endpoint_id)
        .execute(&mut *tx)
        .await?;
        Next::Succeeded
    } else if let Some(app_id) = disable_if_failing_too_long(&mut tx, target, at).await? {
        disabled = Some(app_id);
        Next::Failed
    } else {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = $2
             WHERE id = $1 AND failing_since IS NULL",
        )
        .bind(target.endpoint_id)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        retry_after.map_or(Next::Failed, Next::Retry)
    };
    let (status, next_attempt_at) = match next {
        Next::Succeeded => ("succeeded", None),
        Next::Retry(delay) => (
            "pending",
            Some(at + chrono::Duration::from_std(delay).unwrap_or(chrono::TimeDelta::MAX)),
        ),
        Next::Failed => ("failed", None),
    };
    let updated = sqlx::query(
        "UPDATE webhook_deliveries
         SET status = $3, attempts = attempts + 1, last_attempt_at = $4,
             last_status_code = $5, last_error = $6, next_attempt_at = $7
         WHERE id = $1 AND attempts = $2",
    )
    .bind(delivery_id)
    .bind(target.attempts)
    .bind(status)
    .bind(at)
    .bind(answer.status_code.map(|code| code as i16))
    .bind(answer.error.as_deref())
    .bind(next_attempt_at)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    if let Some(app_id) = disabled {
        tracing::warn!(
            endpoint.id = %target.endpoint_id, app.id = %app_id,
            "endpoint disabled: {DISABLED_REASON}"
        );
    }
    Ok(Some(next))
}

/// Disables the endpoint when it has failed without a success for
/// [`FAILING_DAYS_BEFORE_DISABLING`] days, and tells every worker to reload the app's event
/// configuration; the endpoint's app if it did.
async fn disable_if_failing_too_long(
    tx: &mut sqlx::PgConnection,
    target: &Target,
    at: DateTime<Utc>,
) -> sqlx::Result<Option<Uuid>> {
    let cutoff = at - chrono::Duration::days(FAILING_DAYS_BEFORE_DISABLING);
    let disabled: Option<Uuid> = sqlx::query_scalar(
        "UPDATE webhook_endpoints
         SET enabled = false, disabled_reason = $3, updated_at = $4
         WHERE id = $1 AND enabled AND deleted_at IS NULL AND failing_since <= $2
         RETURNING app_id",
    )
    .bind(target.endpoint_id)
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
