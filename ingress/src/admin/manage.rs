//! Apps, API keys and webhook secrets: what `tally app` / `tally key` do, for `/admin/*` and
//! the dashboard. A new key is returned once; only its hash is stored.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::{queries, Admin};
use crate::error::ApiError;
use crate::responses::rfc3339;
use crate::validate::{self, Fields};
use crate::AppState;

/// Longest app name (the `apps` table's check).
pub const APP_NAME_CHARS_MAX: usize = 200;
/// Longest webhook secret accepted.
pub const WEBHOOK_SECRET_CHARS_MAX: usize = 1_000;

pub fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > APP_NAME_CHARS_MAX {
        return Err(ApiError::field(
            "name",
            format!("must be 1 to {APP_NAME_CHARS_MAX} characters"),
        ));
    }
    Ok(name.to_string())
}

pub fn check_secret(provider: &str, secret: &str) -> Result<(String, String), ApiError> {
    if !["stripe", "polar"].contains(&provider) {
        return Err(ApiError::field("provider", "must be stripe or polar"));
    }
    let secret = secret.trim();
    if secret.is_empty() || secret.chars().count() > WEBHOOK_SECRET_CHARS_MAX {
        return Err(ApiError::field(
            "secret",
            format!("must be 1 to {WEBHOOK_SECRET_CHARS_MAX} characters"),
        ));
    }
    Ok((provider.to_string(), secret.to_string()))
}

/// Creates an app and its first key.
pub async fn create_app(pool: &PgPool, name: &str) -> Result<(Uuid, String), ApiError> {
    let app_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO apps (id, name) VALUES ($1, $2)")
        .bind(app_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let key = tally_common::apikey::insert(&mut *tx, app_id).await?;
    tx.commit().await?;
    Ok((app_id, key))
}

/// Issues another key for the app.
pub async fn issue_key(pool: &PgPool, app_id: Uuid) -> Result<String, ApiError> {
    Ok(tally_common::apikey::insert(pool, app_id).await?)
}

/// Revokes a key of the app (effective within the key cache's 4 s); 404 if no active key.
pub async fn revoke_key(pool: &PgPool, app_id: Uuid, key_id: Uuid) -> Result<(), ApiError> {
    let revoked = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND app_id = $2 AND revoked_at IS NULL",
    )
    .bind(key_id)
    .bind(app_id)
    .execute(pool)
    .await?;
    if revoked.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("no active key {key_id}")));
    }
    Ok(())
}

/// Adds a webhook secret (the two newest per provider are accepted).
pub async fn add_secret(
    pool: &PgPool,
    app_id: Uuid,
    provider: &str,
    secret: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO webhook_secrets (id, app_id, provider, secret) VALUES ($1, $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(app_id)
    .bind(provider)
    .bind(secret)
    .execute(pool)
    .await?;
    Ok(())
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

/// Creates an app: `{ name }` → `{ app_id, name, api_key }` (the key is shown only now).
#[utoipa::path(post, path = "/admin/apps", tag = "admin",
    responses((status = 200, description = "{ app_id, name, api_key }"), (status = 400, description = "bad name"),
              (status = 401, description = "missing or wrong admin token")),
    security(("admin_token" = [])))]
pub async fn create(
    _: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let object = validate::json_object(&headers, body).await?;
    Fields::new(object.clone(), &["name"])?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field("name", "is required (a string)"))?;
    let name = check_name(name)?;
    let (app_id, api_key) = create_app(&state.pool, &name).await?;
    Ok(Json(
        json!({ "app_id": app_id, "name": name, "api_key": api_key }),
    ))
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
    params(("app_id" = Uuid, Path)),
    responses((status = 200, description = "{ ok: true }"), (status = 400, description = "bad provider or secret"),
              (status = 401, description = "missing or wrong admin token"), (status = 404, description = "unknown app")),
    security(("admin_token" = [])))]
pub async fn create_secret(
    _: Admin,
    State(state): State<AppState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let app = queries::app(&state.pool, validate::parse_uuid("app_id", &app)?).await?;
    let object = validate::json_object(&headers, body).await?;
    Fields::new(object.clone(), &["provider", "secret"])?;
    let text = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::field(field, "is required (a string)"))
    };
    let (provider, secret) = check_secret(&text("provider")?, &text("secret")?)?;
    add_secret(&state.pool, app.id, &provider, &secret).await?;
    Ok(Json(json!({ "ok": true })))
}
