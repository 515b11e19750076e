//! `/dashboard`: server-rendered HTML over the admin queries ([`crate::admin::queries`]).
//!
//! - Login: a form takes `TALLY_ADMIN_TOKEN`; success sets a session cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Secure` behind TLS) holding an expiry and an HMAC of it keyed by the
//!   token, so every ingress accepts it and changing the token ends every session. The token
//!   never travels in a URL.
//! - Every form carries a CSRF token (an HMAC of the session) and is a POST.
//! - Writes go through [`crate::admin::submit_for`]: the API's pipeline, `source: "dashboard"`.
//! - Everything is served from the binary (`dashboard/app.css`, `dashboard/app.js`); the
//!   content security policy allows nothing from another origin. The script refreshes the
//!   parts of a page marked `data-live` every few seconds.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tally_common::command::Command;
use uuid::Uuid;

use crate::admin::{self, queries};
use crate::error::ApiError;
use crate::submit::Answer;
use crate::validate;
use crate::AppState;

/// How long a dashboard session lasts.
pub const SESSION_SECONDS: i64 = 12 * 3600;
const COOKIE: &str = "tally_session";
const CSS: &str = include_str!("dashboard/app.css");
const JS: &str = include_str!("dashboard/app.js");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(home))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/app.css", get(css))
        .route("/dashboard/app.js", get(js))
        .route("/dashboard/apps", post(create_app))
        .route("/dashboard/apps/{app_id}", get(app_page))
        .route("/dashboard/apps/{app_id}/keys", post(issue_key))
        .route(
            "/dashboard/apps/{app_id}/keys/{key_id}/revoke",
            post(revoke_key),
        )
        .route("/dashboard/apps/{app_id}/webhook-secrets", post(add_secret))
        .route("/dashboard/apps/{app_id}/events", get(events_page))
        .route("/dashboard/apps/{app_id}/users/{user_id}", get(user_page))
        .route(
            "/dashboard/apps/{app_id}/users/{user_id}/adjust",
            post(adjust),
        )
        .route("/dashboard/entries/{ledger_id}", get(entry_page))
        .route("/dashboard/entries/{ledger_id}/refund", post(refund))
}

type HmacSha256 = Hmac<Sha256>;

fn sign(token: &str, message: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(token.as_bytes()).expect("hmac takes any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The session a request carries, if its signature holds and it has not expired: its cookie
/// value (`expiry.nonce.mac`) and its nonce.
fn signed_session(state: &AppState, headers: &HeaderMap) -> Option<(String, String)> {
    let token = state
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())?;
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
    (valid && expiry > chrono::Utc::now().timestamp())
        .then(|| (value.to_string(), nonce.to_string()))
}

/// The request's session if it is valid and was not logged out (checked in Postgres; when
/// that cannot be read, no session: the dashboard fails closed).
async fn session(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let (value, nonce) = signed_session(state, headers)?;
    let logged_out: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dashboard_logouts WHERE nonce = $1)")
            .bind(&nonce)
            .fetch_one(&state.pool)
            .await
            .ok()?;
    (!logged_out).then_some(value)
}

fn csrf_token(state: &AppState, session: &str) -> String {
    let token = state.config.admin_token.as_deref().unwrap_or_default();
    sign(token, &format!("csrf:{session}"))
}

fn csrf_ok(state: &AppState, session: &str, presented: Option<&String>) -> bool {
    let expected = csrf_token(state, session);
    presented.is_some_and(|p| {
        p.len() == expected.len() && bool::from(p.as_bytes().ct_eq(expected.as_bytes()))
    })
}

fn behind_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
}

/// HTML-escapes text.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
fn url(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn s(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The JSON form of a typed admin read, as the pages below read it.
fn json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_default()
}

fn n(value: &Value, key: &str) -> i64 {
    value[key].as_i64().unwrap_or_default()
}

/// Thousands separated by a thin space, sign kept.
fn credits(amount: i64) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    if amount < 0 {
        format!("−{out}")
    } else {
        out
    }
}

/// A whole page: the layout around `body`.
fn page(status: StatusCode, title: &str, nav: &str, body: &str) -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Tally</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/app.css">
<script src="/dashboard/app.js" defer></script>
</head><body>
<header class="top"><a class="brand" href="/dashboard">Tally</a>{nav}</header>
<main>{body}</main>
</body></html>"#,
        title = esc(title)
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

