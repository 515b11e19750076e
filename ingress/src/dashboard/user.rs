//! One user's page (figures per credit type, history, holds, expiring credits, balance alerts,
//! auto top-ups and their latest charges) and the form that adds or deducts credits of a type
//! by hand.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use tally_common::command::Command;
use tally_common::credit_type::CreditType;
use uuid::Uuid;

use super::access::{page, SignedForm, SignedIn};
use super::app::parse_app;
use super::forms;
use super::notice::{Code, Said};
use super::render::{filters, html, redirect_with, url, Notice};
use crate::admin::{self, queries};
use crate::routes::alerts::{self, EffectiveAlerts};
use crate::validate;
use crate::AppState;

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage<'a> {
    csrf: String,
    notice: Option<Notice>,
    app: queries::App,
    user_id: String,
    detail: queries::UserDetail,
    /// A figure block per credit type the user has; the default type's zeros for a user
    /// without any.
    balances: Vec<queries::TypeBalance>,
    /// The type a write names when it names none: its block keeps the `balance` id.
    default_type: &'static str,
    /// The user's credit types: the history filter's options and the form's suggestions.
    credit_types: &'a [&'a str],
    history: queries::EntriesPage,
    /// The first page, which follows new entries live.
    newest: bool,
    /// The history's filters: their options and current values.
    entry_types: &'static [&'static str],
    sources: &'static [&'static str],
    entry_type: Option<&'a str>,
    source: Option<&'a str>,
    credit_type: Option<&'a str>,
    /// The add/deduct form's idempotency key.
    form_key: Uuid,
    /// The balance alert thresholds that apply to the user, per credit type.
    thresholds: Vec<EffectiveAlerts>,
    /// The user's auto top-ups, by credit type, with their latest attempts.
    auto_topups: Vec<queries::AutoTopupDetail>,
    /// The user has auto top-ups but the app has no Stripe secret key to charge with.
    topups_without_key: bool,
}

pub async fn user_page(
    State(state): State<AppState>,
    Path((app_id, user_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let user_id = validate::check_user_id("user_id", user_id)?;
        let request = queries::HistoryRequest::parse(&query)?;
        let mut detail = queries::user(&state.pool, app.id, &user_id).await?;
        let history = queries::history(&state.pool, app.id, Some(&user_id), &request).await?;
        let thresholds = alerts::effective(&state.pool, app.id, Some(&user_id), None).await?;
        let auto_topups = queries::auto_topups(&state.pool, app.id, &user_id).await?;
        let topups_without_key = !auto_topups.is_empty()
            && queries::stripe_key_updated(&state.pool, app.id)
                .await?
                .is_none();
        let mut balances = std::mem::take(&mut detail.balances);
        if balances.is_empty() {
            balances.push(queries::TypeBalance::empty(CreditType::DEFAULT));
        }
        let type_names: Vec<String> = balances.iter().map(|b| b.credit_type.clone()).collect();
        let credit_types: Vec<&str> = type_names.iter().map(String::as_str).collect();
        Ok(html(
            StatusCode::OK,
            &UserPage {
                csrf: session.csrf.clone(),
                notice: Notice::from_query(&query),
                app,
                user_id,
                detail,
                balances,
                default_type: CreditType::DEFAULT,
                credit_types: &credit_types,
                history,
                newest: request.before.is_none(),
                entry_types: queries::ENTRY_TYPES,
                sources: queries::SOURCES,
                entry_type: request.entry_type.as_deref(),
                source: request.source.as_deref(),
                credit_type: request.credit_type.as_ref().map(CreditType::as_str),
                form_key: Uuid::new_v4(),
                thresholds,
                auto_topups,
                topups_without_key,
            },
        ))
    })
    .await
}

pub async fn adjust(
    State(state): State<AppState>,
    Path((app_id, user_id)): Path<(String, String)>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    page(&session, async {
        let app = queries::app(&state.pool, parse_app(&app_id)?).await?;
        let user_id = validate::check_user_id("user_id", user_id)?;
        let back = format!("/dashboard/apps/{}/users/{}", app.id, url(&user_id));
        let input = forms::amount(&form, true)
            .and_then(|amount| Ok((amount.expect("required"), forms::description(&form)?)));
        let (amount, description) = match input {
            Ok(input) => input,
            Err(code) => return Ok(redirect_with(&back, Said::new(code))),
        };
        let credit_type = match forms::credit_type(&form) {
            Ok(credit_type) => credit_type,
            Err(code) => return Ok(redirect_with(&back, Said::new(code))),
        };
        let command = match form.get("action").map(String::as_str) {
            Some("add") => Command::Add {
                user_id,
                amount,
                credit_type,
                description,
                metadata: Default::default(),
                expires_at: None,
            },
            Some("deduct") => Command::Deduct {
                user_id,
                amount,
                credit_type,
                description,
                metadata: Default::default(),
            },
            _ => return Ok(redirect_with(&back, Said::new(Code::ActionMissing))),
        };
        let idempotency = forms::idempotency(&form, &format!("{back}/adjust"));
        let answer = admin::submit_for(&state, app.id, command, idempotency).await;
        Ok(redirect_with(&back, forms::outcome_notice(answer)))
    })
    .await
}
