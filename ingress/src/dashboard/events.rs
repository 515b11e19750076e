//! An app's webhook events page, filtered by provider and outcome.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::access::{page, SignedIn};
use super::app::parse_app;
use super::render::{filters, html};
use crate::admin::queries;
use crate::AppState;

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    csrf: String,
    app: queries::App,
    request: queries::EventsRequest,
    events: queries::EventsPage,
    /// The filters' options.
    providers: &'static [&'static str],
    outcomes: &'static [&'static str],
}

pub async fn events_page(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let request = queries::EventsRequest::parse(&query)?;
        let events = queries::webhook_events(&state.pool, app.id, &request).await?;
        Ok(html(
            StatusCode::OK,
            &EventsPage {
                csrf: session.csrf.clone(),
                app,
                request,
                events,
                providers: queries::PROVIDERS,
                outcomes: queries::OUTCOMES,
            },
        ))
    })
    .await
}
