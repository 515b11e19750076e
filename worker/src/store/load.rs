//! The loaders of the full path: what a batch's commands read, fetched with set-based
//! statements and locked (`FOR UPDATE`) until the batch commits.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Row, Transaction};
use tally_common::command::{Command, Envelope, Outcome, Status};
use tally_common::credit_type::CreditType;
use tally_common::plans::ChargeError;
use tally_common::webhook::{Provider, WebhookAction};
use uuid::Uuid;

use crate::ledger::{
    self, topups, Account, AccountKey, Allocation, EntryRef, EntryType, Hold, HoldStatus, Lot,
    Payment, Prior, State,
};

/// The stored answers of the batch's command ids (a repeat is answered as the first time), with
/// the request hashes that tell a repeat from a conflicting reuse of an idempotency key.
pub(super) async fn processed(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[&Envelope],
    state: &mut State,
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = envelopes.iter().map(|e| e.command_id).collect();
    let rows = sqlx::query(
        "SELECT command_id, status, http_status, response, request_hash
         FROM processed_commands WHERE command_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let command_id: Uuid = row.get(0);
        let status: String = row.get(1);
        let outcome = match status.as_str() {
            "applied" | "rejected" => Some(Outcome {
                command_id,
                status: if status == "applied" {
                    Status::Applied
                } else {
                    Status::Rejected
                },
                http_status: row.get::<Option<i16>, _>(2).unwrap_or(200) as u16,
                body: row.get::<Option<Value>, _>(3).unwrap_or(Value::Null),
            }),
            _ => None,
        };
        state.processed.insert(
            command_id,
            Prior {
                outcome,
                request_hash: row.get(4),
            },
        );
    }
    Ok(())
}

/// Users every command of the batch may write, sorted so that concurrent batches lock in one
/// order.
pub(super) fn users(envelopes: &[&Envelope]) -> BTreeSet<(Uuid, String)> {
    envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Webhook(event) => match &event.action {
                WebhookAction::Credit { user_id, .. }
                | WebhookAction::CreditLines { user_id, .. }
                | WebhookAction::Clawback { user_id, .. }
                | WebhookAction::AutoTopupFailed { user_id, .. } => {
                    Some((e.app_id, user_id.clone()))
                }
                _ => None,
            },
            command => Some((e.app_id, command.user_id().to_string())),
        })
        .collect()
}

/// The account rows (user and credit type) the batch's commands grant to or spend from by
/// name, which may not exist yet. Refunds, captures, releases and clawbacks act on the type of
/// the entry, hold or payment they name, whose row exists already.
pub(super) fn named_accounts(envelopes: &[&Envelope]) -> BTreeSet<AccountKey> {
    fn named(app_id: Uuid, command: &Command, rows: &mut BTreeSet<AccountKey>) {
        match command {
            Command::Add {
                user_id,
                credit_type,
                ..
            }
            | Command::Deduct {
                user_id,
                credit_type,
                ..
            }
            | Command::Hold {
                user_id,
                credit_type,
                ..
            } => {
                rows.insert((app_id, user_id.clone(), credit_type.clone()));
            }
            Command::Webhook(event) => match &event.action {
                WebhookAction::Credit {
                    user_id,
                    credit_type,
                    ..
                } => {
                    rows.insert((app_id, user_id.clone(), credit_type.clone()));
                }
                WebhookAction::CreditLines { user_id, lines } => {
                    for line in lines {
                        rows.insert((app_id, user_id.clone(), line.credit_type.clone()));
                    }
                }
                _ => {}
            },
            Command::AtomicBatch { operations, .. } => {
                for operation in operations {
                    named(app_id, operation, rows);
                }
            }
            Command::Refund { .. }
            | Command::Capture { .. }
            | Command::Release { .. }
            | Command::AutoTopupCharge { .. } => {}
        }
    }
    let mut rows = BTreeSet::new();
    for envelope in envelopes {
        named(envelope.app_id, &envelope.command, &mut rows);
    }
    rows
}

