//! The dashboard session: a cookie signed with the admin token, the CSRF token derived from
//! it, and the logout records (`dashboard_logouts`) that end it before it expires.
//!
//! The cookie value is `expiry.nonce.mac`, the MAC an HMAC-SHA256 of `session:{expiry}:{nonce}`
//! keyed by the admin token: every ingress accepts it, and changing the token ends every
//! session. The token itself never travels in a cookie or a URL.

use axum::http::{header, HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::AppState;

/// How long a dashboard session lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;
/// The session cookie's name.
const COOKIE: &str = "tally_session";

type HmacSha256 = Hmac<Sha256>;

/// A logged-in request's session.
#[derive(Clone, Debug)]
pub struct Session {
    /// Unix time the session ends.
    expiry: i64,
    /// Names the session in `dashboard_logouts`.
    nonce: String,
    /// What every form of the session carries in its `csrf` field.
    pub csrf: String,
}

impl Session {
    /// Whether a form's `csrf` field is this session's token (constant time).
    pub fn csrf_matches(&self, presented: Option<&String>) -> bool {
        presented.is_some_and(|presented| {
            presented.len() == self.csrf.len()
                && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
        })
    }
}

fn sign(token: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("hmac takes any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn admin_token(state: &AppState) -> Option<&str> {
    state
        .config
        .admin_token
        .as_deref()
        .filter(|token| !token.is_empty())
}

/// The session a request carries, if its signature holds and it has not expired.
fn signed(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = admin_token(state)?;
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().strip_prefix("tally_session="))
        .next()?;
    let mut parts = value.splitn(3, '.');
    let (expiry, nonce, mac) = (parts.next()?, parts.next()?, parts.next()?);
    let expiry: i64 = expiry.parse().ok()?;
    let expected = sign(token, &format!("session:{expiry}:{nonce}"));
    let valid =
        expected.len() == mac.len() && bool::from(expected.as_bytes().ct_eq(mac.as_bytes()));
    (valid && expiry > chrono::Utc::now().timestamp()).then(|| Session {
        expiry,
        nonce: nonce.to_string(),
        csrf: sign(token, &format!("csrf:{value}")),
    })
}

/// The request's session if it is valid and was not logged out (checked in Postgres; when
/// that cannot be read, no session: the dashboard fails closed).
pub async fn current(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let session = signed(state, headers)?;
    let logged_out: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dashboard_logouts WHERE nonce = $1)")
            .bind(&session.nonce)
            .fetch_one(&state.pool)
            .await
            .ok()?;
    (!logged_out).then_some(session)
}

/// The `Set-Cookie` value of a new session (`Secure` when the request came over TLS), or
/// `None` when the dashboard is off.
pub fn start(state: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let token = admin_token(state)?;
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECONDS;
    let nonce = Uuid::new_v4().simple().to_string();
    let value = format!(
        "{expiry}.{nonce}.{}",
        sign(token, &format!("session:{expiry}:{nonce}"))
    );
    let secure = if behind_tls(headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/dashboard; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// The `Set-Cookie` value that removes the session cookie from the browser.
pub fn cleared_cookie() -> HeaderValue {
    HeaderValue::from_static(
        "tally_session=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict",
    )
}

/// Ends the session for every copy of its cookie, not only this browser's: records its nonce
/// until it would have expired, and forgets the records of sessions past their expiry.
pub async fn end(state: &AppState, session: &Session) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dashboard_logouts (nonce, expires_at) VALUES ($1, to_timestamp($2::bigint))
         ON CONFLICT DO NOTHING",
    )
    .bind(&session.nonce)
    .bind(session.expiry)
    .execute(&state.pool)
    .await?;
    let _ = sqlx::query("DELETE FROM dashboard_logouts WHERE expires_at < now()")
        .execute(&state.pool)
        .await;
    Ok(())
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}
