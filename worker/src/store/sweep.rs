//! The expiry sweep: settles the due lots and holds of users no batch touches.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::batch::{load_and_fold, write_effects};
use super::StoreError;

/// How many users one sweep transaction handles.
pub const SWEEP_USERS_MAX: i64 = 200;

/// Expires the lots and holds that are due, for up to [`SWEEP_USERS_MAX`] users, in one
/// transaction. Safe to run from every worker at once: each user's state is re-read under its
/// account lock, so an expiry is written exactly once. Returns how many users were swept.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT app_id, user_id FROM (
             SELECT app_id, user_id FROM lots WHERE expired_at IS NULL AND expires_at <= $1
             UNION ALL
             SELECT app_id, user_id FROM holds WHERE status = 'active' AND expires_at <= $1) due
         LIMIT $2",
    )
    .bind(now)
    .bind(SWEEP_USERS_MAX)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let (state, effects) = load_and_fold(&mut tx, &[], due.iter().cloned().collect(), now).await?;
    write_effects(&mut tx, &state, &effects, &HashMap::new()).await?;
    tx.commit().await?;
    Ok(due.len())
}
