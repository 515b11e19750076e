//! One app's page (its daily chart, its users, its keys and webhook secrets, its product
//! catalogue and whether it has a Stripe secret key) and the writes to its credentials: issuing
//! and revoking keys, adding webhook secrets.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use tally_common::credit_type::CreditType;
use tally_common::limits::WEBHOOK_ENDPOINTS_MAX;
use uuid::Uuid;

use super::access::{page, SignedForm, SignedIn};
use super::endpoints::subscribable;
use super::forms::EVENT_FIELD_PREFIX;
use super::notice::{Code, Said};
use super::render::{filters, html, redirect_with, Notice};
use super::session::Session;
use crate::admin::{self, queries};
use crate::error::ApiError;
use crate::routes::alerts::{self, EffectiveAlerts};
use crate::routes::endpoints::{self, Endpoint};
use crate::routes::plans::{self, Product};
use crate::validate;
use crate::AppState;

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    csrf: String,
    notice: Option<Notice>,
    app: queries::App,
    chart: Chart,
    request: queries::UsersRequest,
    users: queries::UsersPage,
    /// The type the users list shows and sorts by; other types are listed beside it.
    default_type: &'static str,
    credentials: Credentials,
    /// The app's webhook endpoints, and what the form that adds one offers.
    endpoints: Vec<Endpoint>,
    endpoints_max: i64,
    /// Fewer endpoints than the most there can be.
    can_add_endpoint: bool,
    event_types: Vec<&'static str>,
    event_field_prefix: &'static str,
    /// The app's default balance alert thresholds, per credit type.
    thresholds: Vec<EffectiveAlerts>,
    /// The app's catalogue, by provider and product id.
    products: Vec<Product>,
    /// When the app's Stripe secret key (for auto top-up charges) was set; `None` without one.
    /// The key itself is never read.
    stripe_key_updated: Option<DateTime<Utc>>,
}

/// The app's keys (prefix only) and its webhook secrets per provider, read from the JSON of
/// [`admin::manage::credentials`].
#[derive(Deserialize)]
struct Credentials {
    keys: Vec<Key>,
    webhook_secrets: Vec<SecretCount>,
}

#[derive(Deserialize)]
struct Key {
    key_id: Uuid,
    prefix: String,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct SecretCount {
    provider: String,
    count: i64,
}

/// Credits added vs spent per day, as the bars of an SVG chart.
struct Chart {
    width: f64,
    height: f64,
    /// Each bar's width.
    bar_width: f64,
    bars: Vec<Bar>,
    /// The first and last day shown.
    first: String,
    last: String,
}

struct Bar {
    /// `added` or `spent`: the bar's class and what its title says.
    key: &'static str,
    day: NaiveDate,
    value: i64,
    x: f64,
    y: f64,
    height: f64,
}

impl Chart {
    const WIDTH: f64 = 600.0;
    const HEIGHT: f64 = 160.0;
    /// Room above the highest bar.
    const HEADROOM: f64 = 20.0;

    fn new(days: &[queries::Day]) -> Self {
        let max = days
            .iter()
            .flat_map(|day| [day.added, day.spent])
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let slot = Self::WIDTH / days.len().max(1) as f64;
        let bar_width = (slot / 2.0 - 2.0).max(1.0);
        let mut bars = Vec::with_capacity(days.len() * 2);
        for (i, day) in days.iter().enumerate() {
            let x = i as f64 * slot + 1.0;
            for (j, (key, value)) in [("added", day.added), ("spent", day.spent)]
                .into_iter()
                .enumerate()
            {
                let height = (value as f64 / max * (Self::HEIGHT - Self::HEADROOM))
                    .max(if value > 0 { 1.0 } else { 0.0 });
                bars.push(Bar {
                    key,
                    day: day.day,
                    value,
                    x: x + j as f64 * (bar_width + 1.0),
                    y: Self::HEIGHT - height,
                    height,
                });
            }
        }
        let day_text = |day: Option<&queries::Day>| day.map(|d| d.day.to_string());
        Self {
            width: Self::WIDTH,
            height: Self::HEIGHT,
            bar_width,
            bars,
            first: day_text(days.first()).unwrap_or_default(),
            last: day_text(days.last()).unwrap_or_default(),
        }
    }
}

pub fn parse_app(text: &str) -> Result<Uuid, ApiError> {
    validate::parse_uuid("app_id", text)
}

pub async fn app_page(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let request = queries::UsersRequest::parse(&query)?;
        let users = queries::users(&state.pool, app.id, &request).await?;
        let days = queries::daily(&state.pool, app.id, queries::STATS_DAYS_DEFAULT).await?;
        let credentials = admin::manage::credentials(&state.pool, app.id).await?;
        let credentials: Credentials = serde_json::from_value(credentials)
            .map_err(|error| ApiError::Internal(error.into()))?;
        let endpoints = endpoints::list(&state.pool, app.id).await?;
        let thresholds = alerts::effective(&state.pool, app.id, None, None).await?;
        let products = plans::products(&state.pool, app.id).await?;
        let stripe_key_updated = queries::stripe_key_updated(&state.pool, app.id).await?;
        Ok(html(
            StatusCode::OK,
            &AppPage {
                csrf: session.csrf.clone(),
                notice: Notice::from_query(&query),
                app,
                chart: Chart::new(&days),
                request,
                users,
                default_type: CreditType::DEFAULT,
                credentials,
                can_add_endpoint: (endpoints.len() as i64) < WEBHOOK_ENDPOINTS_MAX,
                endpoints,
                endpoints_max: WEBHOOK_ENDPOINTS_MAX,
                event_types: subscribable(),
                event_field_prefix: EVENT_FIELD_PREFIX,
                thresholds,
                products,
                stripe_key_updated,
            },
        ))
    })
    .await
}

#[derive(Template)]
#[template(path = "new_key.html")]
struct NewKeyPage<'a> {
    csrf: &'a str,
    app_id: Uuid,
    app_name: &'a str,
    key: &'a str,
}

/// The page that shows a new key, once.
pub fn new_key_page(session: &Session, app_id: Uuid, app_name: &str, key: &str) -> Response {
    html(
        StatusCode::OK,
        &NewKeyPage {
            csrf: &session.csrf,
            app_id,
            app_name,
            key,
        },
    )
}

pub async fn issue_key(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let key = admin::manage::issue_key(&state.pool, app.id).await?;
        Ok(new_key_page(&session, app.id, &app.name, &key))
    })
    .await
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Path((app_id, key_id)): Path<(String, String)>,
    SignedForm { session, .. }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let key_id = validate::parse_uuid("key_id", &key_id)?;
        admin::manage::revoke_key(&state.pool, app.id, key_id).await?;
        Ok(redirect_with(
            &format!("/dashboard/apps/{}", app.id),
            Said::new(Code::KeyRevoked),
        ))
    })
    .await
}

pub async fn add_secret(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let back = format!("/dashboard/apps/{}", app.id);
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        let said = match admin::manage::check_secret(field("provider"), field("secret")) {
            Ok((provider, secret)) => {
                admin::manage::add_secret(&state.pool, app.id, provider, &secret).await?;
                Said::new(Code::SecretAdded(provider))
            }
            Err(error) => Said::new(Code::for_invalid(&error)),
        };
        Ok(redirect_with(&back, said))
    })
    .await
}
