//! The ledger fold: applies a batch of commands, in stream order, to the state they touch.
//!
//! Pure code: no IO, and the clock is an input (`State::now`). The store loads a [`State`],
//! [`fold`] decides every command's effect and answer, and the store writes the [`Effects`] in
//! the same transaction. A business rejection (insufficient credits, nothing left to refund …)
//! is an answer like any other: it is recorded, and it changes nothing.
//!
//! Credits live in lots. An add or payment with an expiry is a lot; credits without expiry are
//! the user's never-expiring pool (`balance - held - Σ unexpired lots' remaining`). Deducts,
//! holds and take-backs burn lots soonest-expiring first and the pool last; what a deduct or a
//! hold drew from is recorded ([`Allocation`]) so that a refund or a release returns credits to
//! the lots they came from — and a lot that expired meanwhile expires them again at once.
//!
//! A user may hold several credit types; each has its own account row (balance and held), lots
//! and holds, and a command acts on one type (a refund or a capture on its entry's or hold's).
//! The user's entries are numbered once across all types (`seq`), so the fold keeps each
//! user's last number apart from the per-type rows.

pub mod events;
mod payments;
pub mod topups;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tally_common::command::{Command, Envelope, Outcome, Status};
use tally_common::credit_type::CreditType;
use tally_common::error_code::ErrorCode;
use tally_common::events::EventType;
use tally_common::webhook::Provider;
use uuid::Uuid;

/// An (app, user) pair: the unit whose commands are ordered and whose entries are numbered.
pub type UserKey = (Uuid, String);
/// An (app, user, credit type) triple: the unit that owns a balance.
pub type AccountKey = (Uuid, String, CreditType);
/// An (app, provider, payment reference) triple: the unit a payment credits once.
pub type PaymentKey = (Uuid, Provider, String);

/// The lot id standing for the never-expiring pool in allocations.
pub const POOL: Uuid = Uuid::nil();

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

/// A user's balance of one credit type as the batch sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: i64,
    pub held: i64,
    /// Sequence number of the user's last entry of this type (0: none yet). The user's last
    /// number is the largest over the user's types ([`State::last_seq`]).
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
    pub credit_type: CreditType,
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
    pub credit_type: CreditType,
    pub credits: i64,
    pub amount_minor: Option<i64>,
    pub refunded_minor: i64,
    pub disputed_minor: i64,
    pub clawed_credits: i64,
    pub unrecovered_credits: i64,
    /// What a refund of it names besides its own reference (an invoice's payment intent).
    pub refund_ref: Option<String>,
}

/// Credits granted with an expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lot {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    pub credit_type: CreditType,
    pub amount: i64,
    /// Credits of the lot neither spent nor reserved by a hold.
    pub remaining: i64,
    pub expires_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
}

