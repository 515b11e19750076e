//! The writers of the full path and the sweep: a fold's effects, one set-based statement per
//! table.

use std::collections::{BTreeSet, HashMap};

use sqlx::{Postgres, Transaction};
use tally_common::command::{Envelope, Outcome};
use tally_common::plans::ChargeError;
use tally_common::webhook::Provider;
use uuid::Uuid;

use super::columns::{EntryColumns, EventColumns, ProcessedColumns};
use super::StoreError;
use crate::ledger::{
    self, topups, Account, AccountKey, Hold, HoldStatus, Lot, Payment, State, UserKey,
};

/// Appends the new ledger entries.
pub(super) async fn insert_entries(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[ledger::NewEntry],
) -> Result<(), sqlx::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let columns = EntryColumns::new(entries);
    sqlx::query(
        "INSERT INTO ledger_entries (id, app_id, user_id, seq, type, amount, balance_after, source,
                                     description, metadata, refunded_ledger_id, expires_at, command_id,
                                     lot_id, hold_id, credit_type)
         SELECT id, app_id, user_id, seq, type, amount, balance_after, source, description,
                metadata::jsonb, refunded_ledger_id, expires_at, command_id, lot_id, hold_id,
                credit_type
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::uuid[],
                     $12::timestamptz[], $13::uuid[], $14::uuid[], $15::uuid[], $16::text[])
           AS t(id, app_id, user_id, seq, type, amount, balance_after, source, description,
                metadata, refunded_ledger_id, expires_at, command_id, lot_id, hold_id, credit_type)",
    )
    .bind(&columns.ids)
    .bind(&columns.apps)
    .bind(&columns.users)
    .bind(&columns.seqs)
    .bind(&columns.types)
    .bind(&columns.amounts)
    .bind(&columns.balances)
    .bind(&columns.sources)
    .bind(&columns.descriptions)
    .bind(&columns.metadata)
    .bind(&columns.refunded)
    .bind(&columns.expires)
    .bind(&columns.commands)
    .bind(&columns.lots)
    .bind(&columns.holds)
    .bind(&columns.credit_types)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the balance, held amount and entry count of every changed account row. Every row
/// exists (the loader created the rows the commands name, and the others were written
/// before); one that does not fails the batch rather than lose its change.
pub(super) async fn update_accounts(
    tx: &mut Transaction<'_, Postgres>,
    accounts: &[(&AccountKey, &Account)],
) -> Result<(), StoreError> {
    if accounts.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = accounts.iter().map(|(k, _)| k.0).collect();
    let users: Vec<&str> = accounts.iter().map(|(k, _)| k.1.as_str()).collect();
    let types: Vec<&str> = accounts.iter().map(|(k, _)| k.2.as_str()).collect();
    let balances: Vec<i64> = accounts.iter().map(|(_, a)| a.balance).collect();
    let held: Vec<i64> = accounts.iter().map(|(_, a)| a.held).collect();
    let counts: Vec<i64> = accounts.iter().map(|(_, a)| a.entry_count).collect();
    let updated = sqlx::query(
        "UPDATE accounts a SET balance = u.balance, held = u.held, entry_count = u.entry_count,
                               updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[])
           AS u(app_id, user_id, credit_type, balance, held, entry_count)
         WHERE a.app_id = u.app_id AND a.user_id = u.user_id AND a.credit_type = u.credit_type",
    )
    .bind(&apps)
    .bind(&users)
    .bind(&types)
    .bind(&balances)
    .bind(&held)
    .bind(&counts)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated != accounts.len() as u64 {
        return Err(StoreError::Database(sqlx::Error::Protocol(format!(
            "{} of {} account rows to update were missing",
            accounts.len() as u64 - updated,
            accounts.len()
        ))));
    }
    Ok(())
}