/// Creates the `named` account rows that are new, then locks and loads every row (every credit
/// type) of every user, in key order.
pub(super) async fn accounts(
    tx: &mut Transaction<'_, Postgres>,
    users: &BTreeSet<(Uuid, String)>,
    named: &BTreeSet<AccountKey>,
    state: &mut State,
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    if !named.is_empty() {
        let apps: Vec<Uuid> = named.iter().map(|k| k.0).collect();
        let ids: Vec<&str> = named.iter().map(|k| k.1.as_str()).collect();
        let types: Vec<&str> = named.iter().map(|k| k.2.as_str()).collect();
        sqlx::query(
            "INSERT INTO accounts (app_id, user_id, credit_type)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&apps)
        .bind(&ids)
        .bind(&types)
        .execute(&mut **tx)
        .await?;
    }
    let (apps, ids): (Vec<Uuid>, Vec<String>) = users.iter().cloned().unzip();
    let rows = sqlx::query(
        "SELECT a.app_id, a.user_id, a.credit_type, a.balance, a.held, a.entry_count
         FROM accounts a JOIN UNNEST($1::uuid[], $2::text[]) AS k(app_id, user_id)
           ON a.app_id = k.app_id AND a.user_id = k.user_id
         ORDER BY a.app_id, a.user_id COLLATE \"C\", a.credit_type COLLATE \"C\" FOR UPDATE OF a",
    )
    .bind(&apps)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let credit_type = CreditType::parse(row.get::<&str, _>(2)).expect("constrained by the API");
        state.insert_account(
            (row.get(0), row.get(1), credit_type),
            Account {
                balance: row.get(3),
                held: row.get(4),
                entry_count: row.get(5),
            },
        );
    }
    Ok(())
}

/// Locks and loads the last event number of each of `users`, and the alert state of their
/// accounts when the app tracks alerts. Users of apps that record nothing get theirs too: the
/// account cache keeps it, so the fast path can number their events as soon as their app
/// starts recording (the fast batch checks it against the row, so a stale one is harmless).
pub(super) async fn event_state(
    tx: &mut Transaction<'_, Postgres>,
    users: &BTreeSet<(Uuid, String)>,
    state: &mut State,
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = users.iter().map(|user| user.0).collect();
    let ids: Vec<&str> = users.iter().map(|user| user.1.as_str()).collect();
    let rows: Vec<(Uuid, String, i64)> = sqlx::query_as(
        "SELECT s.app_id, s.user_id, s.last_seq
         FROM event_sequences s JOIN UNNEST($1::uuid[], $2::text[]) AS k(app_id, user_id)
           ON s.app_id = k.app_id AND s.user_id = k.user_id
         ORDER BY s.app_id, s.user_id COLLATE \"C\" FOR UPDATE OF s",
    )
    .bind(&apps)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for user in users {
        state.event_seq.insert(user.clone(), 0);
    }
    for (app_id, user_id, last_seq) in rows {
        state.event_seq.insert((app_id, user_id), last_seq);
    }
    let tracking: Vec<&(Uuid, String)> = users
        .iter()
        .filter(|(app_id, _)| {
            state
                .rules
                .get(app_id)
                .is_some_and(|rules| rules.tracks_alerts())
        })
        .collect();
    if tracking.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = tracking.iter().map(|user| user.0).collect();
    let ids: Vec<&str> = tracking.iter().map(|user| user.1.as_str()).collect();
    let rows: Vec<(Uuid, String, String, Vec<i64>)> = sqlx::query_as(
        "SELECT s.app_id, s.user_id, s.credit_type, s.below
         FROM balance_alert_state s JOIN UNNEST($1::uuid[], $2::text[]) AS k(app_id, user_id)
           ON s.app_id = k.app_id AND s.user_id = k.user_id
         ORDER BY s.app_id, s.user_id COLLATE \"C\", s.credit_type COLLATE \"C\"
         FOR UPDATE OF s",
    )
    .bind(&apps)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for (app_id, user_id, credit_type, below) in rows {
        state.alert_below.insert(
            (app_id, user_id, stored_type(&credit_type)),
            below.into_iter().collect(),
        );
    }
    Ok(())
}

