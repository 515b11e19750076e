//! The OpenAPI document, generated from the handlers' annotations, then completed by
//! modifiers: the validator's constraints ([`constraints`]), the error answers
//! ([`crate::openapi_errors`]) and the links between operations ([`links`]).

#[cfg(test)]
mod agreement;
pub(crate) mod constraints;
pub(crate) mod links;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use self::constraints::Constraints;
use self::links::Links;
use crate::admin;
use crate::openapi_errors::CommonErrors;
use crate::routes::{
    alerts, batch, commands, credits, deliveries, endpoints, events, holds, plans,
};
use crate::webhooks;

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally", description = "Credits for SaaS and AI products: add, deduct, refund and read, exactly once."),
    paths(credits::add, credits::deduct, credits::refund, credits::balance, credits::balances, credits::history,
          holds::hold, holds::capture, holds::release, holds::list, batch::batch,
          commands::command_status, webhooks::stripe_for_app, webhooks::polar_for_app,
          webhooks::list_events,
          endpoints::create_endpoint, endpoints::list_endpoints, endpoints::get_endpoint,
          endpoints::update_endpoint, endpoints::delete_endpoint, endpoints::rotate_secret,
          deliveries::send_test, deliveries::list_deliveries, deliveries::redeliver,
          events::list_outbound_events, events::get_outbound_event,
          alerts::put_alerts, alerts::get_alerts, alerts::delete_alerts,
          plans::put_product, plans::list_products, plans::delete_product,
          plans::put_auto_topup, plans::get_auto_topup, plans::delete_auto_topup,
          admin::apps, admin::users, admin::user, admin::entries, admin::entry,
          admin::webhook_events, admin::stats, admin::add, admin::deduct, admin::refund,
          admin::manage::create, admin::manage::list_keys, admin::manage::create_key,
          admin::manage::revoke, admin::manage::create_secret, admin::manage::put_stripe_key),
    modifiers(&BearerKey, &Constraints, &CommonErrors, &Links)
)]
pub struct ApiDoc;

/// The document as served: its JSON with every object's keys in order, so that it reads the
/// same on every request (some of utoipa's maps are hash maps).
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("an OpenAPI document is plain JSON")
}

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tk_…")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
