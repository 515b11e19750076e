//! Holds: reserve credits before an expensive job, capture the real cost after.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use tally_common::command::Command;
use tally_common::limits::{HOLD_SECONDS_DEFAULT, HOLD_SECONDS_MAX, HOLD_SECONDS_MIN};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, page_limit, split_page};
use crate::responses::{rfc3339, AcceptedResponse, ErrorResponse};
use crate::validate::{self, Fields};
use crate::write_request::WriteRequest;
use crate::AppState;

/// Body of `POST /credits/hold`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HoldRequest {
    user_id: String,
    amount: i64,
    /// Released automatically after this long.
    expires_in_seconds: Option<i64>,
    description: Option<String>,
    metadata: Option<HashMap<String, String>>,
}

/// Answer to a hold.
#[derive(Serialize, ToSchema)]
pub struct HoldResponse {
    success: bool,
    user_id: String,
    hold_id: Uuid,
    amount: i64,
    balance: i64,
    available: i64,
    expires_at: String,
}

/// Body of `POST /credits/capture`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CaptureRequest {
    hold_id: Uuid,
    /// Default: all held; more than held is `400` naming `amount`.
    amount: Option<i64>,
}

/// Answer to a capture.
#[derive(Serialize, ToSchema)]
pub struct CaptureResponse {
    success: bool,
    user_id: String,
    hold_id: Uuid,
    /// The deduct entry the capture wrote.
    ledger_id: Uuid,
    captured: i64,
    released: i64,
    balance_after: i64,
}

/// Body of `POST /credits/release`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReleaseRequest {
    hold_id: Uuid,
}

/// Answer to a release.
#[derive(Serialize, ToSchema)]
pub struct ReleaseResponse {
    success: bool,
    user_id: String,
    hold_id: Uuid,
    released: i64,
    balance: i64,
    available: i64,
}

