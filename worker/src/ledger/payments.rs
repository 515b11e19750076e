//! Payments in the fold: a provider's event credits a payment once (per payment intent,
//! order, or invoice line), claws back the refunded or disputed share of one, or settles an auto
//! top-up attempt; every event is recorded for the audit log.

use chrono::{DateTime, Utc};
use serde_json::json;
use tally_common::command::{Outcome, Status};
use tally_common::webhook::{CreditLine, WebhookAction, WebhookEvent};
use uuid::Uuid;

use super::{AccountKey, Draft, EntryType, Payment, Step, WebhookRecord};

/// One payment to credit once.
struct PaymentCredit<'a> {
    payment_ref: &'a str,
    credits: i64,
    amount_minor: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    refund_ref: Option<String>,
}

/// What a refund or dispute reports of a payment.
struct Reversal {
    refunded_minor_total: Option<i64>,
    disputed_minor: Option<i64>,
    amount_minor: Option<i64>,
}

impl Step<'_> {
    pub(super) fn webhook(&mut self, event: &WebhookEvent) -> Outcome {
        let (outcome, reason, user_id, ledger_id) = match &event.action {
            WebhookAction::Credit {
                payment_ref,
                user_id,
                credits,
                amount_minor,
                expires_in_days,
                credit_type,
                expires_at,
                auto_topup,
            } => {
                let key = self.key(user_id, credit_type);
                let expires_at = expires_at.or_else(|| {
                    expires_in_days.map(|days| self.accepted_at + chrono::Duration::days(days))
                });
                let credited = self.credit_payment(
                    event,
                    &PaymentCredit {
                        payment_ref,
                        credits: *credits,
                        amount_minor: *amount_minor,
                        expires_at,
                        refund_ref: None,
                    },
                    &key,
                );
                if let (Some(payment), ("credited", _, _, Some(ledger_id))) =
                    (auto_topup, &credited)
                {
                    self.auto_topup_paid(payment, payment_ref, *credits, *amount_minor, *ledger_id);
                }
                credited
            }
            WebhookAction::CreditLines { user_id, lines } => {
                self.credit_lines(event, user_id, lines)
            }
            WebhookAction::Clawback {
                payment_ref,
                user_id,
                refunded_minor_total,
                disputed_minor,
                amount_minor,
                also,
            } => {
                let reversal = Reversal {
                    refunded_minor_total: *refunded_minor_total,
                    disputed_minor: *disputed_minor,
                    amount_minor: *amount_minor,
                };
                let mut first = self.claw_back(event, payment_ref, user_id, &reversal);
                for other in also {
                    let next = self.claw_back(event, other, user_id, &reversal);
                    if first.0 != "clawed_back" && next.0 == "clawed_back" {
                        first = next;
                    }
                }
                first
            }
            WebhookAction::AutoTopupFailed {
                user_id,
                attempt_id,
                payment_intent_id,
                error,
                ..
            } => {
                let failed = self.fail_attempt(*attempt_id, Some(payment_intent_id), error);
                let reason = if failed {
                    format!("auto top-up attempt {attempt_id} failed")
                } else {
                    format!("auto top-up attempt {attempt_id} was settled already")
                };
                ("ignored", Some(reason), Some(user_id.clone()), None)
            }
            WebhookAction::Ignore { reason } => ("ignored", Some(reason.clone()), None, None),
            WebhookAction::Reject { reason, user_id } => {
                ("rejected", Some(reason.clone()), user_id.clone(), None)
            }
        };
        self.effects.webhooks.push(WebhookRecord {
            app_id: self.app_id,
            provider: event.provider,
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            outcome,
            reason: reason.clone(),
            user_id: user_id.clone(),
            ledger_id,
            received_at: self.accepted_at,
        });
        let status = if outcome == "rejected" {
            Status::Rejected
        } else {
            Status::Applied
        };
        Outcome {
            command_id: self.id(),
            status,
            http_status: 200,
            body: json!({ "received": true, "outcome": outcome, "reason": reason,
                          "user_id": user_id, "ledger_id": ledger_id }),
        }
    }

    /// Credits each line of a paid invoice once; the event is `credited` if any line was.
    fn credit_lines(
        &mut self,
        event: &WebhookEvent,
        user_id: &str,
        lines: &[CreditLine],
    ) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
        let mut answer = ("duplicate", None, Some(user_id.to_string()), None);
        for line in lines {
            let key = self.key(user_id, &line.credit_type);
            let credited = self.credit_payment(
                event,
                &PaymentCredit {
                    payment_ref: &line.payment_ref,
                    credits: line.credits,
                    amount_minor: line.amount_minor,
                    expires_at: line.expires_at,
                    refund_ref: line.refund_ref.clone(),
                },
                &key,
            );
            match credited.0 {
                "credited" if answer.0 != "credited" => answer = credited,
                "rejected" if answer.0 == "duplicate" => answer = credited,
                _ => {}
            }
        }
        answer
    }

    fn credit_payment(
        &mut self,
        event: &WebhookEvent,
        credit: &PaymentCredit<'_>,
        key: &AccountKey,
    ) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
        let PaymentCredit {
            payment_ref,
            credits,
            amount_minor,
            expires_at,
            ..
        } = *credit;
        let payment_key = (self.app_id, event.provider, payment_ref.to_string());
        if let Some(payment) = self.state.payments.get(&payment_key) {
            return (
                "duplicate",
                None,
                Some(payment.user_id.clone()),
                Some(payment.ledger_id),
            );
        }
        let user_id = &key.1;
        let account = self.account(key);
        if account.balance.checked_add(credits).is_none() {
            return (
                "rejected",
                Some(format!(
                    "crediting {credits} would pass the largest balance"
                )),
                Some(user_id.clone()),
                None,
            );
        }
        let mut draft = Draft::new(EntryType::Payment, credits, event.provider.as_str());
        draft.description = Some(format!("{} payment {payment_ref}", event.provider.as_str()));
        draft.metadata = json!({ "provider": event.provider.as_str(), "payment_ref": payment_ref,
                                 "event_id": event.event_id });
        let entry = self.grant(key, draft, expires_at);
        let payment = Payment {
            ledger_id: entry.id,
            user_id: user_id.clone(),
            credit_type: key.2.clone(),
            credits,
            amount_minor,
            refunded_minor: 0,
            disputed_minor: 0,
            clawed_credits: 0,
            unrecovered_credits: 0,
            refund_ref: credit.refund_ref.clone(),
        };
        self.state
            .payments
            .insert(payment_key.clone(), payment.clone());
        self.effects.payments.insert(payment_key, payment);
        ("credited", None, Some(user_id.clone()), Some(entry.id))
    }

    fn claw_back(
        &mut self,
        event: &WebhookEvent,
        payment_ref: &str,
        user_id: &str,
        reversal: &Reversal,
    ) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
        let Reversal {
            refunded_minor_total,
            disputed_minor,
            amount_minor,
        } = *reversal;
        let payment_key = (self.app_id, event.provider, payment_ref.to_string());
        let Some(mut payment) = self.state.payments.get(&payment_key).cloned() else {
            return (
                "ignored",
                Some(format!("no credited payment {payment_ref}")),
                Some(user_id.to_string()),
                None,
            );
        };
        payment.refunded_minor = payment
            .refunded_minor
            .max(refunded_minor_total.unwrap_or(0));
        payment.disputed_minor = payment.disputed_minor.max(disputed_minor.unwrap_or(0));
        let target = clawback_target(&payment, amount_minor);
        let already = payment.clawed_credits + payment.unrecovered_credits;
        let reversible = self
            .state
            .entries
            .get(&payment.ledger_id)
            .map(|entry| entry.amount.abs() - entry.reversed)
            .unwrap_or(0);
        let due = (target - already).min(reversible);
        let owner = payment.user_id.clone();
        if due <= 0 {
            self.state
                .payments
                .insert(payment_key.clone(), payment.clone());
            self.effects.payments.insert(payment_key, payment);
            return ("duplicate", None, Some(owner), None);
        }
        // A clawback takes back the kind of credits the payment granted.
        let key = self.key(&owner, &payment.credit_type);
        let account = self.account(&key);
        let taken = due.min(account.available().max(0));
        let unrecovered = due - taken;
        let drawn = if taken > 0 {
            self.burn(&key, taken, Some(payment.ledger_id))
        } else {
            Vec::new()
        };
        let mut draft = Draft::new(EntryType::Clawback, -taken, event.provider.as_str());
        draft.description = Some(format!(
            "{} {} of payment {payment_ref}",
            event.provider.as_str(),
            event.event_type
        ));
        draft.metadata = json!({ "provider": event.provider.as_str(), "payment_ref": payment_ref,
                                 "event_id": event.event_id, "unrecovered": unrecovered.to_string() });
        draft.refunded_ledger_id = Some(payment.ledger_id);
        let entry = self.write(&key, draft);
        // Kept, like a refund's, so every lot's credits are accounted for.
        self.record_allocations(entry.id, drawn);
        if let Some(target_entry) = self.state.entries.get_mut(&payment.ledger_id) {
            target_entry.reversed += due;
        }
        payment.clawed_credits += taken;
        payment.unrecovered_credits += unrecovered;
        self.state
            .payments
            .insert(payment_key.clone(), payment.clone());
        self.effects.payments.insert(payment_key, payment);
        ("clawed_back", None, Some(owner), Some(entry.id))
    }
}

/// Credits to take back in total: the refunded and disputed share of what the payment bought,
/// rounded down (the customer keeps a partial credit). Without amounts, all of it.
pub fn clawback_target(payment: &Payment, event_amount_minor: Option<i64>) -> i64 {
    let paid = payment
        .amount_minor
        .or(event_amount_minor)
        .filter(|paid| *paid > 0);
    let reversed_minor = payment
        .refunded_minor
        .saturating_add(payment.disputed_minor);
    match paid {
        Some(paid) => {
            let share = reversed_minor.min(paid);
            (i128::from(payment.credits) * i128::from(share) / i128::from(paid)) as i64
        }
        None if reversed_minor > 0 => payment.credits,
        None => 0,
    }
}
