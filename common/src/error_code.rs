//! The stable, machine-readable `error` codes of the API and their HTTP statuses.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidSignature,
    Unauthorized,
    InsufficientCredits,
    NotFound,
    IdempotencyConflict,
    IdempotencyInProgress,
    AlreadyRefunded,
    HoldNotActive,
    /// The request body stalled past the server's deadline.
    RequestTimeout,
    PayloadTooLarge,
    UnsupportedMediaType,
    BalanceOverflow,
    NotRefundable,
    BatchRejected,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (the OpenAPI document lists them from here).
    pub const ALL: [ErrorCode; 18] = [
        Self::InvalidRequest,
        Self::InvalidSignature,
        Self::Unauthorized,
        Self::InsufficientCredits,
        Self::NotFound,
        Self::IdempotencyConflict,
        Self::IdempotencyInProgress,
        Self::AlreadyRefunded,
        Self::HoldNotActive,
        Self::RequestTimeout,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::BalanceOverflow,
        Self::NotRefundable,
        Self::BatchRejected,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
    ];

    pub fn status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::InvalidSignature => 400,
            Self::Unauthorized => 401,
            Self::InsufficientCredits => 402,
            Self::NotFound => 404,
            Self::IdempotencyConflict
            | Self::IdempotencyInProgress
            | Self::AlreadyRefunded
            | Self::HoldNotActive => 409,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::BalanceOverflow | Self::NotRefundable | Self::BatchRejected => 422,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidSignature => "invalid_signature",
            Self::Unauthorized => "unauthorized",
            Self::InsufficientCredits => "insufficient_credits",
            Self::NotFound => "not_found",
            Self::IdempotencyConflict => "idempotency_conflict",
            Self::IdempotencyInProgress => "idempotency_in_progress",
            Self::AlreadyRefunded => "already_refunded",
            Self::HoldNotActive => "hold_not_active",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BalanceOverflow => "balance_overflow",
            Self::NotRefundable => "not_refundable",
            Self::BatchRejected => "batch_rejected",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The error body every response uses: `{success: false, error, message, ..extra}`.
    pub fn body(self, message: impl Into<String>) -> serde_json::Value {
        serde_json::json!({ "success": false, "error": self.as_str(), "message": message.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_in_declaration_order() {
        // A code added before `Internal` moves its discriminant and fails here until listed;
        // keep `Internal` last.
        assert_eq!(ErrorCode::ALL.len(), ErrorCode::Internal as usize + 1);
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, index, "{code:?}");
            let wire: ErrorCode = serde_json::from_value(serde_json::json!(code.as_str())).unwrap();
            assert_eq!(wire, code, "as_str and serde agree");
        }
    }
}
