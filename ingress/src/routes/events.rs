//! `GET /events` and `GET /events/{id}`: the app's outbound events, as endpoints receive them
//! ([`tally_common::events::envelopes`]).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tally_common::events::{envelopes, EventType};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::paging::{encode_time_cursor, page_limit, split_page, time_cursor};
use crate::responses::ErrorResponse;
use crate::routes::endpoints::path_id;
use crate::validate;
use crate::AppState;

// Never built: the envelopes are JSON values read by `envelopes`; this describes them.
/// An event as an endpoint receives it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventEnvelope {
    id: Uuid,
    /// e.g. `balance.low`, `credits.added`, `ping`.
    r#type: String,
    created_at: String,
    app_id: Uuid,
    /// Null for an event of no user (`ping`, …).
    user_id: Option<String>,
    /// Increases with each event of one app and user.
    sequence: i64,
    /// Depends on the type: the ledger entry as `GET /credits/history` shows it for
    /// `credits.*` and `payment.*`, `{ threshold, balance, held, available }` for `balance.*`, …
    #[schema(value_type = Object)]
    data: Value,
}

#[derive(Serialize, ToSchema)]
pub struct EventsResponse {
    #[schema(value_type = Vec<EventEnvelope>)]
    events: Vec<Value>,
    next_cursor: Option<String>,
}

const EVENTS_CURSOR: &str = "e1";

/// The query of `GET /events`.
pub(crate) struct EventsQuery {
    event_type: Option<EventType>,
    user_id: Option<String>,
    limit: i64,
    /// `created_at` and id of the last event of the previous page (from `cursor`).
    before: Option<(DateTime<Utc>, Uuid)>,
}

impl EventsQuery {
    /// Reads the query (`400` naming the parameter otherwise).
    pub(crate) fn parse(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let event_type = query
            .get("type")
            .map(|name| {
                EventType::parse(name)
                    .ok_or_else(|| ApiError::field("type", "is not an event type"))
            })
            .transpose()?;
        let user_id = query
            .get("user_id")
            .map(|user_id| validate::check_user_id("user_id", user_id.clone()))
            .transpose()?;
        Ok(Self {
            event_type,
            user_id,
            limit: page_limit(query)?,
            before: time_cursor(EVENTS_CURSOR, query)?,
        })
    }
}

#[utoipa::path(get, path = "/events",
    params(("type" = Option<String>, Query, description = "Only events of this type."),
           ("user_id" = Option<String>, Query, description = "Only this user's events."),
           ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "the app's events, newest first", body = EventsResponse),
              (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn list_outbound_events(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EventsResponse>, ApiError> {
    let EventsQuery {
        event_type,
        user_id,
        limit,
        before,
    } = EventsQuery::parse(&query)?;
    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, created_at FROM events
         WHERE app_id = $1 AND ($2::text IS NULL OR type = $2)
           AND ($3::text IS NULL OR user_id = $3)
           AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
         ORDER BY created_at DESC, id DESC LIMIT $6",
    )
    .bind(auth.app_id)
    .bind(event_type.map(EventType::as_str))
    .bind(user_id)
    .bind(before.map(|b| b.0))
    .bind(before.map(|b| b.1).unwrap_or_default())
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let next_cursor = more.then(|| {
        let (id, created_at) = rows.last().expect("a full page");
        encode_time_cursor(EVENTS_CURSOR, *created_at, *id)
    });
    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
    let mut envelopes = envelopes(&state.pool, auth.app_id, &ids).await?;
    let events = ids.iter().filter_map(|id| envelopes.remove(id)).collect();
    Ok(Json(EventsResponse {
        events,
        next_cursor,
    }))
}

#[utoipa::path(get, path = "/events/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = EventEnvelope), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn get_outbound_event(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    envelopes(&state.pool, auth.app_id, &[id])
        .await?
        .remove(&id)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no event {id}")))
}
