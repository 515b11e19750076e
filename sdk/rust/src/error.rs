//! One error enum for every call: the server's answer, typed by its status and `error` code.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

/// What the server said when it refused a request: its status, its stable `error` code, its
/// `message` and the whole JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    /// The body's `error`, e.g. `insufficient_credits`, `rate_limited`.
    pub code: String,
    pub message: String,
    pub body: Value,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 402: the user cannot spend what was asked. `balance` is what the user owns, `available`
    /// what deducts and holds may use (`balance - held`).
    #[error("{error}")]
    InsufficientCredits {
        balance: i64,
        available: Option<i64>,
        error: ApiError,
    },
    /// 422 `batch_rejected`: an operation of an atomic batch was refused, so none was applied.
    /// `failed` is the error that operation alone would have had (e.g.
    /// [`Error::InsufficientCredits`]).
    #[error("{error}")]
    BatchRejected {
        /// The refused operation's place in the batch (from 0).
        failed_index: usize,
        failed: Box<Error>,
        error: ApiError,
    },
    /// 409 `idempotency_conflict`: the key was used before with another body or path.
    #[error("{0}")]
    IdempotencyConflict(ApiError),
    /// Any other 409: `already_refunded`, `hold_not_active`, `idempotency_in_progress`.
    #[error("{0}")]
    Conflict(ApiError),
    /// 404: unknown id, or another app's.
    #[error("{0}")]
    NotFound(ApiError),
    /// 401: missing, unknown or revoked API key.
    #[error("{0}")]
    Authentication(ApiError),
    /// 400, 413, 415 and 422: the request is wrong; the message names the field.
    #[error("{0}")]
    BadRequest(ApiError),
    /// 429: the app's request budget is spent; nothing changed.
    #[error("{error}")]
    RateLimited {
        /// The response's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        error: ApiError,
    },
    /// 503: the broker or the database is unreachable; the command was not accepted.
    #[error("{error}")]
    Unavailable {
        retry_after: Option<Duration>,
        error: ApiError,
    },
    /// Any other status (e.g. 500), or an answer that is not the API's JSON.
    #[error("{0}")]
    Api(ApiError),
    /// The request never got an answer: connection refused or reset, or a timeout.
    #[error("connection to tally failed: {0}")]
    Connection(#[source] reqwest::Error),
    /// A command answered 202 was still pending when `wait` gave up; it will still be applied.
    #[error("command {command_id} still pending after {waited:?}")]
    StillPending { command_id: Uuid, waited: Duration },
    /// The client is missing its API key or base URL, or the base URL is not a URL.
    #[error("client configuration: {0}")]
    Config(String),
}

impl Error {
    /// Builds the error for a non-2xx answer (also used for a command `rejected` after 202).
    pub(crate) fn from_response(status: u16, body: Value, retry_after: Option<Duration>) -> Self {
        let code = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let error = ApiError {
            status,
            code,
            message,
            body,
        };
        match status {
            402 => Self::InsufficientCredits {
                balance: error
                    .body
                    .get("balance")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                available: error.body.get("available").and_then(Value::as_i64),
                error,
            },
            422 if error.code == "batch_rejected" => {
                let failed = error.body.get("failed").cloned().unwrap_or(Value::Null);
                let failed_status = failed
                    .get("error")
                    .and_then(Value::as_str)
                    .map_or(422, status_of_code);
                Self::BatchRejected {
                    failed_index: error
                        .body
                        .get("failed_index")
                        .and_then(Value::as_u64)
                        .and_then(|index| usize::try_from(index).ok())
                        .unwrap_or(0),
                    failed: Box::new(Self::from_response(failed_status, failed, None)),
                    error,
                }
            }
            409 if error.code == "idempotency_conflict" => Self::IdempotencyConflict(error),
            409 => Self::Conflict(error),
            404 => Self::NotFound(error),
            401 => Self::Authentication(error),
            400 | 413 | 415 | 422 => Self::BadRequest(error),
            429 => Self::RateLimited { retry_after, error },
            503 => Self::Unavailable { retry_after, error },
            _ => Self::Api(error),
        }
    }

