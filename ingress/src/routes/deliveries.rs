//! Deliveries of outbound events: a test `ping` to one endpoint, an endpoint's deliveries, and
//! a redelivery on request. Workers make the HTTP calls and keep each delivery's attempts; the
//! ingress records what is to be delivered and hands it to the delivery stream.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tally_common::events::{DeliveryMessage, EventType};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::entries::optional_time_json;
use crate::error::ApiError;
use crate::paging::{encode_time_cursor, page_limit, split_page, time_cursor};
use crate::responses::ErrorResponse;
use crate::routes::endpoints::{endpoint, no_endpoint, path_id};
use crate::validate;
use crate::AppState;

/// One event sent to one endpoint, and how its attempts went.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    /// pending, succeeded, failed, or cancelled (its endpoint was deleted).
    pub status: String,
    pub attempts: i32,
    #[serde(serialize_with = "optional_time_json")]
    #[schema(value_type = Option<String>)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The HTTP status the endpoint last answered; null if it never answered.
    pub last_status_code: Option<i16>,
    /// Why the last attempt failed; null if it did not.
    pub last_error: Option<String>,
    /// When the next attempt is due; null once the delivery is settled.
    #[serde(serialize_with = "optional_time_json")]
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Pages by it; not part of the JSON.
    #[serde(skip)]
    #[schema(ignore)]
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveriesResponse {
    pub deliveries: Vec<Delivery>,
    pub next_cursor: Option<String>,
}

/// Answer to a test: the `ping` event sent.
#[derive(Serialize, ToSchema)]
pub struct TestResponse {
    event_id: Uuid,
}

/// The select list of a [`Delivery`].
const DELIVERY_COLUMNS: &str = "id, event_id, event_type, status, attempts, last_attempt_at,
    last_status_code, last_error, next_attempt_at, created_at";

const DELIVERIES_CURSOR: &str = "d1";

/// The statuses `GET /webhook_endpoints/{id}/deliveries?status=` filters by.
pub const DELIVERY_STATUSES: &[&str] = &["pending", "succeeded", "failed"];

/// The query of `GET /webhook_endpoints/{id}/deliveries`.
pub(crate) struct DeliveriesQuery {
    status: Option<String>,
    limit: i64,
    /// `created_at` and id of the last delivery of the previous page (from `cursor`).
    before: Option<(DateTime<Utc>, Uuid)>,
}

impl DeliveriesQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(Self {
            status: validate::query_one_of(query, "status", DELIVERY_STATUSES)?,
            limit: page_limit(query)?,
            before: time_cursor(DELIVERIES_CURSOR, query)?,
        })
    }
}

fn not_sent(error: crate::bus::PublishError) -> ApiError {
    metrics::counter!("tally_publish_failures_total").increment(1);
    tracing::warn!(%error, "delivery not handed to the broker");
    ApiError::Unavailable("the broker is unreachable; nothing will be sent".into())
}

#[utoipa::path(post, path = "/webhook_endpoints/{id}/test", params(("id" = Uuid, Path)),
    responses((status = 202, description = "a `ping` event is on its way to this endpoint only", body = TestResponse),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn send_test(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let endpoint_id = path_id(&id)?;
    let event_id = ping(&state, auth.app_id, endpoint_id).await?;
    Ok((StatusCode::ACCEPTED, Json(TestResponse { event_id })).into_response())
}

/// Sends a `ping` event to the app's endpoint `endpoint_id` only; the event's id.
pub async fn ping(state: &AppState, app_id: Uuid, endpoint_id: Uuid) -> Result<Uuid, ApiError> {
    let (event_id, delivery_id) = (Uuid::now_v7(), Uuid::now_v7());
    let mut tx = state.pool.begin().await?;
    // Locked, so that a concurrent delete waits and then cancels this delivery too.
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_endpoints
         WHERE id = $1 AND app_id = $2 AND deleted_at IS NULL FOR SHARE",
    )
    .bind(endpoint_id)
    .bind(app_id)
    .fetch_optional(&mut *tx)
    .await?;
    found.ok_or_else(|| no_endpoint(endpoint_id))?;
    // A ping belongs to no user: it takes the next sequence of the app's events of no user.
    let sequence: i64 = sqlx::query_scalar(
        "INSERT INTO event_sequences (app_id, user_id, last_seq) VALUES ($1, '', 1)
         ON CONFLICT (app_id, user_id) DO UPDATE SET last_seq = event_sequences.last_seq + 1
         RETURNING last_seq",
    )
    .bind(app_id)
    .fetch_one(&mut *tx)
    .await?;
    // Relayed here and now (its one delivery is written with it), so no relay picks it up.
    sqlx::query(
        "INSERT INTO events (id, app_id, user_id, type, sequence, data, endpoint_id, relayed)
         VALUES ($1, $2, NULL, $3, $4, '{}'::jsonb, $5, true)",
    )
    .bind(event_id)
    .bind(app_id)
    .bind(EventType::Ping.as_str())
    .bind(sequence)
    .bind(endpoint_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, app_id, event_type, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, now())",
    )
    .bind(delivery_id)
    .bind(event_id)
    .bind(endpoint_id)
    .bind(app_id)
    .bind(EventType::Ping.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Published after the commit: a worker that takes the message finds the delivery.
    let message = DeliveryMessage {
        delivery_id,
        redeliver: false,
    };
    if let Err(error) = state.bus.publish_delivery(&message, delivery_id).await {
        withdraw_test(state, delivery_id, event_id).await;
        return Err(not_sent(error));
    }
    Ok(event_id)
}

