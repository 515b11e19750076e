//! The reads behind `/admin/*` and the dashboard, across every app, as typed rows whose JSON
//! form is the `/admin/*` body.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgPool;
use tally_common::credit_type::CreditType;
use uuid::Uuid;

use crate::entries::{self, time_json, Entry};
use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, split_page};
use crate::routes::credits::{balance_rows, BalanceRow};
use crate::validate;

/// Fewest and most days the chart and `/admin/apps/{id}/stats` cover.
pub const STATS_DAYS_MIN: i64 = 1;
pub const STATS_DAYS_MAX: i64 = 90;
pub const STATS_DAYS_DEFAULT: i64 = 14;
/// Most pages `page=` may skip (offset paging of users and events stays cheap).
pub const PAGE_INDEX_MAX: i64 = 10_000;

/// The entry types `type=` filters by.
pub const ENTRY_TYPES: &[&str] = &["add", "deduct", "refund", "payment", "expire", "clawback"];
/// The entry sources `source=` filters by.
pub const SOURCES: &[&str] = &["api", "stripe", "polar", "system", "dashboard"];
/// The webhook providers `provider=` filters by.
pub const PROVIDERS: &[&str] = &["stripe", "polar"];
/// The orders `sort=` of the users list takes.
pub const USER_SORTS: &[&str] = &["balance", "activity"];
/// The webhook outcomes `outcome=` filters by.
pub const OUTCOMES: &[&str] = &[
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

/// An app with its figures. Amounts are of the default credit type (`credits`, the only one
/// before types existed), so they never add up different kinds of credits; `credit_types` has
/// each type's.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct AppFigures {
    pub app_id: Uuid,
    pub name: String,
    #[serde(serialize_with = "time_json")]
    pub created_at: DateTime<Utc>,
    /// Users with a balance of any type.
    pub users: i64,
    /// Credits of the default type on every balance of the app. This and the other sums stop
    /// at `i64::MAX`: each balance fits in an `i64`, their sum over many users may not, and one
    /// app's figure must not fail the page of every app.
    pub outstanding: i64,
    /// Credits of the default type added in the last 24 hours.
    pub added_24h: i64,
    /// Credits of the default type deducted or expired in the last 24 hours.
    pub spent_24h: i64,
    /// Active holds of every type.
    pub active_holds: i64,
    pub webhooks_rejected_24h: i64,
    /// The figures of each credit type the app's users have, ordered by type.
    #[sqlx(skip)]
    pub credit_types: Vec<TypeFigures>,
}

/// An app's figures for one credit type.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct TypeFigures {
    #[serde(skip)]
    pub app_id: Uuid,
    pub credit_type: String,
    /// Users with a balance of this type.
    pub users: i64,
    pub outstanding: i64,
    pub added_24h: i64,
    pub spent_24h: i64,
}

