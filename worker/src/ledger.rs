//! The ledger fold: applies a batch of commands, in stream order, to the state they touch.
//!
//! Pure code: no IO, no clock, no randomness except entry ids. The store loads a [`State`],
//! [`fold`] decides every command's effect and answer, and the store writes the [`Effects`] in the
//! same transaction. A business rejection (insufficient credits, nothing left to refund …) is an
//! answer like any other: it is recorded, and it changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_common::command::{Command, Envelope, Outcome, Status};
use tally_common::error_code::ErrorCode;
use tally_common::webhook::{Provider, WebhookAction, WebhookEvent};
use uuid::Uuid;

/// An (app, user) pair: the unit that owns a balance.
pub type UserKey = (Uuid, String);
/// An (app, provider, payment reference) triple: the unit a payment credits once.
pub type PaymentKey = (Uuid, Provider, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryType {
    Add,
    Deduct,
    Refund,
    Payment,
    Expire,
    Clawback,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Deduct => "deduct",
            Self::Refund => "refund",
            Self::Payment => "payment",
            Self::Expire => "expire",
            Self::Clawback => "clawback",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "add" => Self::Add,
            "deduct" => Self::Deduct,
            "refund" => Self::Refund,
            "payment" => Self::Payment,
            "expire" => Self::Expire,
            "clawback" => Self::Clawback,
            _ => return None,
        })
    }
}

/// A user's balance as the batch sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: i64,
    pub held: i64,
    /// Sequence number of the user's last entry.
    pub entry_count: i64,
}

impl Account {
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }
}

/// An existing entry a command refers to (a refund's or a clawback's target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRef {
    pub app_id: Uuid,
    pub user_id: String,
    pub entry_type: EntryType,
    /// Signed, as written.
    pub amount: i64,
    /// Credits already reversed by refund and clawback entries.
    pub reversed: i64,
}

/// A payment already credited, with what has been clawed back of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub ledger_id: Uuid,
    pub user_id: String,
    pub credits: i64,
    pub amount_minor: Option<i64>,
    pub refunded_minor: i64,
    pub disputed_minor: i64,
    pub clawed_credits: i64,
    pub unrecovered_credits: i64,
}

/// A command finished earlier (or earlier in this batch).
#[derive(Clone, Debug, PartialEq)]
pub struct Prior {
    pub outcome: Option<Outcome>,
    pub request_hash: Option<String>,
}

/// Everything the batch's commands may read, loaded under lock by the store.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub accounts: HashMap<UserKey, Account>,
    pub entries: HashMap<Uuid, EntryRef>,
    pub payments: HashMap<PaymentKey, Payment>,
    pub processed: HashMap<Uuid, Prior>,
}

/// A ledger row to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    pub seq: i64,
    pub entry_type: EntryType,
    pub amount: i64,
    pub balance_after: i64,
    pub source: &'static str,
    pub description: Option<String>,
    pub metadata: Value,
    pub refunded_ledger_id: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    pub command_id: Uuid,
}

/// A received webhook event, for the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRecord {
    pub app_id: Uuid,
    pub provider: Provider,
    pub event_id: String,
    pub event_type: String,
    pub outcome: &'static str,
    pub reason: Option<String>,
    pub user_id: Option<String>,
    pub ledger_id: Option<Uuid>,
    pub received_at: DateTime<Utc>,
}

/// What the batch writes, and what each of its commands answers (one per command, in order).
#[derive(Debug, Default)]
pub struct Effects {
    pub entries: Vec<NewEntry>,
    /// Commands finished by this batch, to record as processed.
    pub finished: Vec<(Envelope, Outcome)>,
    /// The answer to every command of the batch, duplicates included, in input order.
    pub answers: Vec<Outcome>,
    /// Payments credited or clawed back by this batch (their final state).
    pub payments: HashMap<PaymentKey, Payment>,
    pub webhooks: Vec<WebhookRecord>,
}

