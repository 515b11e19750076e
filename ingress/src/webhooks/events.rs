//! What a verified provider event asks of the ledger.
//!
//! Stripe: `payment_intent.succeeded`, `checkout.session.completed` (only when paid) and
//! `checkout.session.async_payment_succeeded` credit; `charge.refunded` and
//! `charge.dispute.created` claw back. Polar: `order.paid` credits; `order.refunded` claws back.
//! A payment is keyed by its payment intent (Stripe) or order id (Polar), so the two Stripe
//! events of one payment credit once.
//!
//! The credits come from the payment's `metadata`: `tally_user_id` and `tally_credits` (a
//! positive integer, as a string or a number).
//!
//! Plans: Stripe `invoice.paid` and a Polar `order.paid` naming a product need the catalogue,
//! so they are returned as requests for [`super::plans`] to price. `payment_intent.payment_failed`
//! of an auto top-up charge (metadata `tally_auto_topup_id`) fails its attempt.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_common::credit_type::CreditType;
use tally_common::limits::{AMOUNT_MAX, PLAN_EXPIRES_IN_DAYS_MAX, USER_ID_BYTES_MAX};
use tally_common::plans::{AutoTopupPayment, ChargeError};
use tally_common::webhook::WebhookAction;
use uuid::Uuid;

use super::plans::{invoice, InvoiceRequest, OrderRequest};

/// A clawback's payment, whose user the ingress looks up before publishing.
#[derive(Debug, PartialEq)]
pub struct ClawbackRequest {
    pub payment_ref: String,
    pub refunded_minor_total: Option<i64>,
    pub disputed_minor: Option<i64>,
    pub amount_minor: Option<i64>,
}

/// The ledger action of an event, or a clawback, invoice or order to resolve.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Action(WebhookAction),
    Clawback(ClawbackRequest),
    Invoice(InvoiceRequest),
    Order(OrderRequest),
}

fn ignore(reason: impl Into<String>) -> Parsed {
    Parsed::Action(WebhookAction::Ignore {
        reason: reason.into(),
    })
}

/// A string field; one holding a NUL character (which Postgres cannot store) counts as absent.
pub(super) fn text<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get(field)
        .and_then(Value::as_str)
        .filter(|text| !text.contains('\0'))
}

/// The Tally fields of a payment's metadata, each optional: a catalogue product's own values
/// give way to them.
#[derive(Debug, Default, PartialEq)]
pub(super) struct TallyFields {
    pub(super) user_id: Option<String>,
    pub(super) credits: Option<i64>,
    pub(super) expires_in_days: Option<i64>,
    pub(super) credit_type: Option<CreditType>,
}

/// A Tally field that is unusable: why, and the user when it was read already.
pub(super) struct Unusable {
    reason: String,
    user_id: Option<String>,
}

impl Unusable {
    /// The event's rejection.
    pub(super) fn rejection(self) -> WebhookAction {
        reject(self.reason, self.user_id)
    }
}

/// Reads the Tally fields of `metadata`, or the first that is unusable.
pub(super) fn tally_fields(metadata: Option<&Value>) -> Result<TallyFields, Unusable> {
    let mut read = TallyFields::default();
    let Some(metadata) = metadata.and_then(Value::as_object) else {
        return Ok(read);
    };
    if let Some(value) = metadata.get("tally_user_id") {
        let user_id = user_id_value(value, "tally_user_id").map_err(|reason| Unusable {
            reason,
            user_id: None,
        })?;
        read.user_id = Some(user_id);
    }
    let refused = |reason: String, read: &TallyFields| Unusable {
        reason,
        user_id: read.user_id.clone(),
    };
    let present = |field: &str| metadata.get(field).filter(|value| !value.is_null());
    if let Some(value) = present("tally_expires_in_days") {
        match integer(value) {
            Some(days) if (1..=EXPIRES_IN_DAYS_MAX).contains(&days) => {
                read.expires_in_days = Some(days)
            }
            _ => {
                return Err(refused(
                    format!(
                        "tally_expires_in_days must be an integer from 1 to {EXPIRES_IN_DAYS_MAX}"
                    ),
                    &read,
                ))
            }
        }
    }
    if let Some(value) = present("tally_credit_type") {
        match value.as_str().map(CreditType::parse) {
            Some(Ok(credit_type)) => read.credit_type = Some(credit_type),
            Some(Err(invalid)) => {
                return Err(refused(format!("tally_credit_type {invalid}"), &read))
            }
            None => return Err(refused("tally_credit_type must be a string".into(), &read)),
        }
    }
    if let Some(value) = present("tally_credits") {
        match integer(value) {
            Some(credits) if (1..=AMOUNT_MAX).contains(&credits) => read.credits = Some(credits),
            _ => {
                return Err(refused(
                    format!("tally_credits must be an integer from 1 to {AMOUNT_MAX}"),
                    &read,
                ))
            }
        }
    }
    Ok(read)
}

