//! Plans: `/products` (what a Stripe Price or a Polar Product buys, read when its payment's
//! webhook arrives) and `/credits/auto_topup` (per user and credit type: charge a saved card
//! through Stripe when `available` falls below a threshold).
//!
//! Auto top-up settings are read by workers from memory, like balance alerts: every change
//! bumps the app's event configuration version, so that they reload it within a second.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tally_common::credit_type::CreditType;
use tally_common::limits::{
    CURRENCY_CHARS, PLAN_EXPIRES_IN_DAYS_MAX, PRODUCT_ID_CHARS_MAX, STRIPE_ID_CHARS_MAX,
    TOPUPS_PER_MONTH_DEFAULT, TOPUPS_PER_MONTH_MAX,
};
use tally_common::plans::ProductMode;
use tally_common::webhook::Provider;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::entries::{optional_time_json, time_json};
use crate::error::ApiError;
use crate::responses::ErrorResponse;
use crate::routes::endpoints::bump_event_config;
use crate::validate::{self, Fields};
use crate::AppState;

/// Body of `PUT /products/{provider}/{product_id}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ProductRequest {
    /// Credits one unit buys (a subscription line credits `credits × quantity`).
    credits: i64,
    /// The balance credited.
    credit_type: Option<String>,
    /// `one_time` (a pack) or `subscription` (an allowance per billing period that expires at
    /// the period's end).
    mode: String,
    /// One-time packs only: the credits expire this many days after the payment.
    expires_in_days: Option<i64>,
}

/// A catalogue product.
#[derive(Serialize, ToSchema, sqlx::FromRow)]
pub struct Product {
    /// `stripe` or `polar`.
    pub provider: String,
    /// A Stripe Price id (`price_…`) or a Polar Product id.
    pub product_id: String,
    pub credits: i64,
    pub credit_type: String,
    /// `one_time` or `subscription`.
    pub mode: String,
    pub expires_in_days: Option<i32>,
    #[serde(serialize_with = "time_json")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

/// Answer to `GET /products`.
#[derive(Serialize, ToSchema)]
pub struct ProductsResponse {
    /// By provider, then product id.
    products: Vec<Product>,
}

/// The provider and product id of a product's path.
pub(crate) fn product_path(
    provider: &str,
    product_id: &str,
) -> Result<(Provider, String), ApiError> {
    let provider = Provider::parse(provider)
        .ok_or_else(|| ApiError::field("provider", "must be stripe or polar"))?;
    Ok((provider, check_product_id(product_id)?))
}

/// A provider's product id: 1 to [`PRODUCT_ID_CHARS_MAX`] visible ASCII characters.
pub(crate) fn check_product_id(product_id: &str) -> Result<String, ApiError> {
    let valid = (1..=PRODUCT_ID_CHARS_MAX).contains(&product_id.len())
        && product_id.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(product_id.to_string())
    } else {
        Err(ApiError::field(
            "product_id",
            format!("must be 1 to {PRODUCT_ID_CHARS_MAX} visible ASCII characters"),
        ))
    }
}

/// The body of `PUT /products/…`, read.
pub(crate) struct ProductBody {
    credits: i64,
    credit_type: CreditType,
    mode: ProductMode,
    expires_in_days: Option<i64>,
}

impl ProductBody {
    /// Reads the body (`400` naming the field otherwise).
    pub(crate) fn read(object: Map<String, Value>) -> Result<Self, ApiError> {
        let mut fields = Fields::new(
            object,
            &["credits", "credit_type", "mode", "expires_in_days"],
        )?;
        let credits = fields.amount("credits")?;
        let credit_type = fields.credit_type()?;
        let mode = match fields.optional_string("mode")? {
            None => return Err(ApiError::field("mode", "is required")),
            Some(text) => ProductMode::parse(&text)
                .ok_or_else(|| ApiError::field("mode", "must be one_time or subscription"))?,
        };
        let expires_in_days =
            fields.optional_integer("expires_in_days", 1, PLAN_EXPIRES_IN_DAYS_MAX)?;
        if mode == ProductMode::Subscription && expires_in_days.is_some() {
            return Err(ApiError::field(
                "expires_in_days",
                "applies to one_time products only: a subscription's credits expire at the end of its period",
            ));
        }
        fields.finish()?;
        Ok(Self {
            credits,
            credit_type,
            mode,
            expires_in_days,
        })
    }
}