/// Records newly credited payments and the clawback progress of earlier ones.
pub(super) async fn upsert_payments(
    tx: &mut Transaction<'_, Postgres>,
    payments: &HashMap<(Uuid, Provider, String), Payment>,
) -> Result<(), sqlx::Error> {
    if payments.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = payments.iter().collect();
    let apps: Vec<Uuid> = rows.iter().map(|(k, _)| k.0).collect();
    let providers: Vec<&str> = rows.iter().map(|(k, _)| k.1.as_str()).collect();
    let refs: Vec<&str> = rows.iter().map(|(k, _)| k.2.as_str()).collect();
    let ledger_ids: Vec<Uuid> = rows.iter().map(|(_, p)| p.ledger_id).collect();
    let users: Vec<&str> = rows.iter().map(|(_, p)| p.user_id.as_str()).collect();
    let credits: Vec<i64> = rows.iter().map(|(_, p)| p.credits).collect();
    let amounts: Vec<Option<i64>> = rows.iter().map(|(_, p)| p.amount_minor).collect();
    let refunded: Vec<i64> = rows.iter().map(|(_, p)| p.refunded_minor).collect();
    let disputed: Vec<i64> = rows.iter().map(|(_, p)| p.disputed_minor).collect();
    let clawed: Vec<i64> = rows.iter().map(|(_, p)| p.clawed_credits).collect();
    let unrecovered: Vec<i64> = rows.iter().map(|(_, p)| p.unrecovered_credits).collect();
    sqlx::query(
        "INSERT INTO payments (app_id, provider, payment_ref, ledger_id, user_id, credits,
                               amount_minor, refunded_minor, disputed_minor, clawed_credits,
                               unrecovered_credits, credit_type, refund_ref)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                              $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                              $11::int8[], $12::text[], $13::text[])
         ON CONFLICT (app_id, provider, payment_ref) DO UPDATE SET
             refunded_minor = EXCLUDED.refunded_minor,
             disputed_minor = EXCLUDED.disputed_minor,
             clawed_credits = EXCLUDED.clawed_credits,
             unrecovered_credits = EXCLUDED.unrecovered_credits,
             updated_at = now()",
    )
    .bind(&apps)
    .bind(&providers)
    .bind(&refs)
    .bind(&ledger_ids)
    .bind(&users)
    .bind(&credits)
    .bind(&amounts)
    .bind(&refunded)
    .bind(&disputed)
    .bind(&clawed)
    .bind(&unrecovered)
    .bind(
        rows.iter()
            .map(|(_, p)| p.credit_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, p)| p.refund_ref.as_deref())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends the webhook events to their log; one already there is left as it is.
pub(super) async fn insert_webhooks(
    tx: &mut Transaction<'_, Postgres>,
    records: &[ledger::WebhookRecord],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = records.iter().map(|r| r.app_id).collect();
    let providers: Vec<&str> = records.iter().map(|r| r.provider.as_str()).collect();
    let event_ids: Vec<&str> = records.iter().map(|r| r.event_id.as_str()).collect();
    let types: Vec<&str> = records.iter().map(|r| r.event_type.as_str()).collect();
    let outcomes: Vec<&str> = records.iter().map(|r| r.outcome).collect();
    let reasons: Vec<Option<&str>> = records.iter().map(|r| r.reason.as_deref()).collect();
    let users: Vec<Option<&str>> = records.iter().map(|r| r.user_id.as_deref()).collect();
    let ledger_ids: Vec<Option<Uuid>> = records.iter().map(|r| r.ledger_id).collect();
    let received: Vec<chrono::DateTime<chrono::Utc>> =
        records.iter().map(|r| r.received_at).collect();
    sqlx::query(
        "INSERT INTO webhook_events (app_id, provider, event_id, event_type, outcome, reason,
                                     user_id, ledger_id, received_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::uuid[], $9::timestamptz[])
         ON CONFLICT DO NOTHING",
    )
    .bind(&apps)
    .bind(&providers)
    .bind(&event_ids)
    .bind(&types)
    .bind(&outcomes)
    .bind(&reasons)
    .bind(&users)
    .bind(&ledger_ids)
    .bind(&received)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the batch's events and moves each of their users' last event number, only from