fn nav(state: &AppState, session: &str) -> String {
    format!(
        r#"<form method="post" action="/dashboard/logout" class="logout"><input type="hidden" name="csrf" value="{}"><button type="submit">Log out</button></form>"#,
        csrf_token(state, session)
    )
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// An error shown as a page (the JSON envelope's message, HTML-escaped).
fn error_page(state: &AppState, session: &str, error: ApiError) -> Response {
    let status = StatusCode::from_u16(error.code().status()).unwrap_or(StatusCode::BAD_REQUEST);
    if status.is_server_error() {
        tracing::error!(error = %error, "dashboard request failed");
    }
    page(
        status,
        "Error",
        &nav(state, session),
        &format!(
            r#"<h1>Something is not right</h1><p class="notice error" role="alert">{}</p><p><a href="/dashboard">Back to the apps</a></p>"#,
            esc(&error.to_string())
        ),
    )
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let alert = message
        .map(|m| format!(r#"<p class="notice error" role="alert">{}</p>"#, esc(m)))
        .unwrap_or_default();
    page(
        status,
        "Log in",
        "",
        &format!(
            r#"<section class="card narrow"><h1>Log in</h1>{alert}
<form method="post" action="/dashboard/login">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form><p class="muted">The token is <code>TALLY_ADMIN_TOKEN</code> of this deployment.</p></section>"#
        ),
    )
}

/// Runs `view` for a logged-in request; the login page otherwise.
async fn guarded<F, Fut>(state: &AppState, headers: &HeaderMap, view: F) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    if state
        .config
        .admin_token
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        return disabled();
    }
    let Some(session) = session(state, headers).await else {
        return login_page(StatusCode::UNAUTHORIZED, None);
    };
    match view(session.clone()).await {
        Ok(response) => response,
        Err(error) => error_page(state, &session, error),
    }
}

/// [`guarded`] for a form post: the form's CSRF token must be the session's.
async fn guarded_form<F, Fut>(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<String>,
    view: F,
) -> Response
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<Response, ApiError>>,
{
    guarded(state, headers, |session| async move {
        if !csrf_ok(state, &session, csrf.as_ref()) {
            return Err(ApiError::invalid(
                "the form has expired; reload the page and try again",
            ));
        }
        view(session).await
    })
    .await
}

fn disabled() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Dashboard disabled",
        "",
        r#"<section class="card narrow"><h1>The dashboard is off</h1>
<p>Start <code>tally-ingress</code> with <code>TALLY_ADMIN_TOKEN</code> set (a long random string) to turn on the dashboard and the admin API, then log in here with that token.</p></section>"#,
    )
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

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(token) = state
        .config
        .admin_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return disabled();
    };
    let presented = form.get("token").map(String::as_str).unwrap_or_default();
    if !admin::token_matches(&state, presented) {
        tracing::warn!("dashboard login with a wrong token");
        return login_page(StatusCode::UNAUTHORIZED, Some("That token is not right."));
    }
    let expiry = chrono::Utc::now().timestamp() + SESSION_SECONDS;
    let nonce = Uuid::new_v4().simple().to_string();
    let value = format!(
        "{expiry}.{nonce}.{}",
        sign(token, &format!("session:{expiry}:{nonce}"))
    );
    let secure = if behind_tls(&headers) { "; Secure" } else { "" };
    let mut response = redirect("/dashboard");
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/dashboard; Max-Age={SESSION_SECONDS}; HttpOnly; SameSite=Strict{secure}"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(session) = session(&state, &headers).await {
        if !csrf_ok(&state, &session, form.get("csrf")) {
            return login_page(
                StatusCode::FORBIDDEN,
                Some("That form has expired; try again."),
            );
        }
        // Ended for every copy of the cookie, not only this browser's.
        let mut parts = session.split('.');
        let (expiry, nonce) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let recorded = sqlx::query(
            "INSERT INTO dashboard_logouts (nonce, expires_at) VALUES ($1, to_timestamp($2::bigint))
             ON CONFLICT DO NOTHING",
        )
        .bind(nonce)
        .bind(expiry.parse::<i64>().unwrap_or_default())
        .execute(&state.pool)
        .await;
        if let Err(error) = recorded {
            // error_page logs it.
            return error_page(&state, &session, ApiError::from(error));
        }
        let _ = sqlx::query("DELETE FROM dashboard_logouts WHERE expires_at < now()")
            .execute(&state.pool)
            .await;
    }
    let mut response = redirect("/dashboard");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "tally_session=; Path=/dashboard; Max-Age=0; HttpOnly; SameSite=Strict",
        ),
    );
    response
}

