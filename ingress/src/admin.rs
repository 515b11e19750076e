//! `/admin/*`: the operator's JSON API over every app, guarded by `TALLY_ADMIN_TOKEN` as a bearer
//! token. Reads come straight from Postgres; writes go through the same command pipeline as the
//! API ([`crate::submit`]) with `Origin::Dashboard`, so their entries say `source: "dashboard"`.
//!
//! The dashboard ([`crate::dashboard`]) renders the same queries ([`queries`]).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Serialize;
use tally_common::command::{Command, Origin};
use tally_common::credit_type::CreditType;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;
use crate::paging::page_limit;
use crate::responses::{AcceptedResponse, ErrorResponse};
use crate::submit::{answer, Answer, Submission};
use crate::validate::{self, Fields};
use crate::AppState;

pub mod manage;
pub mod queries;
pub mod token;

/// A request that presented the admin token.
#[derive(Clone, Copy, Debug)]
pub struct Admin;

/// Whether `presented` is the configured admin token (by digest, in constant time; never when
/// unset).
pub fn token_matches(state: &AppState, presented: &str) -> bool {
    state
        .admin
        .as_ref()
        .is_some_and(|token| token.matches(presented))
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    /// A wrong or missing token is a failed authentication of the client's address
    /// ([`crate::throttle`]); the right one passes even when that address is over budget.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|header| {
                header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
            })
            .map(str::trim);
        if presented.is_some_and(|presented| token_matches(state, presented)) {
            return Ok(Admin);
        }
        let client = state.throttle.client(&parts.extensions, &parts.headers);
        state.throttle.check(client)?;
        state
            .throttle
            .failed(client, crate::throttle::Failure::AdminToken);
        Err(ApiError::Unauthorized)
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/apps", get(apps).post(manage::create))
        .route(
            "/admin/apps/{app_id}/keys",
            get(manage::list_keys).post(manage::create_key),
        )
        .route(
            "/admin/apps/{app_id}/keys/{key_id}/revoke",
            post(manage::revoke),
        )
        .route(
            "/admin/apps/{app_id}/webhook-secrets",
            post(manage::create_secret),
        )
        .route(
            "/admin/apps/{app_id}/stripe_key",
            put(manage::put_stripe_key),
        )
        .route("/admin/apps/{app_id}/users", get(users))
        .route("/admin/apps/{app_id}/users/{user_id}", get(user))
        .route("/admin/apps/{app_id}/entries", get(entries))
        .route("/admin/apps/{app_id}/webhook-events", get(webhook_events))
        .route("/admin/apps/{app_id}/stats", get(stats))
        .route("/admin/apps/{app_id}/credits/add", post(add))
        .route("/admin/apps/{app_id}/credits/deduct", post(deduct))
        .route("/admin/apps/{app_id}/credits/refund", post(refund))
        .route("/admin/entries/{ledger_id}", get(entry))
}

fn app_id(text: &str) -> Result<Uuid, ApiError> {
    validate::parse_uuid("app_id", text)
}

/// Every app with its figures.
#[utoipa::path(get, path = "/admin/apps", tag = "admin",
    responses((status = 200, description = "{ apps: [ { app_id, name, created_at, users, outstanding, added_24h, spent_24h, active_holds, webhooks_rejected_24h, credit_types: [ { credit_type, users, outstanding, added_24h, spent_24h } ] } ] } (amounts at the top level: the default type `credits`)"),
              (status = 401, description = "missing or wrong admin token")),
    security(("admin_token" = [])))]
pub async fn apps(_: Admin, State(state): State<AppState>) -> Result<Json<AppsBody>, ApiError> {
    let apps = queries::apps(&state.pool).await?;
    Ok(Json(AppsBody { apps }))
}

/// `GET /admin/apps`'s body.
#[derive(Serialize)]
pub struct AppsBody {
    apps: Vec<queries::AppFigures>,
}