/// where it was loaded (a number that moved meanwhile fails the batch).
pub(super) async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    effects: &ledger::Effects,
) -> Result<(), StoreError> {
    if effects.events.is_empty() {
        return Ok(());
    }
    let users: Vec<&UserKey> = effects.event_seqs.iter().collect();
    let moved = sqlx::query(
        "INSERT INTO event_sequences (app_id, user_id, last_seq)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[])
         ON CONFLICT (app_id, user_id) DO UPDATE SET last_seq = EXCLUDED.last_seq
         WHERE event_sequences.last_seq < EXCLUDED.last_seq",
    )
    .bind(users.iter().map(|user| user.0).collect::<Vec<_>>())
    .bind(users.iter().map(|user| user.1.as_str()).collect::<Vec<_>>())
    .bind(
        users
            .iter()
            .map(|user| state.event_seq[*user])
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if moved != users.len() as u64 {
        return Err(StoreError::Database(sqlx::Error::Protocol(
            "an event sequence moved under the batch".into(),
        )));
    }
    let columns = EventColumns::new(&effects.events);
    sqlx::query(
        "INSERT INTO events (id, app_id, user_id, type, sequence, ledger_id, data)
         SELECT id, app_id, user_id, type, sequence, ledger_id, data::jsonb
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::uuid[],
                     $7::text[])
           AS t(id, app_id, user_id, type, sequence, ledger_id, data)",
    )
    .bind(&columns.ids)
    .bind(&columns.apps)
    .bind(&columns.users)
    .bind(&columns.types)
    .bind(&columns.sequences)
    .bind(&columns.ledger_ids)
    .bind(&columns.data)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the thresholds each changed account is now below.
pub(super) async fn upsert_alert_states(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    changed: &BTreeSet<AccountKey>,
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let keys: Vec<&AccountKey> = changed.iter().collect();
    let below: Vec<String> = keys
        .iter()
        .map(|key| {
            let values: Vec<String> = state.alert_below[*key].iter().map(i64::to_string).collect();
            format!("{{{}}}", values.join(","))
        })
        .collect();
    sqlx::query(
        "INSERT INTO balance_alert_state (app_id, user_id, credit_type, below)
         SELECT app_id, user_id, credit_type, below::int8[]
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[])
           AS t(app_id, user_id, credit_type, below)
         ON CONFLICT (app_id, user_id, credit_type) DO UPDATE SET below = EXCLUDED.below",
    )
    .bind(keys.iter().map(|key| key.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|key| key.1.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|key| key.2.as_str()).collect::<Vec<_>>())
    .bind(&below)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the new and changed lots (what remains of each, and whether it expired).
pub(super) async fn upsert_lots(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    changed: &BTreeSet<Uuid>,
) -> Result<(), sqlx::Error> {
    let lots: Vec<&Lot> = changed.iter().filter_map(|id| state.lots.get(id)).collect();
    if lots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO lots (id, app_id, user_id, amount, remaining, expires_at, expired_at,
                           credit_type)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[],
                              $6::timestamptz[], $7::timestamptz[], $8::text[])
         ON CONFLICT (id) DO UPDATE SET remaining = EXCLUDED.remaining, expired_at = EXCLUDED.expired_at",
    )
    .bind(lots.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.app_id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.amount).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.remaining).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.expired_at).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.credit_type.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the new and settled holds, counting and logging the expired ones.