const PRODUCT_COLUMNS: &str =
    "provider, product_id, credits, credit_type, mode, expires_in_days, updated_at";

#[utoipa::path(put, path = "/products/{provider}/{product_id}",
    params(("provider" = String, Path, description = "`stripe` or `polar`."),
           ("product_id" = String, Path, description = "A Stripe Price id (`price_…`) or a Polar Product id.")),
    request_body = ProductRequest,
    responses((status = 200, body = Product), (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn put_product(
    State(state): State<AppState>,
    auth: Auth,
    Path((provider, product_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Product>, ApiError> {
    let (provider, product_id) = product_path(&provider, &product_id)?;
    let body = ProductBody::read(validate::json_object(&headers, body).await?)?;
    let product = sqlx::query_as::<_, Product>(&format!(
        "INSERT INTO products (app_id, provider, product_id, credits, credit_type, mode, expires_in_days)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (app_id, provider, product_id) DO UPDATE
         SET credits = EXCLUDED.credits, credit_type = EXCLUDED.credit_type, mode = EXCLUDED.mode,
             expires_in_days = EXCLUDED.expires_in_days, updated_at = now()
         RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(auth.app_id)
    .bind(provider.as_str())
    .bind(&product_id)
    .bind(body.credits)
    .bind(body.credit_type.as_str())
    .bind(body.mode.as_str())
    .bind(body.expires_in_days.map(|days| days as i32))
    .fetch_one(&state.pool)
    .await?;
    Ok(Json(product))
}

#[utoipa::path(get, path = "/products",
    responses((status = 200, body = ProductsResponse)),
    security(("api_key" = [])))]
pub async fn list_products(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Json<ProductsResponse>, ApiError> {
    Ok(Json(ProductsResponse {
        products: products(&state.pool, auth.app_id).await?,
    }))
}

/// Every product of the app, by provider and product id.
pub async fn products(pool: &PgPool, app_id: Uuid) -> Result<Vec<Product>, ApiError> {
    Ok(sqlx::query_as::<_, Product>(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE app_id = $1 ORDER BY provider, product_id"
    ))
    .bind(app_id)
    .fetch_all(pool)
    .await?)
}

#[utoipa::path(delete, path = "/products/{provider}/{product_id}",
    params(("provider" = String, Path, description = "`stripe` or `polar`."),
           ("product_id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn delete_product(
    State(state): State<AppState>,
    auth: Auth,
    Path((provider, product_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (provider, product_id) = product_path(&provider, &product_id)?;
    let deleted =
        sqlx::query("DELETE FROM products WHERE app_id = $1 AND provider = $2 AND product_id = $3")
            .bind(auth.app_id)
            .bind(provider.as_str())
            .bind(&product_id)
            .execute(&state.pool)
            .await?
            .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "no {provider} product {product_id}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `PUT /credits/auto_topup`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AutoTopupRequest {
    user_id: String,
    /// The balance watched and credited.
    credit_type: Option<String>,
    /// Whether charges are made (`true` also forgets the failures that disabled it).
    enabled: bool,
    /// A charge is made when a change leaves `available` below this.
    threshold: i64,
    /// Credits each charge buys (credited when Stripe's `payment_intent.succeeded` arrives).
    credits: i64,
    /// What each charge costs, in the currency's smallest unit (cents).
    amount: i64,
    /// ISO 4217 code, lowercase (`usd`).
    currency: String,
    /// The Stripe Customer (`cus_…`) charged.
    stripe_customer_id: String,
    /// The customer's saved PaymentMethod (`pm_…`), charged off-session.
    stripe_payment_method_id: String,
    /// Charges at most per calendar month (UTC).
    max_per_month: Option<i64>,
}

/// Stripe's refusal of an attempt.
#[derive(Serialize, ToSchema)]
pub struct AutoTopupError {
    /// Stripe's error code (`card_declined` …).
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

/// The latest charge of an auto top-up.
#[derive(Serialize, ToSchema)]
pub struct AutoTopupAttempt {
    /// Also the charge's `Idempotency-Key` and its metadata `tally_auto_topup_id`.
    id: Uuid,
    /// `pending`, `succeeded`, `failed` or `action_required`.
    status: String,
    /// The PaymentIntent Stripe created, once known.
    payment_intent_id: Option<String>,
    #[serde(serialize_with = "time_json")]
    #[schema(value_type = String, format = DateTime)]
    created_at: DateTime<Utc>,
    error: Option<AutoTopupError>,
}

/// A user's auto top-up of one credit type.
#[derive(Serialize, ToSchema)]
pub struct AutoTopup {
    user_id: String,
    credit_type: String,
    enabled: bool,
    threshold: i64,
    credits: i64,
    amount: i64,
    currency: String,
    stripe_customer_id: String,
    stripe_payment_method_id: String,
    max_per_month: i32,
    /// Failed charges in a row; at 3 the auto top-up is disabled.
    consecutive_failures: i32,
    /// Why it was disabled by Tally (null when enabled, or disabled by a `PUT`).
    disabled_reason: Option<String>,
    last_attempt: Option<AutoTopupAttempt>,
    #[serde(serialize_with = "optional_time_json")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: Option<DateTime<Utc>>,
}

/// The body of `PUT /credits/auto_topup`, read.
pub(crate) struct AutoTopupBody {
    user_id: String,
    credit_type: CreditType,
    enabled: bool,
    threshold: i64,
    credits: i64,
    amount: i64,
    currency: String,
    customer: String,
    payment_method: String,
    max_per_month: i64,
}

/// A Stripe object id (`cus_…`, `pm_…`): 1 to [`STRIPE_ID_CHARS_MAX`] of `A-Z a-z 0-9 _`.
fn stripe_id(fields: &mut Fields, field: &str) -> Result<String, ApiError> {
    let text = fields
        .optional_string(field)?
        .ok_or_else(|| ApiError::field(field, "is required"))?;
    let valid = (1..=STRIPE_ID_CHARS_MAX).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(text)
    } else {
        Err(ApiError::field(
            field,
            format!("must be a Stripe id: 1 to {STRIPE_ID_CHARS_MAX} of A-Z, a-z, 0-9 and _"),
        ))
    }
}

impl AutoTopupBody {
    /// Reads the body (`400` naming the field otherwise).
    pub(crate) fn read(object: Map<String, Value>) -> Result<Self, ApiError> {
        let mut fields = Fields::new(
            object,
            &[
                "user_id",
                "credit_type",
                "enabled",
                "threshold",
                "credits",
                "amount",
                "currency",
                "stripe_customer_id",
                "stripe_payment_method_id",
                "max_per_month",
            ],
        )?;
        let user_id = fields.user_id("user_id")?;
        let credit_type = fields.credit_type()?;
        let enabled = fields
            .optional_bool("enabled")?
            .ok_or_else(|| ApiError::field("enabled", "is required"))?;
        let threshold = fields.amount("threshold")?;
        let credits = fields.amount("credits")?;
        let amount = fields.amount("amount")?;
        let currency = fields
            .optional_string("currency")?
            .ok_or_else(|| ApiError::field("currency", "is required"))?;
        if currency.len() != CURRENCY_CHARS || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ApiError::field(
                "currency",
                "must be a three-letter ISO 4217 code in lowercase (usd)",
            ));
        }
        let customer = stripe_id(&mut fields, "stripe_customer_id")?;
        let payment_method = stripe_id(&mut fields, "stripe_payment_method_id")?;
        let max_per_month = fields
            .optional_integer("max_per_month", 1, TOPUPS_PER_MONTH_MAX)?
            .unwrap_or(TOPUPS_PER_MONTH_DEFAULT);
        fields.finish()?;
        Ok(Self {
            user_id,
            credit_type,
            enabled,
            threshold,
            credits,
            amount,
            currency,
            customer,
            payment_method,
            max_per_month,
        })
    }
}

#[utoipa::path(put, path = "/credits/auto_topup", request_body = AutoTopupRequest,
    responses((status = 200, body = AutoTopup), (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn put_auto_topup(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<AutoTopup>, ApiError> {
    let body = AutoTopupBody::read(validate::json_object(&headers, body).await?)?;
    let mut tx = state.pool.begin().await?;
    bump_event_config(&mut tx, auth.app_id).await?;
    sqlx::query(
        "INSERT INTO auto_topup_settings (app_id, user_id, credit_type, enabled, threshold, credits,
             amount, currency, stripe_customer_id, stripe_payment_method_id, max_per_month)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (app_id, user_id, credit_type) DO UPDATE
         SET enabled = EXCLUDED.enabled, threshold = EXCLUDED.threshold,
             credits = EXCLUDED.credits, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
             stripe_customer_id = EXCLUDED.stripe_customer_id,
             stripe_payment_method_id = EXCLUDED.stripe_payment_method_id,
             max_per_month = EXCLUDED.max_per_month,
             consecutive_failures = CASE WHEN EXCLUDED.enabled AND NOT auto_topup_settings.enabled
                                         THEN 0 ELSE auto_topup_settings.consecutive_failures END,
             disabled_reason = CASE WHEN EXCLUDED.enabled THEN NULL
                                    ELSE auto_topup_settings.disabled_reason END,
             updated_at = now()",
    )
    .bind(auth.app_id)
    .bind(&body.user_id)
    .bind(body.credit_type.as_str())
    .bind(body.enabled)
    .bind(body.threshold)
    .bind(body.credits)
    .bind(body.amount)
    .bind(&body.currency)
    .bind(&body.customer)
    .bind(&body.payment_method)
    .bind(body.max_per_month as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let settings = auto_topup(&state.pool, auth.app_id, &body.user_id, &body.credit_type)
        .await?
        .ok_or_else(|| ApiError::NotFound("the settings were deleted meanwhile".into()))?;
    Ok(Json(settings))
}

/// The `user_id` (required) and `credit_type` of a read or delete.
pub(crate) fn whose(query: &HashMap<String, String>) -> Result<(String, CreditType), ApiError> {
    Ok((
        validate::query_user_id(query)?,
        validate::query_credit_type(query)?,
    ))
}

#[utoipa::path(get, path = "/credits/auto_topup",
    params(("user_id" = String, Query),
           ("credit_type" = Option<String>, Query, description = "Which of the user's balances.")),
    responses((status = 200, body = AutoTopup), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn get_auto_topup(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<AutoTopup>, ApiError> {
    let (user_id, credit_type) = whose(&query)?;
    auto_topup(&state.pool, auth.app_id, &user_id, &credit_type)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "user {user_id} has no auto top-up of {credit_type}"
            ))
        })
}

type SettingsRow = (
    bool,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    i32,
    i32,
    Option<String>,
    DateTime<Utc>,
);

type AttemptRow = (
    Uuid,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A user's auto top-up of `credit_type` with its latest attempt, if it has one.
pub async fn auto_topup(
    pool: &PgPool,
    app_id: Uuid,
    user_id: &str,
    credit_type: &CreditType,
) -> Result<Option<AutoTopup>, ApiError> {
    let settings: Option<SettingsRow> = sqlx::query_as(
        "SELECT enabled, threshold, credits, amount, currency, stripe_customer_id,
                stripe_payment_method_id, max_per_month, consecutive_failures, disabled_reason,
                updated_at
         FROM auto_topup_settings WHERE app_id = $1 AND user_id = $2 AND credit_type = $3",
    )
    .bind(app_id)
    .bind(user_id)
    .bind(credit_type.as_str())
    .fetch_optional(pool)
    .await?;
    let Some(settings) = settings else {
        return Ok(None);
    };
    let attempt: Option<AttemptRow> = sqlx::query_as(
        "SELECT id, status, payment_intent_id, created_at, error_code, decline_code, error_message
         FROM auto_topup_attempts WHERE app_id = $1 AND user_id = $2 AND credit_type = $3
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(app_id)
    .bind(user_id)
    .bind(credit_type.as_str())
    .fetch_optional(pool)
    .await?;
    let last_attempt = attempt.map(
        |(id, status, payment_intent_id, created_at, code, decline_code, message)| {
            let failed = code.is_some() || decline_code.is_some() || message.is_some();
            AutoTopupAttempt {
                id,
                status,
                payment_intent_id,
                created_at,
                error: failed.then_some(AutoTopupError {
                    code,
                    decline_code,
                    message,
                }),
            }
        },
    );
    Ok(Some(AutoTopup {
        user_id: user_id.to_string(),
        credit_type: credit_type.as_str().to_string(),
        enabled: settings.0,
        threshold: settings.1,
        credits: settings.2,
        amount: settings.3,
        currency: settings.4,
        stripe_customer_id: settings.5,
        stripe_payment_method_id: settings.6,
        max_per_month: settings.7,
        consecutive_failures: settings.8,
        disabled_reason: settings.9,
        last_attempt,
        updated_at: Some(settings.10),
    }))
}

#[utoipa::path(delete, path = "/credits/auto_topup",
    params(("user_id" = String, Query),
           ("credit_type" = Option<String>, Query, description = "Which of the user's balances.")),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn delete_auto_topup(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let (user_id, credit_type) = whose(&query)?;
    let mut tx = state.pool.begin().await?;
    bump_event_config(&mut tx, auth.app_id).await?;
    let deleted = sqlx::query(
        "DELETE FROM auto_topup_settings WHERE app_id = $1 AND user_id = $2 AND credit_type = $3",
    )
    .bind(auth.app_id)
    .bind(&user_id)
    .bind(credit_type.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound(format!(
            "user {user_id} has no auto top-up of {credit_type}"
        )));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_subscription_product_takes_no_expiry() {
        let error = ProductBody::read(object(
            json!({ "credits": 5, "mode": "subscription", "expires_in_days": 3 }),
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(error.starts_with("expires_in_days:"), "{error}");
        assert!(ProductBody::read(object(json!({ "credits": 5, "mode": "monthly" }))).is_err());
        let pack = ProductBody::read(object(
            json!({ "credits": 5, "mode": "one_time", "expires_in_days": 30 }),
        ))
        .unwrap();
        assert_eq!(pack.expires_in_days, Some(30));
    }

    #[test]
    fn auto_topup_fields_are_checked_by_name() {
        let good = json!({ "user_id": "u", "enabled": true, "threshold": 100, "credits": 500,
            "amount": 999, "currency": "usd", "stripe_customer_id": "cus_1",
            "stripe_payment_method_id": "pm_1" });
        let read = AutoTopupBody::read(object(good.clone())).unwrap();
        assert_eq!(read.max_per_month, TOPUPS_PER_MONTH_DEFAULT);
        for (field, bad) in [
            ("currency", json!("USD")),
            ("stripe_customer_id", json!("cus 1")),
            ("max_per_month", json!(0)),
            ("enabled", json!("yes")),
            ("threshold", json!(0)),
        ] {
            let mut body = good.clone();
            body[field] = bad;
            let error = AutoTopupBody::read(object(body)).err().unwrap().to_string();
            assert!(error.starts_with(&format!("{field}:")), "{error}");
        }
    }
}