/// Every app with its users, credits outstanding, the last 24 hours' adds and spends, active
/// holds and rejected webhook events.
pub async fn apps(pool: &PgPool) -> Result<Vec<AppFigures>, ApiError> {
    let mut apps: Vec<AppFigures> = sqlx::query_as(
        "SELECT a.id AS app_id, a.name, a.created_at,
                (SELECT count(DISTINCT user_id) FROM accounts c WHERE c.app_id = a.id) AS users,
                (SELECT LEAST(COALESCE(sum(balance), 0), 9223372036854775807)::bigint FROM accounts c
                  WHERE c.app_id = a.id AND c.credit_type = $1) AS outstanding,
                (SELECT LEAST(COALESCE(sum(amount) FILTER (WHERE amount > 0), 0), 9223372036854775807)::bigint
                   FROM ledger_entries e WHERE e.app_id = a.id AND e.credit_type = $1
                    AND e.created_at > now() - interval '24 hours') AS added_24h,
                (SELECT LEAST(COALESCE(-sum(amount) FILTER (WHERE amount < 0 AND type IN ('deduct', 'expire')), 0), 9223372036854775807)::bigint
                   FROM ledger_entries e WHERE e.app_id = a.id AND e.credit_type = $1
                    AND e.created_at > now() - interval '24 hours') AS spent_24h,
                (SELECT count(*) FROM holds h WHERE h.app_id = a.id AND h.status = 'active') AS active_holds,
                (SELECT count(*) FROM webhook_events w WHERE w.app_id = a.id AND w.outcome = 'rejected'
                   AND w.received_at > now() - interval '24 hours') AS webhooks_rejected_24h
         FROM apps a ORDER BY a.created_at, a.id",
    )
    .bind(CreditType::DEFAULT)
    .fetch_all(pool)
    .await?;
    // Every entry has its account, so the types of the accounts are all the types there are.
    let types: Vec<TypeFigures> = sqlx::query_as(
        "SELECT c.app_id, c.credit_type, count(*) AS users,
                LEAST(COALESCE(sum(c.balance), 0), 9223372036854775807)::bigint AS outstanding,
                LEAST(COALESCE(max(r.added), 0), 9223372036854775807)::bigint AS added_24h,
                LEAST(COALESCE(max(r.spent), 0), 9223372036854775807)::bigint AS spent_24h
         FROM accounts c
         LEFT JOIN (SELECT app_id, credit_type, sum(amount) FILTER (WHERE amount > 0) AS added,
                           -sum(amount) FILTER (WHERE amount < 0 AND type IN ('deduct', 'expire')) AS spent
                    FROM ledger_entries WHERE created_at > now() - interval '24 hours'
                    GROUP BY app_id, credit_type) r
           ON r.app_id = c.app_id AND r.credit_type = c.credit_type
         GROUP BY c.app_id, c.credit_type ORDER BY c.app_id, c.credit_type",
    )
    .fetch_all(pool)
    .await?;
    let mut by_app: HashMap<Uuid, Vec<TypeFigures>> = HashMap::new();
    for figures in types {
        by_app.entry(figures.app_id).or_default().push(figures);
    }
    for app in &mut apps {
        app.credit_types = by_app.remove(&app.app_id).unwrap_or_default();
    }
    Ok(apps)
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
        crate::validate::reject_nul("prefix", &prefix)?;
        Ok(Self {
            prefix,
            sort: one_of(query, "sort", USER_SORTS)?.unwrap_or_else(|| "activity".into()),
            limit: super::limit(query)?,
            page: integer(query, "page", 0, PAGE_INDEX_MAX)?.unwrap_or(0),
        })
    }
}

/// A page of an app's users.
#[derive(Debug, Serialize)]
pub struct UsersPage {
    pub users: Vec<UserSummary>,
    /// The next page's `page`; null on the last page.
    pub next_page: Option<i64>,
}

/// A user as the users list shows it: the default credit type's figures (what the list sorts
/// by), and every type's.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct UserSummary {
    pub user_id: String,
    /// The balance of the default type (0 when the user has none of it).
    pub balance: i64,
    /// Held of the default type.
    pub held: i64,
    /// When one of the user's balances last changed.
    #[serde(serialize_with = "time_json")]
    pub last_activity: DateTime<Utc>,
    /// Every type the user has, ordered by type.
    pub balances: Json<Vec<TypeSummary>>,
}

/// One of a user's balances, as the users list shows it.
#[derive(Debug, Deserialize, Serialize)]
pub struct TypeSummary {
    pub credit_type: String,
    pub balance: i64,
    pub held: i64,
}

