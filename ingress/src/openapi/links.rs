//! OpenAPI links: which values of an answer the next request can use (a hold's `hold_id` to
//! capture it, a write's `ledger_id` to refund it, a `202`'s `command_id` to read its status).
//! Clients and fuzzers follow them to reach operations with real identifiers.
//!
//! Adding a link is one line of [`LINKS`]; every `202` that answers an [`AcceptedResponse`]
//! links to `GET /commands/{command_id}` by itself.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{RefOr, Response};
use utoipa::{Modify, ToSchema};

use super::constraints::{methods, methods_mut};
use crate::responses::AcceptedResponse;

/// A link from the `status` answer of the operation `from` (`"METHOD /path"`) to the
/// operation `to`, passing each `(target, expression)`: the target is `body.<field>`,
/// `path.<name>`, `query.<name>` or `header.<name>` of `to`, the expression an OpenAPI runtime
/// expression (`$response.body#/hold_id`, `$request.path.app_id`).
pub(crate) struct Link {
    pub from: &'static str,
    pub status: u16,
    pub to: &'static str,
    pub pass: &'static [(&'static str, &'static str)],
}

const fn link(
    from: &'static str,
    status: u16,
    to: &'static str,
    pass: &'static [(&'static str, &'static str)],
) -> Link {
    Link {
        from,
        status,
        to,
        pass,
    }
}

const HOLD_ID: &[(&str, &str)] = &[("body.hold_id", "$response.body#/hold_id")];
const LEDGER_ID: &[(&str, &str)] = &[("body.ledger_id", "$response.body#/ledger_id")];
const USER_ID: &[(&str, &str)] = &[("query.user_id", "$response.body#/user_id")];
const USER_AND_TYPE: &[(&str, &str)] = &[
    ("query.user_id", "$response.body#/user_id"),
    ("query.credit_type", "$response.body#/credit_type"),
];
const SAME_USER: &[(&str, &str)] = &[("body.user_id", "$response.body#/user_id")];
const HOLD_THE_BALANCE: &[(&str, &str)] = &[
    ("body.user_id", "$response.body#/user_id"),
    ("body.amount", "$response.body#/balance_after"),
];
const COMMAND_ID: &[(&str, &str)] = &[("path.command_id", "$response.body#/command_id")];
const NEXT_PAGE: &[(&str, &str)] = &[
    ("query.user_id", "$request.query.user_id"),
    ("query.cursor", "$response.body#/next_cursor"),
];
const NEW_APP: &[(&str, &str)] = &[("path.app_id", "$response.body#/app_id")];
const SAME_APP_LEDGER_ID: &[(&str, &str)] = &[
    ("path.app_id", "$request.path.app_id"),
    ("body.ledger_id", "$response.body#/ledger_id"),
];

