//! An app's webhook endpoints (the receivers of its outbound events): creating one, its page
//! with its deliveries, and what can be done to it — enable or disable, rotate its secret, send
//! a test ping, delete, redeliver a delivery. Every write is the API's own function
//! ([`crate::routes::endpoints`], [`crate::routes::deliveries`]), for the app of the page.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tally_common::events::EventType;
use tally_common::limits::WEBHOOK_ENDPOINTS_MAX;
use uuid::Uuid;

use super::access::{page, SignedForm, SignedIn};
use super::app::parse_app;
use super::forms;
use super::notice::{Code, Said};
use super::render::{filters, html, redirect_with, Notice};
use super::session::Session;
use crate::admin::queries;
use crate::error::ApiError;
use crate::routes::deliveries;
use crate::routes::endpoints::{self, Endpoint, EndpointChange, NewEndpoint};
use crate::validate;
use crate::AppState;

/// The delivery statuses the endpoint page filters by (the API's `status` values).
pub const DELIVERY_STATUSES: &[&str] = &["pending", "succeeded", "failed"];

/// The event types an endpoint may subscribe to, as the create form lists them.
pub fn subscribable() -> Vec<&'static str> {
    EventType::ALL
        .into_iter()
        .filter(|event_type| *event_type != EventType::Ping)
        .map(EventType::as_str)
        .collect()
}

#[derive(Template)]
#[template(path = "endpoint.html")]
struct EndpointPage<'a> {
    csrf: String,
    notice: Option<Notice>,
    app: queries::App,
    endpoint: Endpoint,
    deliveries: deliveries::DeliveriesResponse,
    /// The status filter's options and current value.
    statuses: &'static [&'static str],
    status: Option<&'a str>,
    /// The first page, which follows new deliveries live.
    newest: bool,
}

#[derive(Template)]
#[template(path = "new_secret.html")]
struct NewSecretPage<'a> {
    csrf: &'a str,
    app: &'a queries::App,
    endpoint_id: Uuid,
    url: &'a str,
    secret: &'a str,
}

/// The page that shows an endpoint's new signing secret, once.
fn new_secret_page(
    session: &Session,
    app: &queries::App,
    endpoint_id: Uuid,
    url: &str,
    secret: &str,
) -> Response {
    html(
        StatusCode::OK,
        &NewSecretPage {
            csrf: &session.csrf,
            app,
            endpoint_id,
            url,
            secret,
        },
    )
}

fn parse_endpoint(text: &str) -> Result<Uuid, ApiError> {
    validate::parse_uuid("endpoint_id", text)
}

fn endpoint_path(app_id: Uuid, endpoint_id: Uuid) -> String {
    format!("/dashboard/apps/{app_id}/endpoints/{endpoint_id}")
}

pub async fn endpoint_page(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let endpoint_id = parse_endpoint(&endpoint_id)?;
        // An empty filter (the form's "any") is no filter.
        let mut filter = query.clone();
        filter.retain(|name, value| name != "status" || !value.is_empty());
        let mut connection = state.pool.acquire().await?;
        let endpoint = endpoints::endpoint(&mut connection, app.id, endpoint_id).await?;
        drop(connection);
        let deliveries = deliveries::page(&state.pool, app.id, endpoint.id, &filter).await?;
        Ok(html(
            StatusCode::OK,
            &EndpointPage {
                csrf: session.csrf.clone(),
                notice: Notice::from_query(&query),
                app,
                endpoint,
                deliveries,
                statuses: DELIVERY_STATUSES,
                status: filter.get("status").map(String::as_str),
                newest: !filter.contains_key("cursor"),
            },
        ))
    })
    .await
}