/// A page of an app's users whose id starts with the prefix, one row per user whatever the
/// number of its credit types.
pub async fn users(
    pool: &PgPool,
    app_id: Uuid,
    request: &UsersRequest,
) -> Result<UsersPage, ApiError> {
    let order = if request.sort == "balance" {
        "balance DESC, user_id"
    } else {
        "last_activity DESC, user_id"
    };
    let rows: Vec<UserSummary> = sqlx::query_as(&format!(
        "SELECT user_id,
                COALESCE(sum(balance) FILTER (WHERE credit_type = $5), 0)::bigint AS balance,
                COALESCE(sum(held) FILTER (WHERE credit_type = $5), 0)::bigint AS held,
                max(updated_at) AS last_activity,
                jsonb_agg(jsonb_build_object('credit_type', credit_type, 'balance', balance, 'held', held)
                          ORDER BY credit_type) AS balances
         FROM accounts
         WHERE app_id = $1 AND starts_with(user_id, $2)
         GROUP BY user_id
         ORDER BY {order} LIMIT $3 OFFSET $4"
    ))
    .bind(app_id)
    .bind(&request.prefix)
    .bind(request.limit + 1)
    .bind(request.page * request.limit)
    .bind(CreditType::DEFAULT)
    .fetch_all(pool)
    .await?;
    let (users, more) = split_page(rows, request.limit);
    Ok(UsersPage {
        users,
        next_page: more.then_some(request.page + 1),
    })
}

/// A user's figures, active holds and open lots. The top-level figures are the default credit
/// type's (`credits`, as before types existed); `balances` has every type's.
#[derive(Debug, Serialize)]
pub struct UserDetail {
    pub app_id: Uuid,
    pub user_id: String,
    /// Of the default type, without the credits of lots past their expiry.
    pub balance: i64,
    pub held: i64,
    pub available: i64,
    /// The default type's next lot to expire with credits left; null when none will.
    pub next_expiry: Option<Expiry>,
    /// One per credit type the user has, ordered by type.
    pub balances: Vec<TypeBalance>,
    /// Open lots of every type.
    pub lots: Vec<Lot>,
    /// Active holds of every type.
    pub holds: Vec<Hold>,
}

/// One of a user's balances, as `GET /credits/balances` shows it.
#[derive(Debug, Serialize)]
pub struct TypeBalance {
    pub credit_type: String,
    /// Without the credits of lots past their expiry.
    pub balance: i64,
    pub held: i64,
    pub available: i64,
    /// The next lot of this type to expire with credits left; null when none will.
    pub next_expiry: Option<Expiry>,
}

impl TypeBalance {
    /// The figures of a type the user has never been written.
    pub fn empty(credit_type: &str) -> Self {
        Self {
            credit_type: credit_type.to_string(),
            balance: 0,
            held: 0,
            available: 0,
            next_expiry: None,
        }
    }

    fn read(row: BalanceRow) -> Self {
        let balance = row.balance();
        Self {
            available: balance - row.held,
            balance,
            held: row.held,
            next_expiry: row
                .next_amount
                .zip(row.next_at)
                .map(|(amount, expires_at)| Expiry { amount, expires_at }),
            credit_type: row.credit_type,
        }
    }
}

/// Credits that expire at one time.
#[derive(Debug, Clone, Serialize)]
pub struct Expiry {
    pub amount: i64,
    #[serde(serialize_with = "time_json")]
    pub expires_at: DateTime<Utc>,
}

/// An open lot: credits an add granted with an expiry.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct Lot {
    pub lot_id: Uuid,
    pub credit_type: String,
    pub amount: i64,
    pub remaining: i64,
    #[serde(serialize_with = "time_json")]
    pub expires_at: DateTime<Utc>,
}

/// An active hold.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct Hold {
    pub hold_id: Uuid,
    pub credit_type: String,
    pub amount: i64,
    #[serde(serialize_with = "time_json")]
    pub expires_at: DateTime<Utc>,
    #[serde(serialize_with = "time_json")]
    pub created_at: DateTime<Utc>,
    pub description: Option<String>,
}

