//! Auto top-up in the fold: which changes leave an account below its threshold (the store then
//! makes an attempt where none is pending), and what each answer about an attempt does — the
//! charge's result, its payment's webhooks — with the `auto_topup.*` events they cause.
//!
//! An attempt is `pending` from its creation until its payment is credited (`succeeded`), or
//! it fails (Stripe's refusal, `payment_intent.payment_failed`), or the customer must act
//! (`action_required`). Failures in a row are counted per account; at
//! [`FAILURES_BEFORE_DISABLED`] the auto top-up is disabled. A credited payment resets the count.

use serde_json::json;
use tally_common::command::Outcome;
use tally_common::credit_type::CreditType;
use tally_common::events::EventType;
use tally_common::plans::{AutoTopupPayment, ChargeError, ChargeResult, FAILURES_BEFORE_DISABLED};
use uuid::Uuid;

use super::events::AppRules;
use super::{applied, AccountKey, Step};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
    ActionRequired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::ActionRequired => "action_required",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "action_required" => Self::ActionRequired,
            _ => return None,
        })
    }
}

/// One auto top-up attempt, as loaded and as changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub app_id: Uuid,
    pub user_id: String,
    pub credit_type: CreditType,
    pub status: Status,
    pub credits: i64,
    pub amount: i64,
    pub currency: String,
    pub payment_intent_id: Option<String>,
    pub error: Option<ChargeError>,
    /// Stripe's answer to the charge has been applied.
    pub charged: bool,
}

/// The part of an account's auto top-up settings that attempts change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub enabled: bool,
    pub consecutive_failures: i32,
    pub disabled_reason: Option<String>,
}

