//! `POST /webhooks/{stripe,polar}[/{app_id}]` and `GET /webhooks/events`.
//!
//! A webhook is verified on its raw bytes, reduced to a [`WebhookEvent`] and published to the
//! user's partition like any command, under a command id derived from the provider's event id:
//! every retry of one event is the same command, so it takes effect once. The provider gets
//! `200` only once JetStream has durably stored the event, and `503` otherwise — so it retries,
//! and the retry (same id) can never add a second effect.
//!
//! A delivery that names no app, or whose signature does not hold, is a failed authentication
//! of its client address ([`crate::throttle`]); an address over that budget gets `429` before
//! anything is looked up. The app's webhook budget is charged only once the signature holds, so
//! forged deliveries never delay genuine ones.

pub mod events;
pub mod plans;
pub mod signature;

use std::collections::HashMap;
use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tally_common::command::{Command, Envelope};
use tally_common::webhook::{Provider, WebhookAction, WebhookEvent};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::paging::{decode_cursor, encode_cursor, page_limit, split_page};
use crate::responses::{json_response, rfc3339, ErrorResponse};
use crate::throttle::{ClientAddr, Failure};
use crate::validate;
use crate::AppState;

use self::events::Parsed;

/// Largest webhook body, in bytes. Providers' events (a Checkout Session with many line items)
/// can outgrow the API's 64 KiB; a 413 would only make the provider retry forever.
const WEBHOOK_BODY_BYTES_MAX: usize = 1024 * 1024;

/// How many of an app's newest secrets per provider are accepted (rotation).
const SECRETS_ACCEPTED: i64 = 2;

/// Namespace of the command ids derived from provider event ids.
const WEBHOOK_COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x5a1e_7a11_0000_4000_8000_0000_0000_0001);

fn invalid(provider: Provider, error: impl std::fmt::Display, reason: &'static str) -> ApiError {
    metrics::counter!("tally_webhooks_rejected_total", "provider" => provider.as_str(), "reason" => reason).increment(1);
    tracing::warn!(
        provider = provider.as_str(),
        reason,
        "webhook refused: {error}"
    );
    ApiError::InvalidSignature(format!("{} webhook refused: {error}", provider.as_str()))
}

/// A Stripe event as Tally reads it; its other fields are read by event type, and any field
/// may be there.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StripeEvent {
    /// The event's id: every delivery of one event is one command.
    id: String,
    /// The event type; types Tally does not act on are answered `200` and ignored.
    #[schema(rename = "type")]
    event_type: String,
    data: StripeEventData,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct StripeEventData {
    /// The event's object (a payment intent, a checkout session, a charge, a dispute …).
    object: Value,
}

/// A Polar event as Tally reads it (Standard Webhooks); any other field may be there.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PolarEvent {
    /// The event type; types Tally does not act on are answered `200` and ignored.
    #[schema(rename = "type")]
    event_type: String,
    /// The event's object (an order …).
    data: Value,
}

/// Answer to a webhook the broker has durably accepted.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct WebhookReceived {
    received: bool,
    /// The command that applies the event; the same for every delivery of the event.
    command_id: Uuid,
}

#[utoipa::path(post, path = "/webhooks/stripe/{app_id}",
    params(("app_id" = Uuid, Path),
           ("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"{t}.{body}\">`, keyed with one of the app's two newest Stripe secrets (`whsec_…`); at most 5 minutes old")),
    request_body(content = StripeEvent, description = "A Stripe event, as Stripe sends it"),
    responses((status = 200, description = "durably received", body = WebhookReceived),
              (status = 404, body = ErrorResponse)))]
pub async fn stripe_for_app(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app_id = app_from_path(&state, client, &app_id).await?;
    receive(&state, client, Provider::Stripe, app_id, &headers, body).await
}

/// `POST /webhooks/stripe` for a deployment with exactly one app.
pub async fn stripe_single(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app_id = single_app(&state, client).await?;
    receive(&state, client, Provider::Stripe, app_id, &headers, body).await
}

