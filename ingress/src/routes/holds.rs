//! Holds: reserve credits before an expensive job, capture the real cost after.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tally_common::credit_type::CreditType;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::operations::Operation;
use crate::paging::{encode_time_cursor, page_limit, split_page, time_cursor};
use crate::responses::{rfc3339, AcceptedResponse, ErrorResponse};
use crate::routes::credits::write;
use crate::validate;
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
    /// Which of the user's balances to reserve from.
    credit_type: Option<String>,
}

/// Answer to a hold.
#[derive(Serialize, ToSchema)]
pub struct HoldResponse {
    success: bool,
    user_id: String,
    credit_type: String,
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
    /// The hold's type: a capture charges that balance.
    credit_type: String,
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
    credit_type: String,
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
    write(&state, auth, headers, body, Operation::Hold).await
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
    write(&state, auth, headers, body, Operation::Capture).await
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
    write(&state, auth, headers, body, Operation::Release).await
}

/// One hold as listed.
#[derive(Serialize, ToSchema)]
pub struct HoldRecord {
    hold_id: Uuid,
    credit_type: String,
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
    credit_type: String,
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
    /// Only holds of this type; every type when absent.
    credit_type: Option<CreditType>,
    limit: i64,
    /// `created_at` and id of the last hold of the previous page (from `cursor`).
    before: Option<(DateTime<Utc>, Uuid)>,
}

impl HoldsQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let user_id = validate::query_user_id(query)?;
        let status = validate::query_one_of(query, "status", HOLD_STATUSES)?;
        let credit_type = validate::query_optional_credit_type(query)?;
        let limit = page_limit(query)?;
        let before = time_cursor(HOLDS_CURSOR, query)?;
        Ok(Self {
            user_id,
            status,
            credit_type,
            limit,
            before,
        })
    }
}

#[utoipa::path(get, path = "/credits/holds",
    params(("user_id" = String, Query), ("status" = Option<String>, Query),
           ("credit_type" = Option<String>, Query, description = "Only holds of this type; every type when absent."),
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
        credit_type,
        limit,
        before,
    } = HoldsQuery::parse(&query)?;
    let rows: Vec<HoldRow> = sqlx::query_as(
        // A hold past its expiry is expired, even in the second before a sweep settles it.
        "SELECT id, credit_type, amount, captured, status, expires_at, created_at FROM (
             SELECT id, credit_type, amount, captured, expires_at, created_at,
                    CASE WHEN status = 'active' AND expires_at <= now() THEN 'expired' ELSE status END AS status
             FROM holds WHERE app_id = $1 AND user_id = $2) h
         WHERE ($3::text IS NULL OR status = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
           AND ($7::text IS NULL OR credit_type = $7)
         ORDER BY created_at DESC, id DESC LIMIT $6",
    )
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(status)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1).unwrap_or_default())
    .bind(limit + 1)
    .bind(credit_type.as_ref().map(CreditType::as_str))
    .fetch_all(&state.pool)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        let last = rows.last().expect("a full page");
        encode_time_cursor(HOLDS_CURSOR, last.created_at, last.id)
    });
    let holds = rows
        .iter()
        .map(|row| HoldRecord {
            hold_id: row.id,
            credit_type: row.credit_type.clone(),
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
