//! Who gets in: logging in and out, the login, "dashboard off" and error pages, and the guard
//! every other page runs behind (a valid session, and for a form post the session's CSRF
//! token).

use std::collections::HashMap;
use std::future::Future;

use askama::Template;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;

use super::render::{html, redirect};
use super::session::{self, Session};
use crate::admin;
use crate::error::ApiError;
use crate::AppState;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    /// Why the last try failed.
    message: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "disabled.html")]
struct DisabledPage;

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    csrf: &'a str,
    message: String,
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    html(status, &LoginPage { message })
}

fn disabled() -> Response {
    html(StatusCode::NOT_FOUND, &DisabledPage)
}

/// An error shown as a page (the JSON envelope's message); a server error is logged here.
fn error_page(session: &Session, error: ApiError) -> Response {
    let status = StatusCode::from_u16(error.code().status()).unwrap_or(StatusCode::BAD_REQUEST);
    if status.is_server_error() {
        tracing::error!(error = %error, "dashboard request failed");
    }
    html(
        status,
        &ErrorPage {
            csrf: &session.csrf,
            message: error.to_string(),
        },
    )
}

fn enabled(state: &AppState) -> bool {
    !state
        .config
        .admin_token
        .as_deref()
        .unwrap_or_default()
        .is_empty()
}

/// Runs `view` for a logged-in request; the login page otherwise.
pub async fn guarded<F, Fut>(state: &AppState, headers: &HeaderMap, view: F) -> Response
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    if !enabled(state) {
        return disabled();
    }
    let Some(session) = session::current(state, headers).await else {
        return login_page(StatusCode::UNAUTHORIZED, None);
    };
    match view(session.clone()).await {
        Ok(response) => response,
        Err(error) => error_page(&session, error),
    }
}

/// [`guarded`] for a form post: the form's CSRF token must be the session's; `view` gets the
/// form.
pub async fn guarded_form<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    form: HashMap<String, String>,
    view: F,
) -> Response
where
    F: FnOnce(Session, HashMap<String, String>) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    guarded(state, headers, |session| async move {
        if !session.csrf_matches(form.get("csrf")) {
            return Err(ApiError::invalid(
                "the form has expired; reload the page and try again",
            ));
        }
        view(session, form).await
    })
    .await
}

pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !enabled(&state) {
        return disabled();
    }
    let presented = form.get("token").map(String::as_str).unwrap_or_default();
    if !admin::token_matches(&state, presented) {
        tracing::warn!("dashboard login with a wrong token");
        return login_page(StatusCode::UNAUTHORIZED, Some("That token is not right."));
    }
    let mut response = redirect("/dashboard");
    if let Some(cookie) = session::start(&state, &headers) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(session) = session::current(&state, &headers).await {
        if !session.csrf_matches(form.get("csrf")) {
            return login_page(
                StatusCode::FORBIDDEN,
                Some("That form has expired; try again."),
            );
        }
        if let Err(error) = session::end(&state, &session).await {
            return error_page(&session, ApiError::from(error));
        }
    }
    let mut response = redirect("/dashboard");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::cleared_cookie());
    response
}
