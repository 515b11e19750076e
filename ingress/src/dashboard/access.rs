//! Who gets in: logging in and out, the login, "dashboard off" and error pages, and the
//! extractors every other page runs behind ([`SignedIn`]: a valid session; [`SignedForm`]: and
//! a form with the session's CSRF token).
//!
//! A page asked for without a session answers `200` with the login form; a form posted without
//! one, `401` with it. Failed logins are budgeted per client address ([`crate::throttle`]):
//! past the budget every login of that address is `429` until it refills, the right token too,
//! so that guessing stays slow. A form's body is read only once its session holds, and only up
//! to [`FORM_BYTES_MAX`].

use std::collections::HashMap;
use std::future::Future;

use askama::Template;
use axum::extract::{Form, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::render::{html, redirect};
use super::session::{self, Session};
use crate::admin;
use crate::error::ApiError;
use crate::throttle::ClientAddr;
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
    state.admin.is_some()
}

/// Largest dashboard form, in bytes (the API's body limit: a description of 1,000 characters
/// percent-encoded fits many times over).
pub const FORM_BYTES_MAX: usize = tally_common::limits::BODY_BYTES_MAX;

/// A posted form, read once the request is known to be allowed.
async fn read_form(
    request: Request,
    state: &AppState,
) -> Result<HashMap<String, String>, Response> {
    Form::<HashMap<String, String>>::from_request(request, state)
        .await
        .map(|Form(form)| form)
        .map_err(IntoResponse::into_response)
}

/// A request of a logged-in session. A handler that extracts it answers the login page
/// instead when there is no valid session, and "dashboard off" while no admin token is set.
pub struct SignedIn(pub Session);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        signed_in(state, &parts.headers, StatusCode::OK)
            .await
            .map(SignedIn)
    }
}

/// A form posted by a logged-in session, carrying that session's CSRF token; otherwise the
/// login page (`401`), "dashboard off", or the error page saying the form has expired.
pub struct SignedForm {
    pub session: Session,
    pub form: HashMap<String, String>,
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let session = signed_in(state, request.headers(), StatusCode::UNAUTHORIZED).await?;
        let form = read_form(request, state).await?;
        if !session.csrf_matches(form.get("csrf")) {
            let expired = ApiError::invalid("the form has expired; reload the page and try again");
            return Err(error_page(&session, expired));
        }
        Ok(Self { session, form })
    }
}

/// The request's session; without one, the login page with `status`.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
) -> Result<Session, Response> {
    if !enabled(state) {
        return Err(disabled());
    }
    session::current(state, headers)
        .await
        .ok_or_else(|| login_page(status, None))
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
    ClientAddr(client): ClientAddr,
    request: Request,
) -> Response {
    if !enabled(&state) {
        return disabled();
    }
    if let Err(refused) = state.throttle.check_login(client) {
        let message = refused.to_string();
        let mut page = login_page(StatusCode::TOO_MANY_REQUESTS, Some(&message));
        if let ApiError::Throttled { retry_after_secs } = refused {
            page.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        return page;
    }
    let headers = request.headers().clone();
    let form = match read_form(request, &state).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let presented = form.get("token").map(String::as_str).unwrap_or_default();
    if !admin::token_matches(&state, presented) {
        tracing::warn!("dashboard login with a wrong token");
        state.throttle.login_failed(client);
        return login_page(StatusCode::UNAUTHORIZED, Some("That token is not right."));
    }
    let mut response = redirect("/dashboard");
    if let Some(cookie) = session::start(&state, &headers) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

pub async fn logout(State(state): State<AppState>, request: Request) -> Response {
    if let Some(session) = session::current(&state, request.headers()).await {
        let form = match read_form(request, &state).await {
            Ok(form) => form,
            Err(refused) => return refused,
        };
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
