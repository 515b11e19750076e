//! `/credits/alerts`: the balance thresholds below which `balance.low` fires, per credit type —
//! the app's default (stored under user `''`, which no API user id can be) and each user's own
//! list, which replaces the default for that user (an empty one: no alerts for that user).
//! Every change bumps the app's event configuration version, so that workers reload it.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tally_common::credit_type::CreditType;
use tally_common::limits::ALERT_THRESHOLDS_MAX;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::responses::ErrorResponse;
use crate::routes::endpoints::bump_event_config;
use crate::validate::{self, Fields};
use crate::AppState;

/// The `user_id` under which an app's default list is stored.
const APP_DEFAULT: &str = "";
/// Most credit types [`effective`] lists (an app has a handful; the dashboard shows them all).
const CREDIT_TYPES_LISTED_MAX: i64 = 200;

/// Body of `PUT /credits/alerts`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AlertsRequest {
    /// Whose list: absent for the app's default.
    user_id: Option<String>,
    /// The balance the thresholds watch.
    credit_type: Option<String>,
    /// `balance.low` fires when `available` falls below one of them.
    thresholds: Vec<i64>,
}

/// A list of thresholds as set.
#[derive(Serialize, ToSchema)]
pub struct Alerts {
    /// Null for the app's default.
    pub user_id: Option<String>,
    pub credit_type: String,
    /// Highest first, each once.
    pub thresholds: Vec<i64>,
}

/// The thresholds that apply to a user (or, without a user, the app's default).
#[derive(Serialize, ToSchema)]
pub struct EffectiveAlerts {
    pub user_id: Option<String>,
    pub credit_type: String,
    pub thresholds: Vec<i64>,
    /// `user` (the user's own list), `app` (the app's default) or `none`.
    pub source: String,
}

/// The thresholds of a request: at most [`ALERT_THRESHOLDS_MAX`] amounts, highest first, each
/// once.
pub fn thresholds(items: Vec<Value>) -> Result<Vec<i64>, ApiError> {
    if items.len() > ALERT_THRESHOLDS_MAX {
        return Err(ApiError::field(
            "thresholds",
            format!("must have at most {ALERT_THRESHOLDS_MAX} values"),
        ));
    }
    let mut thresholds = items
        .iter()
        .map(|item| validate::parse_amount("thresholds", item))
        .collect::<Result<Vec<i64>, ApiError>>()?;
    thresholds.sort_unstable_by(|a, b| b.cmp(a));
    thresholds.dedup();
    Ok(thresholds)
}

/// The `user_id` and `credit_type` query parameters of a read or delete.
pub(crate) fn whose(
    query: &HashMap<String, String>,
) -> Result<(Option<String>, CreditType), ApiError> {
    let user_id = query
        .get("user_id")
        .map(|user_id| validate::check_user_id("user_id", user_id.clone()))
        .transpose()?;
    Ok((user_id, validate::query_credit_type(query)?))
}

/// The body of `PUT /credits/alerts`, read.
pub(crate) struct AlertsBody {
    user_id: Option<String>,
    credit_type: CreditType,
    thresholds: Vec<i64>,
}

impl AlertsBody {
    /// Reads the body (`400` naming the field otherwise).
    pub(crate) fn read(object: Map<String, Value>) -> Result<Self, ApiError> {
        let mut fields = Fields::new(object, &["user_id", "credit_type", "thresholds"])?;
        let user_id = fields.optional_user_id("user_id")?;
        let credit_type = fields.credit_type()?;
        let thresholds = match fields.optional_array("thresholds")? {
            Some(items) => thresholds(items)?,
            None => return Err(ApiError::field("thresholds", "is required")),
        };
        fields.finish()?;
        Ok(Self {
            user_id,
            credit_type,
            thresholds,
        })
    }
}

