//! One ledger entry's page (every field, its refunds) and the form that refunds it.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;

use super::access::{page, SignedForm, SignedIn};
use super::forms;
use super::notice::{Code, Said};
use super::render::{filters, html, redirect_with, Notice};
use crate::admin::{self, queries};
use crate::entries::Entry;
use crate::error::ApiError;
use crate::responses::rfc3339;
use crate::validate;
use crate::AppState;

#[derive(Template)]
#[template(path = "entry.html")]
struct EntryPage {
    csrf: String,
    notice: Option<Notice>,
    app: queries::App,
    entry: Entry,
    /// The entry's fields as the page lists them.
    fields: Vec<Field>,
    refunds: Vec<Entry>,
    refundable: i64,
    /// The refund form's idempotency key.
    form_key: Uuid,
}

/// A field of the entry: its name and its value as text (`None`: empty).
struct Field {
    name: &'static str,
    value: Option<String>,
    /// The value is another entry's id: link to its page.
    links_entry: bool,
}

impl Field {
    fn new(name: &'static str, value: Option<String>) -> Self {
        Self {
            name,
            value: value.filter(|value| !value.is_empty()),
            links_entry: false,
        }
    }
}

/// Every field of the entry but its metadata, in the order the page lists them.
fn fields(entry: &Entry) -> Vec<Field> {
    let id = |id: Option<Uuid>| id.map(|id| id.to_string());
    vec![
        Field::new("ledger_id", Some(entry.ledger_id.to_string())),
        Field::new("user_id", Some(entry.user_id.clone())),
        Field::new("type", Some(entry.entry_type.clone())),
        Field::new("credit_type", Some(entry.credit_type.clone())),
        Field::new("amount", Some(entry.amount.to_string())),
        Field::new("balance_after", Some(entry.balance_after.to_string())),
        Field::new("source", Some(entry.source.clone())),
        Field::new("description", entry.description.clone()),
        Field {
            links_entry: true,
            ..Field::new("refunded_ledger_id", id(entry.refunded_ledger_id))
        },
        Field::new("hold_id", id(entry.hold_id)),
        Field::new("lot_id", id(entry.lot_id)),
        Field::new("expires_at", entry.expires_at.map(rfc3339)),
        Field::new("created_at", Some(rfc3339(entry.created_at))),
    ]
}

pub async fn entry_page(
    State(state): State<AppState>,
    Path(ledger_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    SignedIn(session): SignedIn,
) -> Response {
    page(&session, async {
        let ledger_id = validate::parse_uuid("ledger_id", &ledger_id)?;
        let detail = queries::entry(&state.pool, ledger_id).await?;
        let app = queries::app(&state.pool, detail.entry.app_id).await?;
        Ok(html(
            StatusCode::OK,
            &EntryPage {
                csrf: session.csrf.clone(),
                notice: Notice::from_query(&query),
                app,
                fields: fields(&detail.entry),
                entry: detail.entry,
                refunds: detail.refunds,
                refundable: detail.refundable,
                form_key: Uuid::new_v4(),
            },
        ))
    })
    .await
}

pub async fn refund(
    State(state): State<AppState>,
    Path(ledger_id): Path<String>,
    SignedForm { session, form }: SignedForm,
) -> Response {
    page(&session, async {
        let ledger_id = validate::parse_uuid("ledger_id", &ledger_id)?;
        let back = format!("/dashboard/entries/{ledger_id}");
        if form.get("confirm").map(String::as_str) != Some("yes") {
            return Ok(redirect_with(&back, Said::new(Code::ConfirmMissing)));
        }
        let app_id: Option<Uuid> =
            sqlx::query_scalar("SELECT app_id FROM ledger_entries WHERE id = $1")
                .bind(ledger_id)
                .fetch_optional(&state.pool)
                .await?;
        let app_id =
            app_id.ok_or_else(|| ApiError::NotFound(format!("no ledger entry {ledger_id}")))?;
        let input =
            forms::amount(&form, false).and_then(|amount| Ok((amount, forms::description(&form)?)));
        let (amount, description) = match input {
            Ok(input) => input,
            Err(code) => return Ok(redirect_with(&back, Said::new(code))),
        };
        let idempotency = forms::idempotency(&form, &format!("{back}/refund"));
        let answer =
            admin::refund_entry(&state, app_id, ledger_id, amount, description, idempotency).await;
        Ok(redirect_with(&back, forms::outcome_notice(answer)))
    })
    .await
}