/// Credits for `metadata`, or the reason it cannot be credited, or `None` when the payment
/// carries no Tally metadata at all (not meant for Tally).
pub(super) fn credit_from_metadata(
    metadata: Option<&Value>,
    payment_ref: &str,
    amount_minor: Option<i64>,
) -> Option<WebhookAction> {
    let object = metadata.and_then(Value::as_object)?;
    let (user, credits) = (object.get("tally_user_id"), object.get("tally_credits"));
    match (user, credits) {
        (None, None) => return None,
        (None, Some(_)) => {
            return Some(reject(
                "metadata has tally_credits but no tally_user_id",
                None,
            ))
        }
        _ => {}
    }
    let read = match tally_fields(metadata) {
        Ok(read) => read,
        Err(unusable) => return Some(unusable.rejection()),
    };
    let user_id = read.user_id.expect("tally_user_id is present");
    Some(match read.credits {
        Some(credits) => WebhookAction::Credit {
            payment_ref: payment_ref.to_string(),
            user_id,
            credits,
            amount_minor,
            expires_in_days: read.expires_in_days,
            credit_type: read.credit_type.unwrap_or_default(),
            expires_at: None,
            auto_topup: None,
        },
        None => reject(
            format!("tally_credits must be an integer from 1 to {AMOUNT_MAX}"),
            Some(user_id),
        ),
    })
}

/// Longest lifetime of credits bought through a payment (`tally_expires_in_days`).
pub const EXPIRES_IN_DAYS_MAX: i64 = PLAN_EXPIRES_IN_DAYS_MAX;

/// A user id from a provider's data: 1 to 255 bytes without NUL, or why not.
pub(super) fn user_id_value(value: &Value, field: &str) -> Result<String, String> {
    match value {
        Value::String(user_id) if user_id.contains('\0') => {
            Err(format!("{field} must not contain the NUL character"))
        }
        Value::String(user_id) if !user_id.is_empty() && user_id.len() <= USER_ID_BYTES_MAX => {
            Ok(user_id.clone())
        }
        Value::String(_) => Err(format!("{field} must be 1 to {USER_ID_BYTES_MAX} bytes")),
        _ => Err(format!("{field} must be a string")),
    }
}

/// A Unix time in seconds as a time.
pub(super) fn unix_time(value: Option<&Value>) -> Option<DateTime<Utc>> {
    value
        .and_then(Value::as_i64)
        .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
}

/// An id given as a string or as an expanded object with an `id`.
pub(super) fn id_of(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(id) if !id.contains('\0') => Some(id),
        object @ Value::Object(_) => text(object, "id"),
        _ => None,
    }
}