/// The payments the batch's webhook commands credit or claw back.
fn payment_keys(envelopes: &[&Envelope]) -> BTreeSet<(Uuid, Provider, String)> {
    let mut keys = BTreeSet::new();
    for e in envelopes {
        let Command::Webhook(event) = &e.command else {
            continue;
        };
        let mut key = |payment_ref: &String| {
            keys.insert((e.app_id, event.provider, payment_ref.clone()));
        };
        match &event.action {
            WebhookAction::Credit { payment_ref, .. } => key(payment_ref),
            WebhookAction::Clawback {
                payment_ref, also, ..
            } => {
                key(payment_ref);
                also.iter().for_each(key);
            }
            WebhookAction::CreditLines { lines, .. } => {
                lines.iter().for_each(|line| key(&line.payment_ref))
            }
            _ => {}
        }
    }
    keys
}

/// Locks and loads the payments the batch's webhook commands name.
pub(super) async fn payments(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[&Envelope],
    state: &mut State,
) -> Result<(), sqlx::Error> {
    let keys = payment_keys(envelopes);
    if keys.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let providers: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let refs: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let rows = sqlx::query(
        "SELECT p.app_id, p.provider, p.payment_ref, p.ledger_id, p.user_id, p.credits,
                p.amount_minor, p.refunded_minor, p.disputed_minor, p.clawed_credits,
                p.unrecovered_credits, p.credit_type, p.refund_ref
         FROM payments p JOIN UNNEST($1::uuid[], $2::text[], $3::text[]) AS k(app_id, provider, payment_ref)
           ON p.app_id = k.app_id AND p.provider = k.provider AND p.payment_ref = k.payment_ref
         ORDER BY 1, 2, 3 FOR UPDATE OF p",
    )
    .bind(&apps)
    .bind(&providers)
    .bind(&refs)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let provider = Provider::parse(row.get::<&str, _>(1)).expect("constrained by the schema");
        state.payments.insert(
            (row.get(0), provider, row.get(2)),
            Payment {
                ledger_id: row.get(3),
                user_id: row.get(4),
                credits: row.get(5),
                amount_minor: row.get(6),
                refunded_minor: row.get(7),
                disputed_minor: row.get(8),
                clawed_credits: row.get(9),
                unrecovered_credits: row.get(10),
                credit_type: stored_type(row.get(11)),
                refund_ref: row.get(12),
            },
        );
    }
    Ok(())
}

/// Loads the entries that refunds and clawbacks take back from, with how much of each has
/// been taken back already.
pub(super) async fn entries(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[&Envelope],
    state: &mut State,
) -> Result<(), sqlx::Error> {
    let mut ids: Vec<Uuid> = envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Refund { ledger_id, .. } => Some(*ledger_id),
            _ => None,
        })
        .collect();
    ids.extend(state.payments.values().map(|payment| payment.ledger_id));
    if ids.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT e.id, e.app_id, e.user_id, e.type, e.amount, e.credit_type,
                COALESCE((SELECT sum(abs(r.amount) + COALESCE((r.metadata->>'unrecovered')::bigint, 0))
                          FROM ledger_entries r WHERE r.refunded_ledger_id = e.id), 0)::bigint
         FROM ledger_entries e WHERE e.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        state.entries.insert(
            row.get(0),
            EntryRef {
                app_id: row.get(1),
                user_id: row.get(2),
                entry_type: EntryType::parse(row.get::<&str, _>(3))
                    .expect("constrained by the schema"),
                amount: row.get(4),
                credit_type: stored_type(row.get(5)),
                reversed: row.get(6),
            },
        );
    }
    Ok(())
}

type LotRow = (
    Uuid,
    Uuid,
    String,
    String,
    i64,
    i64,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);
type HoldRow = (
    Uuid,
    Uuid,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Value,
    DateTime<Utc>,
    Option<Uuid>,
    Uuid,
    Option<DateTime<Utc>>,
);