/// Takes back a test the broker did not accept, so that a refused test leaves nothing behind.
async fn withdraw_test(state: &AppState, delivery_id: Uuid, event_id: Uuid) {
    let withdrawn = async {
        let mut tx = state.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1")
            .bind(delivery_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM events WHERE id = $1")
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    };
    if let Err(error) = withdrawn.await {
        tracing::error!(%error, delivery.id = %delivery_id, "could not withdraw an unsent test delivery");
    }
}

#[utoipa::path(get, path = "/webhook_endpoints/{id}/deliveries",
    params(("id" = Uuid, Path),
           ("status" = Option<String>, Query, description = "Only deliveries of this status."),
           ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "the endpoint's deliveries, newest first", body = DeliveriesResponse),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DeliveriesResponse>, ApiError> {
    let endpoint_id = path_id(&id)?;
    Ok(Json(
        page(&state.pool, auth.app_id, endpoint_id, &query).await?,
    ))
}

/// A page of the app's endpoint `endpoint_id`'s deliveries, newest first, as `query`
/// (`status`, `limit`, `cursor`) asks.
pub async fn page(
    pool: &PgPool,
    app_id: Uuid,
    endpoint_id: Uuid,
    query: &HashMap<String, String>,
) -> Result<DeliveriesResponse, ApiError> {
    let DeliveriesQuery {
        status,
        limit,
        before,
    } = DeliveriesQuery::parse(query)?;
    let mut connection = pool.acquire().await?;
    endpoint(&mut connection, app_id, endpoint_id).await?;
    let rows: Vec<Delivery> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
         WHERE endpoint_id = $1 AND app_id = $2 AND ($3::text IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC LIMIT $6"
    ))
    .bind(endpoint_id)
    .bind(app_id)
    .bind(status)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&mut *connection)
    .await?;
    let (deliveries, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        let last = deliveries.last().expect("a full page");
        encode_time_cursor(DELIVERIES_CURSOR, last.created_at, last.id)
    });
    Ok(DeliveriesResponse {
        deliveries,
        next_cursor,
    })
}

#[utoipa::path(post, path = "/webhook_deliveries/{id}/redeliver", params(("id" = Uuid, Path)),
    responses((status = 202, description = "the same event (same `webhook-id`) is sent again now, as a new attempt of this delivery", body = Delivery),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let delivery_id = path_id(&id)?;
    let delivery = redeliver_one(&state, auth.app_id, delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)).into_response())
}

/// Sends the app's delivery `delivery_id` again now, as a new attempt of it; the delivery,
/// `pending` again.
pub async fn redeliver_one(
    state: &AppState,
    app_id: Uuid,
    delivery_id: Uuid,
) -> Result<Delivery, ApiError> {
    let mut tx = state.pool.begin().await?;
    // A delivery to a deleted endpoint is gone with it.
    let delivery: Delivery = sqlx::query_as(&format!(
        "UPDATE webhook_deliveries d SET status = 'pending', next_attempt_at = now()
         WHERE d.id = $1 AND d.app_id = $2 AND EXISTS (
             SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.deleted_at IS NULL)
         RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(delivery_id)
    .bind(app_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("no webhook delivery {delivery_id}")))?;
    // Published while the row is locked: a worker that takes the message before the commit
    // waits for it to record the attempt. A fresh message id, so that the broker never takes a
    // redelivery for a repeat of an earlier message; a refused publish rolls back.
    let message = DeliveryMessage {
        delivery_id,
        redeliver: true,
    };
    state
        .bus
        .publish_delivery(&message, Uuid::now_v7())
        .await
        .map_err(not_sent)?;
    tx.commit().await?;
    Ok(delivery)
}