/// A user's balances (the default type's at the top level, and each type's), active holds and
/// open lots.
pub async fn user(pool: &PgPool, app_id: Uuid, user_id: &str) -> Result<UserDetail, ApiError> {
    let balances: Vec<TypeBalance> = balance_rows(pool, app_id, user_id, None)
        .await?
        .into_iter()
        .map(TypeBalance::read)
        .collect();
    let (balance, held, next_expiry) = balances
        .iter()
        .find(|figures| figures.credit_type == CreditType::DEFAULT)
        .map(|figures| (figures.balance, figures.held, figures.next_expiry.clone()))
        .unwrap_or_default();
    let lots: Vec<Lot> = sqlx::query_as(
        "SELECT id AS lot_id, credit_type, amount, remaining, expires_at FROM lots
         WHERE app_id = $1 AND user_id = $2 AND expired_at IS NULL ORDER BY expires_at, id LIMIT 200",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let holds: Vec<Hold> = sqlx::query_as(
        "SELECT id AS hold_id, credit_type, amount, expires_at, created_at, description FROM holds
         WHERE app_id = $1 AND user_id = $2 AND status = 'active' ORDER BY created_at DESC, id DESC LIMIT 200",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    Ok(UserDetail {
        app_id,
        user_id: user_id.to_string(),
        balance,
        held,
        available: balance - held,
        next_expiry,
        balances,
        lots,
        holds,
    })
}

pub struct HistoryRequest {
    pub limit: i64,
    /// `created_at` (micros) and id of the last entry of the previous page.
    pub before: Option<(i64, Uuid)>,
    pub entry_type: Option<String>,
    pub source: Option<String>,
    /// Only entries of this credit type (`None`: every type).
    pub credit_type: Option<CreditType>,
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
            credit_type: match query.get("credit_type").map(String::as_str) {
                None | Some("") => None,
                Some(text) => Some(validate::parse_credit_type("credit_type", text)?),
            },
        })
    }
}

