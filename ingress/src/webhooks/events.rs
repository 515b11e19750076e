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

use serde_json::Value;
use tally_common::credit_type::CreditType;
use tally_common::limits::{AMOUNT_MAX, USER_ID_BYTES_MAX};
use tally_common::webhook::WebhookAction;

/// A clawback's payment, whose user the ingress looks up before publishing.
#[derive(Debug, PartialEq)]
pub struct ClawbackRequest {
    pub payment_ref: String,
    pub refunded_minor_total: Option<i64>,
    pub disputed_minor: Option<i64>,
    pub amount_minor: Option<i64>,
}

/// The ledger action of an event, or a clawback to resolve.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Action(WebhookAction),
    Clawback(ClawbackRequest),
}

fn ignore(reason: impl Into<String>) -> Parsed {
    Parsed::Action(WebhookAction::Ignore {
        reason: reason.into(),
    })
}

/// A string field; one holding a NUL character (which Postgres cannot store) counts as absent.
fn text<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get(field)
        .and_then(Value::as_str)
        .filter(|text| !text.contains('\0'))
}

/// Credits for `metadata`, or the reason it cannot be credited, or `None` when the payment
/// carries no Tally metadata at all (not meant for Tally).
fn credit_from_metadata(
    metadata: Option<&Value>,
    payment_ref: &str,
    amount_minor: Option<i64>,
) -> Option<WebhookAction> {
    let metadata = metadata.and_then(Value::as_object)?;
    let user = metadata.get("tally_user_id");
    let credits = metadata.get("tally_credits");
    if user.is_none() && credits.is_none() {
        return None;
    }
    let user_id = match user {
        Some(Value::String(user_id)) if user_id.contains('\0') => {
            return Some(reject(
                "tally_user_id must not contain the NUL character",
                None,
            ))
        }
        Some(Value::String(user_id))
            if !user_id.is_empty() && user_id.len() <= USER_ID_BYTES_MAX =>
        {
            user_id.clone()
        }
        Some(Value::String(_)) => {
            return Some(reject(
                format!("tally_user_id must be 1 to {USER_ID_BYTES_MAX} bytes"),
                None,
            ))
        }
        Some(_) => return Some(reject("tally_user_id must be a string", None)),
        None => {
            return Some(reject(
                "metadata has tally_credits but no tally_user_id",
                None,
            ))
        }
    };
    let credits = credits.and_then(integer);
    let expires_in_days = match metadata.get("tally_expires_in_days") {
        None | Some(Value::Null) => None,
        Some(value) => match integer(value) {
            Some(days) if (1..=EXPIRES_IN_DAYS_MAX).contains(&days) => Some(days),
            _ => {
                return Some(reject(
                    format!(
                        "tally_expires_in_days must be an integer from 1 to {EXPIRES_IN_DAYS_MAX}"
                    ),
                    Some(user_id),
                ))
            }
        },
    };
    let credit_type = match metadata.get("tally_credit_type") {
        None | Some(Value::Null) => CreditType::default(),
        Some(Value::String(text)) => match CreditType::parse(text) {
            Ok(credit_type) => credit_type,
            Err(invalid) => {
                return Some(reject(
                    format!("tally_credit_type {invalid}"),
                    Some(user_id),
                ))
            }
        },
        Some(_) => return Some(reject("tally_credit_type must be a string", Some(user_id))),
    };
    match credits {
        Some(credits) if (1..=AMOUNT_MAX).contains(&credits) => Some(WebhookAction::Credit {
            payment_ref: payment_ref.to_string(),
            user_id,
            credits,
            amount_minor,
            expires_in_days,
            credit_type,
        }),
        _ => Some(reject(
            format!("tally_credits must be an integer from 1 to {AMOUNT_MAX}"),
            Some(user_id),
        )),
    }
}

/// Longest lifetime of credits bought through a payment (`tally_expires_in_days`).
pub const EXPIRES_IN_DAYS_MAX: i64 = 3650;

/// A metadata integer: providers' metadata values are strings (Stripe) or JSON numbers (Polar).
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => text.trim().parse::<i64>().ok(),
        Value::Number(number) if number.is_i64() || number.is_u64() => number.as_i64(),
        _ => None,
    }
}

fn reject(reason: impl Into<String>, user_id: Option<String>) -> WebhookAction {
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
                credit_or_ignore(object, payment_intent, amount)
            }
            None => ignore("payment intent has no id"),
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
        "order.paid" => match text(object, "id") {
            Some(order_id) => credit_or_ignore(object, order_id, amount),
            None => ignore("order has no id"),
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
}