    /// The server's answer, when there was one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::InsufficientCredits { error, .. }
            | Self::BatchRejected { error, .. }
            | Self::RateLimited { error, .. }
            | Self::Unavailable { error, .. } => Some(error),
            Self::IdempotencyConflict(error)
            | Self::Conflict(error)
            | Self::NotFound(error)
            | Self::Authentication(error)
            | Self::BadRequest(error)
            | Self::Api(error) => Some(error),
            Self::Connection(_) | Self::StillPending { .. } | Self::Config(_) => None,
        }
    }

    /// The HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        self.api_error().map(|error| error.status)
    }

    /// The body's `error` code, e.g. `hold_not_active`.
    pub fn code(&self) -> Option<&str> {
        self.api_error().map(|error| error.code.as_str())
    }

    /// The whole JSON body of the server's answer.
    pub fn body(&self) -> Option<&Value> {
        self.api_error().map(|error| &error.body)
    }

    /// `Retry-After` of a 429 or 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// Whether sending the same request again (with the same idempotency key) is safe and may
    /// succeed: network failures and timeouts, 429, 503 and `409 idempotency_in_progress`.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connection(_) | Self::RateLimited { .. } | Self::Unavailable { .. } => true,
            Self::Conflict(error) => error.code == "idempotency_in_progress",
            _ => false,
        }
    }
}

/// The status the API answers with an `error` code (the contract's table), for an error body
/// that arrives without its own: the refused operation of an atomic batch.
fn status_of_code(code: &str) -> u16 {
    match code {
        "invalid_request" => 400,
        "unauthorized" => 401,
        "insufficient_credits" => 402,
        "not_found" => 404,
        "idempotency_conflict"
        | "idempotency_in_progress"
        | "already_refunded"
        | "hold_not_active" => 409,
        "payload_too_large" => 413,
        "unsupported_media_type" => 415,
        "rate_limited" => 429,
        "unavailable" => 503,
        // balance_overflow, not_refundable, and any code this client does not know yet.
        _ => 422,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(status: u16, code: &str) -> Error {
        Error::from_response(status, json!({ "error": code, "message": "m" }), None)
    }

    #[test]
    fn only_transient_answers_are_retryable() {
        assert!(error(429, "rate_limited").is_retryable());
        assert!(error(503, "unavailable").is_retryable());
        assert!(error(409, "idempotency_in_progress").is_retryable());
        for (status, code) in [
            (400, "invalid_request"),
            (401, "unauthorized"),
            (402, "insufficient_credits"),
            (404, "not_found"),
            (409, "idempotency_conflict"),
            (409, "hold_not_active"),
            (413, "payload_too_large"),
            (422, "not_refundable"),
            (500, "internal"),
        ] {
            assert!(!error(status, code).is_retryable(), "{status} {code}");
        }
    }

    #[test]
    fn each_status_maps_to_its_variant_with_the_servers_code() {
        assert!(matches!(
            error(409, "idempotency_conflict"),
            Error::IdempotencyConflict(_)
        ));
        assert!(matches!(error(409, "already_refunded"), Error::Conflict(_)));
        assert!(matches!(error(404, "not_found"), Error::NotFound(_)));
        assert!(matches!(
            error(401, "unauthorized"),
            Error::Authentication(_)
        ));
        assert!(matches!(
            error(415, "unsupported_media_type"),
            Error::BadRequest(_)
        ));
        assert!(matches!(error(500, "internal"), Error::Api(_)));
        let limited = Error::from_response(
            429,
            json!({ "error": "rate_limited", "message": "slow down" }),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(limited.code(), Some("rate_limited"));
        assert_eq!(limited.status(), Some(429));
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn insufficient_credits_carries_balance_and_available() {
        let body = json!({ "error": "insufficient_credits", "message": "m", "balance": 40, "available": 30 });
        match Error::from_response(402, body.clone(), None) {
            Error::InsufficientCredits {
                balance,
                available,
                error,
            } => {
                assert_eq!((balance, available), (40, Some(30)));
                assert_eq!(error.body, body);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rejected_atomic_batch_names_the_operation_and_its_own_error() {
        let body = json!({ "error": "batch_rejected", "message": "operations[2] was refused",
            "failed_index": 2,
            "failed": { "error": "insufficient_credits", "message": "m", "balance": 3, "available": 1 } });
        match Error::from_response(422, body, None) {
            Error::BatchRejected {
                failed_index,
                failed,
                error,
            } => {
                assert_eq!(failed_index, 2);
                assert_eq!(error.code, "batch_rejected");
                assert!(
                    matches!(
                        *failed,
                        Error::InsufficientCredits {
                            balance: 3,
                            available: Some(1),
                            ..
                        }
                    ),
                    "{failed:?}"
                );
                assert_eq!(failed.status(), Some(402));
            }
            other => panic!("{other:?}"),
        }
        let overflow = json!({ "error": "batch_rejected", "message": "m", "failed_index": 0,
            "failed": { "error": "balance_overflow", "message": "m" } });
        let rejected = Error::from_response(422, overflow, None);
        assert!(!rejected.is_retryable());
        match rejected {
            Error::BatchRejected { failed, .. } => {
                assert!(matches!(*failed, Error::BadRequest(_)), "{failed:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
