//! `GET /commands/{id}`: what became of a command answered 202.

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::routes::credits::ErrorResponse;
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
        }));
    }
    let pending: Option<Uuid> = sqlx::query_scalar(
        "SELECT command_id FROM command_receipts WHERE command_id = $1 AND app_id = $2",
    )
    .bind(command_id)
    .bind(auth.app_id)
    .fetch_optional(&state.pool)
    .await?;
    match pending {
        Some(_) => Ok(Json(CommandStatus {
            command_id,
            status: "pending".into(),
            http_status: None,
            result: None,
        })),
        None => Err(not_found()),
    }
}
