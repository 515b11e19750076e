//! The dashboard session: a signed cookie, the CSRF token derived from it, and the logout
//! records (`dashboard_logouts`) that end it before it expires.
//!
//! The cookie value is `expiry.nonce.mac`, the MAC an HMAC-SHA256 of `session:{expiry}:{nonce}`
//! keyed by a key derived from the admin token ([`crate::admin::token`]): every ingress accepts
//! it, and changing the token ends every session. The token itself never travels in a cookie or
//! a URL, nor keys a MAC a client sees.

use axum::http::{header, HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
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
    /// Whether a form's `csrf` field is this session's token (their digests compared in
    /// constant time, so not even the length shows).
    pub fn csrf_matches(&self, presented: Option<&String>) -> bool {
        presented.is_some_and(|presented| {
            let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
            let expected: [u8; 32] = Sha256::digest(self.csrf.as_bytes()).into();
            bool::from(presented.ct_eq(&expected))
        })
    }
}

fn mac(key: &[u8; 32], message: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac takes any key");
    mac.update(message.as_bytes());
    mac
}

fn sign(key: &[u8; 32], message: &str) -> String {
    hex::encode(mac(key, message).finalize().into_bytes())
}

/// The session a request carries, if its signature holds and it has not expired.
fn signed(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let keys = state.admin.as_ref()?;
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().strip_prefix("tally_session="))
        .next()?;
    let mut parts = value.splitn(3, '.');
    let (expiry, nonce, presented) = (parts.next()?, parts.next()?, parts.next()?);
    let expiry: i64 = expiry.parse().ok()?;
    let presented = hex::decode(presented).ok()?;
    // `verify_slice` compares in constant time; a tag of the wrong length is refused whatever
    // it holds (its length is no secret: every tag is 32 bytes).
    let valid = mac(keys.session_key(), &format!("session:{expiry}:{nonce}"))
        .verify_slice(&presented)
        .is_ok();
    (valid && expiry > chrono::Utc::now().timestamp()).then(|| Session {
        expiry,
        nonce: nonce.to_string(),
        csrf: sign(keys.csrf_key(), &format!("csrf:{value}")),
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

/// The `Set-Cookie` value of a new session, or `None` when the dashboard is off. The cookie is
/// `Secure` unless the dashboard is reached on a loopback host (`localhost`, `127.0.0.1`,
/// `[::1]`), which browsers treat as secure without TLS.
pub fn start(state: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let keys = state.admin.as_ref()?;
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECONDS;
    let nonce = Uuid::new_v4().simple().to_string();
    let value = format!(
        "{expiry}.{nonce}.{}",
        sign(keys.session_key(), &format!("session:{expiry}:{nonce}"))
    );
    let secure = if on_loopback(headers) { "" } else { "; Secure" };
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

/// Whether the browser addressed the dashboard by a loopback name or address.
fn on_loopback(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|addr| addr.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, value.parse().unwrap());
        headers
    }

    #[test]
    fn only_loopback_hosts_go_without_secure() {
        for loopback in [
            "localhost:8080",
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "LOCALHOST",
        ] {
            assert!(on_loopback(&host(loopback)), "{loopback}");
        }
        for remote in [
            "tally.example.com",
            "192.168.1.5:8080",
            "[2001:db8::1]:443",
            "localhost.example.com",
        ] {
            assert!(!on_loopback(&host(remote)), "{remote}");
        }
        assert!(!on_loopback(&HeaderMap::new()));
    }
}