impl Effects {
    /// The accounts this batch changed, with their final state.
    pub fn changed_accounts<'a>(&self, state: &'a State) -> Vec<(&'a UserKey, &'a Account)> {
        let mut keys: Vec<UserKey> = self
            .entries
            .iter()
            .map(|entry| (entry.app_id, entry.user_id.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        keys.iter()
            .filter_map(|key| state.accounts.get_key_value(key))
            .collect()
    }
}

/// Applies `commands` in order to `state`, returning what to write and what to answer.
pub fn fold(state: &mut State, commands: &[Envelope]) -> Effects {
    let mut effects = Effects::default();
    for envelope in commands {
        if let Some(prior) = state.processed.get(&envelope.command_id) {
            effects.answers.push(answer_duplicate(envelope, prior));
            continue;
        }
        let mut step = Step {
            state,
            effects: &mut effects,
            envelope,
        };
        let outcome = step.apply();
        state.processed.insert(
            envelope.command_id,
            Prior {
                outcome: Some(outcome.clone()),
                request_hash: envelope.request_hash.clone(),
            },
        );
        effects.finished.push((envelope.clone(), outcome.clone()));
        effects.answers.push(outcome);
    }
    effects
}

/// The answer to a command seen before: the stored answer, or a conflict when the same
/// idempotency key came with another request, or "unavailable" for a command the ingress
/// cancelled (its client was told 503).
fn answer_duplicate(envelope: &Envelope, prior: &Prior) -> Outcome {
    let conflict = match (&envelope.request_hash, &prior.request_hash) {
        (Some(new), Some(old)) => new != old,
        _ => false,
    };
    if conflict {
        return rejection(
            envelope.command_id,
            ErrorCode::IdempotencyConflict,
            "Idempotency-Key was already used with a different request".to_string(),
            Map::new(),
        );
    }
    match &prior.outcome {
        Some(outcome) => Outcome {
            command_id: envelope.command_id,
            ..outcome.clone()
        },
        None => rejection(
            envelope.command_id,
            ErrorCode::Unavailable,
            "the command was not accepted".to_string(),
            Map::new(),
        ),
    }
}

fn rejection(
    command_id: Uuid,
    code: ErrorCode,
    message: String,
    extra: Map<String, Value>,
) -> Outcome {
    let mut body = code.body(message);
    if let Value::Object(object) = &mut body {
        object.extend(extra);
    }
    Outcome {
        command_id,
        status: Status::Rejected,
        http_status: code.status(),
        body,
    }
}

fn applied(command_id: Uuid, body: Value) -> Outcome {
    Outcome {
        command_id,
        status: Status::Applied,
        http_status: 200,
        body,
    }
}

/// One command being applied.
struct Step<'a> {
    state: &'a mut State,
    effects: &'a mut Effects,
    envelope: &'a Envelope,
}

