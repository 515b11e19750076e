//! The error answers of every operation, written into the OpenAPI document in one place from
//! the stable codes ([`ErrorCode`]) rather than on each handler.
//!
//! What an operation may answer follows from what it has: every operation `429 rate_limited`
//! and `503 unavailable` (both with `Retry-After`); one with a key or token `401`; one with a
//! body or parameters `400`; one with a body `408`, `413` and `415`; one with an id in its path
//! `404`;
//! one with an `Idempotency-Key` the two idempotency `409`s and the `500` of a dead-lettered
//! command. Handlers declare the rest (`402`, `404`, `409`, `422`); every error response then
//! gets the [`ErrorResponse`] body with the `error` codes it can carry, listed in its schema
//! and in words.

use tally_common::error_code::ErrorCode;
use tally_common::limits::BODY_BYTES_MAX;
use utoipa::openapi::content::Content;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema};
use utoipa::openapi::{Ref, RefOr, Type};
use utoipa::{Modify, ToSchema};

use crate::openapi::constraints::operations_mut;
use crate::responses::ErrorResponse;

pub struct CommonErrors;

/// Whether `operation` on `path` can answer `code`: the codes of one operation only, for the
/// operations that have them; every other code wherever its status applies.
fn can_answer(code: ErrorCode, path: &str, operation: &Operation) -> bool {
    let is = |endings: &[&str]| endings.iter().any(|ending| path.ends_with(ending));
    match code {
        ErrorCode::InvalidSignature => receives_webhooks(path),
        // The receivers read the body as the provider sends it, whatever its type.
        ErrorCode::UnsupportedMediaType => !receives_webhooks(path),
        ErrorCode::InsufficientCredits => is(&[
            "/credits/deduct",
            "/credits/hold",
            "/credits/refund",
            "/credits/batch",
        ]),
        ErrorCode::AlreadyRefunded | ErrorCode::NotRefundable => is(&["/credits/refund"]),
        ErrorCode::HoldNotActive => is(&["/credits/capture", "/credits/release"]),
        ErrorCode::BalanceOverflow => is(&["/credits/add", "/credits/refund", "/credits/batch"]),
        ErrorCode::BatchRejected => is(&["/credits/batch"]),
        ErrorCode::IdempotencyConflict | ErrorCode::IdempotencyInProgress | ErrorCode::Internal => {
            idempotent(operation)
        }
        _ => true,
    }
}

/// The payment providers' webhook receivers; `GET /webhooks/events` takes an API key.
fn receives_webhooks(path: &str) -> bool {
    path.starts_with("/webhooks/") && path != "/webhooks/events"
}

fn idempotent(operation: &Operation) -> bool {
    operation.parameters.iter().flatten().any(|parameter| {
        parameter.parameter_in == ParameterIn::Header && parameter.name == "Idempotency-Key"
    })
}

/// What a code means, in the words of the contract.
fn meaning(code: ErrorCode, path: &str) -> String {
    match code {
        ErrorCode::InvalidRequest => {
            "malformed JSON, a missing or unknown field, a bad type or range, a malformed id or \
             cursor; `field` names it"
                .into()
        }
        ErrorCode::InvalidSignature => {
            "the signature is missing, wrong or stale, the body is not an event, or the app has \
             no secret for this provider; nothing credited"
                .into()
        }
        ErrorCode::Unauthorized if path.starts_with("/admin/") => {
            "missing or wrong admin token".into()
        }
        ErrorCode::Unauthorized => "missing, malformed, unknown or revoked API key".into(),
        ErrorCode::InsufficientCredits => {
            "the user cannot spend that much (`balance` and `available` say what they have); \
             nothing written"
                .into()
        }
        ErrorCode::NotFound => "unknown id, or another app's".into(),
        ErrorCode::IdempotencyConflict => {
            "the `Idempotency-Key` was used with another body or path".into()
        }
        ErrorCode::IdempotencyInProgress => {
            "the first request with this `Idempotency-Key` is still in flight: retry".into()
        }
        ErrorCode::AlreadyRefunded => "the entry has nothing left to refund".into(),
        ErrorCode::HoldNotActive => "the hold was captured, released or has expired".into(),
        ErrorCode::RequestTimeout => {
            "the body stalled past the server's deadline; nothing changed".into()
        }
        ErrorCode::BatchRejected => {
            "an operation of the atomic batch was refused (`failed_index` and `failed` say which \
             and why); nothing was written"
                .into()
        }
        ErrorCode::PayloadTooLarge if path.starts_with("/webhooks/") => {
            "the body is over the webhook size limit".into()
        }
        ErrorCode::PayloadTooLarge => format!("the body is over {} KiB", BODY_BYTES_MAX / 1024),
        ErrorCode::UnsupportedMediaType => "the body is not `application/json`".into(),
        ErrorCode::BalanceOverflow => "the balance would pass 2^63 - 1; nothing written".into(),
        ErrorCode::NotRefundable => "the entry is of a kind that cannot be refunded".into(),
        ErrorCode::RateLimited => "the request budget is spent; nothing changed".into(),
        ErrorCode::Unavailable => {
            "the broker or the database is unreachable; nothing was accepted or changed".into()
        }
        ErrorCode::Internal => {
            "the command could not be applied and was set aside (dead-lettered); \
             `GET /commands/{command_id}` shows it"
                .into()
        }
    }
}