async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    guarded(&state.clone(), &headers, |session| async move {
        let apps = json(queries::apps(&state.pool).await?);
        let apps = apps.as_array().cloned().unwrap_or_default();
        let mut rows = String::new();
        for app in &apps {
            let _ = write!(
                rows,
                r#"<tr><td data-label="App"><a href="/dashboard/apps/{id}">{name}</a></td><td data-label="Users" class="num">{users}</td><td data-label="Outstanding" class="num">{out}</td><td data-label="Added 24 h" class="num">{added}</td><td data-label="Spent 24 h" class="num">{spent}</td><td data-label="Active holds" class="num">{holds}</td><td data-label="Webhooks rejected 24 h" class="num">{rejected}</td></tr>"#,
                id = s(app, "app_id"),
                name = esc(&s(app, "name")),
                users = credits(n(app, "users")),
                out = credits(n(app, "outstanding")),
                added = credits(n(app, "added_24h")),
                spent = credits(n(app, "spent_24h")),
                holds = n(app, "active_holds"),
                rejected = n(app, "webhooks_rejected_24h"),
            );
        }
        if apps.is_empty() {
            rows.push_str(r#"<tr><td colspan="7" class="muted">No apps yet: <code>tally app create --name NAME</code>.</td></tr>"#);
        }
        Ok(page(
            StatusCode::OK,
            "Apps",
            &nav(&state, &session),
            &format!(
                r#"<h1>Apps</h1>{notice}<div data-live id="apps"><table class="stack"><thead><tr><th>App</th><th class="num">Users</th><th class="num">Outstanding</th><th class="num">Added 24 h</th><th class="num">Spent 24 h</th><th class="num">Active holds</th><th class="num">Webhooks rejected 24 h</th></tr></thead><tbody>{rows}</tbody></table></div>
<details class="card"><summary>Create an app</summary>
<form method="post" action="/dashboard/apps" class="stacked"><input type="hidden" name="csrf" value="{csrf}">
<label for="app-name">Name</label><input id="app-name" name="name" maxlength="200" required>
<button type="submit">Create app</button></form></details>"#,
                notice = notice(&query),
                csrf = csrf_token(&state, &session),
            ),
        ))
    })
    .await
}

fn parse_app(text: &str) -> Result<Uuid, ApiError> {
    validate::parse_uuid("app_id", text)
}

/// Credits added vs spent per day, as an SVG bar chart.
fn chart(days: &[Value]) -> String {
    let width = 600.0_f64;
    let height = 160.0_f64;
    let max = days
        .iter()
        .flat_map(|day| [n(day, "added"), n(day, "spent")])
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = width / days.len().max(1) as f64;
    let bar = (slot / 2.0 - 2.0).max(1.0);
    let mut bars = String::new();
    for (i, day) in days.iter().enumerate() {
        let x = i as f64 * slot + 1.0;
        for (j, key) in ["added", "spent"].iter().enumerate() {
            let value = n(day, key);
            let h = (value as f64 / max * (height - 20.0)).max(if value > 0 { 1.0 } else { 0.0 });
            let _ = write!(
                bars,
                r#"<rect class="{key}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{h:.1}"><title>{} {key}: {}</title></rect>"#,
                x + j as f64 * (bar + 1.0),
                height - h,
                esc(&s(day, "day")),
                credits(value)
            );
        }
    }
    let first = days.first().map(|d| s(d, "day")).unwrap_or_default();
    let last = days.last().map(|d| s(d, "day")).unwrap_or_default();
    format!(
        r#"<figure class="chart"><svg viewBox="0 0 {width} {height}" role="img" aria-label="Credits added and spent per day"><line x1="0" y1="{height}" x2="{width}" y2="{height}" class="axis"/>{bars}</svg><figcaption><span class="key added"></span>added <span class="key spent"></span>spent, per day, {first} to {last} (UTC)</figcaption></figure>"#
    )
}