fn lot_from(row: LotRow) -> Lot {
    Lot {
        id: row.0,
        app_id: row.1,
        user_id: row.2,
        credit_type: stored_type(&row.3),
        amount: row.4,
        remaining: row.5,
        expires_at: row.6,
        expired_at: row.7,
    }
}

/// A credit type read back from the database, where only valid ones are ever written.
fn stored_type(text: &str) -> CreditType {
    CreditType::parse(text).expect("only valid credit types are stored")
}

const LOT_COLUMNS: &str =
    "id, app_id, user_id, credit_type, amount, remaining, expires_at, expired_at";

/// Loads the users' unexpired lots, the holds the commands name and the users' holds that are
/// due, the allocations of the deducts being refunded and of those holds, and every lot an
/// allocation names — all under lock.
pub(super) async fn lots_and_holds(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[&Envelope],
    users: &BTreeSet<(Uuid, String)>,
    state: &mut State,
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    let (apps, ids): (Vec<Uuid>, Vec<String>) = users.iter().cloned().unzip();
    let rows: Vec<LotRow> = sqlx::query_as(&format!(
        "SELECT {LOT_COLUMNS} FROM lots
         WHERE (app_id, user_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::text[])) AND expired_at IS NULL
         ORDER BY id FOR UPDATE"
    ))
    .bind(&apps)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let lot = lot_from(row);
        state.lots.insert(lot.id, lot);
    }

    let named: Vec<Uuid> = envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Capture { hold_id, .. } | Command::Release { hold_id, .. } => Some(*hold_id),
            _ => None,
        })
        .collect();
    let rows: Vec<HoldRow> = sqlx::query_as(
        "SELECT id, app_id, user_id, credit_type, amount, captured, status, description, metadata,
                expires_at, ledger_id, command_id, finished_at
         FROM holds
         WHERE id = ANY($1)
            OR ((app_id, user_id) IN (SELECT * FROM UNNEST($2::uuid[], $3::text[]))
                AND status = 'active' AND expires_at <= $4)
         ORDER BY id FOR UPDATE",
    )
    .bind(&named)
    .bind(&apps)
    .bind(&ids)
    .bind(state.now)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let hold = Hold {
            id: row.0,
            app_id: row.1,
            user_id: row.2,
            credit_type: stored_type(&row.3),
            amount: row.4,
            captured: row.5,
            status: HoldStatus::parse(&row.6).expect("constrained by the schema"),
            description: row.7,
            metadata: row.8,
            expires_at: row.9,
            ledger_id: row.10,
            command_id: row.11,
            finished_at: row.12,
        };
        state.holds.insert(hold.id, hold);
    }

    let mut owners: Vec<Uuid> = envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Refund { ledger_id, .. } => Some(*ledger_id),
            _ => None,
        })
        .collect();
    owners.extend(state.holds.keys().copied());
    if owners.is_empty() {
        return Ok(());
    }
    let rows: Vec<(Uuid, Uuid, i64, i64)> = sqlx::query_as(
        "SELECT owner_id, lot_id, amount, returned FROM lot_allocations
         WHERE owner_id = ANY($1) ORDER BY owner_id, position FOR UPDATE",
    )
    .bind(&owners)
    .fetch_all(&mut **tx)
    .await?;
    let mut missing = Vec::new();
    for (owner, lot_id, amount, returned) in rows {
        if lot_id != ledger::POOL && !state.lots.contains_key(&lot_id) {
            missing.push(lot_id);
        }
        state
            .allocations
            .entry(owner)
            .or_default()
            .push(Allocation {
                lot_id,
                amount,
                returned,
            });
    }
    if !missing.is_empty() {
        let rows: Vec<LotRow> = sqlx::query_as(&format!(
            "SELECT {LOT_COLUMNS} FROM lots WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        ))
        .bind(&missing)
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let lot = lot_from(row);
            state.lots.insert(lot.id, lot);
        }
    }
    Ok(())
}