impl Step<'_> {
    /// Notes the accounts this step left below their auto top-up threshold.
    pub(super) fn note_topups_due(&mut self, rules: &AppRules, touched: &[(AccountKey, i64)]) {
        if rules.auto_topup.is_empty() {
            return;
        }
        for (key, before) in touched {
            let Some(after) = self.state.accounts.get(key).map(|a| a.available()) else {
                continue;
            };
            let threshold = rules.auto_topup.get(&(key.1.clone(), key.2.clone()));
            if threshold.is_some_and(|&threshold| after < threshold) && after != *before {
                self.effects.topup_due.insert(key.clone());
            }
        }
    }

    /// Applies Stripe's answer to an attempt's charge.
    pub(super) fn auto_topup_charge(&mut self, attempt_id: Uuid, result: &ChargeResult) -> Outcome {
        let Some(attempt) = self.state.topup_attempts.get_mut(&attempt_id) else {
            return applied(
                self.id(),
                json!({ "attempt_id": attempt_id, "status": "unknown" }),
            );
        };
        attempt.charged = true;
        self.effects.topup_attempts.insert(attempt_id);
        match result {
            ChargeResult::Charged { payment_intent_id } => {
                attempt.payment_intent_id = Some(payment_intent_id.clone());
            }
            ChargeResult::ActionRequired { payment_intent_id } => {
                attempt.payment_intent_id = Some(payment_intent_id.clone());
                if attempt.status == Status::Pending {
                    attempt.status = Status::ActionRequired;
                    let attempt = attempt.clone();
                    if self.records(EventType::AutoTopupActionRequired) {
                        let data = json!({
                            "attempt_id": attempt_id,
                            "credit_type": attempt.credit_type,
                            "payment_intent_id": payment_intent_id,
                            "credits": attempt.credits,
                            "amount": attempt.amount,
                            "currency": attempt.currency,
                        });
                        self.emit(
                            &attempt.user_id,
                            EventType::AutoTopupActionRequired,
                            None,
                            Some(data),
                        );
                    }
                }
            }
            ChargeResult::Failed {
                payment_intent_id,
                error,
            } => {
                self.fail_attempt(attempt_id, payment_intent_id.as_ref(), error);
            }
        }
        let status = self.state.topup_attempts[&attempt_id].status;
        applied(
            self.id(),
            json!({ "attempt_id": attempt_id, "status": status.as_str() }),
        )
    }

    /// Fails a pending (or action-required) attempt, counts the failure, and disables the auto
    /// top-up at the limit. `false` when the attempt was settled already.
    pub(super) fn fail_attempt(
        &mut self,
        attempt_id: Uuid,
        payment_intent_id: Option<&String>,
        error: &ChargeError,
    ) -> bool {
        let Some(attempt) = self.state.topup_attempts.get_mut(&attempt_id) else {
            return false;
        };
        if !matches!(attempt.status, Status::Pending | Status::ActionRequired) {
            return false;
        }
        attempt.status = Status::Failed;
        attempt.error = Some(error.clone());
        if let Some(payment_intent_id) = payment_intent_id {
            attempt.payment_intent_id = Some(payment_intent_id.clone());
        }
        let attempt = attempt.clone();
        self.effects.topup_attempts.insert(attempt_id);
        let key = (
            attempt.app_id,
            attempt.user_id.clone(),
            attempt.credit_type.clone(),
        );
        let mut failures = None;
        let mut disabled = false;
        if let Some(settings) = self.state.topup_settings.get_mut(&key) {
            settings.consecutive_failures += 1;
            failures = Some(settings.consecutive_failures);
            if settings.enabled && settings.consecutive_failures >= FAILURES_BEFORE_DISABLED {
                settings.enabled = false;
                settings.disabled_reason = Some(format!(
                    "{} charges failed in a row",
                    settings.consecutive_failures
                ));
                disabled = true;
            }
            self.effects.topup_settings.insert(key.clone());
        }
        if self.records(EventType::AutoTopupFailed) {
            let data = json!({
                "attempt_id": attempt_id,
                "credit_type": attempt.credit_type,
                "payment_intent_id": attempt.payment_intent_id,
                "credits": attempt.credits,
                "amount": attempt.amount,
                "currency": attempt.currency,
                "code": error.code,
                "decline_code": error.decline_code,
                "message": error.message,
                "consecutive_failures": failures,
            });
            self.emit(
                &attempt.user_id,
                EventType::AutoTopupFailed,
                None,
                Some(data),
            );
        }
        if disabled && self.records(EventType::AutoTopupDisabled) {
            let data = json!({
                "credit_type": attempt.credit_type,
                "consecutive_failures": failures,
                "reason": self.state.topup_settings[&key].disabled_reason,
            });
            self.emit(
                &attempt.user_id,
                EventType::AutoTopupDisabled,
                None,
                Some(data),
            );
        }
        true
    }

    /// An attempt's payment was credited (`ledger_id`): the attempt succeeded.
    pub(super) fn auto_topup_paid(
        &mut self,
        payment: &AutoTopupPayment,
        payment_intent_id: &str,
        credits: i64,
        amount_minor: Option<i64>,
        ledger_id: Uuid,
    ) {
        let Some(attempt) = self.state.topup_attempts.get_mut(&payment.attempt_id) else {
            return;
        };
        if attempt.status == Status::Succeeded {
            return;
        }
        attempt.status = Status::Succeeded;
        attempt.error = None;
        attempt.payment_intent_id = Some(payment_intent_id.to_string());
        let attempt = attempt.clone();
        self.effects.topup_attempts.insert(payment.attempt_id);
        let key = (
            attempt.app_id,
            attempt.user_id.clone(),
            attempt.credit_type.clone(),
        );
        if let Some(settings) = self.state.topup_settings.get_mut(&key) {
            if settings.consecutive_failures != 0 {
                settings.consecutive_failures = 0;
                self.effects.topup_settings.insert(key);
            }
        }
        if self.records(EventType::AutoTopupSucceeded) {
            let data = json!({
                "attempt_id": payment.attempt_id,
                "credit_type": attempt.credit_type,
                "payment_intent_id": payment_intent_id,
                "credits": credits,
                "amount": amount_minor.unwrap_or(attempt.amount),
                "currency": payment.currency.clone().unwrap_or(attempt.currency.clone()),
                "ledger_id": ledger_id,
            });
            self.emit(
                &attempt.user_id,
                EventType::AutoTopupSucceeded,
                None,
                Some(data),
            );
        }
    }
}