#[utoipa::path(post, path = "/webhooks/polar/{app_id}",
    params(("app_id" = Uuid, Path),
           ("webhook-id" = String, Header, description = "The event's id: every delivery of one event is one command"),
           ("webhook-timestamp" = String, Header, description = "Unix seconds; at most 5 minutes old"),
           ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of \"{webhook-id}.{webhook-timestamp}.{body}\">` (space-separated when several), keyed with one of the app's two newest Polar secrets")),
    request_body(content = PolarEvent, description = "A Polar event, as Polar sends it (Standard Webhooks)"),
    responses((status = 200, description = "durably received", body = WebhookReceived),
              (status = 404, body = ErrorResponse)))]
pub async fn polar_for_app(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(app_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app_id = app_from_path(&state, client, &app_id).await?;
    receive(&state, client, Provider::Polar, app_id, &headers, body).await
}

/// `POST /webhooks/polar` for a deployment with exactly one app.
pub async fn polar_single(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let app_id = single_app(&state, client).await?;
    receive(&state, client, Provider::Polar, app_id, &headers, body).await
}

/// The app a delivery names. An unknown app is a failed authentication: looking it up costs a
/// query, like an unknown key.
async fn app_from_path(state: &AppState, client: IpAddr, app_id: &str) -> Result<Uuid, ApiError> {
    state.throttle.check(client)?;
    let app_id = validate::parse_uuid("app_id", app_id).inspect_err(|_| {
        state.throttle.failed(client, Failure::WebhookSignature);
    })?;
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(&state.pool)
        .await?;
    found.ok_or_else(|| {
        state.throttle.failed(client, Failure::WebhookSignature);
        ApiError::NotFound(format!("no app {app_id}"))
    })
}

async fn single_app(state: &AppState, client: IpAddr) -> Result<Uuid, ApiError> {
    state.throttle.check(client)?;
    let apps: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM apps ORDER BY id LIMIT 2")
        .fetch_all(&state.pool)
        .await?;
    let refused = match apps.as_slice() {
        [only] => return Ok(*only),
        [] => ApiError::NotFound("no app exists yet".into()),
        _ => ApiError::NotFound(
            "this deployment has several apps: use /webhooks/<provider>/{app_id}".into(),
        ),
    };
    state.throttle.failed(client, Failure::WebhookSignature);
    Err(refused)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

async fn receive(
    state: &AppState,
    client: IpAddr,
    provider: Provider,
    app_id: Uuid,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let forged = |error: ApiError| {
        state.throttle.failed(client, Failure::WebhookSignature);
        error
    };
    let secrets: Vec<String> = sqlx::query_scalar(
        "SELECT secret FROM webhook_secrets WHERE app_id = $1 AND provider = $2 ORDER BY created_at DESC, id DESC LIMIT $3",
    )
    .bind(app_id)
    .bind(provider.as_str())
    .bind(SECRETS_ACCEPTED)
    .fetch_all(&state.pool)
    .await?;
    if secrets.is_empty() {
        return Err(forged(invalid(
            provider,
            "no webhook secret is set for this app (tally app set-webhook-secret)",
            "no_secret",
        )));
    }
    let bytes = validate::raw_body(body, WEBHOOK_BODY_BYTES_MAX).await?;
    let now = Utc::now().timestamp();
    let tolerance = state.config.webhook_tolerance_secs as i64;
    let verified = match provider {
        Provider::Stripe => signature::verify_stripe(
            header(headers, "stripe-signature"),
            &bytes,
            &secrets,
            now,
            tolerance,
        ),
        Provider::Polar => signature::verify_polar(
            header(headers, "webhook-id"),
            header(headers, "webhook-timestamp"),
            header(headers, "webhook-signature"),
            &bytes,
            &secrets,
            now,
            tolerance,
        ),
    };
    if let Err(error) = verified {
        return Err(forged(invalid(provider, &error, error.reason())));
    }
    // Only a signed delivery draws on the app's webhook budget (its own: a flood of API calls
    // never refuses a payment), so forgeries never delay genuine deliveries.
    state
        .limits
        .check(app_id, crate::ratelimit::Budget::Webhook)
        .map_err(ApiError::RateLimited)?;
    let event: Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid(provider, "body is not JSON", "not_json"))?;
    let parsed = match provider {
        Provider::Stripe => events::stripe(&event),
        Provider::Polar => events::polar(&event).map(|(event_type, parsed)| {
            (
                header(headers, "webhook-id")
                    .unwrap_or_default()
                    .to_string(),
                event_type,
                parsed,
            )
        }),
    };
    let (event_id, event_type, parsed) =
        parsed.ok_or_else(|| invalid(provider, "body is not an event", "not_event"))?;
    let action = match parsed {
        Parsed::Action(action) => action,
        Parsed::Clawback(request) => resolve_clawback(state, provider, app_id, request).await?,
        Parsed::Invoice(request) => {
            let prices: Vec<String> = request.lines.iter().map(|l| l.price_id.clone()).collect();
            let catalogue = plans::catalogue(state, app_id, provider, &prices).await?;
            plans::resolve_invoice(request, &catalogue)
        }
        Parsed::Order(request) => {
            let ids = std::slice::from_ref(&request.product_id);
            let catalogue = plans::catalogue(state, app_id, provider, ids).await?;
            let product = catalogue.get(&request.product_id);
            plans::resolve_order(request, product)
        }
    };
    let event = WebhookEvent {
        provider,
        event_id,
        event_type,
        action,
    };
    let command_id = Uuid::new_v5(
        &WEBHOOK_COMMAND_NAMESPACE,
        format!("{app_id}/{}/{}", provider.as_str(), event.event_id).as_bytes(),
    );
    let envelope = Envelope {
        command_id,
        app_id,
        request_hash: None,
        accepted_at: Utc::now(),
        command: Command::Webhook(event),
        origin: Default::default(),
    };
    metrics::counter!("tally_webhooks_received_total", "provider" => provider.as_str())
        .increment(1);
    match state.bus.publish(&envelope, None).await {
        Ok(_) => Ok(json_response(
            200,
            json!({ "received": true, "command_id": command_id }),
        )),
        Err(error) => {
            // The provider retries with the same event id, i.e. the same command id: if this
            // publish was stored after all, the retry is deduped; if not, the retry delivers it.
            Err(ApiError::Unavailable(format!(
                "the broker is unreachable; retry later ({error})"
            )))
        }
    }
}

/// A refund or dispute names a payment; the payment names the user whose partition orders it.
/// An invoice's refund names its payment intent, which every credited line of it recorded: they
/// are clawed back together.
async fn resolve_clawback(
    state: &AppState,
    provider: Provider,
    app_id: Uuid,
    request: events::ClawbackRequest,
) -> Result<WebhookAction, ApiError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT payment_ref, user_id FROM payments
         WHERE app_id = $1 AND provider = $2 AND (payment_ref = $3 OR refund_ref = $3)
         ORDER BY payment_ref LIMIT 100",
    )
    .bind(app_id)
    .bind(provider.as_str())
    .bind(&request.payment_ref)
    .fetch_all(&state.pool)
    .await?;
    let mut refs = rows.into_iter();
    Ok(match refs.next() {
        Some((payment_ref, user_id)) => WebhookAction::Clawback {
            payment_ref,
            // Lines of one invoice credit one user.
            also: refs
                .filter(|(_, owner)| *owner == user_id)
                .map(|(payment_ref, _)| payment_ref)
                .collect(),
            user_id,
            refunded_minor_total: request.refunded_minor_total,
            disputed_minor: request.disputed_minor,
            amount_minor: request.amount_minor,
        },
        None => WebhookAction::Ignore {
            reason: format!("no credited payment {}", request.payment_ref),
        },
    })
}