/// Locks and loads the auto top-up attempts the batch's commands name, and their accounts'
/// settings.
pub(super) async fn topups(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[&Envelope],
    state: &mut State,
) -> Result<(), sqlx::Error> {
    let mut ids: Vec<Uuid> = envelopes
        .iter()
        .filter_map(|e| topups::named_attempt(&e.command))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT id, app_id, user_id, credit_type, status, credits, amount, currency,
                payment_intent_id, error_code, decline_code, error_message, charged
         FROM auto_topup_attempts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let message: Option<String> = row.get(11);
        let code: Option<String> = row.get(9);
        let decline_code: Option<String> = row.get(10);
        let error =
            (code.is_some() || decline_code.is_some() || message.is_some()).then(|| ChargeError {
                code,
                decline_code,
                message: message.unwrap_or_default(),
            });
        state.topup_attempts.insert(
            row.get(0),
            topups::Attempt {
                app_id: row.get(1),
                user_id: row.get(2),
                credit_type: stored_type(row.get(3)),
                status: topups::Status::parse(row.get(4)).expect("constrained by the schema"),
                credits: row.get(5),
                amount: row.get(6),
                currency: row.get(7),
                payment_intent_id: row.get(8),
                error,
                charged: row.get(12),
            },
        );
    }
    let mut keys: Vec<(Uuid, String, String)> = state
        .topup_attempts
        .values()
        .map(|a| {
            (
                a.app_id,
                a.user_id.clone(),
                a.credit_type.as_str().to_string(),
            )
        })
        .collect();
    keys.sort();
    keys.dedup();
    let rows = sqlx::query(
        "SELECT s.app_id, s.user_id, s.credit_type, s.enabled, s.consecutive_failures,
                s.disabled_reason
         FROM auto_topup_settings s
         JOIN UNNEST($1::uuid[], $2::text[], $3::text[]) AS k(app_id, user_id, credit_type)
           ON s.app_id = k.app_id AND s.user_id = k.user_id AND s.credit_type = k.credit_type
         ORDER BY 1, 2, 3 FOR UPDATE OF s",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        state.topup_settings.insert(
            (row.get(0), row.get(1), stored_type(row.get(2))),
            topups::Settings {
                enabled: row.get(3),
                consecutive_failures: row.get(4),
                disabled_reason: row.get(5),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tally_common::webhook::WebhookEvent;

    use super::*;
    use crate::store::test_envelopes::{deduct, envelope};

    const APP: Uuid = Uuid::from_u128(7);

    fn webhook(action: WebhookAction) -> Envelope {
        let event = WebhookEvent {
            provider: Provider::Stripe,
            event_id: "evt_1".into(),
            event_type: "test".into(),
            action,
        };
        envelope(APP, Command::Webhook(event))
    }

    fn credit(user: &str, payment_ref: &str) -> Envelope {
        webhook(WebhookAction::Credit {
            payment_ref: payment_ref.into(),
            user_id: user.into(),
            credits: 5,
            amount_minor: None,
            expires_in_days: None,
            credit_type: CreditType::default(),
            expires_at: None,
            auto_topup: None,
        })
    }

    fn ignored() -> Envelope {
        webhook(WebhookAction::Ignore {
            reason: "not a payment".into(),
        })
    }

    #[test]
    fn the_users_are_those_of_the_commands_and_of_payments_sorted_once_each() {
        let batch = [
            deduct(APP, "bob"),
            credit("ann", "pi_1"),
            deduct(APP, "bob"),
            ignored(),
        ];
        let refs: Vec<&Envelope> = batch.iter().collect();

        let users: Vec<(Uuid, String)> = users(&refs).into_iter().collect();

        assert_eq!(users, [(APP, "ann".into()), (APP, "bob".into())]);
    }

    #[test]
    fn only_payment_webhooks_name_payments() {
        let batch = [deduct(APP, "bob"), credit("ann", "pi_1"), ignored()];
        let refs: Vec<&Envelope> = batch.iter().collect();

        let keys: Vec<_> = payment_keys(&refs).into_iter().collect();

        assert_eq!(keys, [(APP, Provider::Stripe, "pi_1".to_string())]);
    }
}