/// The attempts a command names, for the store to load.
pub fn named_attempt(command: &tally_common::command::Command) -> Option<Uuid> {
    use tally_common::command::Command;
    use tally_common::webhook::WebhookAction;
    match command {
        Command::AutoTopupCharge { attempt_id, .. } => Some(*attempt_id),
        Command::Webhook(event) => match &event.action {
            WebhookAction::AutoTopupFailed { attempt_id, .. } => Some(*attempt_id),
            WebhookAction::Credit {
                auto_topup: Some(payment),
                ..
            } => Some(payment.attempt_id),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use chrono::Utc;
    use tally_common::command::{Command, Envelope};

    use super::*;
    use crate::ledger::tests::{envelope, APP};
    use crate::ledger::{fold, Account, State};

    fn deduct(amount: i64) -> Envelope {
        envelope(Command::Deduct {
            user_id: "u".into(),
            amount,
            credit_type: CreditType::default(),
            description: None,
            metadata: Default::default(),
        })
    }

    fn declined(attempt_id: Uuid) -> Envelope {
        envelope(Command::AutoTopupCharge {
            user_id: "u".into(),
            credit_type: CreditType::default(),
            attempt_id,
            result: ChargeResult::Failed {
                payment_intent_id: Some("pi_1".into()),
                error: ChargeError {
                    code: Some("card_declined".into()),
                    decline_code: Some("insufficient_funds".into()),
                    message: "declined".into(),
                },
            },
        })
    }

    /// A user with 100 credits, an auto top-up below 50, and every event type recorded.
    fn state() -> State {
        let mut rules = AppRules::default();
        rules.subscribed.extend(EventType::ALL);
        rules
            .auto_topup
            .insert(("u".into(), CreditType::default()), 50);
        let mut state = State {
            now: Utc::now(),
            rules: Arc::new(HashMap::from([(APP, Arc::new(rules))])),
            ..State::default()
        };
        let key = (APP, "u".to_string(), CreditType::default());
        state.insert_account(
            key.clone(),
            Account {
                balance: 100,
                held: 0,
                entry_count: 1,
            },
        );
        state.topup_settings.insert(
            key,
            Settings {
                enabled: true,
                consecutive_failures: 0,
                disabled_reason: None,
            },
        );
        state
    }

    fn attempt(state: &mut State) -> Uuid {
        let id = Uuid::now_v7();
        state.topup_attempts.insert(
            id,
            Attempt {
                app_id: APP,
                user_id: "u".into(),
                credit_type: CreditType::default(),
                status: Status::Pending,
                credits: 500,
                amount: 500,
                currency: "usd".into(),
                payment_intent_id: None,
                error: None,
                charged: false,
            },
        );
        id
    }

    #[test]
    fn only_a_change_that_leaves_the_account_below_its_threshold_is_due() {
        let mut state = state();
        let effects = fold(&mut state, &[deduct(40)]);
        assert!(effects.topup_due.is_empty(), "60 is not below 50");
        let effects = fold(&mut state, &[deduct(20)]);
        assert_eq!(effects.topup_due.len(), 1);
        // A refused deduct changes nothing, so it makes no attempt.
        let effects = fold(&mut state, &[deduct(1_000)]);
        assert!(effects.topup_due.is_empty());
    }

    #[test]
    fn three_failures_in_a_row_disable_and_each_is_an_event() {
        let mut state = state();
        for round in 1..=3 {
            let id = attempt(&mut state);
            let effects = fold(&mut state, &[declined(id)]);
            assert_eq!(state.topup_attempts[&id].status, Status::Failed);
            let types: Vec<EventType> = effects.events.iter().map(|e| e.event_type).collect();
            let key = (APP, "u".to_string(), CreditType::default());
            assert_eq!(state.topup_settings[&key].consecutive_failures, round);
            if round < 3 {
                assert_eq!(types, [EventType::AutoTopupFailed]);
                assert!(state.topup_settings[&key].enabled);
            } else {
                assert_eq!(
                    types,
                    [EventType::AutoTopupFailed, EventType::AutoTopupDisabled]
                );
                assert!(!state.topup_settings[&key].enabled);
            }
            // The same answer again changes nothing.
            let again = fold(&mut state, &[declined(id)]);
            assert!(again.events.is_empty());
        }
    }
}