pub async fn create(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let back = format!("/dashboard/apps/{}", app.id);
        let url = form
            .get("url")
            .map(|url| url.trim().to_string())
            .unwrap_or_default();
        let input =
            forms::subscriptions(&form).and_then(|events| Ok((events, forms::description(&form)?)));
        let (events, description) = match input {
            Ok(input) => input,
            Err(code) => return Ok(redirect_with(&back, Said::new(code))),
        };
        // The API refuses the one too many as well; this says why in the dashboard's words.
        if endpoints::list(&state.pool, app.id).await?.len() as i64 >= WEBHOOK_ENDPOINTS_MAX {
            return Ok(redirect_with(&back, Said::new(Code::EndpointsFull)));
        }
        let new = NewEndpoint {
            url,
            events,
            description,
        };
        match endpoints::create(&state, app.id, new).await {
            Ok(endpoint) => {
                let secret = endpoint.secret.as_deref().unwrap_or_default();
                Ok(new_secret_page(
                    &session,
                    &app,
                    endpoint.id,
                    &endpoint.url,
                    secret,
                ))
            }
            Err(error @ ApiError::InvalidRequest { .. }) => {
                Ok(redirect_with(&back, Said::new(Code::for_invalid(&error))))
            }
            Err(error) => Err(error),
        }
    })
    .await
}

/// Runs `write` on the app's endpoint of the path, then goes back to the endpoint's page with
/// what it said (an error page for what is not the form's fault).
async fn endpoint_write<W, F>(
    state: &AppState,
    session: &Session,
    (app_id, endpoint_id): (String, String),
    write: W,
) -> Response
where
    W: FnOnce(Uuid, Uuid) -> F,
    F: std::future::Future<Output = Result<Said, ApiError>>,
{
    page(session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let endpoint_id = parse_endpoint(&endpoint_id)?;
        let said = write(app.id, endpoint_id).await?;
        let back = match said.code {
            Code::EndpointDeleted => format!("/dashboard/apps/{}", app.id),
            _ => endpoint_path(app.id, endpoint_id),
        };
        Ok(redirect_with(&back, said))
    })
    .await
}

/// Enables (`enabled=true`) or disables the endpoint.
pub async fn set_enabled(
    State(state): State<AppState>,
    Path(ids): Path<(String, String)>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    let enabled = form.get("enabled").map(String::as_str) == Some("true");
    let state = &state;
    endpoint_write(state, &session, ids, |app_id, endpoint_id| async move {
        let change = EndpointChange {
            enabled: Some(enabled),
            ..EndpointChange::default()
        };
        endpoints::update(state, app_id, endpoint_id, change).await?;
        Ok(Said::new(if enabled {
            Code::EndpointEnabled
        } else {
            Code::EndpointDisabled
        }))
    })
    .await
}

pub async fn send_test(
    State(state): State<AppState>,
    Path(ids): Path<(String, String)>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    let state = &state;
    endpoint_write(state, &session, ids, |app_id, endpoint_id| async move {
        deliveries::ping(state, app_id, endpoint_id).await?;
        Ok(Said::new(Code::TestSent))
    })
    .await
}

pub async fn delete(
    State(state): State<AppState>,
    Path(ids): Path<(String, String)>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    let state = &state;
    endpoint_write(state, &session, ids, |app_id, endpoint_id| async move {
        endpoints::delete(&state.pool, app_id, endpoint_id).await?;
        Ok(Said::new(Code::EndpointDeleted))
    })
    .await
}

/// Rotates the endpoint's secret: the new one is shown once; the previous one keeps signing
/// for 24 hours.
pub async fn rotate(
    State(state): State<AppState>,
    Path((app_id, endpoint_id)): Path<(String, String)>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let endpoint_id = parse_endpoint(&endpoint_id)?;
        let secret = endpoints::rotate(&state.pool, app.id, endpoint_id).await?;
        let mut connection = state.pool.acquire().await?;
        let endpoint = endpoints::endpoint(&mut connection, app.id, endpoint_id).await?;
        Ok(new_secret_page(
            &session,
            &app,
            endpoint.id,
            &endpoint.url,
            &secret,
        ))
    })
    .await
}

pub async fn redeliver(
    State(state): State<AppState>,
    Path((app_id, endpoint_id, delivery_id)): Path<(String, String, String)>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    let (state, ids) = (&state, (app_id, endpoint_id));
    endpoint_write(state, &session, ids, |app_id, _| async move {
        let delivery_id = validate::parse_uuid("delivery_id", &delivery_id)?;
        deliveries::redeliver_one(state, app_id, delivery_id).await?;
        Ok(Said::new(Code::Redelivered))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_subscribe_to_every_type_but_ping() {
        let types = subscribable();
        assert!(!types.contains(&"ping"));
        assert_eq!(types.len(), EventType::ALL.len() - 1);
    }
}