impl Lot {
    /// Whether the lot's credits may still be spent at `now`.
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        self.expired_at.is_none() && self.expires_at > now
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldStatus {
    Active,
    Captured,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Captured => "captured",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "captured" => Self::Captured,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// Credits reserved until captured, released or expired.
#[derive(Clone, Debug, PartialEq)]
pub struct Hold {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    pub credit_type: CreditType,
    pub amount: i64,
    pub captured: i64,
    pub status: HoldStatus,
    pub description: Option<String>,
    pub metadata: Value,
    pub expires_at: DateTime<Utc>,
    pub ledger_id: Option<Uuid>,
    pub command_id: Uuid,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Part of a deduct or a hold drawn from one lot ([`POOL`]: the never-expiring pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub lot_id: Uuid,
    pub amount: i64,
    /// Given back (refunded, released) or passed on (captured) so far.
    pub returned: i64,
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
    pub now: DateTime<Utc>,
    /// The account rows of the batch's users: every credit type each user has (see
    /// [`State::insert_account`]).
    pub accounts: HashMap<AccountKey, Account>,
    /// Each loaded user's last entry number, the largest `entry_count` of the user's rows.
    pub last_seq: HashMap<UserKey, i64>,
    pub entries: HashMap<Uuid, EntryRef>,
    pub payments: HashMap<PaymentKey, Payment>,
    pub processed: HashMap<Uuid, Prior>,
    /// The unexpired lots of the batch's users, and any lot an allocation names.
    pub lots: HashMap<Uuid, Lot>,
    /// Holds the commands name, and the batch users' holds that are due to expire.
    pub holds: HashMap<Uuid, Hold>,
    /// Allocations of the deducts being refunded and of the holds being settled, by owner.
    pub allocations: HashMap<Uuid, Vec<Allocation>>,
    /// What each app records: the event types its endpoints subscribe to, its thresholds.
    pub rules: Arc<events::Rules>,
    /// The last event number of each loaded user of an app that records events.
    pub event_seq: HashMap<UserKey, i64>,
    /// Per account, the thresholds its `available` fell below (`balance.low` fired, not yet
    /// recovered); loaded for the accounts of apps that track alerts.
    pub alert_below: HashMap<AccountKey, BTreeSet<i64>>,
    /// Auto top-up attempts the commands name (charge results, their payments' webhooks).
    pub topup_attempts: HashMap<Uuid, topups::Attempt>,
    /// The auto top-up settings of those attempts' accounts.
    pub topup_settings: HashMap<AccountKey, topups::Settings>,
}

impl State {
    /// Adds a loaded account row, keeping its user's last entry number up to date. Every row of
    /// a user must be inserted before the fold numbers that user's next entry.
    pub fn insert_account(&mut self, key: AccountKey, account: Account) {
        let last = self.last_seq.entry((key.0, key.1.clone())).or_default();
        *last = (*last).max(account.entry_count);
        self.accounts.insert(key, account);
    }
}

/// A ledger row to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    pub credit_type: CreditType,
    pub seq: i64,
    pub entry_type: EntryType,
    pub amount: i64,
    pub balance_after: i64,
    pub source: &'static str,
    pub description: Option<String>,
    pub metadata: Value,
    pub refunded_ledger_id: Option<Uuid>,
    pub expires_at: Option<DateTime<Utc>>,
    pub lot_id: Option<Uuid>,
    pub hold_id: Option<Uuid>,
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
#[derive(Clone, Debug, Default)]
pub struct Effects {
    pub entries: Vec<NewEntry>,
    /// Commands finished by this batch, to record as processed.
    pub finished: Vec<(Envelope, Outcome)>,
    /// The answer to every command of the batch, duplicates included, in input order.
    pub answers: Vec<Outcome>,
    /// Payments credited or clawed back by this batch (their final state).
    pub payments: HashMap<PaymentKey, Payment>,
    pub webhooks: Vec<WebhookRecord>,
    /// Lots, holds and allocation owners created or changed (final state in [`State`]).
    pub lots: BTreeSet<Uuid>,
    pub holds: BTreeSet<Uuid>,
    pub allocations: BTreeSet<Uuid>,
    /// Per app, the system command that owns expiries written by this batch.
    pub system_commands: HashMap<Uuid, Uuid>,
    /// Events to record, in order (the outbox).
    pub events: Vec<events::NewEvent>,
    /// Users whose last event number changed (final value in [`State::event_seq`]).
    pub event_seqs: BTreeSet<UserKey>,
    /// Accounts whose alert state changed (final value in [`State::alert_below`]).
    pub alert_states: BTreeSet<AccountKey>,
    /// Whether an account of an app that records balance alerts crossed a threshold or 0 (a
    /// batch folded without the alert state must not be written).
    pub alert_crossings: bool,
    /// Auto top-up attempts changed (final state in [`State::topup_attempts`]).
    pub topup_attempts: BTreeSet<Uuid>,
    /// Auto top-up settings changed (final state in [`State::topup_settings`]).
    pub topup_settings: BTreeSet<AccountKey>,
    /// Accounts with an auto top-up that a change left below its threshold: the store makes
    /// an attempt for each where none is pending.
    pub topup_due: BTreeSet<AccountKey>,
}

impl Effects {
    /// The accounts this batch changed, with their final state.
    pub fn changed_accounts<'a>(&self, state: &'a State) -> Vec<(&'a AccountKey, &'a Account)> {
        let mut keys: Vec<AccountKey> = self
            .entries
            .iter()
            .map(|entry| {
                (
                    entry.app_id,
                    entry.user_id.clone(),
                    entry.credit_type.clone(),
                )
            })
            .chain(
                self.holds
                    .iter()
                    .filter_map(|id| state.holds.get(id))
                    .map(|h| (h.app_id, h.user_id.clone(), h.credit_type.clone())),
            )
            .collect();
        keys.sort();
        keys.dedup();
        keys.iter()
            .filter_map(|key| state.accounts.get_key_value(key))
            .collect()
    }
}

/// Applies `commands` in order to `state`, returning what to write and what to answer. Lots
/// and holds already due at `state.now` expire first.
pub fn fold(state: &mut State, commands: &[Envelope]) -> Effects {
    let mut effects = Effects::default();
    expire_due(state, &mut effects);
    for envelope in commands {
        if let Some(prior) = state.processed.get(&envelope.command_id) {
            effects.answers.push(answer_duplicate(envelope, prior));
            continue;
        }
        let mut step = Step {
            state,
            effects: &mut effects,
            command_id: envelope.command_id,
            app_id: envelope.app_id,
            accepted_at: envelope.accepted_at,
            source: envelope.origin.as_str(),
            touched: Vec::new(),
        };
        let outcome = step.apply(&envelope.command);
        step.record_alerts();
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

/// Expires every loaded lot and hold whose time has come, under a system command per app.
fn expire_due(state: &mut State, effects: &mut Effects) {
    let now = state.now;
    let mut due_lots: Vec<(DateTime<Utc>, Uuid)> = state
        .lots
        .values()
        .filter(|lot| lot.expired_at.is_none() && lot.expires_at <= now)
        .map(|lot| (lot.expires_at, lot.id))
        .collect();
    due_lots.sort();
    for (_, lot_id) in due_lots {
        let app_id = state.lots[&lot_id].app_id;
        let mut step = Step::system(state, effects, app_id);
        step.expire_lot(lot_id);
        step.record_alerts();
    }
    let mut due_holds: Vec<(DateTime<Utc>, Uuid)> = state
        .holds
        .values()
        .filter(|hold| hold.status == HoldStatus::Active && hold.expires_at <= now)
        .map(|hold| (hold.expires_at, hold.id))
        .collect();
    due_holds.sort();
    for (_, hold_id) in due_holds {
        let app_id = state.holds[&hold_id].app_id;
        let mut step = Step::system(state, effects, app_id);
        step.settle_hold(hold_id, 0, HoldStatus::Expired);
        step.record_alerts();
    }
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

fn field_error(field: &str, extra: Value) -> Map<String, Value> {
    let mut fields = extra.as_object().cloned().unwrap_or_default();
    fields.insert("field".into(), json!(field));
    fields
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// An entry to append, before it is numbered.
struct Draft {
    /// Preset when something else (a lot) must carry the entry's id.
    id: Option<Uuid>,
    entry_type: EntryType,
    amount: i64,
    source: &'static str,
    description: Option<String>,
    metadata: Value,
    refunded_ledger_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    lot_id: Option<Uuid>,
    hold_id: Option<Uuid>,
}

impl Draft {
    fn new(entry_type: EntryType, amount: i64, source: &'static str) -> Self {
        Self {
            id: None,
            entry_type,
            amount,
            source,
            description: None,
            metadata: json!({}),
            refunded_ledger_id: None,
            expires_at: None,
            lot_id: None,
            hold_id: None,
        }
    }
}

/// One command (or one system action) being applied.
struct Step<'a> {
    state: &'a mut State,
    effects: &'a mut Effects,
    command_id: Uuid,
    app_id: Uuid,
    accepted_at: DateTime<Utc>,
    /// The `source` of the entries a command writes (`api` or `dashboard`).
    source: &'static str,
    /// The accounts this step changed, each with its `available` before the first change:
    /// balance alerts are decided from them when the step ends.
    touched: Vec<(AccountKey, i64)>,
}

impl<'a> Step<'a> {
    /// A step for what the system does by itself (expiries), under the app's system command.
    fn system(state: &'a mut State, effects: &'a mut Effects, app_id: Uuid) -> Self {
        let command_id = *effects
            .system_commands
            .entry(app_id)
            .or_insert_with(Uuid::now_v7);
        let accepted_at = state.now;
        Self {
            state,
            effects,
            command_id,
            app_id,
            accepted_at,
            source: "system",
            touched: Vec::new(),
        }
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Add {
                user_id,
                amount,
                credit_type,
                description,
                metadata,
                expires_at,
            } => {
                let key = self.key(user_id, credit_type);
                self.add(&key, *amount, description, metadata, *expires_at)
            }
            Command::Deduct {
                user_id,
                amount,
                credit_type,
                description,
                metadata,
            } => {
                let key = self.key(user_id, credit_type);
                self.deduct(&key, *amount, description, metadata)
            }
            Command::Refund {
                user_id,
                ledger_id,
                amount,
                description,
                metadata,
            } => self.refund(user_id, *ledger_id, *amount, description, metadata),
            Command::Hold {
                user_id,
                amount,
                credit_type,
                expires_in_seconds,
                description,
                metadata,
            } => {
                let key = self.key(user_id, credit_type);
                self.hold(&key, *amount, *expires_in_seconds, description, metadata)
            }
            Command::Capture {
                user_id,
                hold_id,
                amount,
            } => self.capture(user_id, *hold_id, *amount),
            Command::Release { user_id, hold_id } => self.release(user_id, *hold_id),
            Command::Webhook(event) => self.webhook(event),
            Command::AtomicBatch { operations, .. } => self.atomic_batch(operations),
            Command::AutoTopupCharge {
                attempt_id, result, ..
            } => self.auto_topup_charge(*attempt_id, result),
        }
    }

    fn id(&self) -> Uuid {
        self.command_id
    }

    /// The account of this command's app, `user_id` and `credit_type`.
    fn key(&self, user_id: &str, credit_type: &CreditType) -> AccountKey {
        (self.app_id, user_id.to_string(), credit_type.clone())
    }

    fn account(&mut self, key: &AccountKey) -> Account {
        *self.account_mut(key)
    }

    fn account_mut(&mut self, key: &AccountKey) -> &mut Account {
        if !self.state.accounts.contains_key(key) {
            self.state.insert_account(key.clone(), Account::default());
        }
        let account = self.state.accounts.get_mut(key).expect("inserted above");
        if !self.touched.iter().any(|(touched, _)| touched == key) {
            self.touched.push((key.clone(), account.available()));
        }
        account
    }

    /// Records an event of this step's app for `user_id`, numbered after the user's last.
    fn emit(
        &mut self,
        user_id: &str,
        event_type: EventType,
        ledger_id: Option<Uuid>,
        data: Option<Value>,
    ) {
        let user = (self.app_id, user_id.to_string());
        let sequence = {
            let last = self.state.event_seq.entry(user.clone()).or_default();
            *last += 1;
            *last
        };
        self.effects.event_seqs.insert(user);
        self.effects.events.push(events::NewEvent {
            id: Uuid::now_v7(),
            app_id: self.app_id,
            user_id: user_id.to_string(),
            event_type,
            sequence,
            ledger_id,
            data,
        });
    }

    /// Whether this step's app records events of `event_type`.
    fn records(&self, event_type: EventType) -> bool {
        self.state
            .rules
            .get(&self.app_id)
            .is_some_and(|rules| rules.records(event_type))
    }

    /// Decides the balance alerts of the accounts this step changed, from their `available`
    /// before and after it.
    fn record_alerts(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        let Some(rules) = self.state.rules.get(&self.app_id).cloned() else {
            return;
        };
        self.note_topups_due(&rules, &touched);
        if !rules.tracks_alerts() && !rules.records(EventType::BalanceDepleted) {
            return;
        }
        for (key, before) in touched {
            // An account an atomic batch created and then undid is gone again.
            let Some(&after) = self.state.accounts.get(&key) else {
                continue;
            };
            let thresholds = rules.thresholds(&key.1, &key.2);
            if !events::crosses(thresholds, before, after.available()) {
                continue;
            }
            self.effects.alert_crossings = true;
            let below = self.state.alert_below.entry(key.clone()).or_default();
            let was = below.clone();
            let fired = events::alerts(thresholds, before, after.available(), below);
            if *below != was {
                self.effects.alert_states.insert(key.clone());
            }
            for alert in fired {
                if rules.records(alert.event_type) {
                    let data = events::alert_data(&alert, &key.2, after);
                    self.emit(&key.1, alert.event_type, None, Some(data));
                }
            }
        }
    }

    /// Appends an entry, numbered after the user's last one of any type, and updates the
    /// account. The caller has checked that the balance stays within `held..=i64::MAX`.
    fn write(&mut self, key: &AccountKey, draft: Draft) -> NewEntry {
        let (app_id, user_id, credit_type) = key;
        let seq = {
            let last = self
                .state
                .last_seq
                .entry((*app_id, user_id.clone()))
                .or_default();
            *last += 1;
            *last
        };
        let account = self.account_mut(key);
        let balance_after = account
            .balance
            .checked_add(draft.amount)
            .expect("caller checked the range");
        assert!(
            balance_after >= account.held,
            "balance may never fall below what is held"
        );
        account.balance = balance_after;
        account.entry_count = seq;
        let entry = NewEntry {
            id: draft.id.unwrap_or_else(Uuid::now_v7),
            app_id: *app_id,
            user_id: user_id.clone(),
            credit_type: credit_type.clone(),
            seq,
            entry_type: draft.entry_type,
            amount: draft.amount,
            balance_after,
            source: draft.source,
            description: draft.description,
            metadata: draft.metadata,
            refunded_ledger_id: draft.refunded_ledger_id,
            expires_at: draft.expires_at,
            lot_id: draft.lot_id,
            hold_id: draft.hold_id,
            command_id: self.command_id,
        };
        self.state.entries.insert(
            entry.id,
            EntryRef {
                app_id: *app_id,
                user_id: user_id.clone(),
                credit_type: credit_type.clone(),
                entry_type: draft.entry_type,
                amount: draft.amount,
                reversed: 0,
            },
        );
        self.effects.entries.push(entry.clone());
        let event_type = events::entry_event(entry.entry_type);
        if self.records(event_type) {
            self.emit(user_id, event_type, Some(entry.id), None);
        }
        entry
    }

    /// Writes an entry granting credits; with an expiry the credits form a lot whose id is the
    /// entry's.
    fn grant(
        &mut self,
        key: &AccountKey,
        mut draft: Draft,
        expires_at: Option<DateTime<Utc>>,
    ) -> NewEntry {
        draft.expires_at = expires_at;
        if expires_at.is_some() {
            let id = Uuid::now_v7();
            draft.id = Some(id);
            draft.lot_id = Some(id);
        }
        let entry = self.write(key, draft);
        if let Some(expires_at) = expires_at {
            self.grant_lot(&entry, expires_at);
        }
        entry
    }

    /// Starts a lot for credits just granted by `entry`; expires it at once if already due.
    fn grant_lot(&mut self, entry: &NewEntry, expires_at: DateTime<Utc>) {
        let lot = Lot {
            id: entry.id,
            app_id: entry.app_id,
            user_id: entry.user_id.clone(),
            credit_type: entry.credit_type.clone(),
            amount: entry.amount,
            remaining: entry.amount,
            expires_at,
            expired_at: None,
        };
        self.state.lots.insert(lot.id, lot);
        self.effects.lots.insert(entry.id);
        if expires_at <= self.state.now {
            self.expire_lot(entry.id);
        }
    }

    /// Writes the expiry of what is left of a lot.
    fn expire_lot(&mut self, lot_id: Uuid) {
        let now = self.state.now;
        let Some(lot) = self.state.lots.get_mut(&lot_id) else {
            return;
        };
        let left = lot.remaining;
        let key = (lot.app_id, lot.user_id.clone(), lot.credit_type.clone());
        lot.remaining = 0;
        lot.expired_at = Some(now);
        self.effects.lots.insert(lot_id);
        if left > 0 {
            self.write_expiry(&key, lot_id, left);
        }
    }

    fn write_expiry(&mut self, key: &AccountKey, lot_id: Uuid, amount: i64) {
        let mut draft = Draft::new(EntryType::Expire, -amount, "system");
        draft.description = Some("credits expired".into());
        draft.lot_id = Some(lot_id);
        self.write(key, draft);
    }

    /// Takes `amount` of the account's spendable credits out of its lots (soonest-expiring
    /// first, `prefer` before all) and then its pool. The caller has checked
    /// `available >= amount`.
    fn burn(&mut self, key: &AccountKey, amount: i64, prefer: Option<Uuid>) -> Vec<Allocation> {
        let now = self.state.now;
        let (app_id, user_id, credit_type) = key;
        let mut candidates: Vec<(bool, DateTime<Utc>, Uuid)> = self
            .state
            .lots
            .values()
            .filter(|lot| {
                lot.app_id == *app_id
                    && lot.user_id == *user_id
                    && lot.credit_type == *credit_type
                    && lot.live(now)
                    && lot.remaining > 0
            })
            .map(|lot| (Some(lot.id) != prefer, lot.expires_at, lot.id))
            .collect();
        candidates.sort();
        let mut left = amount;
        let mut taken = Vec::new();
        for (_, _, lot_id) in candidates {
            if left == 0 {
                break;
            }
            let lot = self.state.lots.get_mut(&lot_id).expect("candidate lot");
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
            self.effects.lots.insert(lot_id);
            taken.push(Allocation {
                lot_id,
                amount: take,
                returned: 0,
            });
        }
        if left > 0 {
            taken.push(Allocation {
                lot_id: POOL,
                amount: left,
                returned: 0,
            });
        }
        taken
    }

    /// Gives `amount` back to the lots of `owner`'s allocations, last drawn first. Credits whose
    /// lot has expired meanwhile are returned as `(lot, credits)` for the caller to expire.
    fn give_back(&mut self, owner: Uuid, amount: i64) -> Vec<(Uuid, i64)> {
        let now = self.state.now;
        let mut allocations = self.state.allocations.remove(&owner).unwrap_or_default();
        let mut left = amount;
        let mut expired = Vec::new();
        for allocation in allocations.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let give = left.min(allocation.amount - allocation.returned);
            if give == 0 {
                continue;
            }
            allocation.returned += give;
            left -= give;
            if allocation.lot_id == POOL {
                continue;
            }
            match self.state.lots.get_mut(&allocation.lot_id) {
                Some(lot) if lot.live(now) => {
                    lot.remaining += give;
                    self.effects.lots.insert(allocation.lot_id);
                }
                Some(_) => expired.push((allocation.lot_id, give)),
                None => {}
            }
        }
        if !allocations.is_empty() {
            self.state.allocations.insert(owner, allocations);
            self.effects.allocations.insert(owner);
        }
        expired
    }

    /// Keeps what `owner` drew from lots, so a refund or a release can give it back. Draws from
    /// the pool alone are not kept: giving back to the pool changes nothing but the balance,
    /// which the refund or release writes anyway, so a deduct of a user without lots writes no
    /// allocation row.
    fn record_allocations(&mut self, owner: Uuid, allocations: Vec<Allocation>) {
        if allocations
            .iter()
            .any(|allocation| allocation.lot_id != POOL)
        {
            self.state.allocations.insert(owner, allocations);
            self.effects.allocations.insert(owner);
        }
    }

    fn add(
        &mut self,
        key: &AccountKey,
        amount: i64,
        description: &Option<String>,
        metadata: &Map<String, Value>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Outcome {
        let account = self.account(key);
        if account.balance.checked_add(amount).is_none() {
            return self.overflow(key, account, amount);
        }
        let mut draft = Draft::new(EntryType::Add, amount, self.source);
        draft.description = description.clone();
        draft.metadata = Value::Object(metadata.clone());
        let entry = self.grant(key, draft, expires_at);
        applied(
            self.id(),
            json!({ "success": true, "user_id": key.1, "credit_type": key.2,
                    "balance_after": entry.balance_after, "ledger_id": entry.id }),
        )
    }

    fn overflow(&self, key: &AccountKey, account: Account, amount: i64) -> Outcome {
        rejection(
            self.id(),
            ErrorCode::BalanceOverflow,
            format!(
                "{} has {}; adding {amount} would pass the largest balance ({})",
                key.1,
                credits_of(account.balance, &key.2),
                i64::MAX
            ),
            balance_fields(account),
        )
    }

    fn insufficient(&self, key: &AccountKey, account: Account, amount: i64) -> Outcome {
        let message = if account.held > 0 {
            format!(
                "{} has {} available ({} held), {amount} requested",
                key.1,
                credits_of(account.available(), &key.2),
                account.held
            )
        } else {
            format!(
                "{} has {}, {amount} requested",
                key.1,
                credits_of(account.balance, &key.2)
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
        key: &AccountKey,
        amount: i64,
        description: &Option<String>,
        metadata: &Map<String, Value>,
    ) -> Outcome {
        let account = self.account(key);
        if account.available() < amount {
            return self.insufficient(key, account, amount);
        }
        let allocations = self.burn(key, amount, None);
        let mut draft = Draft::new(EntryType::Deduct, -amount, self.source);
        draft.description = description.clone();
        draft.metadata = Value::Object(metadata.clone());
        let entry = self.write(key, draft);
        self.record_allocations(entry.id, allocations);
        applied(
            self.id(),
            json!({ "success": true, "user_id": key.1, "credit_type": key.2,
                    "balance_after": entry.balance_after, "ledger_id": entry.id }),
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
        let app_id = self.app_id;
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
                field_error("amount", json!({ "refundable": left })),
            );
        }
        // A refund acts on the balance of the entry's own type.
        let key = self.key(user_id, &target.credit_type);
        let account = self.account(&key);
        let (signed, expired, drawn) = if target.entry_type == EntryType::Deduct {
            if account.balance.checked_add(amount).is_none() {
                return self.overflow(&key, account, amount);
            }
            (amount, self.give_back(ledger_id, amount), Vec::new())
        } else {
            if account.available() < amount {
                return self.insufficient(&key, account, amount);
            }
            let drawn = self.burn(&key, amount, Some(ledger_id));
            (-amount, Vec::new(), drawn)
        };
        let mut draft = Draft::new(EntryType::Refund, signed, self.source);
        draft.description = description.clone();
        draft.metadata = Value::Object(metadata.clone());
        draft.refunded_ledger_id = Some(ledger_id);
        let entry = self.write(&key, draft);
        // Never given back (a refund is not refundable), but kept so every lot's credits are
        // accounted for (`tally verify`: lot conservation).
        self.record_allocations(entry.id, drawn);
        if let Some(target) = self.state.entries.get_mut(&ledger_id) {
            target.reversed += amount;
        }
        for (lot_id, credits) in expired {
            self.write_expiry(&key, lot_id, credits);
        }
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "credit_type": key.2,
                    "balance_after": entry.balance_after, "ledger_id": entry.id,
                    "refunded_ledger_id": ledger_id }),
        )
    }

    fn hold(
        &mut self,
        key: &AccountKey,
        amount: i64,
        expires_in_seconds: i64,
        description: &Option<String>,
        metadata: &Map<String, Value>,
    ) -> Outcome {
        let account = self.account(key);
        if account.available() < amount {
            return self.insufficient(key, account, amount);
        }
        let allocations = self.burn(key, amount, None);
        let hold = Hold {
            id: Uuid::now_v7(),
            app_id: self.app_id,
            user_id: key.1.clone(),
            credit_type: key.2.clone(),
            amount,
            captured: 0,
            status: HoldStatus::Active,
            description: description.clone(),
            metadata: Value::Object(metadata.clone()),
            expires_at: self.accepted_at + chrono::Duration::seconds(expires_in_seconds),
            ledger_id: None,
            command_id: self.command_id,
            finished_at: None,
        };
        let account = self.account_mut(key);
        account.held += amount;
        let account = *account;
        self.record_allocations(hold.id, allocations);
        self.effects.holds.insert(hold.id);
        let body = json!({ "success": true, "user_id": key.1, "credit_type": key.2,
                           "hold_id": hold.id, "amount": amount, "balance": account.balance,
                           "available": account.available(),
                           "expires_at": rfc3339(hold.expires_at) });
        self.state.holds.insert(hold.id, hold);
        applied(self.id(), body)
    }

    /// The hold `hold_id` of this app and user if it is still active; else the answer.
    fn active_hold(&self, user_id: &str, hold_id: Uuid) -> Result<Hold, Outcome> {
        match self.state.holds.get(&hold_id) {
            Some(hold) if hold.app_id == self.app_id && hold.user_id == user_id => {
                if hold.status == HoldStatus::Active {
                    Ok(hold.clone())
                } else {
                    Err(rejection(
                        self.id(),
                        ErrorCode::HoldNotActive,
                        format!("hold {hold_id} is {}", hold.status.as_str()),
                        json!({ "status": hold.status.as_str() })
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    ))
                }
            }
            _ => Err(rejection(
                self.id(),
                ErrorCode::NotFound,
                format!("no hold {hold_id}"),
                Map::new(),
            )),
        }
    }

    fn capture(&mut self, user_id: &str, hold_id: Uuid, amount: Option<i64>) -> Outcome {
        let hold = match self.active_hold(user_id, hold_id) {
            Ok(hold) => hold,
            Err(answer) => return answer,
        };
        let amount = amount.unwrap_or(hold.amount);
        if amount > hold.amount {
            return rejection(
                self.id(),
                ErrorCode::InvalidRequest,
                format!(
                    "amount: the hold has {} credits, {amount} requested",
                    hold.amount
                ),
                field_error("amount", json!({ "held": hold.amount })),
            );
        }
        let ledger_id = self
            .settle_hold(hold_id, amount, HoldStatus::Captured)
            .expect("a capture writes a deduct");
        let key = self.key(user_id, &hold.credit_type);
        let account = self.account(&key);
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "credit_type": key.2,
                    "hold_id": hold_id, "ledger_id": ledger_id, "captured": amount,
                    "released": hold.amount - amount, "balance_after": account.balance }),
        )
    }

    fn release(&mut self, user_id: &str, hold_id: Uuid) -> Outcome {
        let hold = match self.active_hold(user_id, hold_id) {
            Ok(hold) => hold,
            Err(answer) => return answer,
        };
        self.settle_hold(hold_id, 0, HoldStatus::Released);
        let key = self.key(user_id, &hold.credit_type);
        let account = self.account(&key);
        applied(
            self.id(),
            json!({ "success": true, "user_id": user_id, "credit_type": key.2,
                    "hold_id": hold_id, "released": hold.amount, "balance": account.balance,
                    "available": account.available() }),
        )
    }

    /// Ends an active hold: `captured` credits are charged by a deduct entry (burning the lots
    /// the hold reserved, soonest-expiring first), the rest goes back to its lots. Returns the
    /// deduct entry's id.
    fn settle_hold(&mut self, hold_id: Uuid, captured: i64, status: HoldStatus) -> Option<Uuid> {
        let mut hold = self
            .state
            .holds
            .get(&hold_id)
            .cloned()
            .expect("settled holds are loaded");
        let key = (hold.app_id, hold.user_id.clone(), hold.credit_type.clone());
        self.account_mut(&key).held -= hold.amount;
        // The captured part moves, lot by lot, from the hold to the deduct entry.
        let mut moved = Vec::new();
        if let Some(allocations) = self.state.allocations.get_mut(&hold_id) {
            let mut left = captured;
            for allocation in allocations.iter_mut() {
                let take = left.min(allocation.amount - allocation.returned);
                if take > 0 {
                    allocation.returned += take;
                    left -= take;
                    moved.push(Allocation {
                        lot_id: allocation.lot_id,
                        amount: take,
                        returned: 0,
                    });
                }
            }
            self.effects.allocations.insert(hold_id);
        }
        let expired = self.give_back(hold_id, hold.amount - captured);
        let ledger_id = (captured > 0).then(|| {
            let mut draft = Draft::new(EntryType::Deduct, -captured, self.source);
            draft.description = hold.description.clone();
            draft.metadata = hold.metadata.clone();
            draft.hold_id = Some(hold_id);
            let entry = self.write(&key, draft);
            self.record_allocations(entry.id, moved);
            entry.id
        });
        for (lot_id, credits) in expired {
            self.write_expiry(&key, lot_id, credits);
        }
        if status == HoldStatus::Expired && self.records(EventType::HoldExpired) {
            let data = json!({ "hold_id": hold_id, "amount": hold.amount,
                               "credit_type": hold.credit_type });
            self.emit(&hold.user_id, EventType::HoldExpired, None, Some(data));
        }
        hold.captured = captured;
        hold.status = status;
        hold.ledger_id = ledger_id;
        hold.finished_at = Some(self.state.now);
        self.state.holds.insert(hold_id, hold);
        self.effects.holds.insert(hold_id);
        ledger_id
    }

    /// Applies adds, deducts and holds of one user in order, all or none: the first rejection
    /// undoes what the earlier operations did and answers `422 batch_rejected` naming it.
    fn atomic_batch(&mut self, operations: &[Command]) -> Outcome {
        let saved_state = self.state.clone();
        let saved_effects = self.effects.clone();
        let mut results = Vec::with_capacity(operations.len());
        for (index, operation) in operations.iter().enumerate() {
            let outcome = self.apply(operation);
            if outcome.status != Status::Applied {
                *self.state = saved_state;
                *self.effects = saved_effects;
                let mut body = ErrorCode::BatchRejected.body(format!(
                    "operations[{index}] was refused ({}); nothing of the batch was applied",
                    outcome.body["error"].as_str().unwrap_or("rejected")
                ));
                body["failed_index"] = json!(index);
                body["failed"] = outcome.body;
                return Outcome {
                    command_id: self.id(),
                    status: Status::Rejected,
                    http_status: ErrorCode::BatchRejected.status(),
                    body,
                };
            }
            results.push(json!({ "index": index, "status": outcome.http_status,
                                 "body": outcome.body }));
        }
        applied(self.id(), json!({ "results": results }))
    }
}