#[utoipa::path(post, path = "/credits/hold", request_body = HoldRequest,
    params(("Idempotency-Key" = Option<String>, Header), ("Prefer" = Option<String>, Header)),
    responses((status = 200, body = HoldResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 402, body = ErrorResponse),
              (status = 409, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn hold(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = WriteRequest::read(auth, headers, body, "/credits/hold").await?;
    let command = hold_command(write.object.clone())?;
    write.submit(&state, command).await
}

/// The command a `POST /credits/hold` body asks for (`400` naming the field otherwise).
pub(crate) fn hold_command(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(
        object,
        &[
            "user_id",
            "amount",
            "expires_in_seconds",
            "description",
            "metadata",
        ],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let expires_in_seconds = fields
        .optional_integer("expires_in_seconds", HOLD_SECONDS_MIN, HOLD_SECONDS_MAX)?
        .unwrap_or(HOLD_SECONDS_DEFAULT);
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    Ok(Command::Hold {
        user_id,
        amount,
        expires_in_seconds,
        description,
        metadata,
    })
}

/// The user of the app's hold `hold_id` (its partition orders the settlement); 404 otherwise.
async fn hold_user(state: &AppState, app_id: Uuid, hold_id: Uuid) -> Result<String, ApiError> {
    let user: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM holds WHERE id = $1 AND app_id = $2")
            .bind(hold_id)
            .bind(app_id)
            .fetch_optional(&state.pool)
            .await?;
    user.ok_or_else(|| ApiError::NotFound(format!("no hold {hold_id}")))
}

#[utoipa::path(post, path = "/credits/capture", request_body = CaptureRequest,
    params(("Idempotency-Key" = Option<String>, Header), ("Prefer" = Option<String>, Header)),
    responses((status = 200, body = CaptureResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 409, description = "hold_not_active", body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn capture(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = WriteRequest::read(auth, headers, body, "/credits/capture").await?;
    let (hold_id, amount) = capture_fields(write.object.clone())?;
    let user_id = hold_user(&state, write.auth.app_id, hold_id).await?;
    write
        .submit(
            &state,
            Command::Capture {
                user_id,
                hold_id,
                amount,
            },
        )
        .await
}

/// The hold and amount of a `POST /credits/capture` body (`400` naming the field otherwise).
pub(crate) fn capture_fields(object: Map<String, Value>) -> Result<(Uuid, Option<i64>), ApiError> {
    let mut fields = Fields::new(object, &["hold_id", "amount"])?;
    let hold_id = fields.uuid("hold_id")?;
    let amount = fields.optional_amount("amount")?;
    fields.finish()?;
    Ok((hold_id, amount))
}

#[utoipa::path(post, path = "/credits/release", request_body = ReleaseRequest,
    params(("Idempotency-Key" = Option<String>, Header), ("Prefer" = Option<String>, Header)),
    responses((status = 200, body = ReleaseResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 409, description = "hold_not_active", body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn release(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = WriteRequest::read(auth, headers, body, "/credits/release").await?;
    let hold_id = release_fields(write.object.clone())?;
    let user_id = hold_user(&state, write.auth.app_id, hold_id).await?;
    write
        .submit(&state, Command::Release { user_id, hold_id })
        .await
}

/// The hold of a `POST /credits/release` body (`400` naming the field otherwise).
pub(crate) fn release_fields(object: Map<String, Value>) -> Result<Uuid, ApiError> {
    let mut fields = Fields::new(object, &["hold_id"])?;
    let hold_id = fields.uuid("hold_id")?;
    fields.finish()?;
    Ok(hold_id)
}

/// One hold as listed.
#[derive(Serialize, ToSchema)]
pub struct HoldRecord {
    hold_id: Uuid,
    amount: i64,
    captured: i64,
    /// active, captured, released or expired.
    status: String,
    expires_at: String,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct HoldsResponse {
    user_id: String,
    holds: Vec<HoldRecord>,
    next_cursor: Option<String>,
}

const HOLDS_CURSOR: &str = "k1";

#[derive(sqlx::FromRow)]
struct HoldRow {
    id: Uuid,
    amount: i64,
    captured: i64,
    status: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// The statuses `GET /credits/holds?status=` filters by.
pub const HOLD_STATUSES: &[&str] = &["active", "captured", "released", "expired"];

/// The parameters of `GET /credits/holds`.
pub(crate) struct HoldsQuery {
    user_id: String,
    status: Option<String>,
    limit: i64,
    /// `created_at` and id of the last hold of the previous page (from `cursor`).
    before: Option<(DateTime<Utc>, Uuid)>,
}

impl HoldsQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let user_id = validate::query_user_id(query)?;
        let status = match query.get("status") {
            None => None,
            Some(status) if HOLD_STATUSES.contains(&status.as_str()) => Some(status.clone()),
            Some(_) => {
                return Err(ApiError::field(
                    "status",
                    "must be active, captured, released or expired",
                ))
            }
        };
        let limit = page_limit(query)?;
        let before = match query.get("cursor") {
            None => None,
            Some(cursor) => {
                let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
                let position = decode_cursor(HOLDS_CURSOR, cursor)?;
                let (micros, id) = position.split_once('|').ok_or_else(bad)?;
                let at = micros
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_micros)
                    .ok_or_else(bad)?;
                Some((at, Uuid::parse_str(id).map_err(|_| bad())?))
            }
        };
        Ok(Self {
            user_id,
            status,
            limit,
            before,
        })
    }
}

#[utoipa::path(get, path = "/credits/holds",
    params(("user_id" = String, Query), ("status" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = HoldsResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<HoldsResponse>, ApiError> {
    let HoldsQuery {
        user_id,
        status,
        limit,
        before,
    } = HoldsQuery::parse(&query)?;
    let rows: Vec<HoldRow> = sqlx::query_as(
        // A hold past its expiry is expired, even in the second before a sweep settles it.
        "SELECT id, amount, captured, status, expires_at, created_at FROM (
             SELECT id, amount, captured, expires_at, created_at,
                    CASE WHEN status = 'active' AND expires_at <= now() THEN 'expired' ELSE status END AS status
             FROM holds WHERE app_id = $1 AND user_id = $2) h
         WHERE ($3::text IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC LIMIT $6",
    )
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(status)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        let last = rows.last().expect("a full page");
        encode_cursor(
            HOLDS_CURSOR,
            &format!("{}|{}", last.created_at.timestamp_micros(), last.id),
        )
    });
    let holds = rows
        .iter()
        .map(|row| HoldRecord {
            hold_id: row.id,
            amount: row.amount,
            captured: row.captured,
            status: row.status.clone(),
            expires_at: rfc3339(row.expires_at),
            created_at: rfc3339(row.created_at),
        })
        .collect();
    Ok(Json(HoldsResponse {
        user_id,
        holds,
        next_cursor,
    }))
}
