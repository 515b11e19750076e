//! The reads behind `/admin/*` and the dashboard, across every app.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, split_page};
use crate::responses::rfc3339;

/// Most days the chart and `/admin/apps/{id}/stats` cover.
pub const STATS_DAYS_MAX: i64 = 90;
pub const STATS_DAYS_DEFAULT: i64 = 14;
/// Most pages `page=` may skip (offset paging of users and events stays cheap).
pub const PAGE_INDEX_MAX: i64 = 10_000;

const ENTRY_TYPES: &[&str] = &["add", "deduct", "refund", "payment", "expire", "clawback"];
const SOURCES: &[&str] = &["api", "stripe", "polar", "system", "dashboard"];
const PROVIDERS: &[&str] = &["stripe", "polar"];
const OUTCOMES: &[&str] = &[
    "credited",
    "clawed_back",
    "duplicate",
    "ignored",
    "rejected",
];
const HISTORY_CURSOR: &str = "a1";

pub struct App {
    pub id: Uuid,
    pub name: String,
}

/// The app, or 404.
pub async fn app(pool: &PgPool, app_id: Uuid) -> Result<App, ApiError> {
    let name: Option<String> = sqlx::query_scalar("SELECT name FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(pool)
        .await?;
    name.map(|name| App { id: app_id, name })
        .ok_or_else(|| ApiError::NotFound(format!("no app {app_id}")))
}

/// An optional integer query parameter within `min..=max`, 400 naming it otherwise.
pub fn integer(
    query: &HashMap<String, String>,
    name: &str,
    min: i64,
    max: i64,
) -> Result<Option<i64>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(Some(value)),
            _ => Err(ApiError::field(
                name,
                format!("must be an integer from {min} to {max}"),
            )),
        },
    }
}

/// An optional query parameter that must be one of `allowed`.
fn one_of(
    query: &HashMap<String, String>,
    name: &str,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match query.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(text) if allowed.contains(&text) => Ok(Some(text.to_string())),
        Some(_) => Err(ApiError::field(
            name,
            format!("must be one of {}", allowed.join(", ")),
        )),
    }
}

/// Every app with its users, credits outstanding, the last 24 hours' adds and spends, active
/// holds and rejected webhook events.
pub async fn apps(pool: &PgPool) -> Result<Vec<Value>, ApiError> {
    type Row = (Uuid, String, DateTime<Utc>, i64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT a.id, a.name, a.created_at,
                (SELECT count(*) FROM accounts c WHERE c.app_id = a.id),
                (SELECT COALESCE(sum(balance), 0)::bigint FROM accounts c WHERE c.app_id = a.id),
                (SELECT COALESCE(sum(amount) FILTER (WHERE amount > 0), 0)::bigint FROM ledger_entries e
                  WHERE e.app_id = a.id AND e.created_at > now() - interval '24 hours'),
                (SELECT COALESCE(-sum(amount) FILTER (WHERE amount < 0 AND type IN ('deduct', 'expire')), 0)::bigint
                   FROM ledger_entries e WHERE e.app_id = a.id AND e.created_at > now() - interval '24 hours'),
                (SELECT count(*) FROM holds h WHERE h.app_id = a.id AND h.status = 'active'),
                (SELECT count(*) FROM webhook_events w WHERE w.app_id = a.id AND w.outcome = 'rejected'
                   AND w.received_at > now() - interval '24 hours')
         FROM apps a ORDER BY a.created_at, a.id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            json!({ "app_id": row.0, "name": row.1, "created_at": rfc3339(row.2), "users": row.3,
                    "outstanding": row.4, "added_24h": row.5, "spent_24h": row.6,
                    "active_holds": row.7, "webhooks_rejected_24h": row.8 })
        })
        .collect())
}

pub struct UsersRequest {
    pub prefix: String,
    /// `balance` or `activity`.
    pub sort: String,
    pub limit: i64,
    pub page: i64,
}

impl UsersRequest {
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let prefix = query.get("prefix").cloned().unwrap_or_default();
        if prefix.len() > tally_common::limits::USER_ID_BYTES_MAX {
            return Err(ApiError::field("prefix", "is longer than a user id"));
        }
        Ok(Self {
            prefix,
            sort: one_of(query, "sort", &["balance", "activity"])?
                .unwrap_or_else(|| "activity".into()),
            limit: super::limit(query)?,
            page: integer(query, "page", 0, PAGE_INDEX_MAX)?.unwrap_or(0),
        })
    }
}

