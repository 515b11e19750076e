//! Apps, API keys and webhook secrets: what `tally app` / `tally key` do, for `/admin/*` and
//! the dashboard. A new key is returned once; only its hash is stored.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use tally_common::apps::{self, KeyRef};
use tally_common::webhook::Provider;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{queries, Admin};
use crate::error::ApiError;
use crate::responses::rfc3339;
use crate::validate::{self, Fields};
use crate::AppState;

/// An app name as stored (trimmed; `400` naming `name` otherwise).
pub fn check_name(name: &str) -> Result<String, ApiError> {
    Ok(apps::check_name(name)?)
}

/// A webhook secret as stored (`400` naming `provider` or `secret` otherwise).
pub fn check_secret(provider: &str, secret: &str) -> Result<(Provider, String), ApiError> {
    Ok(apps::check_secret(provider, secret)?)
}

/// Creates an app and its first key.
pub async fn create_app(pool: &PgPool, name: &str) -> Result<(Uuid, String), ApiError> {
    Ok(apps::create(pool, name).await?)
}

/// Issues another key for the app.
pub async fn issue_key(pool: &PgPool, app_id: Uuid) -> Result<String, ApiError> {
    Ok(apps::insert_key(pool, app_id).await?)
}

/// Revokes a key of the app (effective within the key cache's 4 s); 404 if no active key.
pub async fn revoke_key(pool: &PgPool, app_id: Uuid, key_id: Uuid) -> Result<(), ApiError> {
    if !apps::revoke_key(pool, Some(app_id), KeyRef::Id(key_id)).await? {
        return Err(ApiError::NotFound(format!("no active key {key_id}")));
    }
    Ok(())
}

/// Adds a webhook secret (the two newest per provider are accepted).
pub async fn add_secret(
    pool: &PgPool,
    app_id: Uuid,
    provider: Provider,
    secret: &str,
) -> Result<(), ApiError> {
    Ok(apps::add_webhook_secret(pool, app_id, provider, secret).await?)
}

/// The app's keys (prefix only) and how many webhook secrets it has per provider.
pub async fn credentials(pool: &PgPool, app_id: Uuid) -> Result<Value, ApiError> {
    type KeyRow = (
        Uuid,
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let keys: Vec<KeyRow> = sqlx::query_as(
        "SELECT id, key_prefix, created_at, revoked_at FROM api_keys WHERE app_id = $1
         ORDER BY created_at DESC, id DESC LIMIT 200",
    )
    .bind(app_id)
    .fetch_all(pool)
    .await?;
    let secrets: Vec<(String, i64)> = sqlx::query_as(
        "SELECT provider, count(*) FROM webhook_secrets WHERE app_id = $1 GROUP BY provider ORDER BY provider",
    )
    .bind(app_id)
    .fetch_all(pool)
    .await?;
    Ok(json!({
        "keys": keys.iter().map(|key| json!({ "key_id": key.0, "prefix": key.1,
            "created_at": rfc3339(key.2), "revoked_at": key.3.map(rfc3339) })).collect::<Vec<_>>(),
        "webhook_secrets": secrets.iter().map(|(provider, count)| json!({ "provider": provider, "count": count }))
            .collect::<Vec<_>>(),
    }))
}

/// Body of `POST /admin/apps`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateAppRequest {
    name: String,
}

/// Body of `POST /admin/apps/{app_id}/webhook-secrets`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookSecretRequest {
    /// `stripe` or `polar`.
    provider: String,
    secret: String,
}

/// Creates an app: `{ name }` → `{ app_id, name, api_key }` (the key is shown only now).
#[utoipa::path(post, path = "/admin/apps", tag = "admin", request_body = CreateAppRequest,
    responses((status = 200, description = "{ app_id, name, api_key }")),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let name = app_name(validate::json_object(&headers, body).await?)?;
    let (app_id, api_key) = create_app(&state.pool, &name).await?;
    Ok(Json(
        json!({ "app_id": app_id, "name": name, "api_key": api_key }),
    ))
}

