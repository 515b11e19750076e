//! The error answers that do not depend on the operation, added to the OpenAPI document in one
//! place rather than on each handler: every operation may answer `429 rate_limited` (with
//! `Retry-After`), every operation with an API key `401`, and every operation with a request
//! body `400`, `413` and `415`.

use utoipa::openapi::content::Content;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ObjectBuilder, Ref, Type};
use utoipa::{Modify, ToSchema};

use crate::responses::ErrorResponse;

pub struct CommonErrors;

fn error(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name(ErrorResponse::name()))),
    )
}

fn rate_limited() -> Response {
    error("rate_limited: the app's request budget is spent; nothing changed")
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("seconds until a request would be admitted again"))
                .build(),
        )
        .build()
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations: [&mut Option<Operation>; 5] = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let (secured, has_body) = (
                    operation.security.is_some(),
                    operation.request_body.is_some(),
                );
                let mut add = |status: &str, response: Response| {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| response.into());
                };
                add("429", rate_limited());
                if secured {
                    add(
                        "401",
                        error("unauthorized: missing, unknown or revoked API key").build(),
                    );
                }
                if has_body {
                    add(
                        "400",
                        error("invalid_request: the message names the field").build(),
                    );
                    add("413", error("payload_too_large").build());
                    add(
                        "415",
                        error("unsupported_media_type: send application/json").build(),
                    );
                }
            }
        }
    }
}