/// A page of an app's users whose id starts with the prefix.
pub async fn users(pool: &PgPool, app_id: Uuid, request: &UsersRequest) -> Result<Value, ApiError> {
    let order = if request.sort == "balance" {
        "balance DESC, user_id"
    } else {
        "updated_at DESC, user_id"
    };
    let rows: Vec<(String, i64, i64, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT user_id, balance, held, updated_at FROM accounts
         WHERE app_id = $1 AND starts_with(user_id, $2)
         ORDER BY {order} LIMIT $3 OFFSET $4"
    ))
    .bind(app_id)
    .bind(&request.prefix)
    .bind(request.limit + 1)
    .bind(request.page * request.limit)
    .fetch_all(pool)
    .await?;
    let (rows, more) = split_page(rows, request.limit);
    let users: Vec<Value> = rows
        .into_iter()
        .map(|(user_id, balance, held, updated_at)| {
            json!({ "user_id": user_id, "balance": balance, "held": held,
                    "last_activity": rfc3339(updated_at) })
        })
        .collect();
    Ok(json!({ "users": users, "next_page": more.then_some(request.page + 1) }))
}

/// A user's balance, held, available, next expiry, active holds and open lots.
pub async fn user(pool: &PgPool, app_id: Uuid, user_id: &str) -> Result<Value, ApiError> {
    let account: Option<(i64, i64)> =
        sqlx::query_as("SELECT balance, held FROM accounts WHERE app_id = $1 AND user_id = $2")
            .bind(app_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    let (balance, held) = account.unwrap_or_default();
    let lots: Vec<(Uuid, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, amount, remaining, expires_at FROM lots
         WHERE app_id = $1 AND user_id = $2 AND expired_at IS NULL ORDER BY expires_at, id LIMIT 200",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let now = Utc::now();
    // Credits of a lot past its expiry leave the balance with the worker's expire entry; reads
    // leave them out already (as `GET /credits/balance` does).
    let expired: i64 = lots
        .iter()
        .filter(|lot| lot.3 <= now)
        .map(|lot| lot.2)
        .sum();
    let balance = balance - expired;
    let next_expiry = lots
        .iter()
        .find(|lot| lot.3 > now && lot.2 > 0)
        .map(|lot| json!({ "amount": lot.2, "expires_at": rfc3339(lot.3) }));
    type HoldRow = (Uuid, i64, DateTime<Utc>, DateTime<Utc>, Option<String>);
    let holds: Vec<HoldRow> = sqlx::query_as(
        "SELECT id, amount, expires_at, created_at, description FROM holds
         WHERE app_id = $1 AND user_id = $2 AND status = 'active' ORDER BY created_at DESC, id DESC LIMIT 200",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    Ok(json!({
        "app_id": app_id, "user_id": user_id, "balance": balance, "held": held,
        "available": balance - held, "next_expiry": next_expiry,
        "lots": lots.iter().map(|lot| json!({ "lot_id": lot.0, "amount": lot.1, "remaining": lot.2,
                                               "expires_at": rfc3339(lot.3) })).collect::<Vec<_>>(),
        "holds": holds.iter().map(|hold| json!({ "hold_id": hold.0, "amount": hold.1,
                                                  "expires_at": rfc3339(hold.2), "created_at": rfc3339(hold.3),
                                                  "description": hold.4 })).collect::<Vec<_>>(),
    }))
}

pub struct HistoryRequest {
    pub limit: i64,
    /// `created_at` (micros) and id of the last entry of the previous page.
    pub before: Option<(i64, Uuid)>,
    pub entry_type: Option<String>,
    pub source: Option<String>,
}

impl HistoryRequest {
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let before = match query.get("cursor").filter(|cursor| !cursor.is_empty()) {
            None => None,
            Some(cursor) => {
                let position = decode_cursor(HISTORY_CURSOR, cursor)?;
                let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
                let (micros, id) = position.split_once('/').ok_or_else(bad)?;
                Some((
                    micros.parse().map_err(|_| bad())?,
                    id.parse().map_err(|_| bad())?,
                ))
            }
        };
        Ok(Self {
            limit: super::limit(query)?,
            before,
            entry_type: one_of(query, "type", ENTRY_TYPES)?,
            source: one_of(query, "source", SOURCES)?,
        })
    }
}

type EntryRow = (
    Uuid,
    String,
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
    Option<Uuid>,
    Uuid,
);

const ENTRY_COLUMNS: &str =
    "id, user_id, type, amount, balance_after, description, metadata, source,
    refunded_ledger_id, hold_id, expires_at, created_at, lot_id, app_id";

fn entry_json(row: &EntryRow) -> Value {
    json!({ "ledger_id": row.0, "app_id": row.13, "user_id": row.1, "type": row.2, "amount": row.3,
            "balance_after": row.4, "description": row.5, "metadata": row.6, "source": row.7,
            "refunded_ledger_id": row.8, "hold_id": row.9, "expires_at": row.10.map(rfc3339),
            "created_at": rfc3339(row.11), "lot_id": row.12 })
}

