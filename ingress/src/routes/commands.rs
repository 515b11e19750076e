//! `GET /commands/{id}`: what became of a command answered 202.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::responses::{rfc3339, ErrorResponse};
use crate::validate;
use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct CommandStatus {
    command_id: Uuid,
    /// pending, applied or rejected (a business rejection: see http_status and result).
    status: String,
    /// The status the synchronous call would have answered; null while pending.
    http_status: Option<u16>,
    /// The body the synchronous call would have answered; null while pending.
    #[schema(value_type = Option<Object>)]
    result: Option<Value>,
    /// Set when a worker could not apply the command and set it aside for an operator (its
    /// answer is then a 500); null otherwise.
    dead_letter: Option<DeadLetter>,
}

/// A command set aside after its bounded retries (`tally dead-letters`).
#[derive(Serialize, ToSchema)]
pub struct DeadLetter {
    /// `parked` (awaiting an operator) or `retried` (replayed: `status` tells what became of it).
    state: String,
    /// How often it was tried before it was set aside.
    attempts: i32,
    dead_lettered_at: String,
    /// When an operator last replayed it; null if never.
    retried_at: Option<String>,
}

type DeadLetterRow = (String, i32, DateTime<Utc>, Option<DateTime<Utc>>);

async fn dead_letter(
    state: &AppState,
    app_id: Uuid,
    command_id: Uuid,
) -> Result<Option<DeadLetter>, ApiError> {
    let row: Option<DeadLetterRow> = sqlx::query_as(
        "SELECT state, attempts, dead_lettered_at, retried_at FROM dead_letters
         WHERE command_id = $1 AND app_id = $2",
    )
    .bind(command_id)
    .bind(app_id)
    .fetch_optional(&state.pool)
    .await?;
    Ok(row.map(
        |(state, attempts, dead_lettered_at, retried_at)| DeadLetter {
            state,
            attempts,
            dead_lettered_at: rfc3339(dead_lettered_at),
            retried_at: retried_at.map(rfc3339),
        },
    ))
}

#[utoipa::path(get, path = "/commands/{command_id}",
    params(("command_id" = Uuid, Path)),
    responses((status = 200, body = CommandStatus), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn command_status(
    State(state): State<AppState>,
    auth: Auth,
    Path(command_id): Path<String>,
) -> Result<Json<CommandStatus>, ApiError> {
    let command_id = validate::parse_uuid("command_id", &command_id)?;
    let not_found = || ApiError::NotFound(format!("no command {command_id}"));
    let processed: Option<(String, Option<i16>, Option<Value>)> = sqlx::query_as(
        "SELECT status, http_status, response FROM processed_commands WHERE command_id = $1 AND app_id = $2",
    )
    .bind(command_id)
    .bind(auth.app_id)
    .fetch_optional(&state.pool)
    .await?;
    if let Some((status, http_status, result)) = processed {
        if status == "cancelled" {
            return Err(not_found());
        }
        return Ok(Json(CommandStatus {
            command_id,
            status,
            http_status: http_status.map(|s| s as u16),
            result,
            dead_letter: dead_letter(&state, auth.app_id, command_id).await?,
        }));
    }
    // An id the ingress minted for this app is pending until a worker records it. Other ids
    // (from before ids were signed, or webhook commands whose dead letters the CLI replayed)
    // are pending while they have a receipt.
    let pending = state.command_ids.vouches(auth.app_id, command_id)
        || sqlx::query_scalar::<_, Uuid>(
            "SELECT command_id FROM command_receipts WHERE command_id = $1 AND app_id = $2",
        )
        .bind(command_id)
        .bind(auth.app_id)
        .fetch_optional(&state.pool)
        .await?
        .is_some();
    if !pending {
        return Err(not_found());
    }
    Ok(Json(CommandStatus {
        command_id,
        status: "pending".into(),
        http_status: None,
        result: None,
        dead_letter: dead_letter(&state, auth.app_id, command_id).await?,
    }))
}
