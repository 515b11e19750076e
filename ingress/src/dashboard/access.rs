//! Who gets in: logging in and out, the login, "dashboard off" and error pages, and the
//! extractors every other page runs behind ([`SignedIn`]: a valid session; [`SignedForm`]: and
//! a form with the session's CSRF token).

use std::collections::HashMap;
use std::future::Future;

use askama::Template;
use axum::extract::{Form, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

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

/// A request of a logged-in session. A handler that extracts it answers the login page
/// instead when there is no valid session, and "dashboard off" while no admin token is set.
pub struct SignedIn(pub Session);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        signed_in(state, &parts.headers).await.map(SignedIn)
    }
}

/// A form posted by a logged-in session, carrying that session's CSRF token; otherwise the
/// answer is what [`SignedIn`] answers, or the error page saying the form has expired.
pub struct SignedForm {
    pub session: Session,
    pub form: HashMap<String, String>,
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(form) = Form::<HashMap<String, String>>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = signed_in(state, &headers).await?;
        if !session.csrf_matches(form.get("csrf")) {
            let expired = ApiError::invalid("the form has expired; reload the page and try again");
            return Err(error_page(&session, expired));
        }
        Ok(Self { session, form })
    }
}

async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Session, Response> {
    if !enabled(state) {
        return Err(disabled());
    }
    session::current(state, headers)
        .await
        .ok_or_else(|| login_page(StatusCode::UNAUTHORIZED, None))
}

/// The page `view` renders for the session, or the error page for what went wrong.
pub async fn page(
    session: &Session,
    view: impl Future<Output = Result<Response, ApiError>>,
) -> Response {
    view.await
        .unwrap_or_else(|error| error_page(session, error))
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
