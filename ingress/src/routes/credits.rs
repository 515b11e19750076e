//! `/credits/*`: writes go through the broker, reads come straight from Postgres.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use tally_common::command::Command;
use tally_common::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::submit::{submit, Submission};
use crate::validate::{self, Fields};
use crate::AppState;

/// Body of `POST /credits/add`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AddRequest {
    /// The integrator's id for the user (1..=255 bytes).
    user_id: String,
    /// Credits to add, 1..=10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000i64)]
    amount: i64,
    /// At most 1,000 characters.
    description: Option<String>,
    /// At most 50 keys, string values.
    metadata: Option<HashMap<String, String>>,
}

/// Body of `POST /credits/deduct`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeductRequest {
    user_id: String,
    #[schema(minimum = 1, maximum = 1_000_000_000_000i64)]
    amount: i64,
    description: Option<String>,
    metadata: Option<HashMap<String, String>>,
}

/// Body of `POST /credits/refund`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RefundRequest {
    /// The add, deduct or payment entry to reverse.
    ledger_id: Uuid,
    /// Default: all that is left to refund.
    #[schema(minimum = 1, maximum = 1_000_000_000_000i64)]
    amount: Option<i64>,
    description: Option<String>,
    metadata: Option<HashMap<String, String>>,
}

/// Answer to an applied add or deduct.
#[derive(Serialize, ToSchema)]
pub struct WriteResponse {
    success: bool,
    user_id: String,
    balance_after: i64,
    ledger_id: Uuid,
}

/// Answer to an applied refund.
#[derive(Serialize, ToSchema)]
pub struct RefundResponse {
    success: bool,
    user_id: String,
    balance_after: i64,
    ledger_id: Uuid,
    refunded_ledger_id: Uuid,
}

/// A write accepted but not (yet) applied: follow `status_url`.
#[derive(Serialize, ToSchema)]
pub struct AcceptedResponse {
    success: bool,
    /// Always `accepted`.
    status: String,
    command_id: Uuid,
    status_url: String,
}

/// Every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    success: bool,
    /// Stable machine-readable code, e.g. `insufficient_credits`.
    error: String,
    message: String,
    /// For `invalid_request`: the field at fault.
    field: Option<String>,
    /// For `insufficient_credits` and `balance_overflow`.
    balance: Option<i64>,
    available: Option<i64>,
}

struct Write {
    auth: Auth,
    headers: HeaderMap,
    path: &'static str,
    object: Map<String, Value>,
}

impl Write {
    async fn read(
        auth: Auth,
        headers: HeaderMap,
        body: Body,
        path: &'static str,
    ) -> Result<Self, ApiError> {
        let object = validate::json_object(&headers, body).await?;
        Ok(Self {
            auth,
            headers,
            path,
            object,
        })
    }

    async fn submit(self, state: &AppState, command: Command) -> Result<Response, ApiError> {
        let key = validate::idempotency_key(&self.headers)?;
        let idempotency =
            key.map(|key| (key, validate::request_hash("POST", self.path, &self.object)));
        submit(
            state,
            Submission {
                app_id: self.auth.app_id,
                command,
                idempotency,
                respond_async: validate::prefers_async(&self.headers),
            },
        )
        .await
    }
}