/// A page of ledger entries, newest first.
#[derive(Debug, Serialize)]
pub struct EntriesPage {
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A page of entries of an app (or of one of its users), newest first, filtered by type,
/// source and credit type; paged by `(created_at, id)`.
pub async fn history(
    pool: &PgPool,
    app_id: Uuid,
    user_id: Option<&str>,
    request: &HistoryRequest,
) -> Result<EntriesPage, ApiError> {
    let (before_micros, before_id) = request.before.unzip();
    let before_time = before_micros.and_then(DateTime::<Utc>::from_timestamp_micros);
    let rows: Vec<Entry> = sqlx::query_as(&format!(
        "SELECT {} FROM ledger_entries
         WHERE app_id = $1 AND ($2::text IS NULL OR user_id = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
           AND ($5::text IS NULL OR type = $5) AND ($6::text IS NULL OR source = $6)
           AND ($8::text IS NULL OR credit_type = $8)
         ORDER BY created_at DESC, id DESC LIMIT $7",
        entries::COLUMNS
    ))
    .bind(app_id)
    .bind(user_id)
    .bind(before_time)
    .bind(before_id)
    .bind(&request.entry_type)
    .bind(&request.source)
    .bind(request.limit + 1)
    .bind(request.credit_type.as_ref().map(CreditType::as_str))
    .fetch_all(pool)
    .await?;
    let (entries, more) = split_page(rows, request.limit);
    let next_cursor = more.then(|| {
        let last = entries.last().expect("a full page");
        encode_cursor(
            HISTORY_CURSOR,
            &format!("{}/{}", last.created_at.timestamp_micros(), last.ledger_id),
        )
    });
    Ok(EntriesPage {
        entries,
        next_cursor,
    })
}

/// An entry with its refunds.
#[derive(Debug, Serialize)]
pub struct EntryDetail {
    pub entry: Entry,
    /// Entries that refund this one, oldest first.
    pub refunds: Vec<Entry>,
    /// Credits a refund may still return (0 for entries that cannot be refunded).
    pub refundable: i64,
}

/// One entry with its refunds and what is left to refund.
pub async fn entry(pool: &PgPool, ledger_id: Uuid) -> Result<EntryDetail, ApiError> {
    let entry: Option<Entry> = sqlx::query_as(&format!(
        "SELECT {} FROM ledger_entries WHERE id = $1",
        entries::COLUMNS
    ))
    .bind(ledger_id)
    .fetch_optional(pool)
    .await?;
    let entry = entry.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
    let refunds: Vec<Entry> = sqlx::query_as(&format!(
        "SELECT {} FROM ledger_entries WHERE refunded_ledger_id = $1 AND app_id = $2
         ORDER BY created_at, id",
        entries::COLUMNS
    ))
    .bind(ledger_id)
    .bind(entry.app_id)
    .fetch_all(pool)
    .await?;
    let refundable = if matches!(entry.entry_type.as_str(), "add" | "deduct" | "payment") {
        let refunded: i64 = refunds
            .iter()
            .filter(|refund| refund.entry_type == "refund")
            .map(|refund| refund.amount.abs())
            .sum();
        (entry.amount.abs() - refunded).max(0)
    } else {
        0
    };
    Ok(EntryDetail {
        entry,
        refunds,
        refundable,
    })
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

/// A page of an app's webhook events.
#[derive(Debug, Serialize)]
pub struct EventsPage {
    pub events: Vec<WebhookEvent>,
    /// The next page's `page`; null on the last page.
    pub next_page: Option<i64>,
}

/// A webhook event as the app received it and what came of it.
#[derive(Debug, Serialize)]
pub struct WebhookEvent {
    pub event_id: String,
    /// stripe or polar.
    pub provider: String,
    /// The provider's event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// credited, clawed_back, duplicate, ignored or rejected.
    pub outcome: String,
    /// Why it was rejected or ignored.
    pub reason: Option<String>,
    pub user_id: Option<String>,
    /// The entry it wrote.
    pub ledger_id: Option<Uuid>,
    #[serde(serialize_with = "time_json")]
    pub received_at: DateTime<Utc>,
}

/// A page of an app's webhook events, newest first.
pub async fn webhook_events(
    pool: &PgPool,
    app_id: Uuid,
    request: &EventsRequest,
) -> Result<EventsPage, ApiError> {
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
    let events = rows
        .into_iter()
        .map(
            |(event_id, provider, event_type, outcome, reason, user_id, ledger_id, received_at)| {
                WebhookEvent {
                    event_id,
                    provider,
                    event_type,
                    outcome,
                    reason,
                    user_id,
                    ledger_id,
                    received_at,
                }
            },
        )
        .collect();
    Ok(EventsPage {
        events,
        next_page: more.then_some(request.page + 1),
    })
}

/// Credits added and spent on one UTC day.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct Day {
    /// `YYYY-MM-DD`.
    pub day: NaiveDate,
    /// Adds, payments and refunds of deducts.
    pub added: i64,
    /// Deducts.
    pub spent: i64,
}

/// Credits added (adds, payments, refunds of deducts) and spent (deducts) per UTC day, oldest
/// first, every day of the window present.
pub async fn daily(pool: &PgPool, app_id: Uuid, days: i64) -> Result<Vec<Day>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT d::date AS day,
                LEAST(COALESCE(sum(e.amount) FILTER (WHERE e.amount > 0), 0), 9223372036854775807)::bigint AS added,
                LEAST(COALESCE(-sum(e.amount) FILTER (WHERE e.type = 'deduct'), 0), 9223372036854775807)::bigint AS spent
         FROM generate_series((now() AT TIME ZONE 'UTC')::date - ($2::int - 1), (now() AT TIME ZONE 'UTC')::date, interval '1 day') d
         LEFT JOIN ledger_entries e ON e.app_id = $1
              AND e.created_at >= d AT TIME ZONE 'UTC' AND e.created_at < (d + interval '1 day') AT TIME ZONE 'UTC'
         GROUP BY d ORDER BY d",
    )
    .bind(app_id)
    .bind(days as i32)
    .fetch_all(pool)
    .await?)
}