/// The auto top-up attempt a payment intent's metadata names (`tally_auto_topup_id`).
fn auto_topup_id(object: &Value) -> Option<Uuid> {
    object
        .pointer("/metadata/tally_auto_topup_id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// A failed payment intent of an auto top-up: its attempt fails.
fn payment_failed(object: &Value) -> Parsed {
    let (Some(attempt_id), Some(payment_intent)) = (auto_topup_id(object), text(object, "id"))
    else {
        return ignore("not an auto top-up payment");
    };
    let user_id = match object.pointer("/metadata/tally_user_id") {
        Some(value) => match user_id_value(value, "tally_user_id") {
            Ok(user_id) => user_id,
            Err(reason) => return Parsed::Action(reject(reason, None)),
        },
        None => return Parsed::Action(reject("auto top-up payment has no tally_user_id", None)),
    };
    let credit_type = match object
        .pointer("/metadata/tally_credit_type")
        .and_then(Value::as_str)
    {
        None => CreditType::default(),
        Some(text) => match CreditType::parse(text) {
            Ok(credit_type) => credit_type,
            Err(invalid) => {
                return Parsed::Action(reject(
                    format!("tally_credit_type {invalid}"),
                    Some(user_id),
                ))
            }
        },
    };
    let error = object
        .get("last_payment_error")
        .filter(|error| error.is_object());
    let field = |name: &str| {
        error
            .and_then(|error| text(error, name))
            .map(str::to_string)
    };
    Parsed::Action(WebhookAction::AutoTopupFailed {
        user_id,
        credit_type,
        attempt_id,
        payment_intent_id: payment_intent.to_string(),
        error: ChargeError {
            code: field("code"),
            decline_code: field("decline_code"),
            message: field("message").unwrap_or_else(|| "the payment failed".to_string()),
        },
    })
}

/// A metadata integer: providers' metadata values are strings (Stripe) or JSON numbers (Polar).
pub(super) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => text.trim().parse::<i64>().ok(),
        Value::Number(number) if number.is_i64() || number.is_u64() => number.as_i64(),
        _ => None,
    }
}

pub(super) fn reject(reason: impl Into<String>, user_id: Option<String>) -> WebhookAction {
    WebhookAction::Reject {
        reason: reason.into(),
        user_id,
    }
}

fn credit_or_ignore(object: &Value, payment_ref: &str, amount_minor: Option<i64>) -> Parsed {
    match credit_from_metadata(object.get("metadata"), payment_ref, amount_minor) {
        Some(action) => Parsed::Action(action),
        None => ignore("no tally_user_id / tally_credits in metadata"),
    }
}

/// Reads a Stripe event: its id, type and what it asks. `None` when the body is not an event.
pub fn stripe(event: &Value) -> Option<(String, String, Parsed)> {
    let event_id = text(event, "id")?.to_string();
    let event_type = text(event, "type")?.to_string();
    let object = event.get("data").and_then(|data| data.get("object"))?;
    let parsed = match event_type.as_str() {
        "payment_intent.succeeded" => match text(object, "id") {
            Some(payment_intent) => {
                let amount = object
                    .get("amount_received")
                    .or_else(|| object.get("amount"))
                    .and_then(Value::as_i64);
                let mut parsed = credit_or_ignore(object, payment_intent, amount);
                if let Parsed::Action(WebhookAction::Credit { auto_topup, .. }) = &mut parsed {
                    *auto_topup = auto_topup_id(object).map(|attempt_id| AutoTopupPayment {
                        attempt_id,
                        currency: text(object, "currency").map(str::to_string),
                    });
                }
                parsed
            }
            None => ignore("payment intent has no id"),
        },
        "payment_intent.payment_failed" => payment_failed(object),
        "invoice.paid" => match invoice(object) {
            Some(request) => Parsed::Invoice(request),
            None => ignore("invoice has no id"),
        },
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            if text(object, "payment_status") != Some("paid") {
                ignore("checkout session is not paid yet")
            } else {
                // Keyed by the payment intent when there is one, so that the intent's own
                // event credits the same payment.
                let payment_ref = text(object, "payment_intent").or_else(|| text(object, "id"));
                match payment_ref {
                    Some(payment_ref) => {
                        let amount = object.get("amount_total").and_then(Value::as_i64);
                        credit_or_ignore(object, payment_ref, amount)
                    }
                    None => ignore("checkout session has no id"),
                }
            }
        }
        "charge.refunded" => match text(object, "payment_intent").or_else(|| text(object, "id")) {
            Some(payment_ref) => Parsed::Clawback(ClawbackRequest {
                payment_ref: payment_ref.to_string(),
                refunded_minor_total: object.get("amount_refunded").and_then(Value::as_i64),
                disputed_minor: None,
                amount_minor: object.get("amount").and_then(Value::as_i64),
            }),
            None => ignore("charge has no payment intent"),
        },
        "charge.dispute.created" => {
            match text(object, "payment_intent").or_else(|| text(object, "charge")) {
                Some(payment_ref) => Parsed::Clawback(ClawbackRequest {
                    payment_ref: payment_ref.to_string(),
                    refunded_minor_total: None,
                    // A dispute without an amount disputes everything.
                    disputed_minor: Some(
                        object
                            .get("amount")
                            .and_then(Value::as_i64)
                            .unwrap_or(i64::MAX),
                    ),
                    amount_minor: None,
                }),
                None => ignore("dispute has no payment intent"),
            }
        }
        other => ignore(format!("{other} is not an event Tally acts on")),
    };
    Some((event_id, event_type, parsed))
}