#[utoipa::path(post, path = "/credits/add", request_body = AddRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries"),
           ("Prefer" = Option<String>, Header, description = "`respond-async` answers 202 at once")),
    responses((status = 200, body = WriteResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
              (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn add(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = Write::read(auth, headers, body, "/credits/add").await?;
    let mut fields = Fields::new(
        write.object.clone(),
        &["user_id", "amount", "description", "metadata"],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    write
        .submit(
            &state,
            Command::Add {
                user_id,
                amount,
                description,
                metadata,
                expires_at: None,
            },
        )
        .await
}

#[utoipa::path(post, path = "/credits/deduct", request_body = DeductRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries"),
           ("Prefer" = Option<String>, Header, description = "`respond-async` answers 202 at once")),
    responses((status = 200, body = WriteResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
              (status = 402, description = "insufficient_credits; nothing written", body = ErrorResponse),
              (status = 409, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn deduct(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = Write::read(auth, headers, body, "/credits/deduct").await?;
    let mut fields = Fields::new(
        write.object.clone(),
        &["user_id", "amount", "description", "metadata"],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    write
        .submit(
            &state,
            Command::Deduct {
                user_id,
                amount,
                description,
                metadata,
            },
        )
        .await
}

#[utoipa::path(post, path = "/credits/refund", request_body = RefundRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries"),
           ("Prefer" = Option<String>, Header, description = "`respond-async` answers 202 at once")),
    responses((status = 200, body = RefundResponse), (status = 202, body = AcceptedResponse),
              (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
              (status = 402, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 409, description = "already_refunded or idempotency", body = ErrorResponse),
              (status = 422, description = "not_refundable", body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn refund(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let write = Write::read(auth, headers, body, "/credits/refund").await?;
    let mut fields = Fields::new(
        write.object.clone(),
        &["ledger_id", "amount", "description", "metadata"],
    )?;
    let ledger_id = fields.uuid("ledger_id")?;
    let amount = fields.optional_amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    // The entry names its user, whose partition orders the refund.
    let user_id: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM ledger_entries WHERE id = $1 AND app_id = $2")
            .bind(ledger_id)
            .bind(write.auth.app_id)
            .fetch_optional(&state.pool)
            .await?;
    let user_id =
        user_id.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
    write
        .submit(
            &state,
            Command::Refund {
                user_id,
                ledger_id,
                amount,
                description,
                metadata,
            },
        )
        .await
}

/// A user's balance.
#[derive(Serialize, ToSchema)]
pub struct BalanceResponse {
    user_id: String,
    /// Credits the user owns.
    balance: i64,
    /// Credits reserved by active holds.
    held: i64,
    /// `balance - held`: what deducts and new holds may use.
    available: i64,
}

#[utoipa::path(get, path = "/credits/balance",
    params(("user_id" = String, Query)),
    responses((status = 200, body = BalanceResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn balance(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<BalanceResponse>, ApiError> {
    let user_id = query_user_id(&query)?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT balance, held FROM accounts WHERE app_id = $1 AND user_id = $2")
            .bind(auth.app_id)
            .bind(&user_id)
            .fetch_optional(&state.pool)
            .await?;
    let (balance, held) = row.unwrap_or((0, 0));
    Ok(Json(BalanceResponse {
        user_id,
        balance,
        held,
        available: balance - held,
    }))
}

fn query_user_id(query: &HashMap<String, String>) -> Result<String, ApiError> {
    let user_id = query
        .get("user_id")
        .cloned()
        .ok_or_else(|| ApiError::field("user_id", "is required"))?;
    validate::check_user_id("user_id", user_id)
}

/// Page size from `limit` (1..=200, default 50).
pub fn page_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(text) => match text.parse::<i64>() {
            Ok(limit) if (1..=PAGE_LIMIT_MAX).contains(&limit) => Ok(limit),
            _ => Err(ApiError::field(
                "limit",
                format!("must be an integer from 1 to {PAGE_LIMIT_MAX}"),
            )),
        },
    }
}

/// Opaque cursors: a versioned tag and a position, base64url-encoded.
pub fn encode_cursor(kind: &str, position: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{kind}:{position}"))
}

/// The position inside a cursor of `kind`; 400 naming `cursor` for anything this API did not issue.
pub fn decode_cursor(kind: &str, cursor: &str) -> Result<String, ApiError> {
    let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::to_string)
        .ok_or_else(bad)
}

/// One ledger entry as history shows it.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    ledger_id: Uuid,
    /// add, deduct, refund, payment, expire or clawback.
    #[serde(rename = "type")]
    entry_type: String,
    /// Signed: negative for what left the balance.
    amount: i64,
    balance_after: i64,
    description: Option<String>,
    #[schema(value_type = Object)]
    metadata: Value,
    /// api, stripe, polar, system or dashboard.
    source: String,
    refunded_ledger_id: Option<Uuid>,
    /// The hold a capture's deduct came from.
    hold_id: Option<Uuid>,
    /// When an add's credits expire (null: never).
    expires_at: Option<String>,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryResponse {
    user_id: String,
    entries: Vec<HistoryEntry>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

const HISTORY_CURSOR: &str = "h1";

pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[utoipa::path(get, path = "/credits/history",
    params(("user_id" = String, Query), ("limit" = Option<i64>, Query, description = "1..=200, default 50"),
           ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = HistoryResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn history(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let user_id = query_user_id(&query)?;
    let limit = page_limit(&query)?;
    let before: Option<i64> = match query.get("cursor") {
        None => None,
        Some(cursor) => Some(
            decode_cursor(HISTORY_CURSOR, cursor)?
                .parse::<i64>()
                .map_err(|_| {
                    ApiError::field("cursor", "is not a cursor issued by this endpoint")
                })?,
        ),
    };
    // Entries are numbered per user in the order they were applied, so paging by that number
    // never skips or repeats an entry while new ones arrive.
    let rows = sqlx::query_as::<
        _,
        (
            Uuid,
            String,
            i64,
            i64,
            Option<String>,
            Value,
            String,
            Option<Uuid>,
            Option<Uuid>,
            Option<DateTime<Utc>>,
            DateTime<Utc>,
            i64,
        ),
    >(
        "SELECT id, type, amount, balance_after, description, metadata, source, refunded_ledger_id,
                hold_id, expires_at, created_at, seq
         FROM ledger_entries
         WHERE app_id = $1 AND user_id = $2 AND ($3::bigint IS NULL OR seq < $3)
         ORDER BY seq DESC LIMIT $4",
    )
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let rows = &rows[..rows.len().min(limit as usize)];
    let next_cursor = more.then(|| {
        encode_cursor(
            HISTORY_CURSOR,
            &rows.last().expect("a full page").11.to_string(),
        )
    });
    let entries = rows
        .iter()
        .map(|row| HistoryEntry {
            ledger_id: row.0,
            entry_type: row.1.clone(),
            amount: row.2,
            balance_after: row.3,
            description: row.4.clone(),
            metadata: row.5.clone(),
            source: row.6.clone(),
            refunded_ledger_id: row.7,
            hold_id: row.8,
            expires_at: row.9.map(rfc3339),
            created_at: rfc3339(row.10),
        })
        .collect();
    Ok(Json(HistoryResponse {
        user_id,
        entries,
        next_cursor,
    }))
}
