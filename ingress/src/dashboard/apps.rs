//! The home page, every app with its figures, and the form that creates an app.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tally_common::credit_type::CreditType;

use super::access::{page, SignedForm, SignedIn};
use super::app::new_key_page;
use super::notice::{Code, Said};
use super::render::{filters, html, redirect_with, Notice};
use crate::admin::{self, queries};
use crate::AppState;

#[derive(Template)]
#[template(path = "apps.html")]
struct AppsPage {
    csrf: String,
    notice: Option<Notice>,
    apps: Vec<queries::AppFigures>,
    /// The type of the top-level figures; other types are listed under them.
    default_type: &'static str,
}

pub async fn home(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let apps = queries::apps(&state.pool).await?;
        Ok(html(
            StatusCode::OK,
            &AppsPage {
                csrf: session.csrf.clone(),
                notice: Notice::from_query(&query),
                apps,
                default_type: CreditType::DEFAULT,
            },
        ))
    })
    .await
}

pub async fn create_app(
    State(state): State<AppState>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    page(&session, async {
        let name = form.get("name").map(String::as_str).unwrap_or_default();
        let name = match admin::manage::check_name(name) {
            Ok(name) => name,
            Err(error) => {
                return Ok(redirect_with(
                    "/dashboard",
                    Said::new(Code::for_invalid(&error)),
                ))
            }
        };
        let (app_id, key) = admin::manage::create_app(&state.pool, &name).await?;
        Ok(new_key_page(&session, app_id, &name, &key))
    })
    .await
}
