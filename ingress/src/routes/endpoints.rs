//! `/webhook_endpoints`: the app's receivers of outbound events and their signing secrets.
//!
//! Every change (create, update, delete, rotation) bumps the app's event configuration version
//! (`app_event_config`) in its own transaction, so that workers reload the app's endpoints
//! within a second. The bump comes first: its row lock orders concurrent changes of one app,
//! so that two creates cannot both pass the endpoint limit.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use tally_common::events::{EventType, SUBSCRIBE_ALL};
use tally_common::limits::WEBHOOK_ENDPOINTS_MAX;
use tally_common::outbound;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::entries::time_json;
use crate::error::ApiError;
use crate::responses::ErrorResponse;
use crate::validate::{self, Fields};
use crate::AppState;

/// Random bytes in an endpoint's secret (Standard Webhooks asks for 24 to 64).
const SECRET_BYTES: usize = 32;
/// What every endpoint secret starts with (Standard Webhooks' prefix for a base64 key).
const SECRET_PREFIX: &str = "whsec_";
/// How long a rotated-out secret keeps signing deliveries next to the new one, in seconds.
const PREVIOUS_SECRET_SECONDS: f64 = 24.0 * 3600.0;
/// How long resolving an endpoint's host may take before the URL is refused.
const URL_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Body of `POST /webhook_endpoints`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CreateEndpointRequest {
    /// Absolute `https` URL of at most 2,048 characters whose host resolves only to public
    /// addresses (`TALLY_WEBHOOK_ALLOW_PRIVATE=true` also allows `http` and private ones).
    url: String,
    /// Event types to receive (any type but `ping`), or `["*"]` (the default): every type.
    events: Option<Vec<String>>,
    /// At most 1,000 characters.
    description: Option<String>,
}

/// Body of `PATCH /webhook_endpoints/{id}`: what to change.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UpdateEndpointRequest {
    url: Option<String>,
    events: Option<Vec<String>>,
    /// `null` clears it.
    description: Option<String>,
    /// `true` on a disabled endpoint also forgets the failures that may have disabled it.
    enabled: Option<bool>,
}

/// An endpoint.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives, or `["*"]`: every type.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Whether deliveries go to it (false once disabled by a `PATCH`, or after 5 days of
    /// failed deliveries).
    pub enabled: bool,
    /// Why workers disabled it (its deliveries failed for 5 days); the dashboard shows it, the
    /// API does not.
    #[serde(skip)]
    #[schema(ignore)]
    pub disabled_reason: Option<String>,
    /// `whsec_` and base64 of 32 random bytes: in the answer to a create only.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(serialize_with = "time_json")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct EndpointsResponse {
    endpoints: Vec<Endpoint>,
}

/// Answer to a rotation: the new secret (shown only now).
#[derive(Serialize, ToSchema)]
pub struct SecretResponse {
    secret: String,
}

/// A new endpoint, its `events` and `description` checked ([`subscriptions`],
/// [`Fields::description`]); [`create`] checks its URL.
pub struct NewEndpoint {
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
}

/// What an update changes (`None`: left as it is), its `events` checked; [`update`] checks
/// the URL.
#[derive(Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    /// `Some(None)` clears it.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

impl NewEndpoint {
    /// Reads the body of `POST /webhook_endpoints` (`400` naming the field otherwise), its URL
    /// checked against the rules that need no lookup; [`create`] resolves its host.
    pub(crate) fn read(object: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        let mut fields = Fields::new(object, &["url", "events", "description"])?;
        let url = match fields.optional_string("url")? {
            Some(url) => url,
            None => return Err(ApiError::field("url", "is required")),
        };
        let events = match fields.optional_array("events")? {
            Some(items) => subscriptions(items)?,
            None => vec![SUBSCRIBE_ALL.to_string()],
        };
        let description = fields.description()?;
        fields.finish()?;
        Ok(Self {
            url: url_syntax(url, allow_private)?,
            events,
            description,
        })
    }
}