#[utoipa::path(put, path = "/credits/alerts", request_body = AlertsRequest,
    responses((status = 200, body = Alerts), (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn put_alerts(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Alerts>, ApiError> {
    let AlertsBody {
        user_id,
        credit_type,
        thresholds,
    } = AlertsBody::read(validate::json_object(&headers, body).await?)?;
    let alerts = set(&state.pool, auth.app_id, user_id, credit_type, thresholds).await?;
    Ok(Json(alerts))
}

/// Sets the app's default list of `credit_type` (without `user_id`) or that user's own.
pub async fn set(
    pool: &PgPool,
    app_id: Uuid,
    user_id: Option<String>,
    credit_type: CreditType,
    thresholds: Vec<i64>,
) -> Result<Alerts, ApiError> {
    let mut tx = pool.begin().await?;
    bump_event_config(&mut tx, app_id).await?;
    sqlx::query(
        "INSERT INTO balance_alerts (app_id, user_id, credit_type, thresholds) VALUES ($1, $2, $3, $4)
         ON CONFLICT (app_id, user_id, credit_type)
         DO UPDATE SET thresholds = EXCLUDED.thresholds, updated_at = now()",
    )
    .bind(app_id)
    .bind(user_id.as_deref().unwrap_or(APP_DEFAULT))
    .bind(credit_type.as_str())
    .bind(&thresholds)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Alerts {
        user_id,
        credit_type: credit_type.as_str().to_string(),
        thresholds,
    })
}

#[utoipa::path(get, path = "/credits/alerts",
    params(("user_id" = Option<String>, Query, description = "Whose thresholds (absent: the app's default)."),
           ("credit_type" = Option<String>, Query, description = "Which of the user's balances.")),
    responses((status = 200, body = EffectiveAlerts), (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn get_alerts(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<EffectiveAlerts>, ApiError> {
    let (user_id, credit_type) = whose(&query)?;
    let found = effective(
        &state.pool,
        auth.app_id,
        user_id.as_deref(),
        Some(&credit_type),
    )
    .await?
    .pop();
    Ok(Json(found.unwrap_or_else(|| EffectiveAlerts {
        user_id,
        credit_type: credit_type.as_str().to_string(),
        thresholds: Vec::new(),
        source: "none".to_string(),
    })))
}

/// The lists that apply to `user_id` (or, without one, the app's defaults), one per credit
/// type that has one (only `credit_type`'s, when given), by credit type: the user's own list
/// where there is one, else the app's default.
pub async fn effective(
    pool: &PgPool,
    app_id: Uuid,
    user_id: Option<&str>,
    credit_type: Option<&CreditType>,
) -> Result<Vec<EffectiveAlerts>, ApiError> {
    // Per credit type the user's own list first ('' sorts before every user id).
    let rows: Vec<(String, String, Vec<i64>)> = sqlx::query_as(
        "SELECT DISTINCT ON (credit_type) credit_type, user_id, thresholds FROM balance_alerts
         WHERE app_id = $1 AND user_id IN ($2, $3) AND ($4::text IS NULL OR credit_type = $4)
         ORDER BY credit_type, user_id DESC LIMIT $5",
    )
    .bind(app_id)
    .bind(APP_DEFAULT)
    .bind(user_id.unwrap_or(APP_DEFAULT))
    .bind(credit_type.map(CreditType::as_str))
    .bind(CREDIT_TYPES_LISTED_MAX)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(credit_type, owner, thresholds)| EffectiveAlerts {
            user_id: user_id.map(str::to_string),
            credit_type,
            thresholds,
            source: if owner == APP_DEFAULT { "app" } else { "user" }.to_string(),
        })
        .collect())
}

#[utoipa::path(delete, path = "/credits/alerts",
    params(("user_id" = Option<String>, Query, description = "Whose own list to drop (absent: the app's default)."),
           ("credit_type" = Option<String>, Query, description = "Which of the user's balances.")),
    responses((status = 204, description = "dropped (or there was none)"), (status = 400, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn delete_alerts(
    State(state): State<AppState>,
    auth: Auth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let (user_id, credit_type) = whose(&query)?;
    drop_list(&state.pool, auth.app_id, user_id.as_deref(), &credit_type).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Drops the user's own list of `credit_type` (without `user_id`, the app's default), if any.
pub async fn drop_list(
    pool: &PgPool,
    app_id: Uuid,
    user_id: Option<&str>,
    credit_type: &CreditType,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query(
        "DELETE FROM balance_alerts WHERE app_id = $1 AND user_id = $2 AND credit_type = $3",
    )
    .bind(app_id)
    .bind(user_id.unwrap_or(APP_DEFAULT))
    .bind(credit_type.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if deleted > 0 {
        bump_event_config(&mut tx, app_id).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds_are_stored_highest_first_and_once() {
        let items = vec![json!(100), json!(1000), json!(100), json!(5)];
        assert_eq!(thresholds(items).unwrap(), [1000, 100, 5]);
        assert_eq!(thresholds(Vec::new()).unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn thresholds_refuse_too_many_values_and_values_out_of_range() {
        for refused in [
            (1..=11).map(Value::from).collect::<Vec<_>>(),
            vec![json!(0)],
            vec![json!(1_000_000_000_001i64)],
            vec![json!("5")],
        ] {
            let error = thresholds(refused).unwrap_err().to_string();
            assert!(error.starts_with("thresholds:"), "{error}");
        }
    }
}
