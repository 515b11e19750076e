//! The catalogue's part of the payment webhooks: a paid Stripe invoice credits each line whose
//! price is a subscription product (`credits × quantity`, expiring at the line's period end,
//! once per invoice and line), and a paid Polar order for a catalogue product credits what the
//! product buys. The ingress reads the catalogue when the event arrives ([`catalogue`]) and
//! publishes what these functions decide.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_common::credit_type::CreditType;
use tally_common::limits::AMOUNT_MAX;
use tally_common::plans::ProductMode;
use tally_common::webhook::{CreditLine, Provider, WebhookAction};
use uuid::Uuid;

use super::events::{
    credit_from_metadata, id_of, reject, tally_fields, text, unix_time, user_id_value,
};
use crate::error::ApiError;
use crate::AppState;

/// A paid Stripe invoice, whose lines the catalogue prices.
#[derive(Debug, PartialEq)]
pub struct InvoiceRequest {
    pub invoice_id: String,
    /// `tally_user_id` of the subscription's metadata, else of the invoice's; `Err`: unusable.
    pub user_id: Option<Result<String, String>>,
    pub lines: Vec<InvoiceLine>,
    pub amount_paid: Option<i64>,
    /// The invoice's payment intent, which a refund of it names.
    pub payment_intent: Option<String>,
}

/// One line of an invoice.
#[derive(Debug, PartialEq)]
pub struct InvoiceLine {
    pub line_id: String,
    pub price_id: String,
    pub quantity: i64,
    pub period_end: Option<DateTime<Utc>>,
}

/// A paid Polar order for a product, which the catalogue may price.
#[derive(Debug, PartialEq)]
pub struct OrderRequest {
    pub order_id: String,
    pub product_id: String,
    pub amount: Option<i64>,
    /// The order's `metadata` (its Tally fields win over the product's).
    pub metadata: Option<Value>,
    /// The customer's `external_id`: the user when the metadata names none.
    pub external_id: Option<String>,
    /// A subscription order (`billing_reason` `subscription_*`) and its period's end.
    pub subscription: bool,
    pub period_end: Option<DateTime<Utc>>,
}

/// What a catalogue product buys.
#[derive(Clone, Debug, PartialEq)]
pub struct CatalogueProduct {
    pub credits: i64,
    pub credit_type: CreditType,
    pub mode: ProductMode,
    pub expires_in_days: Option<i64>,
}