impl EndpointChange {
    /// Reads the body of `PATCH /webhook_endpoints/{id}` (`400` naming the field otherwise), a
    /// new URL checked against the rules that need no lookup; [`update`] resolves its host.
    pub(crate) fn read(object: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        let mut fields = Fields::new(object, &["url", "events", "description", "enabled"])?;
        let url = fields.optional_string("url")?;
        let events = fields
            .optional_array("events")?
            .map(subscriptions)
            .transpose()?;
        let clear_description = fields.is_null("description");
        let description = fields.description()?;
        let enabled = fields.optional_bool("enabled")?;
        fields.finish()?;
        Ok(Self {
            url: url.map(|url| url_syntax(url, allow_private)).transpose()?,
            events,
            description: if clear_description {
                Some(None)
            } else {
                description.map(Some)
            },
            enabled,
        })
    }
}

/// The select list of an [`Endpoint`].
const ENDPOINT_COLUMNS: &str = "id, url, events, description, enabled, disabled_reason, created_at";

/// Bumps the version of the app's event configuration (endpoints and alerts), in the
/// transaction of the change, so that workers reload it.
pub(crate) async fn bump_event_config(
    connection: &mut PgConnection,
    app_id: Uuid,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO app_event_config (app_id) VALUES ($1)
         ON CONFLICT (app_id) DO UPDATE
         SET version = app_event_config.version + 1, updated_at = now()",
    )
    .bind(app_id)
    .execute(connection)
    .await?;
    Ok(())
}

/// The `{id}` of a path, as a UUID (`400` naming `id` otherwise).
pub(crate) fn path_id(id: &str) -> Result<Uuid, ApiError> {
    validate::parse_uuid("id", id)
}

/// The app's endpoint `id`, unless deleted; `404` otherwise (another app's included).
pub(crate) async fn endpoint(
    connection: &mut PgConnection,
    app_id: Uuid,
    id: Uuid,
) -> Result<Endpoint, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE id = $1 AND app_id = $2 AND deleted_at IS NULL"
    ))
    .bind(id)
    .bind(app_id)
    .fetch_optional(connection)
    .await?
    .ok_or_else(|| no_endpoint(id))
}

pub(crate) fn no_endpoint(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no webhook endpoint {id}"))
}