/// "40 credits" for the default type, "40 credits of type image" for another: the default's
/// messages read exactly as before types existed.
fn credits_of(amount: i64, credit_type: &CreditType) -> String {
    if credit_type.is_default() {
        format!("{amount} credits")
    } else {
        format!("{amount} credits of type {credit_type}")
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
    use tally_common::webhook::{WebhookAction, WebhookEvent};

    use super::*;

    /// The app of every test command (the ledger's submodules' tests use these too).
    pub(super) const APP: Uuid = Uuid::from_u128(7);

    /// `command` of [`APP`], accepted now.
    pub(super) fn envelope(command: Command) -> Envelope {
        Envelope {
            command_id: Uuid::now_v7(),
            app_id: APP,
            request_hash: None,
            accepted_at: Utc::now(),
            command,
            origin: Default::default(),
        }
    }

    fn add(user: &str, amount: i64) -> Envelope {
        envelope(Command::Add {
            user_id: user.into(),
            amount,
            credit_type: CreditType::default(),
            description: None,
            metadata: Map::new(),
            expires_at: None,
        })
    }

    fn deduct(user: &str, amount: i64) -> Envelope {
        envelope(Command::Deduct {
            user_id: user.into(),
            amount,
            credit_type: CreditType::default(),
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

    fn key(user: &str) -> AccountKey {
        (APP, user.to_string(), CreditType::default())
    }

    fn balance(state: &State, user: &str) -> i64 {
        state.accounts[&key(user)].balance
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
    fn entries_carry_the_origin_of_their_command_as_source() {
        let mut state = State::default();
        let mut manual = add("u", 30);
        manual.origin = tally_common::command::Origin::Dashboard;
        let effects = fold(&mut state, &[add("u", 10), manual, deduct("u", 1)]);
        let sources: Vec<_> = effects.entries.iter().map(|e| e.source).collect();
        assert_eq!(sources, ["api", "dashboard", "api"]);
        let added = effects.entries[1].id;
        let mut manual_refund = refund("u", added, Some(5));
        manual_refund.origin = tally_common::command::Origin::Dashboard;
        let effects = fold(&mut state, &[manual_refund]);
        assert_eq!(effects.entries[0].source, "dashboard");
        assert_eq!(balance(&state, "u"), 34);
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
        state.insert_account(
            key("u"),
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
                credit_type: CreditType::default(),
                expires_at: None,
                auto_topup: None,
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
                also: Vec::new(),
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
                also: Vec::new(),
            },
        );
        let effects = fold(&mut state, &[dispute]);
        assert_eq!(effects.entries[0].amount, -50);
        assert_eq!(effects.entries[0].metadata["unrecovered"], "450");
        assert_eq!(balance(&state, "u"), 0);
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn add_expiring(user: &str, amount: i64, expires_at: DateTime<Utc>) -> Envelope {
        envelope(Command::Add {
            user_id: user.into(),
            amount,
            credit_type: CreditType::default(),
            description: None,
            metadata: Map::new(),
            expires_at: Some(expires_at),
        })
    }

    fn hold(user: &str, amount: i64) -> Envelope {
        envelope(Command::Hold {
            user_id: user.into(),
            amount,
            credit_type: CreditType::default(),
            expires_in_seconds: 900,
            description: None,
            metadata: Map::new(),
        })
    }

    fn hold_id(outcome: &Outcome) -> Uuid {
        outcome.body["hold_id"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn hold_then_capture_less_charges_the_cost_and_releases_the_rest() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100), hold("u", 60)]);
        assert_eq!(effects.answers[1].body["available"], 40);
        assert_eq!(effects.answers[1].body["balance"], 100);
        let id = hold_id(&effects.answers[1]);
        let effects = fold(&mut state, &[deduct("u", 50)]);
        assert_eq!(
            effects.answers[0].http_status, 402,
            "a deduct sees only what is available"
        );
        let capture = envelope(Command::Capture {
            user_id: "u".into(),
            hold_id: id,
            amount: Some(25),
        });
        let effects = fold(&mut state, &[capture]);
        let body = &effects.answers[0].body;
        assert_eq!(
            (
                body["captured"].as_i64(),
                body["released"].as_i64(),
                body["balance_after"].as_i64()
            ),
            (Some(25), Some(35), Some(75))
        );
        assert_eq!(effects.entries[0].hold_id, Some(id));
        assert_eq!(state.accounts[&key("u")].held, 0);
        let again = envelope(Command::Release {
            user_id: "u".into(),
            hold_id: id,
        });
        let effects = fold(&mut state, &[again]);
        assert_eq!(effects.answers[0].http_status, 409);
        assert_eq!(effects.answers[0].body["error"], "hold_not_active");
    }

    #[test]
    fn capture_of_more_than_held_is_400_naming_amount() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 100), hold("u", 10)]);
        let id = hold_id(&effects.answers[1]);
        let effects = fold(
            &mut state,
            &[envelope(Command::Capture {
                user_id: "u".into(),
                hold_id: id,
                amount: Some(11),
            })],
        );
        assert_eq!(effects.answers[0].http_status, 400);
        assert_eq!(effects.answers[0].body["field"], "amount");
    }

    #[test]
    fn lots_burn_soonest_expiring_first_and_the_pool_last() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        let effects = fold(
            &mut state,
            &[
                add("u", 10),
                add_expiring("u", 10, at(200)),
                add_expiring("u", 10, at(100)),
            ],
        );
        let later = effects.entries[1].id;
        let sooner = effects.entries[2].id;
        fold(&mut state, &[deduct("u", 15)]);
        assert_eq!(state.lots[&sooner].remaining, 0);
        assert_eq!(state.lots[&later].remaining, 5);
        state.now = at(150);
        let effects = fold(&mut state, &[]);
        assert!(
            effects.entries.is_empty(),
            "an empty lot expires without an entry"
        );
        state.now = at(250);
        let effects = fold(&mut state, &[]);
        assert_eq!(effects.entries.len(), 1);
        assert_eq!(effects.entries[0].entry_type, EntryType::Expire);
        assert_eq!(effects.entries[0].amount, -5);
        assert_eq!(effects.entries[0].lot_id, Some(later));
        assert_eq!(effects.entries[0].source, "system");
        assert_eq!(balance(&state, "u"), 10, "the never-expiring credits stay");
        let effects = fold(&mut state, &[]);
        assert!(effects.entries.is_empty(), "a lot expires once");
    }

    #[test]
    fn a_refund_of_a_lot_records_what_it_drew_from_each_lot() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        let effects = fold(
            &mut state,
            &[
                add_expiring("u", 10, at(100)),
                add_expiring("u", 10, at(200)),
            ],
        );
        let (sooner, later) = (effects.entries[0].id, effects.entries[1].id);
        fold(&mut state, &[deduct("u", 5)]);
        let effects = fold(&mut state, &[refund("u", sooner, None)]);
        let refund_id = effects.entries[0].id;
        assert!(effects.allocations.contains(&refund_id));
        let drawn: Vec<(Uuid, i64)> = state.allocations[&refund_id]
            .iter()
            .map(|a| (a.lot_id, a.amount))
            .collect();
        assert_eq!(drawn, vec![(sooner, 5), (later, 5)]);
        assert_eq!(state.lots[&sooner].remaining, 0);
        assert_eq!(state.lots[&later].remaining, 5);
    }

    #[test]
    fn a_refund_into_an_expired_lot_expires_again_at_once() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        fold(&mut state, &[add_expiring("u", 10, at(100))]);
        let effects = fold(&mut state, &[deduct("u", 4)]);
        let deduct_id = effects.entries[0].id;
        state.now = at(101);
        let effects = fold(&mut state, &[refund("u", deduct_id, None)]);
        let kinds: Vec<(EntryType, i64)> = effects
            .entries
            .iter()
            .map(|e| (e.entry_type, e.amount))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EntryType::Expire, -6),
                (EntryType::Refund, 4),
                (EntryType::Expire, -4)
            ]
        );
        assert_eq!(balance(&state, "u"), 0);
    }

    #[test]
    fn a_hold_past_its_expiry_is_released_once() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        let mut reserve = hold("u", 30);
        reserve.accepted_at = at(0);
        let effects = fold(&mut state, &[add("u", 100), reserve]);
        let id = hold_id(&effects.answers[1]);
        state.now = at(901);
        let effects = fold(&mut state, &[]);
        assert_eq!(state.holds[&id].status, HoldStatus::Expired);
        assert!(effects.holds.contains(&id));
        assert_eq!(state.accounts[&key("u")].held, 0);
        let effects = fold(&mut state, &[]);
        assert!(effects.holds.is_empty());
        let effects = fold(
            &mut state,
            &[envelope(Command::Capture {
                user_id: "u".into(),
                hold_id: id,
                amount: None,
            })],
        );
        assert_eq!(effects.answers[0].body["error"], "hold_not_active");
    }

    #[test]
    fn credits_a_hold_reserved_from_a_lot_expire_when_the_hold_is_released_after_the_lot_expired() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        let mut reserve = hold("u", 8);
        reserve.accepted_at = at(0);
        let effects = fold(&mut state, &[add_expiring("u", 10, at(100)), reserve]);
        let id = hold_id(&effects.answers[1]);
        state.now = at(150);
        let effects = fold(
            &mut state,
            &[envelope(Command::Release {
                user_id: "u".into(),
                hold_id: id,
            })],
        );
        let amounts: Vec<i64> = effects.entries.iter().map(|e| e.amount).collect();
        assert_eq!(amounts, vec![-2, -8]);
        assert_eq!(balance(&state, "u"), 0);
    }

    fn typed(command: Command, credit_type: &str) -> Command {
        let credit_type = CreditType::parse(credit_type).unwrap();
        match command {
            Command::Add {
                user_id,
                amount,
                description,
                metadata,
                expires_at,
                ..
            } => Command::Add {
                user_id,
                amount,
                credit_type,
                description,
                metadata,
                expires_at,
            },
            Command::Deduct {
                user_id,
                amount,
                description,
                metadata,
                ..
            } => Command::Deduct {
                user_id,
                amount,
                credit_type,
                description,
                metadata,
            },
            Command::Hold {
                user_id,
                amount,
                expires_in_seconds,
                description,
                metadata,
                ..
            } => Command::Hold {
                user_id,
                amount,
                credit_type,
                expires_in_seconds,
                description,
                metadata,
            },
            other => other,
        }
    }

    fn of_type(envelope: Envelope, credit_type: &str) -> Envelope {
        Envelope {
            command: typed(envelope.command, credit_type),
            ..envelope
        }
    }

    fn typed_key(user: &str, credit_type: &str) -> AccountKey {
        (
            APP,
            user.to_string(),
            CreditType::parse(credit_type).unwrap(),
        )
    }

    #[test]
    fn each_credit_type_has_its_own_balance_and_entries_share_one_numbering() {
        let mut state = State::default();
        let effects = fold(
            &mut state,
            &[
                add("u", 100),
                of_type(add("u", 5), "image"),
                of_type(deduct("u", 3), "image"),
                of_type(deduct("u", 10), "image"),
                deduct("u", 10),
            ],
        );
        let seqs: Vec<i64> = effects.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(effects.answers[2].body["balance_after"], 2);
        assert_eq!(effects.answers[2].body["credit_type"], "image");
        assert_eq!(effects.answers[3].http_status, 402);
        assert_eq!(
            effects.answers[3].body["message"],
            "u has 2 credits of type image, 10 requested"
        );
        assert_eq!(effects.answers[4].body["balance_after"], 90);
        assert_eq!(effects.answers[4].body["credit_type"], "credits");
        assert_eq!(state.accounts[&typed_key("u", "image")].balance, 2);
        assert_eq!(state.accounts[&typed_key("u", "image")].entry_count, 3);
        assert_eq!(state.accounts[&key("u")].entry_count, 4);
        assert_eq!(state.last_seq[&(APP, "u".to_string())], 4);
    }

    #[test]
    fn a_user_loaded_with_several_types_numbers_after_the_largest() {
        let mut state = State::default();
        state.insert_account(
            key("u"),
            Account {
                balance: 10,
                held: 0,
                entry_count: 7,
            },
        );
        state.insert_account(
            typed_key("u", "chat"),
            Account {
                balance: 10,
                held: 0,
                entry_count: 9,
            },
        );
        let effects = fold(&mut state, &[deduct("u", 1)]);
        assert_eq!(effects.entries[0].seq, 10);
        assert_eq!(effects.entries[0].balance_after, 9);
    }

    #[test]
    fn refunds_captures_and_expiries_act_on_their_own_type() {
        let mut state = State {
            now: at(0),
            ..State::default()
        };
        let effects = fold(
            &mut state,
            &[
                of_type(add("u", 50), "image"),
                add("u", 50),
                of_type(add_expiring("u", 20, at(100)), "image"),
                of_type(deduct("u", 10), "image"),
                Envelope {
                    accepted_at: at(0),
                    ..of_type(hold("u", 10), "image")
                },
            ],
        );
        let image_deduct = effects.entries[3].id;
        assert_eq!(
            state.lots[&effects.entries[2].id].remaining, 0,
            "the image deduct and hold burned the image lot first"
        );
        let hold = hold_id(&effects.answers[4]);
        let effects = fold(
            &mut state,
            &[
                refund("u", image_deduct, Some(5)),
                envelope(Command::Capture {
                    user_id: "u".into(),
                    hold_id: hold,
                    amount: Some(4),
                }),
            ],
        );
        assert_eq!(effects.answers[0].body["credit_type"], "image");
        assert_eq!(effects.answers[1].body["credit_type"], "image");
        assert!(effects
            .entries
            .iter()
            .all(|entry| entry.credit_type.as_str() == "image"));
        assert_eq!(balance(&state, "u"), 50, "the default balance is untouched");
        assert_eq!(state.accounts[&typed_key("u", "image")].balance, 61);
        assert_eq!(state.accounts[&typed_key("u", "image")].held, 0);
        state.now = at(150);
        let effects = fold(&mut state, &[]);
        assert_eq!(
            effects.entries.len(),
            1,
            "what went back to the lot expires"
        );
        assert_eq!(effects.entries[0].credit_type.as_str(), "image");
        assert_eq!(effects.entries[0].amount, -11);
        assert_eq!(state.accounts[&typed_key("u", "image")].balance, 50);
    }

    #[test]
    fn a_payment_credits_its_named_type_and_its_clawback_takes_from_it() {
        let mut state = State::default();
        let mut payment = credit("evt_1", "pi_1", 100);
        if let Command::Webhook(event) = &mut payment.command {
            if let WebhookAction::Credit { credit_type, .. } = &mut event.action {
                *credit_type = CreditType::parse("chat").unwrap();
            }
        }
        fold(&mut state, &[add("u", 10), payment, refunded("evt_2", 500)]);
        assert_eq!(state.accounts[&typed_key("u", "chat")].balance, 50);
        assert_eq!(balance(&state, "u"), 10);
    }

    fn atomic(operations: Vec<Envelope>) -> Envelope {
        envelope(Command::AtomicBatch {
            user_id: "u".into(),
            operations: operations.into_iter().map(|e| e.command).collect(),
        })
    }

    #[test]
    fn an_atomic_batch_applies_every_operation_in_one_command() {
        let mut state = State::default();
        let effects = fold(
            &mut state,
            &[atomic(vec![
                add("u", 10),
                of_type(add("u", 4), "image"),
                deduct("u", 3),
                of_type(hold("u", 4), "image"),
            ])],
        );
        let answer = &effects.answers[0];
        assert_eq!(answer.http_status, 200);
        let results = answer.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[2]["index"], 2);
        assert_eq!(results[2]["status"], 200);
        assert_eq!(results[2]["body"]["balance_after"], 7);
        assert_eq!(results[3]["body"]["available"], 0);
        assert_eq!(effects.entries.len(), 3);
        assert!(effects
            .entries
            .iter()
            .all(|entry| entry.command_id == answer.command_id));
        assert_eq!(effects.finished.len(), 1);
    }

    #[test]
    fn an_atomic_batch_with_one_refusal_writes_nothing() {
        let mut state = State::default();
        fold(&mut state, &[add("u", 5)]);
        let before = state.accounts.clone();
        let effects = fold(
            &mut state,
            &[
                atomic(vec![
                    add("u", 10),
                    of_type(add("u", 4), "image"),
                    deduct("u", 100),
                    deduct("u", 1),
                ]),
                deduct("u", 1),
            ],
        );
        let answer = &effects.answers[0];
        assert_eq!(answer.status, Status::Rejected);
        assert_eq!(answer.http_status, 422);
        assert_eq!(answer.body["error"], "batch_rejected");
        assert_eq!(answer.body["failed_index"], 2);
        assert_eq!(answer.body["failed"]["error"], "insufficient_credits");
        assert_eq!(answer.body["failed"]["balance"], 15);
        assert_eq!(effects.entries.len(), 1, "only the deduct after the batch");
        assert_eq!(effects.entries[0].seq, 2);
        assert_eq!(effects.entries[0].balance_after, 4);
        assert!(!state.accounts.contains_key(&typed_key("u", "image")));
        assert_eq!(
            state.accounts[&key("u")].balance,
            before[&key("u")].balance - 1
        );
        assert_eq!(
            effects.finished.len(),
            2,
            "the refusal is recorded as an answer"
        );
    }

    fn rules(subscribed: &[EventType], thresholds: &[i64]) -> Arc<events::Rules> {
        let app = events::AppRules {
            subscribed: subscribed.iter().copied().collect(),
            default_thresholds: HashMap::from([(CreditType::default(), thresholds.to_vec())]),
            ..events::AppRules::default()
        };
        Arc::new(HashMap::from([(APP, Arc::new(app))]))
    }

    fn event_types(effects: &Effects) -> Vec<&'static str> {
        effects
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect()
    }

    #[test]
    fn an_app_that_records_nothing_gets_no_events() {
        let mut state = State::default();
        let effects = fold(&mut state, &[add("u", 10), deduct("u", 10)]);
        assert!(effects.events.is_empty());
        assert!(effects.event_seqs.is_empty());
        assert!(!effects.alert_crossings);
    }

    #[test]
    fn entries_of_subscribed_types_are_events_numbered_per_user() {
        let mut state = State {
            rules: rules(&[EventType::CreditsDeducted, EventType::CreditsAdded], &[]),
            ..State::default()
        };
        state.event_seq.insert((APP, "u".into()), 7);
        let effects = fold(&mut state, &[add("u", 10), deduct("u", 4), add("v", 1)]);
        assert_eq!(
            event_types(&effects),
            ["credits.added", "credits.deducted", "credits.added"]
        );
        let sequences: Vec<(String, i64)> = effects
            .events
            .iter()
            .map(|e| (e.user_id.clone(), e.sequence))
            .collect();
        assert_eq!(
            sequences,
            [("u".into(), 8), ("u".into(), 9), ("v".into(), 1)]
        );
        assert_eq!(effects.events[1].ledger_id, Some(effects.entries[1].id));
        assert_eq!(state.event_seq[&(APP, "u".to_string())], 9);
    }

    #[test]
    fn balance_alerts_fire_on_crossings_of_available_from_deducts_holds_and_expiries() {
        let all = [
            EventType::BalanceLow,
            EventType::BalanceDepleted,
            EventType::BalanceRecovered,
            EventType::HoldExpired,
        ];
        let mut state = State {
            now: at(0),
            rules: rules(&all, &[100, 50]),
            ..State::default()
        };
        let effects = fold(&mut state, &[add("u", 200), deduct("u", 120)]);
        assert_eq!(event_types(&effects), ["balance.low"]);
        assert_eq!(effects.events[0].data.as_ref().unwrap()["threshold"], 100);
        assert_eq!(effects.events[0].data.as_ref().unwrap()["available"], 80);
        assert!(effects.alert_crossings);
        let mut held = hold("u", 40);
        held.accepted_at = at(0);
        let effects = fold(&mut state, &[held, deduct("u", 1)]);
        assert_eq!(
            event_types(&effects),
            ["balance.low"],
            "a hold counts like a deduct"
        );
        assert_eq!(effects.events[0].data.as_ref().unwrap()["threshold"], 50);
        state.now = at(10_000);
        let effects = fold(&mut state, &[]);
        assert_eq!(
            event_types(&effects),
            ["hold.expired", "balance.recovered"],
            "the expired hold gives 40 back: available 39 -> 79"
        );
        let effects = fold(&mut state, &[deduct("u", 79)]);
        assert_eq!(event_types(&effects), ["balance.low", "balance.depleted"]);
        let effects = fold(&mut state, &[add("u", 500)]);
        assert_eq!(
            event_types(&effects),
            ["balance.recovered", "balance.recovered"]
        );
        let sequences: Vec<i64> = effects.events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, [7, 8]);
    }

    #[test]
    fn an_atomic_batch_refused_records_no_event() {
        let mut state = State {
            rules: rules(&[EventType::CreditsAdded, EventType::BalanceLow], &[5]),
            ..State::default()
        };
        let effects = fold(
            &mut state,
            &[atomic(vec![add("u", 10), deduct("u", 8), deduct("u", 100)])],
        );
        assert_eq!(effects.answers[0].http_status, 422);
        assert!(effects.events.is_empty(), "{:?}", effects.events);
        assert!(effects.event_seqs.is_empty());
        assert!(effects.alert_states.is_empty());
        assert!(!state.event_seq.contains_key(&(APP, "u".to_string())));
    }
}
