//! What the answers of many operations have in common: a JSON body with a status, the error and
//! `202 Accepted` bodies as the OpenAPI document describes them, and the one way to write a time.
//!
//! [`ErrorResponse`] and [`AcceptedResponse`] are never built: they describe bodies written as
//! JSON values elsewhere ([`crate::error::ApiError`], [`crate::submit`], and the worker's
//! rejections), so that every operation can name them in its OpenAPI annotations.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

/// A JSON response with the given status.
pub fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// A write accepted but not (yet) applied: follow `status_url`.
#[derive(Serialize, ToSchema)]
pub struct AcceptedResponse {
    success: bool,
    /// Always `accepted`.
    status: String,
    command_id: Uuid,
    status_url: String,
}

/// Every error.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    success: bool,
    /// Stable machine-readable code, e.g. `insufficient_credits`.
    error: String,
    message: String,
    /// For `invalid_request`: the field at fault.
    field: Option<String>,
    /// For `insufficient_credits` and `balance_overflow`.
    balance: Option<i64>,
    available: Option<i64>,
}

/// A time as every answer writes it: RFC 3339, UTC, microseconds.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}