/// Reads a Polar event (its id is the `webhook-id` header). `None` when the body is not an
/// event.
pub fn polar(event: &Value) -> Option<(String, Parsed)> {
    let event_type = text(event, "type")?.to_string();
    let object = event.get("data")?;
    let amount = object
        .get("total_amount")
        .or_else(|| object.get("amount"))
        .and_then(Value::as_i64);
    let parsed = match event_type.as_str() {
        "order.paid" => match (text(object, "id"), text(object, "product_id")) {
            (Some(order_id), Some(product_id)) => {
                let subscription = text(object, "billing_reason")
                    .is_some_and(|reason| reason.starts_with("subscription_"));
                Parsed::Order(OrderRequest {
                    order_id: order_id.to_string(),
                    product_id: product_id.to_string(),
                    amount,
                    metadata: object.get("metadata").cloned(),
                    external_id: object
                        .pointer("/customer/external_id")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    subscription,
                    period_end: object
                        .pointer("/subscription/current_period_end")
                        .and_then(Value::as_str)
                        .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
                        .map(|time| time.with_timezone(&Utc)),
                })
            }
            (Some(order_id), None) => credit_or_ignore(object, order_id, amount),
            (None, _) => ignore("order has no id"),
        },
        "order.refunded" => match text(object, "id") {
            Some(order_id) => Parsed::Clawback(ClawbackRequest {
                payment_ref: order_id.to_string(),
                refunded_minor_total: Some(
                    object
                        .get("refunded_amount")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MAX),
                ),
                disputed_minor: None,
                amount_minor: amount,
            }),
            None => ignore("order has no id"),
        },
        other => ignore(format!("{other} is not an event Tally acts on")),
    };
    Some((event_type, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intent(metadata: Value) -> Value {
        json!({ "id": "evt_1", "type": "payment_intent.succeeded",
                "data": { "object": { "id": "pi_1", "amount": 1000, "amount_received": 1000, "metadata": metadata } } })
    }

    #[test]
    fn payment_intent_with_metadata_credits_the_user() {
        let (_, _, parsed) = stripe(&intent(
            json!({ "tally_user_id": "u1", "tally_credits": "500" }),
        ))
        .unwrap();
        assert_eq!(
            parsed,
            Parsed::Action(WebhookAction::Credit {
                payment_ref: "pi_1".into(),
                user_id: "u1".into(),
                credits: 500,
                amount_minor: Some(1000),
                expires_in_days: None,
                credit_type: CreditType::default(),
                expires_at: None,
                auto_topup: None,
            })
        );
    }

    #[test]
    fn a_nul_character_never_reaches_the_database() {
        let event = json!({ "id": "evt_1", "type": "payment_intent.succeeded",
            "data": { "object": { "id": "pi_1", "amount": 100,
                                  "metadata": { "tally_user_id": "u\u{0}", "tally_credits": "5" } } } });
        let (_, _, parsed) = stripe(&event).expect("an event");
        assert!(matches!(
            parsed,
            Parsed::Action(WebhookAction::Reject { user_id: None, .. })
        ));
        let event = json!({ "id": "evt_\u{0}", "type": "payment_intent.succeeded", "data": { "object": {} } });
        assert!(stripe(&event).is_none());
    }

    #[test]
    fn bad_metadata_is_rejected_with_a_reason() {
        for metadata in [
            json!({ "tally_user_id": "u1", "tally_credits": "abc" }),
            json!({ "tally_user_id": "u1", "tally_credits": "-5" }),
            json!({ "tally_user_id": "u1", "tally_credits": "0" }),
            json!({ "tally_credits": "5" }),
        ] {
            let (_, _, parsed) = stripe(&intent(metadata.clone())).unwrap();
            assert!(
                matches!(parsed, Parsed::Action(WebhookAction::Reject { .. })),
                "{metadata}"
            );
        }
        let (_, _, parsed) = stripe(&intent(json!({ "order": "1" }))).unwrap();
        assert!(matches!(
            parsed,
            Parsed::Action(WebhookAction::Ignore { .. })
        ));
    }

    #[test]
    fn unpaid_checkout_session_is_ignored_and_paid_one_is_keyed_by_its_intent() {
        let mut event = json!({ "id": "evt_2", "type": "checkout.session.completed",
            "data": { "object": { "id": "cs_1", "payment_intent": "pi_1", "payment_status": "unpaid", "amount_total": 1000,
                                  "metadata": { "tally_user_id": "u1", "tally_credits": "500" } } } });
        assert!(matches!(
            stripe(&event).unwrap().2,
            Parsed::Action(WebhookAction::Ignore { .. })
        ));
        event["data"]["object"]["payment_status"] = json!("paid");
        match stripe(&event).unwrap().2 {
            Parsed::Action(WebhookAction::Credit { payment_ref, .. }) => {
                assert_eq!(payment_ref, "pi_1")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn polar_order_paid_and_refunded() {
        let paid = json!({ "type": "order.paid", "data": { "id": "ord_1", "total_amount": 1000,
                           "metadata": { "tally_user_id": "u1", "tally_credits": 500 } } });
        assert!(matches!(
            polar(&paid).unwrap().1,
            Parsed::Action(WebhookAction::Credit { credits: 500, .. })
        ));
        let refunded = json!({ "type": "order.refunded", "data": { "id": "ord_1", "total_amount": 1000, "refunded_amount": 400 } });
        assert_eq!(
            polar(&refunded).unwrap().1,
            Parsed::Clawback(ClawbackRequest {
                payment_ref: "ord_1".into(),
                refunded_minor_total: Some(400),
                disputed_minor: None,
                amount_minor: Some(1000)
            })
        );
    }

    #[test]
    fn a_failed_auto_topup_payment_names_its_attempt_and_stripes_error() {
        let attempt = uuid::Uuid::now_v7();
        let event = json!({ "id": "evt_f", "type": "payment_intent.payment_failed",
            "data": { "object": { "id": "pi_5", "metadata": {
                "tally_user_id": "u1", "tally_credits": "500", "tally_auto_topup_id": attempt.to_string() },
                "last_payment_error": { "code": "card_declined", "decline_code": "insufficient_funds",
                                        "message": "Your card has insufficient funds." } } } });
        let Parsed::Action(WebhookAction::AutoTopupFailed {
            attempt_id,
            payment_intent_id,
            error,
            ..
        }) = stripe(&event).unwrap().2
        else {
            panic!("a failed attempt")
        };
        assert_eq!(attempt_id, attempt);
        assert_eq!(payment_intent_id, "pi_5");
        assert_eq!(error.decline_code.as_deref(), Some("insufficient_funds"));
        // Not an auto top-up's payment: nothing to do.
        let mut plain = event.clone();
        plain["data"]["object"]["metadata"] = json!({});
        assert!(matches!(
            stripe(&plain).unwrap().2,
            Parsed::Action(WebhookAction::Ignore { .. })
        ));
    }
}