/// A page of entries of an app (or of one of its users), newest first, filtered by type and
/// source; paged by `(created_at, id)`.
pub async fn history(
    pool: &PgPool,
    app_id: Uuid,
    user_id: Option<&str>,
    request: &HistoryRequest,
) -> Result<Value, ApiError> {
    let (before_micros, before_id) = request.before.unzip();
    let before_time = before_micros.and_then(DateTime::<Utc>::from_timestamp_micros);
    let rows: Vec<EntryRow> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries
         WHERE app_id = $1 AND ($2::text IS NULL OR user_id = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
           AND ($5::text IS NULL OR type = $5) AND ($6::text IS NULL OR source = $6)
         ORDER BY created_at DESC, id DESC LIMIT $7"
    ))
    .bind(app_id)
    .bind(user_id)
    .bind(before_time)
    .bind(before_id)
    .bind(&request.entry_type)
    .bind(&request.source)
    .bind(request.limit + 1)
    .fetch_all(pool)
    .await?;
    let (rows, more) = split_page(rows, request.limit);
    let next_cursor = more.then(|| {
        let last = rows.last().expect("a full page");
        encode_cursor(
            HISTORY_CURSOR,
            &format!("{}/{}", last.11.timestamp_micros(), last.0),
        )
    });
    Ok(
        json!({ "entries": rows.iter().map(entry_json).collect::<Vec<_>>(), "next_cursor": next_cursor }),
    )
}

/// One entry with its refunds and what is left to refund.
pub async fn entry(pool: &PgPool, ledger_id: Uuid) -> Result<Value, ApiError> {
    let row: Option<EntryRow> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE id = $1"
    ))
    .bind(ledger_id)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
    let refunds: Vec<EntryRow> = sqlx::query_as(&format!(
        "SELECT {ENTRY_COLUMNS} FROM ledger_entries WHERE refunded_ledger_id = $1 AND app_id = $2
         ORDER BY created_at, id"
    ))
    .bind(ledger_id)
    .bind(row.13)
    .fetch_all(pool)
    .await?;
    let refundable = if matches!(row.2.as_str(), "add" | "deduct" | "payment") {
        let refunded: i64 = refunds
            .iter()
            .filter(|refund| refund.2 == "refund")
            .map(|refund| refund.3.abs())
            .sum();
        (row.3.abs() - refunded).max(0)
    } else {
        0
    };
    Ok(
        json!({ "entry": entry_json(&row), "refunds": refunds.iter().map(entry_json).collect::<Vec<_>>(),
               "refundable": refundable }),
    )
}

pub struct EventsRequest {
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub limit: i64,
    pub page: i64,
}

impl EventsRequest {
    pub fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        Ok(Self {
            provider: one_of(query, "provider", PROVIDERS)?,
            outcome: one_of(query, "outcome", OUTCOMES)?,
            limit: super::limit(query)?,
            page: integer(query, "page", 0, PAGE_INDEX_MAX)?.unwrap_or(0),
        })
    }
}

/// A page of an app's webhook events, newest first.
pub async fn webhook_events(
    pool: &PgPool,
    app_id: Uuid,
    request: &EventsRequest,
) -> Result<Value, ApiError> {
    let rows: Vec<crate::webhooks::EventRow> = sqlx::query_as(
        "SELECT event_id, provider, event_type, outcome, reason, user_id, ledger_id, received_at
         FROM webhook_events
         WHERE app_id = $1 AND ($2::text IS NULL OR provider = $2) AND ($3::text IS NULL OR outcome = $3)
         ORDER BY received_at DESC, provider, event_id LIMIT $4 OFFSET $5",
    )
    .bind(app_id)
    .bind(&request.provider)
    .bind(&request.outcome)
    .bind(request.limit + 1)
    .bind(request.page * request.limit)
    .fetch_all(pool)
    .await?;
    let (rows, more) = split_page(rows, request.limit);
    let events: Vec<Value> = rows
        .into_iter()
        .map(|row| {
            json!({ "event_id": row.0, "provider": row.1, "type": row.2, "outcome": row.3,
                    "reason": row.4, "user_id": row.5, "ledger_id": row.6, "received_at": rfc3339(row.7) })
        })
        .collect();
    Ok(json!({ "events": events, "next_page": more.then_some(request.page + 1) }))
}

/// Credits added (adds, payments, refunds of deducts) and spent (deducts) per UTC day, oldest
/// first, every day of the window present.
pub async fn daily(pool: &PgPool, app_id: Uuid, days: i64) -> Result<Vec<Value>, ApiError> {
    let rows: Vec<(NaiveDate, i64, i64)> = sqlx::query_as(
        "SELECT d::date,
                COALESCE(sum(e.amount) FILTER (WHERE e.amount > 0), 0)::bigint,
                COALESCE(-sum(e.amount) FILTER (WHERE e.type = 'deduct'), 0)::bigint
         FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($2::int - 1), (now() AT TIME ZONE 'UTC')::date, interval '1 day') d
         LEFT JOIN ledger_entries e ON e.app_id = $1
              AND e.created_at >= d AT TIME ZONE 'UTC' AND e.created_at < (d + interval '1 day') AT TIME ZONE 'UTC'
         GROUP BY d ORDER BY d",
    )
    .bind(app_id)
    .bind(days as i32)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(day, added, spent)| json!({ "day": day.to_string(), "added": added, "spent": spent }),
        )
        .collect())
}
