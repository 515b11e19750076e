//! `/credits/*`: writes go through the broker, reads come straight from Postgres.

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
use tally_common::limits::{CREDIT_LIFETIME_SECONDS_MAX, CREDIT_LIFETIME_SECONDS_MIN};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, page_limit, split_page};
use crate::reads;
use crate::responses::{rfc3339, AcceptedResponse, ErrorResponse};
use crate::validate::{self, Fields};
use crate::write_request::WriteRequest;
use crate::AppState;

/// Body of `POST /credits/add`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AddRequest {
    /// The integrator's id for the user; a user is created, with balance 0, by its first write.
    user_id: String,
    /// Credits to add.
    amount: i64,
    /// Read back in history (`null` when absent).
    description: Option<String>,
    /// Stored on the ledger entry and read back in history (`{}` when absent).
    metadata: Option<HashMap<String, String>>,
    /// When these credits expire; or give `expires_in_seconds`.
    expires_at: Option<String>,
    /// Seconds from now until these credits expire.
    expires_in_seconds: Option<i64>,
}

/// Body of `POST /credits/deduct`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeductRequest {
    user_id: String,
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
    /// Default: all that is left to refund; more than is left is `400` naming `amount`.
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

#[utoipa::path(post, path = "/credits/add", request_body = AddRequest,
    params(("Idempotency-Key" = Option<String>, Header),
           ("Prefer" = Option<String>, Header)),
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
    let write = WriteRequest::read(auth, headers, body, "/credits/add").await?;
    let command = add_command(write.object.clone())?;
    write.submit(&state, command).await
}

/// The command a `POST /credits/add` body asks for (`400` naming the field otherwise).
pub(crate) fn add_command(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(
        object,
        &[
            "user_id",
            "amount",
            "description",
            "metadata",
            "expires_at",
            "expires_in_seconds",
        ],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    let expires_at = expiry(&mut fields)?;
    fields.finish()?;
    Ok(Command::Add {
        user_id,
        amount,
        description,
        metadata,
        expires_at,
    })
}

/// `expires_at` or `expires_in_seconds` of an add: at most one, in the future.
fn expiry(fields: &mut Fields) -> Result<Option<DateTime<Utc>>, ApiError> {
    let at = fields.optional_time("expires_at")?;
    let in_seconds = fields.optional_integer(
        "expires_in_seconds",
        CREDIT_LIFETIME_SECONDS_MIN,
        CREDIT_LIFETIME_SECONDS_MAX,
    )?;
    match (at, in_seconds) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "expires_at",
            "give expires_at or expires_in_seconds, not both",
        )),
        (Some(at), None) if at <= Utc::now() => {
            Err(ApiError::field("expires_at", "must be in the future"))
        }
        (Some(at), None) => Ok(Some(at)),
        (None, Some(seconds)) => Ok(Some(Utc::now() + chrono::Duration::seconds(seconds))),
        (None, None) => Ok(None),
    }
}

#[utoipa::path(post, path = "/credits/deduct", request_body = DeductRequest,
    params(("Idempotency-Key" = Option<String>, Header),
           ("Prefer" = Option<String>, Header)),
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
    let write = WriteRequest::read(auth, headers, body, "/credits/deduct").await?;
    let command = deduct_command(write.object.clone())?;
    write.submit(&state, command).await
}

/// The command a `POST /credits/deduct` body asks for (`400` naming the field otherwise).
pub(crate) fn deduct_command(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(object, &["user_id", "amount", "description", "metadata"])?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    Ok(Command::Deduct {
        user_id,
        amount,
        description,
        metadata,
    })
}

#[utoipa::path(post, path = "/credits/refund", request_body = RefundRequest,
    params(("Idempotency-Key" = Option<String>, Header),
           ("Prefer" = Option<String>, Header)),
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
    let write = WriteRequest::read(auth, headers, body, "/credits/refund").await?;
    let refund = RefundFields::read(write.object.clone())?;
    // The entry names its user, whose partition orders the refund.
    let user_id: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM ledger_entries WHERE id = $1 AND app_id = $2")
            .bind(refund.ledger_id)
            .bind(write.auth.app_id)
            .fetch_optional(&state.pool)
            .await?;
    let user_id = user_id
        .ok_or_else(|| ApiError::NotFound(format!("no ledger entry {}", refund.ledger_id)))?;
    let command = refund.command(user_id);
    write.submit(&state, command).await
}

/// The fields of a `POST /credits/refund` body; the entry's user comes from the ledger.
pub(crate) struct RefundFields {
    ledger_id: Uuid,
    amount: Option<i64>,
    description: Option<String>,
    metadata: Map<String, Value>,
}

impl RefundFields {
    /// Reads the body (`400` naming the field otherwise).
    pub(crate) fn read(object: Map<String, Value>) -> Result<Self, ApiError> {
        let mut fields = Fields::new(object, &["ledger_id", "amount", "description", "metadata"])?;
        let refund = Self {
            ledger_id: fields.uuid("ledger_id")?,
            amount: fields.optional_amount("amount")?,
            description: fields.description()?,
            metadata: fields.metadata()?,
        };
        fields.finish()?;
        Ok(refund)
    }