/// One received webhook event.
#[derive(Serialize, ToSchema)]
pub struct WebhookEventRecord {
    event_id: String,
    provider: String,
    #[serde(rename = "type")]
    event_type: String,
    /// credited, clawed_back, duplicate, ignored or rejected.
    outcome: String,
    reason: Option<String>,
    user_id: Option<String>,
    /// The entry the event wrote.
    ledger_id: Option<Uuid>,
    received_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEventsResponse {
    events: Vec<WebhookEventRecord>,
    next_cursor: Option<String>,
}

const EVENTS_CURSOR: &str = "w1";

/// A row of `webhook_events` as both event lists read it: event id, provider, type, outcome,
/// reason, user, ledger entry, received at.
pub(crate) type EventRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<Uuid>,
    DateTime<Utc>,
);

/// The parameters of `GET /webhooks/events`.
pub(crate) struct EventsQuery {
    provider: Option<Provider>,
    limit: i64,
    /// Received at, provider and event id of the last event of the previous page (`cursor`).
    after: Option<(DateTime<Utc>, String, String)>,
}

impl EventsQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let provider = match query.get("provider") {
            None => None,
            Some(text) => Some(
                Provider::parse(text)
                    .ok_or_else(|| ApiError::field("provider", "must be stripe or polar"))?,
            ),
        };
        let limit = page_limit(query)?;
        let after: Option<(DateTime<Utc>, String, String)> = match query.get("cursor") {
            None => None,
            Some(cursor) => {
                let bad = || ApiError::field("cursor", "is not a cursor issued by this endpoint");
                let position = decode_cursor(EVENTS_CURSOR, cursor)?;
                let mut parts = position.splitn(3, '|');
                let micros: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
                let provider = parts.next().ok_or_else(bad)?.to_string();
                let event_id = parts.next().ok_or_else(bad)?.to_string();
                Some((
                    DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
                    provider,
                    event_id,
                ))
            }
        };
        Ok(Self {
            provider,
            limit,
            after,
        })
    }
}