/// The name of a `POST /admin/apps` body, as stored (`400` naming the field otherwise).
pub(crate) fn app_name(object: Map<String, Value>) -> Result<String, ApiError> {
    Fields::new(object.clone(), &["name"])?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field("name", "is required (a string)"))?;
    check_name(name)
}

/// The app's keys (prefixes) and webhook secret counts.
#[utoipa::path(get, path = "/admin/apps/{app_id}/keys", tag = "admin",
    params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "{ keys: [ { key_id, prefix, created_at, revoked_at } ], webhook_secrets }"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    Ok(Json(credentials(&state.pool, app.id).await?))
}

/// Issues a key: `{ app_id, api_key }` (shown only now).
#[utoipa::path(post, path = "/admin/apps/{app_id}/keys", tag = "admin",
    params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "{ app_id, api_key }"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn create_key(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    let api_key = issue_key(&state.pool, app.id).await?;
    Ok(Json(json!({ "app_id": app.id, "api_key": api_key })))
}

/// Revokes a key of the app.
#[utoipa::path(post, path = "/admin/apps/{app_id}/keys/{key_id}/revoke", tag = "admin",
    params(("app_id" = Uuid, Path), ("key_id" = Uuid, Path)),
    responses((status = 200, description = "{ ok: true }"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app or key")),
    security(("admin_token" = [])))]
pub async fn revoke(
    _: Admin,
    State(state): State<AppState>,
    Path((app, key_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    let key_id = validate::parse_uuid("key_id", &key_id)?;
    revoke_key(&state.pool, app.id, key_id).await?;
    Ok(Json(json!({ "ok": true })))
}

/// Adds a webhook secret: `{ provider: "stripe" | "polar", secret }`.
#[utoipa::path(post, path = "/admin/apps/{app_id}/webhook-secrets", tag = "admin",
    params(("app_id" = Uuid, Path)), request_body = WebhookSecretRequest,
    responses((status = 200, description = "{ ok: true }"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn create_secret(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    let (provider, secret) = secret_fields(validate::json_object(&headers, body).await?)?;
    add_secret(&state.pool, app.id, provider, &secret).await?;
    Ok(Json(json!({ "ok": true })))
}

/// The provider and secret of a `POST /admin/apps/{app_id}/webhook-secrets` body, as stored
/// (`400` naming the field otherwise).
pub(crate) fn secret_fields(object: Map<String, Value>) -> Result<(Provider, String), ApiError> {
    Fields::new(object.clone(), &["provider", "secret"])?;
    let text = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::field(field, "is required (a string)"))
    };
    check_secret(&text("provider")?, &text("secret")?)
}

/// Body of `PUT /admin/apps/{app_id}/stripe_key`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StripeKeyRequest {
    /// The app's Stripe secret key (`sk_…`, or a restricted `rk_…` key that may create
    /// PaymentIntents), for auto top-up charges. Never shown again.
    secret_key: String,
}

#[utoipa::path(put, path = "/admin/apps/{app_id}/stripe_key", tag = "admin",
    params(("app_id" = Uuid, Path)), request_body = StripeKeyRequest,
    responses((status = 200, description = "{ ok: true }"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn put_stripe_key(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    let key = stripe_key_field(validate::json_object(&headers, body).await?)?;
    apps::set_stripe_key(
        &state.pool,
        app.id,
        &key,
        state.config.common.secret_key.as_ref(),
    )
    .await?;
    Ok(Json(json!({ "ok": true })))
}

/// The key of a `PUT /admin/apps/{app_id}/stripe_key` body, as stored (`400` naming
/// `secret_key` otherwise, without repeating it).
pub(crate) fn stripe_key_field(object: Map<String, Value>) -> Result<String, ApiError> {
    let mut fields = Fields::new(object, &["secret_key"])?;
    let key = fields
        .optional_string("secret_key")?
        .ok_or_else(|| ApiError::field("secret_key", "is required (a string)"))?;
    fields.finish()?;
    Ok(apps::check_stripe_key(&key)?)
}