/// Reads a paid invoice: its user, lines and payment.
pub(super) fn invoice(object: &Value) -> Option<InvoiceRequest> {
    let invoice_id = text(object, "id")?.to_string();
    // The subscription's metadata as the invoice carries it: `parent.subscription_details`
    // (API versions from 2025-03-31), `subscription_details` before; else the invoice's own.
    let metadata_user = |metadata: Option<&Value>| {
        metadata
            .and_then(|metadata| metadata.get("tally_user_id"))
            .filter(|value| !value.is_null())
            .map(|value| user_id_value(value, "tally_user_id"))
    };
    let user_id = metadata_user(
        object
            .pointer("/parent/subscription_details/metadata")
            .or_else(|| object.pointer("/subscription_details/metadata")),
    )
    .or_else(|| metadata_user(object.get("metadata")));
    let lines = object
        .pointer("/lines/data")
        .and_then(Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .filter_map(|line| {
                    let price_id = line
                        .pointer("/pricing/price_details/price")
                        .and_then(|price| id_of(Some(price)))
                        .or_else(|| id_of(line.get("price")))
                        .or_else(|| id_of(line.get("plan")))?;
                    Some(InvoiceLine {
                        line_id: text(line, "id")?.to_string(),
                        price_id: price_id.to_string(),
                        quantity: line.get("quantity").and_then(Value::as_i64).unwrap_or(1),
                        period_end: unix_time(line.pointer("/period/end")),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let payment_intent = id_of(object.get("payment_intent"))
        .or_else(|| {
            object
                .pointer("/payments/data")
                .and_then(Value::as_array)
                .and_then(|payments| {
                    payments
                        .iter()
                        .find_map(|payment| id_of(payment.pointer("/payment/payment_intent")))
                })
        })
        .map(str::to_string);
    Some(InvoiceRequest {
        invoice_id,
        user_id,
        lines,
        amount_paid: object.get("amount_paid").and_then(Value::as_i64),
        payment_intent,
    })
}

/// What a paid invoice credits, given the catalogue's products among its lines' prices.
pub fn resolve_invoice(
    request: InvoiceRequest,
    catalogue: &std::collections::HashMap<String, CatalogueProduct>,
) -> WebhookAction {
    let priced: Vec<(&InvoiceLine, &CatalogueProduct)> = request
        .lines
        .iter()
        .filter_map(|line| {
            catalogue
                .get(&line.price_id)
                .filter(|product| product.mode == ProductMode::Subscription)
                .map(|product| (line, product))
        })
        .collect();
    if priced.is_empty() {
        return WebhookAction::Ignore {
            reason: "no line of the invoice is a subscription product of the catalogue".into(),
        };
    }
    let user_id = match request.user_id {
        Some(Ok(user_id)) => user_id,
        Some(Err(reason)) => return reject(reason, None),
        None => {
            return reject(
                "the invoice's subscription metadata has no tally_user_id",
                None,
            )
        }
    };
    let mut lines = Vec::with_capacity(priced.len());
    for (line, product) in priced {
        let credits = product
            .credits
            .checked_mul(line.quantity)
            .filter(|credits| (1..=AMOUNT_MAX).contains(credits));
        let Some(credits) = credits else {
            return reject(
                format!(
                    "line {} credits {} × quantity {}, outside 1 to {AMOUNT_MAX}",
                    line.line_id, product.credits, line.quantity
                ),
                Some(user_id),
            );
        };
        lines.push(CreditLine {
            // Line ids of older API versions (`sli_…`) repeat on every invoice of a
            // subscription: the invoice's id makes them one payment each.
            payment_ref: format!("{}/{}", request.invoice_id, line.line_id),
            credits,
            amount_minor: request.amount_paid,
            credit_type: product.credit_type.clone(),
            expires_at: line.period_end,
            refund_ref: request.payment_intent.clone(),
        });
    }
    WebhookAction::CreditLines { user_id, lines }
}

/// What a paid Polar order credits, given its product in the catalogue (if there).
pub fn resolve_order(request: OrderRequest, product: Option<&CatalogueProduct>) -> WebhookAction {
    let Some(product) = product else {
        return match credit_from_metadata(request.metadata.as_ref(), &request.order_id, request.amount)
        {
            Some(action) => action,
            None => WebhookAction::Ignore {
                reason: format!(
                    "product {} is not in the catalogue and the order has no tally_user_id / tally_credits",
                    request.product_id
                ),
            },
        };
    };
    let read = match tally_fields(request.metadata.as_ref()) {
        Ok(read) => read,
        Err(unusable) => return unusable.rejection(),
    };
    let user_id =
        match (read.user_id, request.external_id) {
            (Some(user_id), _) => user_id,
            (None, Some(external_id)) => {
                match user_id_value(&Value::String(external_id), "customer.external_id") {
                    Ok(user_id) => user_id,
                    Err(reason) => return reject(reason, None),
                }
            }
            (None, None) => return reject(
                "the order names no user: set metadata tally_user_id or the customer's external_id",
                None,
            ),
        };
    let (expires_in_days, expires_at) = if request.subscription {
        (None, request.period_end)
    } else {
        (read.expires_in_days.or(product.expires_in_days), None)
    };
    WebhookAction::Credit {
        payment_ref: request.order_id,
        user_id,
        credits: read.credits.unwrap_or(product.credits),
        amount_minor: request.amount,
        expires_in_days,
        credit_type: read
            .credit_type
            .unwrap_or_else(|| product.credit_type.clone()),
        expires_at,
        auto_topup: None,
    }
}

/// The catalogue's products among `ids` of the app and provider.
pub(super) async fn catalogue(
    state: &AppState,
    app_id: Uuid,
    provider: Provider,
    ids: &[String],
) -> Result<HashMap<String, CatalogueProduct>, ApiError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, i64, String, String, Option<i32>)> = sqlx::query_as(
        "SELECT product_id, credits, credit_type, mode, expires_in_days FROM products
         WHERE app_id = $1 AND provider = $2 AND product_id = ANY($3)",
    )
    .bind(app_id)
    .bind(provider.as_str())
    .bind(ids)
    .fetch_all(&state.pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, credits, credit_type, mode, days)| {
            Some((
                id,
                CatalogueProduct {
                    credits,
                    credit_type: CreditType::parse(&credit_type).ok()?,
                    mode: ProductMode::parse(&mode)?,
                    expires_in_days: days.map(i64::from),
                },
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webhooks::events::{polar, stripe, Parsed};

    fn invoice_event(user: Value, lines: Value) -> Value {
        json!({ "id": "evt_inv", "type": "invoice.paid", "data": { "object": {
            "id": "in_1", "amount_paid": 2900, "payment_intent": "pi_9",
            "parent": { "subscription_details": { "metadata": user } },
            "lines": { "data": lines } } } })
    }

    fn catalogue(mode: ProductMode) -> std::collections::HashMap<String, CatalogueProduct> {
        std::collections::HashMap::from([(
            "price_pro".to_string(),
            CatalogueProduct {
                credits: 1000,
                credit_type: CreditType::parse("chat").unwrap(),
                mode,
                expires_in_days: None,
            },
        )])
    }

    fn invoice_request(event: &Value) -> InvoiceRequest {
        match stripe(event).unwrap().2 {
            Parsed::Invoice(request) => request,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_invoice_credits_each_subscription_line_once_per_invoice() {
        let event = invoice_event(
            json!({ "tally_user_id": "u1" }),
            json!([
                { "id": "sli_1", "quantity": 3, "period": { "end": 1798761600 },
                  "pricing": { "price_details": { "price": "price_pro" } } },
                { "id": "il_2", "price": { "id": "price_other" } }
            ]),
        );
        let action = resolve_invoice(
            invoice_request(&event),
            &catalogue(ProductMode::Subscription),
        );
        let WebhookAction::CreditLines { user_id, lines } = action else {
            panic!("{action:?}")
        };
        assert_eq!(user_id, "u1");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].payment_ref, "in_1/sli_1");
        assert_eq!(lines[0].credits, 3000);
        assert_eq!(lines[0].amount_minor, Some(2900));
        assert_eq!(lines[0].refund_ref.as_deref(), Some("pi_9"));
        assert_eq!(lines[0].credit_type.as_str(), "chat");
        assert_eq!(lines[0].expires_at.unwrap().timestamp(), 1798761600);
        // A one-time product's line is not a subscription's allowance.
        let action = resolve_invoice(invoice_request(&event), &catalogue(ProductMode::OneTime));
        assert!(matches!(action, WebhookAction::Ignore { .. }), "{action:?}");
    }

    #[test]
    fn an_invoice_without_a_user_or_with_too_many_credits_is_rejected() {
        let line = json!([{ "id": "il_1", "quantity": 1, "price": "price_pro" }]);
        let action = resolve_invoice(
            invoice_request(&invoice_event(json!({}), line)),
            &catalogue(ProductMode::Subscription),
        );
        assert!(matches!(action, WebhookAction::Reject { .. }), "{action:?}");
        let huge = json!([{ "id": "il_1", "quantity": 2_000_000_000_i64, "price": "price_pro" }]);
        let action = resolve_invoice(
            invoice_request(&invoice_event(json!({ "tally_user_id": "u1" }), huge)),
            &catalogue(ProductMode::Subscription),
        );
        assert!(
            matches!(
                action,
                WebhookAction::Reject {
                    user_id: Some(_),
                    ..
                }
            ),
            "{action:?}"
        );
    }

    #[test]
    fn a_polar_order_credits_the_metadata_user_or_the_customer() {
        let order = |metadata: Value, reason: &str| {
            json!({ "type": "order.paid", "data": { "id": "ord_1", "product_id": "prod_1",
                "billing_reason": reason, "total_amount": 900, "metadata": metadata,
                "customer": { "external_id": "customer_user" },
                "subscription": { "current_period_end": "2027-01-01T00:00:00Z" } } })
        };
        let product = CatalogueProduct {
            credits: 50,
            credit_type: CreditType::default(),
            mode: ProductMode::OneTime,
            expires_in_days: Some(30),
        };
        let resolve = |event: Value| match polar(&event).unwrap().1 {
            Parsed::Order(request) => resolve_order(request, Some(&product)),
            other => panic!("{other:?}"),
        };
        let WebhookAction::Credit {
            user_id,
            credits,
            expires_in_days,
            expires_at,
            ..
        } = resolve(order(json!({}), "purchase"))
        else {
            panic!("a credit")
        };
        assert_eq!(
            (user_id.as_str(), credits, expires_in_days, expires_at),
            ("customer_user", 50, Some(30), None)
        );
        let WebhookAction::Credit {
            user_id,
            credits,
            expires_in_days,
            expires_at,
            ..
        } = resolve(order(
            json!({ "tally_user_id": "u7", "tally_credits": "70" }),
            "subscription_cycle",
        ))
        else {
            panic!("a credit")
        };
        assert_eq!(
            (user_id.as_str(), credits, expires_in_days),
            ("u7", 70, None)
        );
        assert_eq!(
            expires_at.unwrap().to_rfc3339(),
            "2027-01-01T00:00:00+00:00"
        );
        assert!(matches!(
            resolve(order(json!({ "tally_credits": "zero" }), "purchase")),
            WebhookAction::Reject { .. }
        ));
    }
}