async fn app_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    guarded(&state.clone(), &headers, |session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let request = queries::UsersRequest::parse(&query)?;
        let users = json(queries::users(&state.pool, app.id, &request).await?);
        let days = json(queries::daily(&state.pool, app.id, queries::STATS_DAYS_DEFAULT).await?);
        let days = days.as_array().cloned().unwrap_or_default();
        let mut rows = String::new();
        for user in users["users"].as_array().into_iter().flatten() {
            let id = s(user, "user_id");
            let _ = write!(
                rows,
                r#"<tr><td data-label="User"><a href="/dashboard/apps/{app}/users/{uid}">{name}</a></td><td data-label="Balance" class="num">{bal}</td><td data-label="Held" class="num">{held}</td><td data-label="Last activity"><time>{last}</time></td></tr>"#,
                app = app.id,
                uid = url(&id),
                name = esc(&id),
                bal = credits(n(user, "balance")),
                held = credits(n(user, "held")),
                last = esc(&s(user, "last_activity")[..19.min(s(user, "last_activity").len())].replace('T', " ")),
            );
        }
        if rows.is_empty() {
            rows.push_str(r#"<tr><td colspan="4" class="muted">No users match.</td></tr>"#);
        }
        let base = format!(
            "/dashboard/apps/{}?prefix={}&sort={}",
            app.id,
            url(&request.prefix),
            request.sort
        );
        let mut pager = String::new();
        if request.page > 0 {
            let _ = write!(pager, r#"<a href="{base}&page={}">Previous</a> "#, request.page - 1);
        }
        if let Some(next) = users["next_page"].as_i64() {
            let _ = write!(pager, r#"<a href="{base}&page={next}">Next</a>"#);
        }
        let sorted = |value: &str| if request.sort == value { " selected" } else { "" };
        Ok(page(
            StatusCode::OK,
            &app.name,
            &nav(&state, &session),
            &format!(
                r#"<p class="crumbs"><a href="/dashboard">Apps</a> /</p><h1>{name}</h1>{notice}
<p class="muted">App id <code>{id}</code> · <a href="/dashboard/apps/{id}/events">Webhook events</a></p>
<div data-live id="chart">{chart}</div>
<h2>Users</h2>
<form method="get" action="/dashboard/apps/{id}" class="inline" role="search">
<label for="prefix">User id starts with</label><input id="prefix" name="prefix" value="{prefix}" autocomplete="off">
<label for="sort">Sort by</label><select id="sort" name="sort"><option value="activity"{a}>Last activity</option><option value="balance"{b}>Balance</option></select>
<button type="submit">Search</button></form>
<div data-live id="users"><table class="stack"><thead><tr><th>User</th><th class="num">Balance</th><th class="num">Held</th><th>Last activity (UTC)</th></tr></thead><tbody>{rows}</tbody></table></div>
<nav class="pager" aria-label="Pages">{pager}</nav>
<h2>API keys and webhook secrets</h2>{credentials}"#,
                name = esc(&app.name),
                id = app.id,
                notice = notice(&query),
                credentials = credentials_html(&state, &session, app.id, &admin::manage::credentials(&state.pool, app.id).await?),
                chart = chart(&days),
                prefix = esc(&request.prefix),
                a = sorted("activity"),
                b = sorted("balance"),
            ),
        ))
    })
    .await
}

fn entry_rows(entries: &[Value], with_user: bool) -> String {
    let mut rows = String::new();
    for entry in entries {
        let amount = n(entry, "amount");
        let user = if with_user {
            format!(
                r#"<td data-label="User">{}</td>"#,
                esc(&s(entry, "user_id"))
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            r#"<tr><td data-label="When"><a href="/dashboard/entries/{id}">{when}</a></td>{user}<td data-label="Type"><span class="tag">{ty}</span></td><td data-label="Amount" class="num {sign}">{amt}</td><td data-label="Balance after" class="num">{after}</td><td data-label="Source">{source}</td><td data-label="Description">{desc}</td></tr>"#,
            id = s(entry, "ledger_id"),
            when = esc(
                &s(entry, "created_at")[..19.min(s(entry, "created_at").len())].replace('T', " ")
            ),
            ty = esc(&s(entry, "type")),
            sign = if amount < 0 { "neg" } else { "pos" },
            amt = if amount > 0 {
                format!("+{}", credits(amount))
            } else {
                credits(amount)
            },
            after = credits(n(entry, "balance_after")),
            source = esc(&s(entry, "source")),
            desc = esc(&s(entry, "description")),
        );
    }
    if rows.is_empty() {
        rows.push_str(r#"<tr><td colspan="6" class="muted">No entries.</td></tr>"#);
    }
    rows
}

fn select(name: &str, label: &str, options: &[&str], current: Option<&String>) -> String {
    let mut html = format!(
        r#"<label for="{name}">{label}</label><select id="{name}" name="{name}"><option value="">any</option>"#
    );
    for option in options {
        let selected = if current.is_some_and(|c| c == option) {
            " selected"
        } else {
            ""
        };
        let _ = write!(html, r#"<option{selected}>{option}</option>"#);
    }
    html.push_str("</select>");
    html
}

fn notice(query: &HashMap<String, String>) -> String {
    match (query.get("ok"), query.get("error")) {
        (Some(message), _) => format!(r#"<p class="notice ok" role="status">{}</p>"#, esc(message)),
        (_, Some(message)) => format!(
            r#"<p class="notice error" role="alert">{}</p>"#,
            esc(message)
        ),
        _ => String::new(),
    }
}

async fn user_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app_id, user_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    guarded(&state.clone(), &headers, |session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let user_id = validate::check_user_id("user_id", user_id)?;
        let request = queries::HistoryRequest::parse(&query)?;
        let detail = json(queries::user(&state.pool, app.id, &user_id).await?);
        let history = json(queries::history(&state.pool, app.id, Some(&user_id), &request).await?);
        let entries = history["entries"].as_array().cloned().unwrap_or_default();
        let self_url = format!("/dashboard/apps/{}/users/{}", app.id, url(&user_id));
        let next = history["next_cursor"]
            .as_str()
            .map(|cursor| {
                format!(
                    r#"<a href="{self_url}?cursor={}&type={}&source={}">Older entries</a>"#,
                    url(cursor),
                    url(query.get("type").map(String::as_str).unwrap_or_default()),
                    url(query.get("source").map(String::as_str).unwrap_or_default()),
                )
            })
            .unwrap_or_default();
        let newest = if request.before.is_some() {
            format!(r#"<a href="{self_url}">Newest entries</a> "#)
        } else {
            String::new()
        };
        let next_expiry = match &detail["next_expiry"] {
            Value::Null => "none".to_string(),
            expiry => format!(
                "{} on {}",
                credits(n(expiry, "amount")),
                esc(&s(expiry, "expires_at")[..16.min(s(expiry, "expires_at").len())].replace('T', " "))
            ),
        };
        let mut holds = String::new();
        for hold in detail["holds"].as_array().into_iter().flatten() {
            let _ = write!(
                holds,
                r#"<li><code>{}</code> {} credits until {}</li>"#,
                s(hold, "hold_id"),
                credits(n(hold, "amount")),
                esc(&s(hold, "expires_at"))
            );
        }
        if holds.is_empty() {
            holds.push_str(r#"<li class="muted">No active holds.</li>"#);
        }
        let mut lots = String::new();
        for lot in detail["lots"].as_array().into_iter().flatten() {
            let _ = write!(
                lots,
                r#"<li>{} of {} left, expires {}</li>"#,
                credits(n(lot, "remaining")),
                credits(n(lot, "amount")),
                esc(&s(lot, "expires_at"))
            );
        }
        if lots.is_empty() {
            lots.push_str(r#"<li class="muted">No expiring credits.</li>"#);
        }
        let csrf = csrf_token(&state, &session);
        let form_key = Uuid::new_v4();
        Ok(page(
            StatusCode::OK,
            &user_id,
            &nav(&state, &session),
            &format!(
                r#"<p class="crumbs"><a href="/dashboard">Apps</a> / <a href="/dashboard/apps/{app}">{app_name}</a> /</p>
<h1 class="break">{user}</h1>{notice}
<div data-live id="balances"><dl class="figures">
<div><dt>Balance</dt><dd id="balance">{balance}</dd></div>
<div><dt>Held</dt><dd>{held}</dd></div>
<div><dt>Available</dt><dd>{available}</dd></div>
<div><dt>Next expiry</dt><dd>{next_expiry}</dd></div></dl></div>
<details class="card"><summary>Add or deduct credits</summary>
<form method="post" action="{self_url}/adjust" class="stacked">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="idempotency_key" value="{form_key}">
<fieldset><legend>Action</legend>
<label><input type="radio" name="action" value="add" checked> Add</label>
<label><input type="radio" name="action" value="deduct"> Deduct</label></fieldset>
<label for="amount">Credits</label><input id="amount" name="amount" type="number" min="1" max="1000000000000" step="1" required inputmode="numeric">
<label for="description">Description</label><input id="description" name="description" maxlength="1000" required placeholder="Why (shown in the history)">
<button type="submit">Apply</button></form></details>
<h2>History</h2>
<form method="get" action="{self_url}" class="inline">
{type_select}{source_select}<button type="submit">Filter</button></form>
<div {live} id="history"><table class="stack"><thead><tr><th>When (UTC)</th><th>Type</th><th class="num">Amount</th><th class="num">Balance after</th><th>Source</th><th>Description</th></tr></thead><tbody>{rows}</tbody></table></div>
<nav class="pager" aria-label="Pages">{newest}{next}</nav>
<div class="columns"><section><h2>Active holds</h2><ul data-live id="holds">{holds}</ul></section>
<section><h2>Expiring credits</h2><ul data-live id="lots">{lots}</ul></section></div>"#,
                app = app.id,
                app_name = esc(&app.name),
                user = esc(&user_id),
                notice = notice(&query),
                balance = credits(n(&detail, "balance")),
                held = credits(n(&detail, "held")),
                available = credits(n(&detail, "available")),
                type_select = select("type", "Type", &["add", "deduct", "refund", "payment", "expire", "clawback"], query.get("type")),
                source_select = select("source", "Source", &["api", "stripe", "polar", "system", "dashboard"], query.get("source")),
                // Only the newest page follows new entries.
                live = if request.before.is_none() { "data-live" } else { "" },
                rows = entry_rows(&entries, false),
            ),
        ))
    })
    .await
}

/// The notice a write submitted for the dashboard leaves on the next page.
fn outcome_message(submitted: Result<Answer, ApiError>) -> Result<String, String> {
    match submitted.map_err(|error| error.to_string())? {
        Answer::Finished(outcome) if outcome.http_status == 200 => Ok(format!(
            "Done: the balance is now {}.",
            credits(outcome.body["balance_after"].as_i64().unwrap_or_default())
        )),
        Answer::Finished(outcome) => Err(outcome.body["message"]
            .as_str()
            .unwrap_or("the write was not accepted")
            .to_string()),
        Answer::Accepted { .. } => Ok("Accepted: it will be applied in a moment.".to_string()),
    }
}

fn with_message(path: &str, result: Result<String, String>) -> String {
    match result {
        Ok(message) => format!("{path}?ok={}", url(&message)),
        Err(message) => format!("{path}?error={}", url(&message)),
    }
}

/// The idempotency key a write form carries (a UUID drawn when the page was rendered), so a
/// double click or a resent form applies once; with the hash of what the form says.
fn form_idempotency(form: &HashMap<String, String>, path: &str) -> Option<(String, String)> {
    let key = Uuid::parse_str(form.get("idempotency_key")?).ok()?;
    let fields: serde_json::Map<String, Value> = form
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "csrf" | "idempotency_key"))
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    Some((
        format!("dashboard:{key}"),
        validate::request_hash("POST", path, &fields),
    ))
}

fn form_amount(form: &HashMap<String, String>, required: bool) -> Result<Option<i64>, String> {
    use tally_common::limits::{AMOUNT_MAX, AMOUNT_MIN};
    match form
        .get("amount")
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
    {
        None if required => Err("amount: is required".into()),
        None => Ok(None),
        Some(text) => match text.parse::<i64>() {
            Ok(amount) if (AMOUNT_MIN..=AMOUNT_MAX).contains(&amount) => Ok(Some(amount)),
            _ => Err(format!(
                "amount: must be a whole number from {AMOUNT_MIN} to {AMOUNT_MAX}"
            )),
        },
    }
}

fn form_description(form: &HashMap<String, String>) -> Result<Option<String>, String> {
    let text = form
        .get("description")
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty());
    match text {
        Some(text) if text.chars().count() > tally_common::limits::DESCRIPTION_CHARS_MAX => {
            Err("description: is longer than 1,000 characters".into())
        }
        text => Ok(text),
    }
}

async fn adjust(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app_id, user_id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |_session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let user_id = validate::check_user_id("user_id", user_id)?;
        let back = format!("/dashboard/apps/{}/users/{}", app.id, url(&user_id));
        let input = form_amount(&form, true)
            .and_then(|amount| Ok((amount.expect("required"), form_description(&form)?)));
        let (amount, description) = match input {
            Ok(input) => input,
            Err(message) => return Ok(redirect(&with_message(&back, Err(message)))),
        };
        let command = match form.get("action").map(String::as_str) {
            Some("add") => Command::Add {
                user_id,
                amount,
                description,
                metadata: Default::default(),
                expires_at: None,
            },
            Some("deduct") => Command::Deduct {
                user_id,
                amount,
                description,
                metadata: Default::default(),
            },
            _ => {
                return Ok(redirect(&with_message(
                    &back,
                    Err("action: choose add or deduct".into()),
                )))
            }
        };
        let path = format!("{back}/adjust");
        let result = outcome_message(
            admin::submit_for(&state, app.id, command, form_idempotency(&form, &path)).await,
        );
        Ok(redirect(&with_message(&back, result)))
    })
    .await
}

async fn entry_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ledger_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    guarded(&state.clone(), &headers, |session| async move {
        let ledger_id = validate::parse_uuid("ledger_id", &ledger_id)?;
        let detail = json(queries::entry(&state.pool, ledger_id).await?);
        let entry = &detail["entry"];
        let app = queries::app(&state.pool, parse_app(&s(entry, "app_id"))?).await?;
        let user_id = s(entry, "user_id");
        let mut fields = String::new();
        for key in [
            "ledger_id", "user_id", "type", "amount", "balance_after", "source", "description",
            "refunded_ledger_id", "hold_id", "lot_id", "expires_at", "created_at",
        ] {
            let value = s(entry, key);
            let shown = if key == "refunded_ledger_id" && !value.is_empty() {
                format!(r#"<a href="/dashboard/entries/{0}"><code>{0}</code></a>"#, esc(&value))
            } else if value.is_empty() {
                r#"<span class="muted">—</span>"#.to_string()
            } else {
                format!("<code>{}</code>", esc(&value))
            };
            let _ = write!(fields, "<div><dt>{key}</dt><dd>{shown}</dd></div>");
        }
        let _ = write!(
            fields,
            "<div><dt>metadata</dt><dd><code>{}</code></dd></div>",
            esc(&entry["metadata"].to_string())
        );
        let refunds = detail["refunds"].as_array().cloned().unwrap_or_default();
        let refundable = n(&detail, "refundable");
        let refund_form = if refundable > 0 {
            format!(
                r#"<section class="card"><h2>Refund</h2>
<form method="post" action="/dashboard/entries/{id}/refund" class="stacked" data-confirm="Refund this entry? This writes a refund entry to the ledger.">
<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="idempotency_key" value="{form_key}">
<label for="refund-amount">Credits to refund (empty: all {left} left)</label>
<input id="refund-amount" name="amount" type="number" min="1" max="{refundable}" step="1" inputmode="numeric">
<label for="refund-description">Reason</label><input id="refund-description" name="description" maxlength="1000">
<label class="check"><input type="checkbox" name="confirm" value="yes" required> I want to refund this entry</label>
<button type="submit" class="danger">Refund</button></form></section>"#,
                id = ledger_id,
                csrf = csrf_token(&state, &session),
                form_key = Uuid::new_v4(),
                left = credits(refundable),
            )
        } else {
            r#"<p class="muted">Nothing left to refund on this entry.</p>"#.to_string()
        };
        Ok(page(
            StatusCode::OK,
            "Entry",
            &nav(&state, &session),
            &format!(
                r#"<p class="crumbs"><a href="/dashboard">Apps</a> / <a href="/dashboard/apps/{app}">{app_name}</a> / <a href="/dashboard/apps/{app}/users/{uid}">{user}</a> /</p>
<h1>{ty} of {amount}</h1>{notice}
<dl class="fields">{fields}</dl>
<h2>Refunds</h2><div data-live id="refunds"><table class="stack"><thead><tr><th>When (UTC)</th><th>Type</th><th class="num">Amount</th><th class="num">Balance after</th><th>Source</th><th>Description</th></tr></thead><tbody>{refund_rows}</tbody></table></div>
{refund_form}"#,
                app = app.id,
                app_name = esc(&app.name),
                uid = url(&user_id),
                user = esc(&user_id),
                ty = esc(&s(entry, "type")),
                amount = credits(n(entry, "amount")),
                notice = notice(&query),
                refund_rows = entry_rows(&refunds, false),
            ),
        ))
    })
    .await
}

async fn refund(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(ledger_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |_session| async move {
        let ledger_id = validate::parse_uuid("ledger_id", &ledger_id)?;
        let back = format!("/dashboard/entries/{ledger_id}");
        if form.get("confirm").map(String::as_str) != Some("yes") {
            return Ok(redirect(&with_message(
                &back,
                Err("confirm: tick the box to refund".into()),
            )));
        }
        let app_id: Option<Uuid> =
            sqlx::query_scalar("SELECT app_id FROM ledger_entries WHERE id = $1")
                .bind(ledger_id)
                .fetch_optional(&state.pool)
                .await?;
        let app_id =
            app_id.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
        let input =
            form_amount(&form, false).and_then(|amount| Ok((amount, form_description(&form)?)));
        let (amount, description) = match input {
            Ok(input) => input,
            Err(message) => return Ok(redirect(&with_message(&back, Err(message)))),
        };
        let idempotency = form_idempotency(&form, &format!("{back}/refund"));
        let result = outcome_message(
            admin::refund_entry(&state, app_id, ledger_id, amount, description, idempotency).await,
        );
        Ok(redirect(&with_message(&back, result)))
    })
    .await
}

async fn events_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    guarded(&state.clone(), &headers, |session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let request = queries::EventsRequest::parse(&query)?;
        let events = json(queries::webhook_events(&state.pool, app.id, &request).await?);
        let mut rows = String::new();
        for event in events["events"].as_array().into_iter().flatten() {
            let _ = write!(
                rows,
                r#"<tr><td data-label="Received">{}</td><td data-label="Provider">{}</td><td data-label="Type">{}</td><td data-label="Outcome"><span class="tag {}">{}</span></td><td data-label="Reason">{}</td><td data-label="User">{}</td><td data-label="Event" class="break"><code>{}</code></td></tr>"#,
                esc(&s(event, "received_at")[..19.min(s(event, "received_at").len())].replace('T', " ")),
                esc(&s(event, "provider")),
                esc(&s(event, "type")),
                esc(&s(event, "outcome")),
                esc(&s(event, "outcome")),
                esc(&s(event, "reason")),
                esc(&s(event, "user_id")),
                esc(&s(event, "event_id")),
            );
        }
        if rows.is_empty() {
            rows.push_str(r#"<tr><td colspan="7" class="muted">No webhook events.</td></tr>"#);
        }
        let base = format!(
            "/dashboard/apps/{}/events?provider={}&outcome={}",
            app.id,
            request.provider.as_deref().unwrap_or_default(),
            request.outcome.as_deref().unwrap_or_default()
        );
        let mut pager = String::new();
        if request.page > 0 {
            let _ = write!(pager, r#"<a href="{base}&page={}">Newer</a> "#, request.page - 1);
        }
        if let Some(next) = events["next_page"].as_i64() {
            let _ = write!(pager, r#"<a href="{base}&page={next}">Older</a>"#);
        }
        Ok(page(
            StatusCode::OK,
            "Webhook events",
            &nav(&state, &session),
            &format!(
                r#"<p class="crumbs"><a href="/dashboard">Apps</a> / <a href="/dashboard/apps/{id}">{name}</a> /</p><h1>Webhook events</h1>
<form method="get" action="/dashboard/apps/{id}/events" class="inline">{p}{o}<button type="submit">Filter</button></form>
<div data-live id="events"><table class="stack"><thead><tr><th>Received (UTC)</th><th>Provider</th><th>Type</th><th>Outcome</th><th>Reason</th><th>User</th><th>Event</th></tr></thead><tbody>{rows}</tbody></table></div>
<nav class="pager" aria-label="Pages">{pager}</nav>"#,
                id = app.id,
                name = esc(&app.name),
                p = select("provider", "Provider", &["stripe", "polar"], query.get("provider")),
                o = select("outcome", "Outcome", &["credited", "clawed_back", "duplicate", "ignored", "rejected"], query.get("outcome")),
            ),
        ))
    })
    .await
}

fn credentials_html(state: &AppState, session: &str, app_id: Uuid, credentials: &Value) -> String {
    let csrf = csrf_token(state, session);
    let mut rows = String::new();
    for key in credentials["keys"].as_array().into_iter().flatten() {
        let action = if key["revoked_at"].is_null() {
            format!(
                r#"<form method="post" action="/dashboard/apps/{app_id}/keys/{id}/revoke" data-confirm="Revoke this key? Requests with it stop working within 5 seconds."><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="danger" aria-label="Revoke key {prefix}">Revoke</button></form>"#,
                id = s(key, "key_id"),
                prefix = esc(&s(key, "prefix")),
            )
        } else {
            format!(
                r#"<span class="muted">revoked {}</span>"#,
                esc(&s(key, "revoked_at")[..10.min(s(key, "revoked_at").len())])
            )
        };
        let _ = write!(
            rows,
            r#"<tr><td data-label="Key"><code>{}…</code></td><td data-label="Created">{}</td><td data-label="">{action}</td></tr>"#,
            esc(&s(key, "prefix")),
            esc(&s(key, "created_at")[..10.min(s(key, "created_at").len())]),
        );
    }
    let secrets: Vec<String> = credentials["webhook_secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|secret| format!("{}: {}", esc(&s(secret, "provider")), n(secret, "count")))
        .collect();
    let secrets = if secrets.is_empty() {
        "none".to_string()
    } else {
        secrets.join(", ")
    };
    format!(
        r#"<table class="stack"><thead><tr><th>Key</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>
<form method="post" action="/dashboard/apps/{app_id}/keys"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Issue a new key</button></form>
<details class="card"><summary>Add a webhook secret (secrets so far: {secrets})</summary>
<form method="post" action="/dashboard/apps/{app_id}/webhook-secrets" class="stacked"><input type="hidden" name="csrf" value="{csrf}">
<label for="provider">Provider</label><select id="provider" name="provider"><option>stripe</option><option>polar</option></select>
<label for="secret">Signing secret</label><input id="secret" name="secret" type="password" autocomplete="off" required>
<button type="submit">Add secret</button></form></details>"#
    )
}

/// The page that shows a new key, once.
fn key_page(state: &AppState, session: &str, app_id: Uuid, app_name: &str, key: &str) -> Response {
    page(
        StatusCode::OK,
        "New API key",
        &nav(state, session),
        &format!(
            r#"<p class="crumbs"><a href="/dashboard">Apps</a> / <a href="/dashboard/apps/{app_id}">{name}</a> /</p><h1>New API key</h1>
<p class="notice ok" role="status">Copy this key now: it is shown only once.</p>
<p class="card"><code id="new-key">{key}</code></p><p><a href="/dashboard/apps/{app_id}">Back to {name}</a></p>"#,
            name = esc(app_name),
            key = esc(key),
        ),
    )
}

async fn create_app(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |session| async move {
        let name = match admin::manage::check_name(
            form.get("name").map(String::as_str).unwrap_or_default(),
        ) {
            Ok(name) => name,
            Err(error) => {
                return Ok(redirect(&with_message(
                    "/dashboard",
                    Err(error.to_string()),
                )))
            }
        };
        let (app_id, key) = admin::manage::create_app(&state.pool, &name).await?;
        Ok(key_page(&state, &session, app_id, &name, &key))
    })
    .await
}

async fn issue_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let key = admin::manage::issue_key(&state.pool, app.id).await?;
        Ok(key_page(&state, &session, app.id, &app.name, &key))
    })
    .await
}

async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((app_id, key_id)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |_session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let key_id = validate::parse_uuid("key_id", &key_id)?;
        admin::manage::revoke_key(&state.pool, app.id, key_id).await?;
        Ok(redirect(&with_message(
            &format!("/dashboard/apps/{}", app.id),
            Ok("Key revoked: it stops working within 5 seconds.".into()),
        )))
    })
    .await
}

async fn add_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(app_id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let csrf = form.get("csrf").cloned();
    guarded_form(&state.clone(), &headers, csrf, |_session| async move {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let back = format!("/dashboard/apps/{}", app.id);
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        let result = match admin::manage::check_secret(field("provider"), field("secret")) {
            Ok((provider, secret)) => {
                admin::manage::add_secret(&state.pool, app.id, provider, &secret).await?;
                Ok(format!(
                    "The {provider} secret was added; it is accepted within 5 seconds."
                ))
            }
            Err(error) => Err(error.to_string()),
        };
        Ok(redirect(&with_message(&back, result)))
    })
    .await
}