fn retry_after(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some(description))
        .build()
}

/// The error response for `codes`, which share one status.
fn error_response(codes: &[ErrorCode], path: &str) -> Response {
    let description = codes
        .iter()
        .map(|code| format!("`{}`: {}", code.as_str(), meaning(*code, path)))
        .collect::<Vec<_>>()
        .join("; ");
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(ErrorResponse::name()))
        .item(
            ObjectBuilder::new().property(
                "error",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().map(|code| code.as_str()))),
            ),
        )
        .build();
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Schema::AllOf(schema))),
    );
    if codes.contains(&ErrorCode::RateLimited) {
        response = response.header(
            "Retry-After",
            retry_after("seconds until a request would be admitted again"),
        );
    }
    if codes.contains(&ErrorCode::Unavailable) {
        response = response.header(
            "Retry-After",
            retry_after("seconds to wait before retrying"),
        );
    }
    response.build()
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for operation in operations_mut(item) {
                let has = |location: ParameterIn| {
                    operation
                        .parameters
                        .iter()
                        .flatten()
                        .any(|parameter| parameter.parameter_in == location)
                };
                let has_body = operation.request_body.is_some();
                let mut statuses = vec![429, 503];
                if operation.security.is_some() {
                    statuses.push(401);
                }
                if has_body || has(ParameterIn::Query) || has(ParameterIn::Path) {
                    statuses.push(400);
                }
                if has_body {
                    statuses.extend([408, 413, 415]);
                }
                if has(ParameterIn::Path) {
                    statuses.push(404);
                }
                if idempotent(operation) {
                    statuses.extend([409, 500]);
                }
                statuses.extend(
                    operation
                        .responses
                        .responses
                        .keys()
                        .filter_map(|status| status.parse::<u16>().ok())
                        .filter(|status| *status >= 400),
                );
                statuses.sort_unstable();
                statuses.dedup();
                for status in statuses {
                    let codes: Vec<ErrorCode> = ErrorCode::ALL
                        .into_iter()
                        .filter(|code| code.status() == status)
                        .filter(|code| can_answer(*code, path, operation))
                        .collect();
                    // A status no code of this operation has is left as its handler declared it
                    // (the document's tests refuse it).
                    if !codes.is_empty() {
                        let response = error_response(&codes, path);
                        operation
                            .responses
                            .responses
                            .insert(status.to_string(), response.into());
                    }
                }
            }
        }
        // The `error` property lists every code.
        let components = openapi.components.get_or_insert_with(Default::default);
        if let Some(RefOr::T(Schema::Object(body))) =
            components.schemas.get_mut(ErrorResponse::name().as_ref())
        {
            if let Some(RefOr::T(Schema::Object(error))) = body.properties.get_mut("error") {
                error.enum_values = Some(
                    ErrorCode::ALL
                        .into_iter()
                        .map(|code| code.as_str().into())
                        .collect(),
                );
            }
        }
    }
}