fn new_secret() -> String {
    let bytes: [u8; SECRET_BYTES] = rand::random();
    format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// An endpoint URL as stored: the outbound rules ([`outbound::check_url`]), then its host
/// resolved and every address it resolves to checked ([`outbound::resolve`]).
async fn check_url(state: &AppState, text: String) -> Result<String, ApiError> {
    let allow_private = state.config.common.webhook_allow_private;
    let url = parsed_url(&text, allow_private)?;
    match tokio::time::timeout(URL_RESOLVE_TIMEOUT, outbound::resolve(&url, allow_private)).await {
        Ok(Ok(_)) => Ok(text),
        Ok(Err(refused)) => Err(ApiError::field("url", refused)),
        Err(_) => Err(ApiError::field(
            "url",
            format!(
                "host did not resolve within {} s",
                URL_RESOLVE_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// A URL of a request checked against the outbound rules that need no lookup.
fn url_syntax(text: String, allow_private: bool) -> Result<String, ApiError> {
    parsed_url(&text, allow_private)?;
    Ok(text)
}

/// `text` parsed, once it passes the outbound rules that need no lookup (`400` naming `url`).
fn parsed_url(text: &str, allow_private: bool) -> Result<outbound::Url, ApiError> {
    validate::reject_nul("url", text)?;
    outbound::check_url(text, allow_private).map_err(|refused| ApiError::field("url", refused))
}

/// The `events` of a request: names of event types other than `ping`, each once, or exactly
/// `["*"]`.
pub fn subscriptions(items: Vec<Value>) -> Result<Vec<String>, ApiError> {
    let refuse = |message: String| ApiError::field("events", message);
    let mut events: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(name) = item else {
            return Err(refuse("must be an array of event type names".into()));
        };
        let known = name == SUBSCRIBE_ALL
            || EventType::parse(&name).is_some_and(|event_type| event_type != EventType::Ping);
        if !known {
            return Err(refuse(format!("{name:?} is not an event type")));
        }
        if !events.contains(&name) {
            events.push(name);
        }
    }
    match events.as_slice() {
        [] => Err(refuse(format!(
            "must name at least one event type, or be [\"{SUBSCRIBE_ALL}\"]"
        ))),
        [_, _, ..] if events.iter().any(|name| name == SUBSCRIBE_ALL) => Err(refuse(format!(
            "\"{SUBSCRIBE_ALL}\" (every type) cannot be listed with other types"
        ))),
        _ => Ok(events),
    }
}

#[utoipa::path(post, path = "/webhook_endpoints", request_body = CreateEndpointRequest,
    responses((status = 201, description = "created; the secret is shown only now", body = Endpoint),
              (status = 400, body = ErrorResponse), (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let allow_private = state.config.common.webhook_allow_private;
    let new = NewEndpoint::read(validate::json_object(&headers, body).await?, allow_private)?;
    let endpoint = create(&state, auth.app_id, new).await?;
    Ok((StatusCode::CREATED, Json(endpoint)).into_response())
}

/// Creates an endpoint of the app once its URL passes [`check_url`]; the answer carries its
/// secret (shown only now). `400` past [`WEBHOOK_ENDPOINTS_MAX`].
pub async fn create(
    state: &AppState,
    app_id: Uuid,
    new: NewEndpoint,
) -> Result<Endpoint, ApiError> {
    let url = check_url(state, new.url).await?;
    let mut tx = state.pool.begin().await?;
    bump_event_config(&mut tx, app_id).await?;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_endpoints WHERE app_id = $1 AND deleted_at IS NULL",
    )
    .bind(app_id)
    .fetch_one(&mut *tx)
    .await?;
    if count >= WEBHOOK_ENDPOINTS_MAX {
        return Err(ApiError::invalid(format!(
            "an app may have at most {WEBHOOK_ENDPOINTS_MAX} webhook endpoints; delete one first"
        )));
    }
    let secret = new_secret();
    let mut endpoint: Endpoint = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (id, app_id, url, events, description, secret)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(app_id)
    .bind(&url)
    .bind(&new.events)
    .bind(&new.description)
    .bind(&secret)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    endpoint.secret = Some(secret);
    Ok(endpoint)
}

#[utoipa::path(get, path = "/webhook_endpoints",
    responses((status = 200, description = "the app's endpoints, oldest first, without secrets", body = EndpointsResponse)),
    security(("api_key" = [])))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<EndpointsResponse>, ApiError> {
    let endpoints = list(&state.pool, auth.app_id).await?;
    Ok(Json(EndpointsResponse { endpoints }))
}

/// The app's endpoints, oldest first.
pub async fn list(pool: &PgPool, app_id: Uuid) -> Result<Vec<Endpoint>, ApiError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE app_id = $1 AND deleted_at IS NULL ORDER BY created_at, id"
    ))
    .bind(app_id)
    .fetch_all(pool)
    .await?)
}

#[utoipa::path(get, path = "/webhook_endpoints/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, description = "the endpoint, without its secret", body = Endpoint),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let id = path_id(&id)?;
    let mut connection = state.pool.acquire().await?;
    Ok(Json(endpoint(&mut connection, auth.app_id, id).await?))
}

