//! `/credits/*`: writes go through the broker, reads come straight from Postgres.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tally_common::credit_type::CreditType;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::operations::Operation;
use crate::paging::{decode_cursor, encode_cursor, page_limit, split_page};
use crate::reads;
use crate::responses::{rfc3339, AcceptedResponse, ErrorResponse};
use crate::validate;
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
    /// Which of the user's balances.
    credit_type: Option<String>,
}

/// Body of `POST /credits/deduct`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeductRequest {
    user_id: String,
    amount: i64,
    description: Option<String>,
    metadata: Option<HashMap<String, String>>,
    /// Which of the user's balances.
    credit_type: Option<String>,
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
    /// The balance written.
    credit_type: String,
    /// The balance of `credit_type` after the write.
    balance_after: i64,
    ledger_id: Uuid,
}

/// Answer to an applied refund.
#[derive(Serialize, ToSchema)]
pub struct RefundResponse {
    success: bool,
    user_id: String,
    /// The refunded entry's type: a refund acts on that balance.
    credit_type: String,
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
    write(&state, auth, headers, body, Operation::Add).await
}

/// Reads a write request of `operation`, routes it to its user and submits it.
pub(crate) async fn write(
    state: &AppState,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
    operation: Operation,
) -> Result<Response, ApiError> {
    let write = WriteRequest::read(auth, headers, body, operation.path()).await?;
    let command = operation
        .read(write.object.clone())?
        .route(&state.pool, write.auth.app_id)
        .await?;
    write.submit(state, command).await
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
    write(&state, auth, headers, body, Operation::Deduct).await
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
    write(&state, auth, headers, body, Operation::Refund).await
}

/// A user's balance of one credit type.
#[derive(Serialize, ToSchema)]
pub struct BalanceResponse {
    user_id: String,
    credit_type: String,
    /// Credits the user owns.
    balance: i64,
    /// Credits reserved by active holds.
    held: i64,
    /// `balance - held`: what deducts and new holds may use.
    available: i64,
    /// The soonest lot with credits left, or null.
    next_expiry: Option<NextExpiry>,
}

/// One balance of `GET /credits/balances`.
#[derive(Serialize, ToSchema)]
pub struct TypeBalance {
    credit_type: String,
    balance: i64,
    held: i64,
    available: i64,
    next_expiry: Option<NextExpiry>,
}

/// Every credit type a user has.
#[derive(Serialize, ToSchema)]
pub struct BalancesResponse {
    user_id: String,
    /// One per credit type the user has ever been written, ordered by type.
    balances: Vec<TypeBalance>,
}

/// An account row with what its lots add to a read (also the admin reads' source).
#[derive(sqlx::FromRow)]
pub(crate) struct BalanceRow {
    pub(crate) credit_type: String,
    balance: i64,
    pub(crate) held: i64,
    /// Credits of lots past their expiry that the worker has not expired yet.
    expired: i64,
    pub(crate) next_amount: Option<i64>,
    pub(crate) next_at: Option<DateTime<Utc>>,
}

impl BalanceRow {
    fn empty(credit_type: &CreditType) -> Self {
        Self {
            credit_type: credit_type.to_string(),
            balance: 0,
            held: 0,
            expired: 0,
            next_amount: None,
            next_at: None,
        }
    }

    /// The balance as reads show it: credits of a lot past its expiry leave the balance through
    /// the worker's expire entry within a second or so; until then reads already leave them out.
    pub(crate) fn balance(&self) -> i64 {
        self.balance - self.expired
    }

    fn into_balance(self) -> TypeBalance {
        let balance = self.balance();
        TypeBalance {
            credit_type: self.credit_type,
            balance,
            held: self.held,
            available: balance - self.held,
            next_expiry: self
                .next_amount
                .zip(self.next_at)
                .map(|(amount, at)| NextExpiry {
                    amount,
                    expires_at: rfc3339(at),
                }),
        }
    }
}

/// The account rows of a user (of one type, or all), with what their lots add to a read.
pub(crate) async fn balance_rows(
    pool: &sqlx::PgPool,
    app_id: Uuid,
    user_id: &str,
    credit_type: Option<&CreditType>,
) -> Result<Vec<BalanceRow>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT a.credit_type, a.balance, a.held,
                COALESCE((SELECT sum(remaining) FROM lots l
                          WHERE l.app_id = a.app_id AND l.user_id = a.user_id
                            AND l.credit_type = a.credit_type
                            AND l.expired_at IS NULL AND l.expires_at <= now()), 0)::bigint AS expired,
                n.remaining AS next_amount, n.expires_at AS next_at
         FROM accounts a
         LEFT JOIN LATERAL (SELECT remaining, expires_at FROM lots l
                            WHERE l.app_id = a.app_id AND l.user_id = a.user_id
                              AND l.credit_type = a.credit_type AND l.expired_at IS NULL
                              AND l.expires_at > now() AND l.remaining > 0
                            ORDER BY expires_at, id LIMIT 1) n ON true
         WHERE a.app_id = $1 AND a.user_id = $2 AND ($3::text IS NULL OR a.credit_type = $3)
         ORDER BY a.credit_type",
    )
    .bind(app_id)
    .bind(user_id)
    .bind(credit_type.map(CreditType::as_str))
    .fetch_all(pool)
    .await?)
}