#[utoipa::path(get, path = "/webhooks/events",
    params(("provider" = Option<String>, Query),
           ("limit" = Option<i64>, Query),
           ("cursor" = Option<String>, Query)),
    responses((status = 200, body = WebhookEventsResponse), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<WebhookEventsResponse>, ApiError> {
    let EventsQuery {
        provider,
        limit,
        after,
    } = EventsQuery::parse(&query)?;
    let rows = sqlx::query_as::<_, EventRow>(
        "SELECT event_id, provider, event_type, outcome, reason, user_id, ledger_id, received_at
         FROM webhook_events
         WHERE app_id = $1 AND ($2::text IS NULL OR provider = $2)
           AND ($3::timestamptz IS NULL OR (received_at, provider, event_id) < ($3, $4, $5))
         ORDER BY received_at DESC, provider DESC, event_id DESC LIMIT $6",
    )
    .bind(auth.app_id)
    .bind(provider.map(Provider::as_str))
    .bind(after.as_ref().map(|a| a.0))
    .bind(after.as_ref().map(|a| a.1.clone()).unwrap_or_default())
    .bind(after.as_ref().map(|a| a.2.clone()).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        let last = rows.last().expect("a full page");
        encode_cursor(
            EVENTS_CURSOR,
            &format!("{}|{}|{}", last.7.timestamp_micros(), last.1, last.0),
        )
    });
    let events = rows
        .iter()
        .map(|row| WebhookEventRecord {
            event_id: row.0.clone(),
            provider: row.1.clone(),
            event_type: row.2.clone(),
            outcome: row.3.clone(),
            reason: row.4.clone(),
            user_id: row.5.clone(),
            ledger_id: row.6,
            received_at: rfc3339(row.7),
        })
        .collect();
    Ok(Json(WebhookEventsResponse {
        events,
        next_cursor,
    }))
}