/// Users of an app: `prefix` (of the user id), `sort=balance|activity`, `limit`, `page` (0-based).
/// One row per user: `balance` and `held` (and the sort by balance) are the default type's
/// (`credits`); `balances` has every type's.
#[utoipa::path(get, path = "/admin/apps/{app_id}/users", tag = "admin",
    params(("app_id" = Uuid, Path), ("prefix" = Option<String>, Query), ("sort" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("page" = Option<i64>, Query)),
    responses((status = 200, description = "{ users: [ { user_id, balance, held, last_activity, balances: [ { credit_type, balance, held } ] } ], next_page }"),
              (status = 400, description = "bad parameter"), (status = 401, description = "missing or wrong admin token"),
              (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn users(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<queries::UsersPage>, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let request = queries::UsersRequest::parse(&query)?;
    Ok(Json(queries::users(&state.pool, app.id, &request).await?))
}

/// A user: balance, held, available and next expiry of the default type (`credits`), the same
/// per credit type (`balances`), active holds, lots, and a page of history (`limit`, `cursor`,
/// `type`, `source`, `credit_type`).
#[utoipa::path(get, path = "/admin/apps/{app_id}/users/{user_id}", tag = "admin",
    params(("app_id" = Uuid, Path), ("user_id" = String, Path), ("limit" = Option<i64>, Query),
           ("cursor" = Option<String>, Query), ("type" = Option<String>, Query), ("source" = Option<String>, Query),
           ("credit_type" = Option<String>, Query, description = "Only entries of this type; every type when absent.")),
    responses((status = 200, description = "{ user_id, balance, held, available, next_expiry, balances: [ { credit_type, balance, held, available, next_expiry } ], holds, lots, entries, next_cursor }"),
              (status = 400, description = "bad parameter"), (status = 401, description = "missing or wrong admin token"),
              (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn user(
    _: Admin,
    State(state): State<AppState>,
    Path((app, user_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<UserBody>, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let user_id = validate::check_user_id("user_id", user_id)?;
    let history = queries::HistoryRequest::parse(&query)?;
    let detail = queries::user(&state.pool, app.id, &user_id).await?;
    let history = queries::history(&state.pool, app.id, Some(&user_id), &history).await?;
    Ok(Json(UserBody { detail, history }))
}

/// `GET /admin/apps/{app_id}/users/{user_id}`'s body: the user's figures and a page of history
/// in one object.
#[derive(Serialize)]
pub struct UserBody {
    #[serde(flatten)]
    detail: queries::UserDetail,
    #[serde(flatten)]
    history: queries::EntriesPage,
}

/// An app's entries of every user, newest first (`limit`, `cursor`, `type`, `source`,
/// `credit_type`).
#[utoipa::path(get, path = "/admin/apps/{app_id}/entries", tag = "admin",
    params(("app_id" = Uuid, Path), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query),
           ("type" = Option<String>, Query), ("source" = Option<String>, Query),
           ("credit_type" = Option<String>, Query, description = "Only entries of this type; every type when absent.")),
    responses((status = 200, description = "{ entries, next_cursor }"), (status = 400, description = "bad parameter"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn entries(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<queries::EntriesPage>, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let history = queries::HistoryRequest::parse(&query)?;
    Ok(Json(
        queries::history(&state.pool, app.id, None, &history).await?,
    ))
}

/// One entry with every field, its app, and its refunds.
#[utoipa::path(get, path = "/admin/entries/{ledger_id}", tag = "admin",
    params(("ledger_id" = Uuid, Path)),
    responses((status = 200, description = "{ entry, refunds, refundable }"), (status = 400, description = "malformed id"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown entry")),
    security(("admin_token" = [])))]
pub async fn entry(
    _: Admin,
    State(state): State<AppState>,
    Path(ledger_id): Path<String>,
) -> Result<Json<queries::EntryDetail>, ApiError> {
    let ledger_id = validate::parse_uuid("ledger_id", &ledger_id)?;
    Ok(Json(queries::entry(&state.pool, ledger_id).await?))
}

/// An app's webhook events, newest first (`provider`, `outcome`, `limit`, `page`).
#[utoipa::path(get, path = "/admin/apps/{app_id}/webhook-events", tag = "admin",
    params(("app_id" = Uuid, Path), ("provider" = Option<String>, Query), ("outcome" = Option<String>, Query),
           ("limit" = Option<i64>, Query), ("page" = Option<i64>, Query)),
    responses((status = 200, description = "{ events, next_page }"), (status = 400, description = "bad parameter"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn webhook_events(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<queries::EventsPage>, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let request = queries::EventsRequest::parse(&query)?;
    Ok(Json(
        queries::webhook_events(&state.pool, app.id, &request).await?,
    ))
}

/// Credits added and spent per day over the last `days` (1..=90, default 14).
#[utoipa::path(get, path = "/admin/apps/{app_id}/stats", tag = "admin",
    params(("app_id" = Uuid, Path), ("days" = Option<i64>, Query)),
    responses((status = 200, description = "{ days: [ { day, added, spent } ] }"), (status = 400, description = "bad parameter"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn stats(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<StatsBody>, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let days = queries::daily(&state.pool, app.id, stats_days(&query)?).await?;
    Ok(Json(StatsBody { days }))
}

/// The `days` of `GET /admin/apps/{app_id}/stats` (`400` naming it otherwise).
pub(crate) fn stats_days(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    Ok(queries::integer(
        query,
        "days",
        queries::STATS_DAYS_MIN,
        queries::STATS_DAYS_MAX,
    )?
    .unwrap_or(queries::STATS_DAYS_DEFAULT))
}

/// `GET /admin/apps/{app_id}/stats`'s body.
#[derive(Serialize)]
pub struct StatsBody {
    days: Vec<queries::Day>,
}

/// Submits a command for `app_id` with the dashboard's origin, synchronously; what it came to
/// is the `/admin/*` handler's response or the dashboard's notice.
pub async fn submit_for(
    state: &AppState,
    app_id: Uuid,
    command: Command,
    idempotency: Option<(String, String)>,
) -> Result<Answer, ApiError> {
    answer(
        state,
        Submission {
            app_id,
            command,
            idempotency,
            respond_async: false,
            origin: Origin::Dashboard,
        },
    )
    .await
}

/// Body of the admin add and deduct: as `POST /credits/add` and `/credits/deduct`, without
/// metadata or expiry.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AdminWriteRequest {
    user_id: String,
    amount: i64,
    /// Default `credits`.
    credit_type: Option<String>,
    description: Option<String>,
}

/// Body of the admin refund: as `POST /credits/refund`, without metadata.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AdminRefundRequest {
    /// The add, deduct or payment entry to reverse.
    ledger_id: Uuid,
    /// Default: all that is left to refund; more than is left is `400`.
    amount: Option<i64>,
    description: Option<String>,
}

/// Adds credits to a user of the app (body as `POST /credits/add`, without expiry).
#[utoipa::path(post, path = "/admin/apps/{app_id}/credits/add", tag = "admin", operation_id = "admin_add",
    params(("app_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AdminWriteRequest,
    responses((status = 200, body = crate::routes::credits::WriteResponse),
              (status = 202, description = "accepted; not applied within the sync timeout", body = AcceptedResponse),
              (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)),
    security(("admin_token" = [])))]
pub async fn add(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let path = format!("/admin/apps/{}/credits/add", app.id);
    let UserWrite {
        user_id,
        amount,
        credit_type,
        description,
        idempotency,
    } = user_write(&headers, body, &path).await?;
    submit_for(
        &state,
        app.id,
        Command::Add {
            user_id,
            amount,
            credit_type,
            description,
            metadata: Default::default(),
            expires_at: None,
        },
        idempotency,
    )
    .await
}

/// Deducts credits from a user of the app (body as `POST /credits/deduct`, without metadata).
#[utoipa::path(post, path = "/admin/apps/{app_id}/credits/deduct", tag = "admin", operation_id = "admin_deduct",
    params(("app_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AdminWriteRequest,
    responses((status = 200, body = crate::routes::credits::WriteResponse),
              (status = 202, description = "accepted; not applied within the sync timeout", body = AcceptedResponse),
              (status = 402, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("admin_token" = [])))]
pub async fn deduct(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let path = format!("/admin/apps/{}/credits/deduct", app.id);
    let UserWrite {
        user_id,
        amount,
        credit_type,
        description,
        idempotency,
    } = user_write(&headers, body, &path).await?;
    submit_for(
        &state,
        app.id,
        Command::Deduct {
            user_id,
            amount,
            credit_type,
            description,
            metadata: Default::default(),
        },
        idempotency,
    )
    .await
}

/// The fields of an add or deduct, and its `Idempotency-Key` with the request's hash.
struct UserWrite {
    user_id: String,
    amount: i64,
    credit_type: CreditType,
    description: Option<String>,
    idempotency: Option<(String, String)>,
}

async fn user_write(headers: &HeaderMap, body: Body, path: &str) -> Result<UserWrite, ApiError> {
    let key = validate::idempotency_key(headers)?;
    let object = validate::json_object(headers, body).await?;
    let idempotency = key.map(|key| (key, validate::request_hash("POST", path, &object)));
    let (user_id, amount, credit_type, description) = write_fields(object)?;
    Ok(UserWrite {
        user_id,
        amount,
        credit_type,
        description,
        idempotency,
    })
}

/// The user, amount, credit type and description of an admin add or deduct (`400` naming the
/// field otherwise).
pub(crate) fn write_fields(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<(String, i64, CreditType, Option<String>), ApiError> {
    let mut fields = Fields::new(object, &["user_id", "amount", "description", "credit_type"])?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let credit_type = fields.credit_type()?;
    let description = fields.description()?;
    fields.finish()?;
    Ok((user_id, amount, credit_type, description))
}

/// Refunds an entry of the app, all that is left or `amount` (body as `POST /credits/refund`,
/// without metadata).
#[utoipa::path(post, path = "/admin/apps/{app_id}/credits/refund", tag = "admin", operation_id = "admin_refund",
    params(("app_id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AdminRefundRequest,
    responses((status = 200, body = crate::routes::credits::RefundResponse),
              (status = 202, description = "accepted; not applied within the sync timeout", body = AcceptedResponse),
              (status = 402, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)),
    security(("admin_token" = [])))]
pub async fn refund(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let app = queries::app(&state.pool, app_id(&app)?).await?;
    let key = validate::idempotency_key(&headers)?;
    let object = validate::json_object(&headers, body).await?;
    let path = format!("/admin/apps/{}/credits/refund", app.id);
    let idempotency = key.map(|key| (key, validate::request_hash("POST", &path, &object)));
    let (ledger_id, amount, description) = refund_fields(object)?;
    refund_entry(&state, app.id, ledger_id, amount, description, idempotency).await
}

/// The entry, amount and description of an admin refund (`400` naming the field otherwise).
pub(crate) fn refund_fields(
    object: serde_json::Map<String, serde_json::Value>,
) -> Result<(Uuid, Option<i64>, Option<String>), ApiError> {
    let mut fields = Fields::new(object, &["ledger_id", "amount", "description"])?;
    let ledger_id = fields.uuid("ledger_id")?;
    let amount = fields.optional_amount("amount")?;
    let description = fields.description()?;
    fields.finish()?;
    Ok((ledger_id, amount, description))
}

/// Submits the refund of `ledger_id` (an entry of `app_id`) through the pipeline.
pub async fn refund_entry(
    state: &AppState,
    app_id: Uuid,
    ledger_id: Uuid,
    amount: Option<i64>,
    description: Option<String>,
    idempotency: Option<(String, String)>,
) -> Result<Answer, ApiError> {
    let user_id: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM ledger_entries WHERE id = $1 AND app_id = $2")
            .bind(ledger_id)
            .bind(app_id)
            .fetch_optional(&state.pool)
            .await?;
    let user_id =
        user_id.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
    submit_for(
        state,
        app_id,
        Command::Refund {
            user_id,
            ledger_id,
            amount,
            description,
            metadata: Default::default(),
        },
        idempotency,
    )
    .await
}

/// Page size from `limit`, shared with the public API's rule.
pub(crate) fn limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    page_limit(query)
}