/// When the app's Stripe secret key was last set; `None` when it has none. Only the time is
/// read: the key never leaves the table but to charge.
pub async fn stripe_key_updated(
    pool: &PgPool,
    app_id: Uuid,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    Ok(
        sqlx::query_scalar("SELECT updated_at FROM app_stripe_keys WHERE app_id = $1")
            .bind(app_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Most auto top-up attempts read per credit type, newest first.
pub const TOPUP_ATTEMPTS_SHOWN: i64 = 10;

/// A user's auto top-up of one credit type with its latest attempts.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct AutoTopupDetail {
    pub credit_type: String,
    pub enabled: bool,
    /// A charge is made when a change leaves `available` below this.
    pub threshold: i64,
    /// Credits each charge buys.
    pub credits: i64,
    /// What each charge costs, in the currency's smallest unit.
    pub amount: i64,
    pub currency: String,
    pub stripe_customer_id: String,
    pub stripe_payment_method_id: String,
    pub max_per_month: i32,
    /// Failed charges in a row.
    pub consecutive_failures: i32,
    /// Why Tally disabled it (null when enabled, or disabled by a `PUT`).
    pub disabled_reason: Option<String>,
    #[serde(serialize_with = "time_json")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "time_json")]
    pub updated_at: DateTime<Utc>,
    /// At most [`TOPUP_ATTEMPTS_SHOWN`], newest first.
    #[sqlx(skip)]
    pub attempts: Vec<TopupAttempt>,
}

/// One charge an auto top-up decided to make, and what Stripe answered.
#[derive(Debug, sqlx::FromRow, Serialize)]
pub struct TopupAttempt {
    #[serde(skip)]
    pub credit_type: String,
    /// Also the charge's `Idempotency-Key`.
    pub id: Uuid,
    /// `pending`, `succeeded`, `failed` or `action_required`.
    pub status: String,
    pub credits: i64,
    pub amount: i64,
    pub currency: String,
    pub payment_intent_id: Option<String>,
    pub error_code: Option<String>,
    pub decline_code: Option<String>,
    pub error_message: Option<String>,
    /// Stripe's answer has been applied.
    pub charged: bool,
    #[serde(serialize_with = "time_json")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "time_json")]
    pub updated_at: DateTime<Utc>,
}

/// A user's auto top-ups, by credit type, each with its [`TOPUP_ATTEMPTS_SHOWN`] latest attempts.
pub async fn auto_topups(
    pool: &PgPool,
    app_id: Uuid,
    user_id: &str,
) -> Result<Vec<AutoTopupDetail>, ApiError> {
    let mut settings: Vec<AutoTopupDetail> = sqlx::query_as(
        "SELECT credit_type, enabled, threshold, credits, amount, currency, stripe_customer_id,
                stripe_payment_method_id, max_per_month, consecutive_failures, disabled_reason,
                created_at, updated_at
         FROM auto_topup_settings WHERE app_id = $1 AND user_id = $2 ORDER BY credit_type",
    )
    .bind(app_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    if settings.is_empty() {
        return Ok(settings);
    }
    let types: Vec<&str> = settings.iter().map(|s| s.credit_type.as_str()).collect();
    let attempts: Vec<TopupAttempt> = sqlx::query_as(
        "SELECT t.credit_type, a.id, a.status, a.credits, a.amount, a.currency,
                a.payment_intent_id, a.error_code, a.decline_code, a.error_message, a.charged,
                a.created_at, a.updated_at
         FROM unnest($3::text[]) AS t (credit_type)
         CROSS JOIN LATERAL (
             SELECT * FROM auto_topup_attempts
             WHERE app_id = $1 AND user_id = $2 AND credit_type = t.credit_type
             ORDER BY created_at DESC, id DESC LIMIT $4) a
         ORDER BY t.credit_type, a.created_at DESC, a.id DESC",
    )
    .bind(app_id)
    .bind(user_id)
    .bind(&types)
    .bind(TOPUP_ATTEMPTS_SHOWN)
    .fetch_all(pool)
    .await?;
    let mut by_type: HashMap<String, Vec<TopupAttempt>> = HashMap::new();
    for attempt in attempts {
        by_type
            .entry(attempt.credit_type.clone())
            .or_default()
            .push(attempt);
    }
    for detail in &mut settings {
        detail.attempts = by_type.remove(&detail.credit_type).unwrap_or_default();
    }
    Ok(settings)
}