pub(crate) const LINKS: &[Link] = &[
    link("POST /credits/hold", 200, "POST /credits/capture", HOLD_ID),
    link("POST /credits/hold", 200, "POST /credits/release", HOLD_ID),
    link("POST /credits/hold", 200, "GET /credits/holds", USER_ID),
    link("POST /credits/add", 200, "POST /credits/refund", LEDGER_ID),
    link("POST /credits/add", 200, "POST /credits/deduct", SAME_USER),
    link(
        "POST /credits/add",
        200,
        "POST /credits/hold",
        HOLD_THE_BALANCE,
    ),
    link(
        "POST /credits/add",
        200,
        "GET /credits/balance",
        USER_AND_TYPE,
    ),
    link("POST /credits/add", 200, "GET /credits/balances", USER_ID),
    link("POST /credits/add", 200, "GET /credits/history", USER_ID),
    link(
        "POST /credits/deduct",
        200,
        "POST /credits/refund",
        LEDGER_ID,
    ),
    link(
        "POST /credits/capture",
        200,
        "POST /credits/refund",
        LEDGER_ID,
    ),
    link(
        "GET /credits/history",
        200,
        "GET /credits/history",
        NEXT_PAGE,
    ),
    link("GET /credits/holds", 200, "GET /credits/holds", NEXT_PAGE),
    link(
        "GET /webhooks/events",
        200,
        "GET /webhooks/events",
        &[("query.cursor", "$response.body#/next_cursor")],
    ),
    link(
        "POST /webhooks/stripe/{app_id}",
        200,
        "GET /commands/{command_id}",
        COMMAND_ID,
    ),
    link(
        "POST /webhooks/polar/{app_id}",
        200,
        "GET /commands/{command_id}",
        COMMAND_ID,
    ),
    link(
        "POST /admin/apps",
        200,
        "GET /admin/apps/{app_id}/keys",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "POST /admin/apps/{app_id}/keys",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "POST /admin/apps/{app_id}/webhook-secrets",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "GET /admin/apps/{app_id}/users",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "GET /admin/apps/{app_id}/entries",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "GET /admin/apps/{app_id}/webhook-events",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "GET /admin/apps/{app_id}/stats",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "POST /admin/apps/{app_id}/credits/add",
        NEW_APP,
    ),
    link(
        "POST /admin/apps",
        200,
        "POST /admin/apps/{app_id}/credits/deduct",
        NEW_APP,
    ),
    link(
        "GET /admin/apps/{app_id}/keys",
        200,
        "POST /admin/apps/{app_id}/keys/{key_id}/revoke",
        &[
            ("path.app_id", "$request.path.app_id"),
            ("path.key_id", "$response.body#/keys/0/key_id"),
        ],
    ),
    link(
        "POST /admin/apps/{app_id}/credits/add",
        200,
        "POST /admin/apps/{app_id}/credits/refund",
        SAME_APP_LEDGER_ID,
    ),
    link(
        "POST /admin/apps/{app_id}/credits/deduct",
        200,
        "POST /admin/apps/{app_id}/credits/refund",
        SAME_APP_LEDGER_ID,
    ),
    link(
        "POST /admin/apps/{app_id}/credits/add",
        200,
        "GET /admin/entries/{ledger_id}",
        &[("path.ledger_id", "$response.body#/ledger_id")],
    ),
    link(
        "POST /admin/apps/{app_id}/credits/add",
        200,
        "GET /admin/apps/{app_id}/users/{user_id}",
        &[
            ("path.app_id", "$request.path.app_id"),
            ("path.user_id", "$response.body#/user_id"),
        ],
    ),
];

/// The link of every `202` that answers an [`AcceptedResponse`].
const ACCEPTED: Link = link("", 202, "GET /commands/{command_id}", COMMAND_ID);

/// Writes [`LINKS`] into the document, and the link of every `202` to its command's status.
pub(super) struct Links;

/// `"METHOD /path"` of each operation, by the operation's id.
fn operation_ids(openapi: &utoipa::openapi::OpenApi) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for (path, item) in &openapi.paths.paths {
        for (method, operation) in methods(item) {
            if let Some(id) = operation.and_then(|o| o.operation_id.clone()) {
                ids.insert(format!("{method} {path}"), id);
            }
        }
    }
    ids
}

/// The link object for `link`, whose target has the id `operation_id`.
///
/// utoipa 5 serializes its `Link`'s fields in snake case (`operation_id`, `request_body`),
/// which no OpenAPI tool reads; the fields are written through its flattened extensions
/// instead, under their OpenAPI names.
fn link_object(link: &Link, operation_id: &str) -> utoipa::openapi::link::Link {
    let mut parameters = Map::new();
    let mut body = Map::new();
    for (target, expression) in link.pass {
        match target.strip_prefix("body.") {
            Some(field) => body.insert(field.to_string(), Value::from(*expression)),
            None => parameters.insert(target.to_string(), Value::from(*expression)),
        };
    }
    let mut fields = Extensions::default();
    fields.insert("operationId".into(), Value::from(operation_id));
    if !parameters.is_empty() {
        fields.insert("parameters".into(), Value::Object(parameters));
    }
    if !body.is_empty() {
        fields.insert("requestBody".into(), Value::Object(body));
    }
    let mut object = LinkBuilder::new().build();
    object.extensions = Some(fields);
    object
}

fn accepts(response: &Response) -> bool {
    let accepted = format!("#/components/schemas/{}", AcceptedResponse::name());
    response.content.values().any(|content| {
        matches!(&content.schema, Some(RefOr::Ref(reference)) if reference.ref_location == accepted)
    })
}

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let ids = operation_ids(openapi);
        let command_status = ids.get(ACCEPTED.to).cloned();
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in methods_mut(item) {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                let from = format!("{method} {path}");
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    if let (Some(target), true) = (&command_status, accepts(response)) {
                        response
                            .links
                            .insert(target.clone(), link_object(&ACCEPTED, target).into());
                    }
                    for link in LINKS
                        .iter()
                        .filter(|link| link.from == from && link.status.to_string() == *status)
                    {
                        if let Some(target) = ids.get(link.to) {
                            response
                                .links
                                .insert(target.clone(), link_object(link, target).into());
                        }
                    }
                }
            }
        }
    }
}