#[utoipa::path(patch, path = "/webhook_endpoints/{id}", params(("id" = Uuid, Path)),
    request_body = UpdateEndpointRequest,
    responses((status = 200, description = "the endpoint, without its secret", body = Endpoint),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Endpoint>, ApiError> {
    let id = path_id(&id)?;
    let allow_private = state.config.common.webhook_allow_private;
    let change = EndpointChange::read(validate::json_object(&headers, body).await?, allow_private)?;
    Ok(Json(update(&state, auth.app_id, id, change).await?))
}

/// Changes the app's endpoint `id` (a new URL once it passes [`check_url`]).
pub async fn update(
    state: &AppState,
    app_id: Uuid,
    id: Uuid,
    change: EndpointChange,
) -> Result<Endpoint, ApiError> {
    let url = match change.url {
        Some(url) => Some(check_url(state, url).await?),
        None => None,
    };
    let mut tx = state.pool.begin().await?;
    bump_event_config(&mut tx, app_id).await?;
    let endpoint: Endpoint = sqlx::query_as(&format!(
        // Enabling a disabled endpoint forgets the failures that may have disabled it.
        "UPDATE webhook_endpoints SET
             url = coalesce($3, url),
             events = coalesce($4, events),
             description = CASE WHEN $5 OR $6::text IS NOT NULL THEN $6 ELSE description END,
             enabled = coalesce($7, enabled),
             failing_since = CASE WHEN $7 AND NOT enabled THEN NULL ELSE failing_since END,
             disabled_reason = CASE WHEN $7 AND NOT enabled THEN NULL ELSE disabled_reason END,
             updated_at = now()
         WHERE id = $1 AND app_id = $2 AND deleted_at IS NULL
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(app_id)
    .bind(url)
    .bind(change.events)
    .bind(matches!(change.description, Some(None)))
    .bind(change.description.flatten())
    .bind(change.enabled)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| no_endpoint(id))?;
    tx.commit().await?;
    Ok(endpoint)
}

#[utoipa::path(delete, path = "/webhook_endpoints/{id}", params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted; its pending deliveries are cancelled"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(&id)?;
    delete(&state.pool, auth.app_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes the app's endpoint `id` and cancels its pending deliveries.
pub async fn delete(pool: &PgPool, app_id: Uuid, id: Uuid) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    bump_event_config(&mut tx, app_id).await?;
    // Kept, for the deliveries that name it, but never listed or called again.
    let deleted = sqlx::query(
        "UPDATE webhook_endpoints SET deleted_at = now(), updated_at = now()
         WHERE id = $1 AND app_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(app_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(no_endpoint(id));
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'cancelled', next_attempt_at = NULL
         WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[utoipa::path(post, path = "/webhook_endpoints/{id}/rotate_secret", params(("id" = Uuid, Path)),
    responses((status = 200, description = "the new secret (shown only now); for 24 h deliveries are signed with both", body = SecretResponse),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<SecretResponse>, ApiError> {
    let id = path_id(&id)?;
    let secret = rotate(&state.pool, auth.app_id, id).await?;
    Ok(Json(SecretResponse { secret }))
}

/// Gives the app's endpoint `id` a new secret, keeping the previous one signing for 24 h; the
/// new secret (shown only now).
pub async fn rotate(pool: &PgPool, app_id: Uuid, id: Uuid) -> Result<String, ApiError> {
    let secret = new_secret();
    let mut tx = pool.begin().await?;
    bump_event_config(&mut tx, app_id).await?;
    let rotated = sqlx::query(
        "UPDATE webhook_endpoints SET previous_secret = secret,
             previous_secret_until = now() + make_interval(secs => $4),
             secret = $3, updated_at = now()
         WHERE id = $1 AND app_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(app_id)
    .bind(&secret)
    .bind(PREVIOUS_SECRET_SECONDS)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if rotated == 0 {
        return Err(no_endpoint(id));
    }
    tx.commit().await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn events(value: Value) -> Result<Vec<String>, String> {
        let Value::Array(items) = value else {
            unreachable!()
        };
        subscriptions(items).map_err(|error| error.to_string())
    }

    #[test]
    fn subscriptions_are_type_names_once_or_everything_alone() {
        assert_eq!(
            events(json!(["balance.low", "credits.added", "balance.low"])).unwrap(),
            ["balance.low", "credits.added"]
        );
        assert_eq!(events(json!(["*", "*"])).unwrap(), ["*"]);
        for refused in [
            json!([]),
            json!(["ping"]),
            json!(["balance.high"]),
            json!(["*", "balance.low"]),
            json!([1]),
        ] {
            let error = events(refused.clone()).unwrap_err();
            assert!(error.starts_with("events:"), "{refused}: {error}");
        }
    }

    #[test]
    fn secrets_are_standard_webhooks_keys() {
        let secret = new_secret();
        let key = secret.strip_prefix("whsec_").expect("prefix");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("base64");
        assert_eq!(bytes.len(), SECRET_BYTES);
        assert_ne!(new_secret(), secret);
    }
}