impl Step<'_> {
    fn apply(&mut self) -> Outcome {
        match &self.envelope.command {
            Command::Add {
                user_id,
                amount,
                description,
                metadata,
                expires_at,
            } => self.add(user_id, *amount, description, metadata, *expires_at),
            Command::Deduct {
                user_id,
                amount,
                description,
                metadata,
            } => self.deduct(user_id, *amount, description, metadata),
            Command::Refund {
                user_id,
                ledger_id,
                amount,
                description,
                metadata,
            } => self.refund(user_id, *ledger_id, *amount, description, metadata),
            Command::Webhook(event) => self.webhook(event),
        }
    }

    fn id(&self) -> Uuid {
        self.envelope.command_id
    }

    fn account(&mut self, user_id: &str) -> Account {
        let key = (self.envelope.app_id, user_id.to_string());
        *self.state.accounts.entry(key).or_default()
    }

    /// Appends an entry moving `amount` (signed) and updates the account. The caller has checked
    /// that the balance stays within `0..=i64::MAX`.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        user_id: &str,
        entry_type: EntryType,
        amount: i64,
        source: &'static str,
        description: Option<String>,
        metadata: Value,
        refunded_ledger_id: Option<Uuid>,
        expires_at: Option<DateTime<Utc>>,
    ) -> NewEntry {
        let app_id = self.envelope.app_id;
        let account = self
            .state
            .accounts
            .entry((app_id, user_id.to_string()))
            .or_default();
        let balance_after = account
            .balance
            .checked_add(amount)
            .expect("caller checked the range");
        assert!(
            balance_after >= account.held,
            "balance may never fall below what is held"
        );
        account.balance = balance_after;
        account.entry_count += 1;
        let entry = NewEntry {
            id: Uuid::now_v7(),
            app_id,
            user_id: user_id.to_string(),
            seq: account.entry_count,
            entry_type,
            amount,
            balance_after,
            source,
            description,
            metadata,
            refunded_ledger_id,
            expires_at,
            command_id: self.envelope.command_id,
        };
        self.state.entries.insert(
            entry.id,
            EntryRef {
                app_id,
                user_id: user_id.to_string(),
                entry_type,
                amount,
                reversed: 0,
            },
        );
        self.effects.entries.push(entry.clone());
        entry
    }

    fn add(
        &mut self,
        user_id: &str,
        amount: i64,
        description: &Option<String>,
        metadata: &Map<String, Value>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Outcome {
        let account = self.account(user_id);
        if account.balance.checked_add(amount).is_none() {
            return self.overflow(user_id, account, amount);
        }
        let entry = self.write(
            user_id,
            EntryType::Add,
            amount,
            "api",
            description.clone(),
            Value::Object(metadata.clone()),
            None,
            expires_at,
        );
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "balance_after": entry.balance_after,
                    "ledger_id": entry.id }),
        )
    }

    fn overflow(&self, user_id: &str, account: Account, amount: i64) -> Outcome {
        rejection(
            self.id(),
            ErrorCode::BalanceOverflow,
            format!(
                "{user_id} has {} credits; adding {amount} would pass the largest balance ({})",
                account.balance,
                i64::MAX
            ),
            balance_fields(account),
        )
    }

    fn insufficient(&self, user_id: &str, account: Account, amount: i64) -> Outcome {
        let message = if account.held > 0 {
            format!(
                "{user_id} has {} credits available ({} held), {amount} requested",
                account.available(),
                account.held
            )
        } else {
            format!(
                "{user_id} has {} credits, {amount} requested",
                account.balance
            )
        };
        rejection(
            self.id(),
            ErrorCode::InsufficientCredits,
            message,
            balance_fields(account),
        )
    }

    fn deduct(
        &mut self,
        user_id: &str,
        amount: i64,
        description: &Option<String>,
        metadata: &Map<String, Value>,
    ) -> Outcome {
        let account = self.account(user_id);
        if account.available() < amount {
            return self.insufficient(user_id, account, amount);
        }
        let entry = self.write(
            user_id,
            EntryType::Deduct,
            -amount,
            "api",
            description.clone(),
            Value::Object(metadata.clone()),
            None,
            None,
        );
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "balance_after": entry.balance_after,
                    "ledger_id": entry.id }),
        )
    }

    fn refund(
        &mut self,
        user_id: &str,
        ledger_id: Uuid,
        amount: Option<i64>,
        description: &Option<String>,
        metadata: &Map<String, Value>,
    ) -> Outcome {
        let app_id = self.envelope.app_id;
        let target = match self.state.entries.get(&ledger_id) {
            Some(target) if target.app_id == app_id && target.user_id == user_id => target.clone(),
            _ => {
                return rejection(
                    self.id(),
                    ErrorCode::NotFound,
                    format!("no ledger entry {ledger_id}"),
                    Map::new(),
                )
            }
        };
        if !matches!(
            target.entry_type,
            EntryType::Add | EntryType::Deduct | EntryType::Payment
        ) {
            return rejection(
                self.id(),
                ErrorCode::NotRefundable,
                format!("a {} entry cannot be refunded", target.entry_type.as_str()),
                Map::new(),
            );
        }
        let left = target.amount.abs() - target.reversed;
        if left <= 0 {
            return rejection(
                self.id(),
                ErrorCode::AlreadyRefunded,
                format!("ledger entry {ledger_id} has been refunded in full"),
                Map::new(),
            );
        }
        let amount = amount.unwrap_or(left);
        if amount > left {
            return rejection(
                self.id(),
                ErrorCode::InvalidRequest,
                format!("amount: only {left} credits of ledger entry {ledger_id} are left to refund, {amount} requested"),
                json!({ "field": "amount", "refundable": left }).as_object().cloned().unwrap_or_default(),
            );
        }
        let account = self.account(user_id);
        let signed = if target.entry_type == EntryType::Deduct {
            if account.balance.checked_add(amount).is_none() {
                return self.overflow(user_id, account, amount);
            }
            amount
        } else {
            if account.available() < amount {
                return self.insufficient(user_id, account, amount);
            }
            -amount
        };
        let entry = self.write(
            user_id,
            EntryType::Refund,
            signed,
            "api",
            description.clone(),
            Value::Object(metadata.clone()),
            Some(ledger_id),
            None,
        );
        if let Some(target) = self.state.entries.get_mut(&ledger_id) {
            target.reversed += amount;
        }
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "balance_after": entry.balance_after,
                    "ledger_id": entry.id, "refunded_ledger_id": ledger_id }),
        )
    }

    fn webhook(&mut self, event: &WebhookEvent) -> Outcome {
        let (outcome, reason, user_id, ledger_id) = match &event.action {
            WebhookAction::Credit {
                payment_ref,
                user_id,
                credits,
                amount_minor,
                expires_in_days,
            } => self.credit_payment(
                event,
                payment_ref,
                user_id,
                *credits,
                *amount_minor,
                *expires_in_days,
            ),
            WebhookAction::Clawback {
                payment_ref,
                user_id,
                refunded_minor_total,
                disputed_minor,
                amount_minor,
            } => self.claw_back(
                event,
                payment_ref,
                user_id,
                *refunded_minor_total,
                *disputed_minor,
                *amount_minor,
            ),
            WebhookAction::Ignore { reason } => ("ignored", Some(reason.clone()), None, None),
            WebhookAction::Reject { reason, user_id } => {
                ("rejected", Some(reason.clone()), user_id.clone(), None)
            }
        };
        self.effects.webhooks.push(WebhookRecord {
            app_id: self.envelope.app_id,
            provider: event.provider,
            event_id: event.event_id.clone(),
            event_type: event.event_type.clone(),
            outcome,
            reason: reason.clone(),
            user_id: user_id.clone(),
            ledger_id,
            received_at: self.envelope.accepted_at,
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

    fn credit_payment(
        &mut self,
        event: &WebhookEvent,
        payment_ref: &str,
        user_id: &str,
        credits: i64,
        amount_minor: Option<i64>,
        expires_in_days: Option<i64>,
    ) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
        let key = (
            self.envelope.app_id,
            event.provider,
            payment_ref.to_string(),
        );
        if let Some(payment) = self.state.payments.get(&key) {
            return (
                "duplicate",
                None,
                Some(payment.user_id.clone()),
                Some(payment.ledger_id),
            );
        }
        let account = self.account(user_id);
        if account.balance.checked_add(credits).is_none() {
            return (
                "rejected",
                Some(format!(
                    "crediting {credits} would pass the largest balance"
                )),
                Some(user_id.to_string()),
                None,
            );
        }
        let expires_at =
            expires_in_days.map(|days| self.envelope.accepted_at + chrono::Duration::days(days));
        let metadata = json!({ "provider": event.provider.as_str(), "payment_ref": payment_ref,
                               "event_id": event.event_id });
        let entry = self.write(
            user_id,
            EntryType::Payment,
            credits,
            event.provider.as_str(),
            Some(format!("{} payment {payment_ref}", event.provider.as_str())),
            metadata,
            None,
            expires_at,
        );
        let payment = Payment {
            ledger_id: entry.id,
            user_id: user_id.to_string(),
            credits,
            amount_minor,
            refunded_minor: 0,
            disputed_minor: 0,
            clawed_credits: 0,
            unrecovered_credits: 0,
        };
        self.state.payments.insert(key.clone(), payment.clone());
        self.effects.payments.insert(key, payment);
        ("credited", None, Some(user_id.to_string()), Some(entry.id))
    }

    fn claw_back(
        &mut self,
        event: &WebhookEvent,
        payment_ref: &str,
        user_id: &str,
        refunded_minor_total: Option<i64>,
        disputed_minor: Option<i64>,
        amount_minor: Option<i64>,
    ) -> (&'static str, Option<String>, Option<String>, Option<Uuid>) {
        let key = (
            self.envelope.app_id,
            event.provider,
            payment_ref.to_string(),
        );
        let Some(mut payment) = self.state.payments.get(&key).cloned() else {
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
        if due <= 0 {
            let owner = payment.user_id.clone();
            self.state.payments.insert(key.clone(), payment.clone());
            self.effects.payments.insert(key, payment);
            return ("duplicate", None, Some(owner), None);
        }
        let account = self.account(&payment.user_id);
        let taken = due.min(account.available().max(0));
        let unrecovered = due - taken;
        let metadata = json!({ "provider": event.provider.as_str(), "payment_ref": payment_ref,
                               "event_id": event.event_id, "unrecovered": unrecovered.to_string() });
        let owner = payment.user_id.clone();
        let entry = self.write(
            &owner,
            EntryType::Clawback,
            -taken,
            event.provider.as_str(),
            Some(format!(
                "{} {} of payment {payment_ref}",
                event.provider.as_str(),
                event.event_type
            )),
            metadata,
            Some(payment.ledger_id),
            None,
        );
        if let Some(target_entry) = self.state.entries.get_mut(&payment.ledger_id) {
            target_entry.reversed += due;
        }
        payment.clawed_credits += taken;
        payment.unrecovered_credits += unrecovered;
        self.state.payments.insert(key.clone(), payment.clone());
        self.effects.payments.insert(key, payment);
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

fn balance_fields(account: Account) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("balance".into(), json!(account.balance));
    fields.insert("available".into(), json!(account.available()));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: Uuid = Uuid::from_u128(7);

    fn envelope(command: Command) -> Envelope {
        Envelope {
            command_id: Uuid::now_v7(),
            app_id: APP,
            request_hash: None,
            accepted_at: Utc::now(),
            command,
        }
    }

    fn add(user: &str, amount: i64) -> Envelope {
        envelope(Command::Add {
            user_id: user.into(),
            amount,
            description: None,
            metadata: Map::new(),
            expires_at: None,
        })
    }

    fn deduct(user: &str, amount: i64) -> Envelope {
        envelope(Command::Deduct {
            user_id: user.into(),
            amount,
            description: None,
            metadata: Map::new(),
        })
    }

    fn refund(user: &str, ledger_id: Uuid, amount: Option<i64>) -> Envelope {
        envelope(Command::Refund {
            user_id: user.into(),
            ledger_id,
            amount,
            description: None,
            metadata: Map::new(),
        })
    }

    fn balance(state: &State, user: &str) -> i64 {
        state.accounts[&(APP, user.to_string())].balance
    }

    #[test]
    fn add_then_deduct_updates_balance_and_numbers_entries() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 500), deduct("u", 50)]);
        assert_eq!(effects.answers[1].http_status, 200);
        assert_eq!(effects.answers[1].body["balance_after"], 450);
        assert_eq!(
            effects.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(effects.entries[1].amount, -50);
        assert_eq!(balance(&state, "u"), 450);
    }

    #[test]
    fn deduct_is_rejected_when_balance_is_insufficient_and_writes_nothing() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 40), deduct("u", 50)]);
        let answer = &effects.answers[1];
        assert_eq!(answer.status, Status::Rejected);
        assert_eq!(answer.http_status, 402);
        assert_eq!(answer.body["error"], "insufficient_credits");
        assert_eq!(answer.body["balance"], 40);
        assert_eq!(answer.body["message"], "u has 40 credits, 50 requested");
        assert_eq!(effects.entries.len(), 1);
    }

    #[test]
    fn add_past_the_largest_balance_is_rejected() {
        let mut state = State::default();
        state.accounts.insert(
            (APP, "u".into()),
            Account {
                balance: i64::MAX - 5,
                held: 0,
                entry_count: 1,
            },
        );
        let effects = fold(&mut state, &[add("u", 6)]);
        assert_eq!(effects.answers[0].http_status, 422);
        assert_eq!(effects.answers[0].body["error"], "balance_overflow");
        assert!(effects.entries.is_empty());
    }

    #[test]
    fn duplicate_command_is_answered_from_the_first_and_applied_once() {
        let mut state = State::default();
        let first = add("u", 10);
        let effects = fold(&mut state, &[first.clone(), first.clone()]);
        assert_eq!(effects.entries.len(), 1);
        assert_eq!(effects.finished.len(), 1);
        assert_eq!(effects.answers[0].body, effects.answers[1].body);
    }

    #[test]
    fn same_command_id_with_another_request_hash_is_a_conflict() {
        let mut state = State::default();
        let mut first = add("u", 10);
        first.request_hash = Some("a".into());
        let mut second = first.clone();
        second.request_hash = Some("b".into());
        let effects = fold(&mut state, &[first, second]);
        assert_eq!(effects.answers[1].http_status, 409);
        assert_eq!(effects.answers[1].body["error"], "idempotency_conflict");
        assert_eq!(effects.entries.len(), 1);
    }

    #[test]
    fn refunds_of_a_deduct_add_up_to_at_most_the_deduct() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100), deduct("u", 30)]);
        let deduct_id = effects.entries[1].id;
        let effects = fold(
            &mut state,
            &[
                refund("u", deduct_id, Some(20)),
                refund("u", deduct_id, Some(20)),
                refund("u", deduct_id, None),
                refund("u", deduct_id, None),
            ],
        );
        assert_eq!(effects.answers[0].body["balance_after"], 90);
        assert_eq!(effects.answers[1].http_status, 400);
        assert_eq!(
            effects.answers[1].body["message"],
            format!("amount: only 10 credits of ledger entry {deduct_id} are left to refund, 20 requested")
        );
        assert_eq!(effects.answers[2].body["balance_after"], 100);
        assert_eq!(effects.answers[3].http_status, 409);
        assert_eq!(effects.answers[3].body["error"], "already_refunded");
    }

    #[test]
    fn refund_of_an_add_takes_credits_back_only_if_the_user_has_them() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100), deduct("u", 80)]);
        let add_id = effects.entries[0].id;
        let effects = fold(
            &mut state,
            &[refund("u", add_id, None), refund("u", add_id, Some(20))],
        );
        assert_eq!(effects.answers[0].http_status, 402);
        assert_eq!(effects.answers[1].body["balance_after"], 0);
        assert_eq!(effects.entries[0].amount, -20);
    }

    #[test]
    fn refund_entry_is_not_refundable() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100), deduct("u", 10)]);
        let effects = fold(&mut state, &[refund("u", effects.entries[1].id, None)]);
        let refund_id = effects.entries[0].id;
        let effects = fold(&mut state, &[refund("u", refund_id, None)]);
        assert_eq!(effects.answers[0].http_status, 422);
        assert_eq!(effects.answers[0].body["error"], "not_refundable");
    }

    #[test]
    fn refund_of_another_users_entry_is_not_found() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100)]);
        let effects = fold(&mut state, &[refund("v", effects.entries[0].id, None)]);
        assert_eq!(effects.answers[0].http_status, 404);
    }

    fn webhook(event_id: &str, action: WebhookAction) -> Envelope {
        envelope(Command::Webhook(WebhookEvent {
            provider: Provider::Stripe,
            event_id: event_id.into(),
            event_type: "test".into(),
            action,
        }))
    }

    fn credit(event_id: &str, payment_ref: &str, credits: i64) -> Envelope {
        webhook(
            event_id,
            WebhookAction::Credit {
                payment_ref: payment_ref.into(),
                user_id: "u".into(),
                credits,
                amount_minor: Some(1000),
                expires_in_days: None,
            },
        )
    }

    fn refunded(event_id: &str, total: i64) -> Envelope {
        webhook(
            event_id,
            WebhookAction::Clawback {
                payment_ref: "pi_1".into(),
                user_id: "u".into(),
                refunded_minor_total: Some(total),
                disputed_minor: None,
                amount_minor: Some(1000),
            },
        )
    }

    #[test]
    fn two_events_of_one_payment_credit_once() {
        let mut state = State::default();
        let effects = fold(
            &mut state,
            &[credit("evt_1", "pi_1", 500), credit("evt_2", "pi_1", 500)],
        );
        assert_eq!(effects.entries.len(), 1);
        assert_eq!(effects.webhooks[0].outcome, "credited");
        assert_eq!(effects.webhooks[1].outcome, "duplicate");
        assert_eq!(effects.webhooks[1].ledger_id, Some(effects.entries[0].id));
        assert_eq!(balance(&state, "u"), 500);
    }

    #[test]
    fn cumulative_partial_refunds_claw_back_only_the_new_part() {
        let mut state = State::default();
        fold(&mut state, &[credit("evt_1", "pi_1", 500)]);
        let effects = fold(
            &mut state,
            &[
                refunded("evt_r1", 200),
                refunded("evt_r2", 500),
                refunded("evt_r2b", 500),
                refunded("evt_r3", 1000),
            ],
        );
        let amounts: Vec<i64> = effects.entries.iter().map(|e| e.amount).collect();
        assert_eq!(amounts, vec![-100, -150, -250]);
        assert_eq!(effects.webhooks[2].outcome, "duplicate");
        assert_eq!(balance(&state, "u"), 0);
    }

    #[test]
    fn clawback_after_spend_clamps_at_zero_and_records_the_rest() {
        let mut state = State::default();
        fold(
            &mut state,
            &[credit("evt_1", "pi_1", 500), deduct("u", 450)],
        );
        let dispute = webhook(
            "evt_d",
            WebhookAction::Clawback {
                payment_ref: "pi_1".into(),
                user_id: "u".into(),
                refunded_minor_total: None,
                disputed_minor: Some(1000),
                amount_minor: None,
            },
        );
        let effects = fold(&mut state, &[dispute]);
        assert_eq!(effects.entries[0].amount, -50);
        assert_eq!(effects.entries[0].metadata["unrecovered"], "450");
        assert_eq!(balance(&state, "u"), 0);
    }
}