pub(super) async fn upsert_holds(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    changed: &BTreeSet<Uuid>,
) -> Result<(), sqlx::Error> {
    let holds: Vec<&Hold> = changed
        .iter()
        .filter_map(|id| state.holds.get(id))
        .collect();
    if holds.is_empty() {
        return Ok(());
    }
    for hold in &holds {
        if hold.status == HoldStatus::Expired {
            metrics::counter!("tally_holds_expired_total").increment(1);
            tracing::info!(hold.id = %hold.id, user.id = %hold.user_id, amount = hold.amount, "hold expired and released");
        }
    }
    sqlx::query(
        "INSERT INTO holds (id, app_id, user_id, amount, captured, status, description, metadata,
                            expires_at, ledger_id, command_id, finished_at, credit_type)
         SELECT id, app_id, user_id, amount, captured, status, description, metadata::jsonb,
                expires_at, ledger_id, command_id, finished_at, credit_type
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[], $10::uuid[], $11::uuid[],
                     $12::timestamptz[], $13::text[])
           AS t(id, app_id, user_id, amount, captured, status, description, metadata, expires_at,
                ledger_id, command_id, finished_at, credit_type)
         ON CONFLICT (id) DO UPDATE SET captured = EXCLUDED.captured, status = EXCLUDED.status,
             ledger_id = EXCLUDED.ledger_id, finished_at = EXCLUDED.finished_at",
    )
    .bind(holds.iter().map(|h| h.id).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.app_id).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.user_id.as_str()).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.amount).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.captured).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.status.as_str()).collect::<Vec<_>>())
    .bind(
        holds
            .iter()
            .map(|h| h.description.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        holds
            .iter()
            .map(|h| h.metadata.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(holds.iter().map(|h| h.expires_at).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.ledger_id).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.command_id).collect::<Vec<_>>())
    .bind(holds.iter().map(|h| h.finished_at).collect::<Vec<_>>())
    .bind(
        holds
            .iter()
            .map(|h| h.credit_type.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the draws of each changed owner from lots (what was drawn, and what came back).
pub(super) async fn upsert_allocations(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    owners: &BTreeSet<Uuid>,
) -> Result<(), sqlx::Error> {
    let mut owner_ids = Vec::new();
    let mut lot_ids = Vec::new();
    let mut positions = Vec::new();
    let mut amounts = Vec::new();
    let mut returned = Vec::new();
    for owner in owners {
        for (position, allocation) in state
            .allocations
            .get(owner)
            .into_iter()
            .flatten()
            .enumerate()
        {
            owner_ids.push(*owner);
            lot_ids.push(allocation.lot_id);
            positions.push(position as i32);
            amounts.push(allocation.amount);
            returned.push(allocation.returned);
        }
    }
    if owner_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO lot_allocations (owner_id, lot_id, position, amount, returned)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::int8[], $5::int8[])
         ON CONFLICT (owner_id, lot_id) DO UPDATE SET returned = EXCLUDED.returned",
    )
    .bind(&owner_ids)
    .bind(&lot_ids)
    .bind(&positions)
    .bind(&amounts)
    .bind(&returned)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records the system commands that own a batch's expiries, so every entry belongs to an
/// applied command.
pub(super) async fn insert_system_commands(
    tx: &mut Transaction<'_, Postgres>,
    commands: &HashMap<Uuid, Uuid>,
) -> Result<(), sqlx::Error> {
    if commands.is_empty() {
        return Ok(());
    }
    let (apps, ids): (Vec<Uuid>, Vec<Uuid>) = commands.iter().map(|(app, id)| (*app, *id)).unzip();
    sqlx::query(
        "INSERT INTO processed_commands (command_id, app_id, status, http_status, response)
         SELECT id, app, 'applied', 200, '{\"system\": \"expire\"}'::jsonb
         FROM UNNEST($1::uuid[], $2::uuid[]) AS t(id, app)",
    )
    .bind(&ids)
    .bind(&apps)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records every finished command's answer, the dedupe record; fails with
/// [`StoreError::Raced`] unless every one is new.
pub(super) async fn insert_processed(
    tx: &mut Transaction<'_, Postgres>,
    finished: &[(Envelope, Outcome)],
    positions: &HashMap<Uuid, (u32, u64)>,
) -> Result<(), StoreError> {
    if finished.is_empty() {
        return Ok(());
    }
    let columns = ProcessedColumns::new(finished, positions);
    let inserted = sqlx::query(
        "INSERT INTO processed_commands (command_id, app_id, status, http_status, response,
                                         request_hash, partition, stream_seq)
         SELECT id, app, st, hs, body::jsonb, rh, p, s
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int2[], $5::text[], $6::text[],
                     $7::int4[], $8::int8[]) AS t(id, app, st, hs, body, rh, p, s)
         ON CONFLICT (command_id) DO NOTHING",
    )
    .bind(&columns.ids)
    .bind(&columns.apps)
    .bind(&columns.statuses)
    .bind(&columns.http)
    .bind(&columns.bodies)
    .bind(&columns.hashes)
    .bind(&columns.partitions)
    .bind(&columns.seqs)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted as usize != finished.len() {
        return Err(StoreError::Raced);
    }
    Ok(())
}

/// Records what the batch changed of auto top-up attempts and settings. A disabled auto top-up
/// bumps its app's event configuration, so that workers stop watching its threshold.
pub(super) async fn update_topups(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    effects: &ledger::Effects,
) -> Result<(), sqlx::Error> {
    if !effects.topup_attempts.is_empty() {
        let attempts: Vec<(&Uuid, &topups::Attempt)> = effects
            .topup_attempts
            .iter()
            .map(|id| (id, &state.topup_attempts[id]))
            .collect();
        let error = |a: &topups::Attempt, f: fn(&ChargeError) -> Option<&str>| {
            a.error.as_ref().and_then(f).map(str::to_string)
        };
        sqlx::query(
            "UPDATE auto_topup_attempts a
             SET status = k.status, payment_intent_id = k.payment_intent_id,
                 error_code = k.error_code, decline_code = k.decline_code,
                 error_message = k.error_message, charged = k.charged, updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::bool[])
                  AS k(id, status, payment_intent_id, error_code, decline_code, error_message, charged)
             WHERE a.id = k.id",
        )
        .bind(attempts.iter().map(|(id, _)| **id).collect::<Vec<_>>())
        .bind(
            attempts
                .iter()
                .map(|(_, a)| a.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|(_, a)| a.payment_intent_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|(_, a)| error(a, |e| e.code.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|(_, a)| error(a, |e| e.decline_code.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(
            attempts
                .iter()
                .map(|(_, a)| error(a, |e| Some(e.message.as_str())))
                .collect::<Vec<_>>(),
        )
        .bind(attempts.iter().map(|(_, a)| a.charged).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !effects.topup_settings.is_empty() {
        let settings: Vec<(&AccountKey, &topups::Settings)> = effects
            .topup_settings
            .iter()
            .map(|key| (key, &state.topup_settings[key]))
            .collect();
        sqlx::query(
            "UPDATE auto_topup_settings s
             SET enabled = k.enabled, consecutive_failures = k.failures,
                 disabled_reason = k.reason, updated_at = now()
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bool[], $5::int4[], $6::text[])
                  AS k(app_id, user_id, credit_type, enabled, failures, reason)
             WHERE s.app_id = k.app_id AND s.user_id = k.user_id AND s.credit_type = k.credit_type",
        )
        .bind(settings.iter().map(|(k, _)| k.0).collect::<Vec<_>>())
        .bind(
            settings
                .iter()
                .map(|(k, _)| k.1.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            settings
                .iter()
                .map(|(k, _)| k.2.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(settings.iter().map(|(_, s)| s.enabled).collect::<Vec<_>>())
        .bind(
            settings
                .iter()
                .map(|(_, s)| s.consecutive_failures)
                .collect::<Vec<_>>(),
        )
        .bind(
            settings
                .iter()
                .map(|(_, s)| s.disabled_reason.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
        let mut disabled: Vec<Uuid> = settings
            .iter()
            .filter(|(_, s)| !s.enabled)
            .map(|(k, _)| k.0)
            .collect();
        disabled.sort();
        disabled.dedup();
        if !disabled.is_empty() {
            sqlx::query(
                "UPDATE app_event_config SET version = version + 1, updated_at = now()
                 WHERE app_id = ANY($1)",
            )
            .bind(&disabled)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Makes an auto top-up attempt for each account the batch left below its threshold, where
/// the auto top-up is enabled, no attempt is pending (the unique index) and the month's
/// attempts are under the limit — all checked against the rows as this transaction sees them.
/// Returns how many were made.
pub(super) async fn insert_topup_attempts(
    tx: &mut Transaction<'_, Postgres>,
    due: &std::collections::BTreeSet<AccountKey>,
) -> Result<u64, sqlx::Error> {
    if due.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = due.iter().map(|_| Uuid::now_v7()).collect();
    let made = sqlx::query(
        "INSERT INTO auto_topup_attempts (id, app_id, user_id, credit_type, credits, amount, currency)
         SELECT k.id, s.app_id, s.user_id, s.credit_type, s.credits, s.amount, s.currency
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS k(id, app_id, user_id, credit_type)
         JOIN auto_topup_settings s
           ON s.app_id = k.app_id AND s.user_id = k.user_id AND s.credit_type = k.credit_type
         JOIN accounts a
           ON a.app_id = k.app_id AND a.user_id = k.user_id AND a.credit_type = k.credit_type
         WHERE s.enabled AND a.balance - a.held < s.threshold
           AND (SELECT count(*) FROM auto_topup_attempts x
                WHERE x.app_id = s.app_id AND x.user_id = s.user_id AND x.credit_type = s.credit_type
                  AND x.created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
               < s.max_per_month
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(due.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(due.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .bind(due.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(made.rows_affected())
}