#[derive(Serialize, ToSchema)]
pub struct NextExpiry {
    amount: i64,
    expires_at: String,
}

#[utoipa::path(get, path = "/credits/balance",
    params(("user_id" = String, Query), ("credit_type" = Option<String>, Query)),
    responses((status = 200, body = BalanceResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn balance(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<BalanceResponse>, ApiError> {
    let (user_id, credit_type) = balance_query(&query)?;
    // Most users have no expiring credits: one lookup of the account (and a probe of the lots
    // index), grouped with concurrent reads, answers them; only a user with open lots costs the
    // second query.
    let account = state
        .balances
        .account(auth.app_id, user_id.clone(), credit_type.clone())
        .await?;
    let row = match account {
        None => BalanceRow::empty(&credit_type),
        Some(reads::Account {
            balance,
            held,
            open_lots: false,
        }) => BalanceRow {
            balance,
            held,
            ..BalanceRow::empty(&credit_type)
        },
        Some(_) => balance_rows(&state.pool, auth.app_id, &user_id, Some(&credit_type))
            .await?
            .pop()
            .unwrap_or_else(|| BalanceRow::empty(&credit_type)),
    };
    let TypeBalance {
        credit_type,
        balance,
        held,
        available,
        next_expiry,
    } = row.into_balance();
    Ok(Json(BalanceResponse {
        user_id,
        credit_type,
        balance,
        held,
        available,
        next_expiry,
    }))
}

/// The user and credit type of `GET /credits/balance` (`400` naming the parameter otherwise).
pub(crate) fn balance_query(
    query: &HashMap<String, String>,
) -> Result<(String, CreditType), ApiError> {
    Ok((
        validate::query_user_id(query)?,
        validate::query_credit_type(query)?,
    ))
}

#[utoipa::path(get, path = "/credits/balances",
    params(("user_id" = String, Query)),
    responses((status = 200, body = BalancesResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn balances(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<BalancesResponse>, ApiError> {
    let user_id = validate::query_user_id(&query)?;
    let balances = balance_rows(&state.pool, auth.app_id, &user_id, None)
        .await?
        .into_iter()
        .map(BalanceRow::into_balance)
        .collect();
    Ok(Json(BalancesResponse { user_id, balances }))
}

/// One ledger entry as history shows it.
#[derive(Serialize, ToSchema)]
pub struct HistoryEntry {
    ledger_id: Uuid,
    /// add, deduct, refund, payment, expire or clawback.
    #[serde(rename = "type")]
    entry_type: String,
    /// The balance the entry changed.
    credit_type: String,
    /// Signed: negative for what left the balance.
    amount: i64,
    /// The balance of `credit_type` after the entry.
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
    /// Only entries of this type; every type when absent.
    credit_type: Option<CreditType>,
    limit: i64,
    /// The `seq` the page starts below (from `cursor`).
    before: Option<i64>,
}

impl HistoryQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let user_id = validate::query_user_id(query)?;
        let credit_type = validate::query_optional_credit_type(query)?;
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
            credit_type,
            limit,
            before,
        })
    }
}

#[utoipa::path(get, path = "/credits/history",
    params(("user_id" = String, Query), ("limit" = Option<i64>, Query),
           ("cursor" = Option<String>, Query),
           ("credit_type" = Option<String>, Query, description = "Only entries of this type; every type when absent.")),
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
        credit_type,
        limit,
        before,
    } = HistoryQuery::parse(&query)?;
    // Entries are numbered per user (across credit types) in the order they were applied, so
    // paging by that number never skips or repeats an entry while new ones arrive.
    let rows = sqlx::query_as::<_, crate::entries::Entry>(&format!(
        "SELECT {} FROM ledger_entries
         WHERE app_id = $1 AND user_id = $2 AND ($3::bigint IS NULL OR seq < $3)
           AND ($5::text IS NULL OR credit_type = $5)
         ORDER BY seq DESC LIMIT $4",
        crate::entries::COLUMNS
    ))
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(before)
    .bind(limit + 1)
    .bind(credit_type.as_ref().map(CreditType::as_str))
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
            credit_type: entry.credit_type,
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