    fn command(self, user_id: String) -> Command {
        Command::Refund {
            user_id,
            ledger_id: self.ledger_id,
            amount: self.amount,
            description: self.description,
            metadata: self.metadata,
        }
    }
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
    /// The soonest lot with credits left, or null.
    next_expiry: Option<NextExpiry>,
}

#[derive(sqlx::FromRow, Default)]
struct BalanceRow {
    balance: i64,
    held: i64,
    /// Credits of lots past their expiry that the worker has not expired yet.
    expired: i64,
    next_amount: Option<i64>,
    next_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct NextExpiry {
    amount: i64,
    expires_at: String,
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
    let user_id = validate::query_user_id(&query)?;
    // Most users have no expiring credits: one lookup of the account (and a probe of the lots
    // index), grouped with concurrent reads, answers them; only a user with open lots costs the
    // second query.
    let account = state.balances.account(auth.app_id, user_id.clone()).await?;
    let row = match account {
        None => BalanceRow::default(),
        Some(reads::Account {
            balance,
            held,
            open_lots: false,
        }) => BalanceRow {
            balance,
            held,
            ..BalanceRow::default()
        },
        // Credits of a lot past its expiry leave the balance through the worker's expire entry
        // within a second or so; until then reads already leave them out.
        Some(_) => sqlx::query_as(
            "SELECT a.balance, a.held,
                    COALESCE((SELECT sum(remaining) FROM lots l WHERE l.app_id = a.app_id AND l.user_id = a.user_id
                                AND l.expired_at IS NULL AND l.expires_at <= now()), 0)::bigint AS expired,
                    n.remaining AS next_amount, n.expires_at AS next_at
             FROM accounts a
             LEFT JOIN LATERAL (SELECT remaining, expires_at FROM lots l
                                WHERE l.app_id = a.app_id AND l.user_id = a.user_id AND l.expired_at IS NULL
                                  AND l.expires_at > now() AND l.remaining > 0
                                ORDER BY expires_at, id LIMIT 1) n ON true
             WHERE a.app_id = $1 AND a.user_id = $2",
        )
        .bind(auth.app_id)
        .bind(&user_id)
        .fetch_optional(&state.pool)
        .await?
        .unwrap_or_default(),
    };
    let BalanceRow {
        balance,
        held,
        expired,
        next_amount,
        next_at,
    } = row;
    let balance = balance - expired;
    let next_expiry = next_amount.zip(next_at).map(|(amount, at)| NextExpiry {
        amount,
        expires_at: rfc3339(at),
    });
    Ok(Json(BalanceResponse {
        user_id,
        balance,
        held,
        available: balance - held,
        next_expiry,
    }))
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
    /// The lot an add or payment granted, or an expire entry emptied.
    lot_id: Option<Uuid>,
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

/// The parameters of `GET /credits/history`.
pub(crate) struct HistoryQuery {
    user_id: String,
    limit: i64,
    /// The `seq` the page starts below (from `cursor`).
    before: Option<i64>,
}

impl HistoryQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let user_id = validate::query_user_id(query)?;
        let limit = page_limit(query)?;
        let before = match query.get("cursor") {
            None => None,
            Some(cursor) => Some(
                decode_cursor(HISTORY_CURSOR, cursor)?
                    .parse::<i64>()
                    .map_err(|_| {
                        ApiError::field("cursor", "is not a cursor issued by this endpoint")
                    })?,
            ),
        };
        Ok(Self {
            user_id,
            limit,
            before,
        })
    }
}

#[utoipa::path(get, path = "/credits/history",
    params(("user_id" = String, Query), ("limit" = Option<i64>, Query),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = HistoryResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn history(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let HistoryQuery {
        user_id,
        limit,
        before,
    } = HistoryQuery::parse(&query)?;
    // Entries are numbered per user in the order they were applied, so paging by that number
    // never skips or repeats an entry while new ones arrive.
    let rows = sqlx::query_as::<_, crate::entries::Entry>(&format!(
        "SELECT {} FROM ledger_entries
         WHERE app_id = $1 AND user_id = $2 AND ($3::bigint IS NULL OR seq < $3)
         ORDER BY seq DESC LIMIT $4",
        crate::entries::COLUMNS
    ))
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        encode_cursor(
            HISTORY_CURSOR,
            &rows.last().expect("a full page").seq.to_string(),
        )
    });
    let entries = rows
        .into_iter()
        .map(|entry| HistoryEntry {
            ledger_id: entry.ledger_id,
            entry_type: entry.entry_type,
            amount: entry.amount,
            balance_after: entry.balance_after,
            description: entry.description,
            metadata: entry.metadata,
            source: entry.source,
            refunded_ledger_id: entry.refunded_ledger_id,
            hold_id: entry.hold_id,
            expires_at: entry.expires_at.map(rfc3339),
            lot_id: entry.lot_id,
            created_at: rfc3339(entry.created_at),
        })
        .collect();
    Ok(Json(HistoryResponse {
        user_id,
        entries,
        next_cursor,
    }))
}
