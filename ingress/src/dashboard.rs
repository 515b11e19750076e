//! `/dashboard`: server-rendered HTML over the admin queries ([`crate::admin::queries`]).
//!
//! - Login: a form takes `TALLY_ADMIN_TOKEN` (failures throttled per client address); success
//!   sets a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` but on a loopback host)
//!   holding an expiry, a nonce and an HMAC of both keyed by a key derived from the token, so
//!   every ingress accepts it and changing the token ends every session. Logging out records
//!   the nonce, so every copy of the cookie is refused. The token never travels in a URL
//!   ([`session`], [`access`]).
//! - Every form carries a CSRF token (an HMAC of the session) and is a POST.
//! - Writes go through [`crate::admin::submit_for`]: the API's pipeline, `source: "dashboard"`;
//!   the command's answer becomes the notice on the next page ([`forms`]).
//! - Pages are askama templates (`ingress/templates/`, escaped by default) filled with the
//!   admin queries' typed rows, one module per page group; [`render`] adds the security
//!   headers and formats credits and times.
//! - Everything is served from the binary (`dashboard/app.css`, `dashboard/app.js`); the
//!   content security policy allows nothing from another origin. The script refreshes the
//!   parts of a page marked `data-live` every few seconds.

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

mod access;
mod app;
mod apps;
mod entry;
mod events;
mod forms;
mod notice;
mod render;
mod session;
mod user;

pub use session::SESSION_SECONDS;

const CSS: &str = include_str!("dashboard/app.css");
const JS: &str = include_str!("dashboard/app.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(apps::home))
        .route("/dashboard/login", post(access::login))
        .route("/dashboard/logout", post(access::logout))
        .route("/dashboard/app.css", get(css))
        .route("/dashboard/app.js", get(js))
        .route("/dashboard/apps", post(apps::create_app))
        .route("/dashboard/apps/{app_id}", get(app::app_page))
        .route("/dashboard/apps/{app_id}/keys", post(app::issue_key))
        .route(
            "/dashboard/apps/{app_id}/keys/{key_id}/revoke",
            post(app::revoke_key),
        )
        .route(
            "/dashboard/apps/{app_id}/webhook-secrets",
            post(app::add_secret),
        )
        .route("/dashboard/apps/{app_id}/events", get(events::events_page))
        .route(
            "/dashboard/apps/{app_id}/users/{user_id}",
            get(user::user_page),
        )
        .route(
            "/dashboard/apps/{app_id}/users/{user_id}/adjust",
            post(user::adjust),
        )
        .route("/dashboard/entries/{ledger_id}", get(entry::entry_page))
        .route("/dashboard/entries/{ledger_id}/refund", post(entry::refund))
        .layer(DefaultBodyLimit::max(access::FORM_BYTES_MAX))
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}
