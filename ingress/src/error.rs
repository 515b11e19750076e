//! One error type for every HTTP answer that is not a success, mapped in one place to a
//! status and a stable `error` code.

use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tally_common::error_code::ErrorCode;

use crate::responses::json_response;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Bad input; `field` names what is wrong.
    #[error("{message}")]
    InvalidRequest {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    InvalidSignature(String),
    #[error("missing, malformed, unknown or revoked API key")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    /// The first request with this key is still being answered; retry.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInProgress,
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    /// The app's request budget is spent; nothing was done.
    #[error("rate limit of {} {} requests/s (burst {}) exceeded; retry in {} s", .0.rate.per_second, .0.budget.as_str(), .0.rate.burst, .0.retry_after_secs())]
    RateLimited(crate::ratelimit::Limited),
    /// The client address has failed authentication too often; nothing was looked up.
    #[error("too many failed authentications from this address; retry in {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    /// The request body sent nothing for too long; nothing was done.
    #[error("the request body stalled; send it again")]
    RequestTimeout,
    /// The broker or the database could not be reached; nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure: logged where it happens, opaque to the client.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self::InvalidRequest {
            field: Some(field.to_string()),
            message: format!("{field}: {message}"),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field: None,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            Self::InvalidSignature(_) => ErrorCode::InvalidSignature,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::IdempotencyConflict => ErrorCode::IdempotencyConflict,
            Self::IdempotencyInProgress => ErrorCode::IdempotencyInProgress,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::RateLimited(_) | Self::Throttled { .. } => ErrorCode::RateLimited,
            Self::RequestTimeout => ErrorCode::RequestTimeout,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<tally_common::apps::Invalid> for ApiError {
    fn from(invalid: tally_common::apps::Invalid) -> Self {
        Self::field(invalid.field, invalid.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if tally_common_is_unavailable(&error) {
            Self::from_shared(&error)
        } else {
            Self::Internal(error.into())
        }
    }
}

impl ApiError {
    /// The answer to each of several requests that one failed statement served.
    pub fn from_shared(error: &sqlx::Error) -> Self {
        if tally_common_is_unavailable(error) {
            Self::Unavailable("the database is unreachable; retry later".to_string())
        } else {
            Self::Internal(anyhow::anyhow!("{error}"))
        }
    }
}

fn tally_common_is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    ) || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57")))
}

impl ApiError {
    /// The same error about a field of an element of a request's list: `operations[3].amount`
    /// rather than `amount`.
    pub fn within(self, prefix: &str) -> Self {
        match self {
            Self::InvalidRequest {
                field: Some(field),
                message,
            } => {
                let named = format!("{prefix}.{field}");
                let message = match message.strip_prefix(&format!("{field}:")) {
                    Some(rest) => format!("{named}:{rest}"),
                    None => format!("{named}: {message}"),
                };
                Self::InvalidRequest {
                    field: Some(named),
                    message,
                }
            }
            Self::InvalidRequest {
                field: None,
                message,
            } => Self::InvalidRequest {
                field: Some(prefix.to_string()),
                message: format!("{prefix}: {message}"),
            },
            other => other,
        }
    }

    /// The status and the JSON body of this error's answer (logging what only the operator
    /// should see).
    pub fn status_and_body(&self) -> (u16, Value) {
        let code = self.code();
        let mut body = match self {
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                code.body("an internal error occurred")
            }
            Self::Unavailable(message) => {
                tracing::warn!(%message, "request refused: dependency unavailable");
                code.body(self.to_string())
            }
            _ => code.body(self.to_string()),
        };
        if let (
            Self::InvalidRequest {
                field: Some(field), ..
            },
            Value::Object(object),
        ) = (self, &mut body)
        {
            object.insert("field".into(), Value::String(field.clone()));
        }
        (code.status(), body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        let mut response = json_response(status, body);
        if matches!(self, Self::Unavailable(_)) {
            // Outages this refuses during (a broker or database restart) last seconds.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_UNAVAILABLE_SECONDS),
            );
        }
        let retry_after = match &self {
            Self::RateLimited(limited) => Some(limited.retry_after_secs()),
            Self::Throttled { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

/// `Retry-After` of a `503`, in seconds.
pub const RETRY_AFTER_UNAVAILABLE_SECONDS: &str = "1";

/// Extra fields merged into an error body.
pub fn with_fields(mut body: Value, fields: Map<String, Value>) -> Value {
    if let Value::Object(object) = &mut body {
        object.extend(fields);
    }
    body
}
