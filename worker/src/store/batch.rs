//! The batch transaction: the fast path on remembered accounts, or else the full path — fence,
//! load under lock and fold, write, advance the offsets — in one Postgres transaction.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use tally_common::command::{Command, Envelope};
use uuid::Uuid;

use super::account_cache::AccountCache;
use super::columns::{EntryColumns, EventColumns, ProcessedColumns};
use super::offsets::{advance_offsets, fence};
use super::{load, write, Committed, Item, Pools, StoreError};
use crate::ledger::events::Rules;
use crate::ledger::{self, Account, AccountKey, State, UserKey};

/// Applies `items` (in stream order per partition) in one transaction and moves each partition
/// of `offsets` from its `expected` last applied sequence to the one given; see
/// [`super::Store::apply_batch`].
pub(super) async fn apply(
    pools: &Pools,
    stream: &str,
    items: &[Item],
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
    cache: &mut AccountCache,
    rules: Arc<Rules>,
) -> Result<Committed, StoreError> {
    let envelopes: Vec<&Envelope> = items
        .iter()
        .filter_map(|item| item.envelope.as_ref())
        .collect();
    let owned: Vec<Envelope> = envelopes
        .iter()
        .map(|envelope| (*envelope).clone())
        .collect();
    let positions: HashMap<Uuid, (u32, u64)> = items
        .iter()
        .filter_map(|item| {
            item.envelope
                .as_ref()
                .map(|e| (e.command_id, (item.partition, item.stream_seq)))
        })
        .collect();
    let user_partitions: HashMap<(Uuid, String), u32> = items
        .iter()
        .filter_map(|item| {
            let envelope = item.envelope.as_ref()?;
            Some((
                (envelope.app_id, envelope.command.user_id().to_string()),
                item.partition,
            ))
        })
        .collect();

    let fast = fast_path(
        &pools.fast,
        stream,
        &owned,
        expected,
        offsets,
        &positions,
        cache,
        rules.clone(),
    );
    let effects = match fast.await {
        Some(effects) => {
            metrics::counter!("tally_worker_batch_paths_total", "path" => "fast").increment(1);
            effects
        }
        None => {
            metrics::counter!("tally_worker_batch_paths_total", "path" => "full").increment(1);
            let mut tx = pools.full.begin().await?;
            fence(&mut tx, stream, expected, offsets).await?;
            let (state, effects) =
                load_and_fold(&mut tx, &owned, BTreeSet::new(), Utc::now(), rules).await?;
            write_effects(&mut tx, &state, &effects, &positions).await?;
            advance_offsets(&mut tx, stream, offsets).await?;
            tx.commit().await?;
            cache.full_batch_committed(&state, &user_partitions);
            effects
        }
    };

    let mut answers = effects.answers.into_iter();
    let answers = items
        .iter()
        .filter(|item| item.envelope.is_some())
        .map(|item| {
            (
                item.reply_to.clone(),
                answers.next().expect("one answer per command"),
            )
        })
        .collect();
    Ok(Committed {
        answers,
        offsets: offsets.clone(),
        entries_written: effects.entries.len(),
        events: effects.events.iter().map(|event| event.id).collect(),
    })
}

/// The batch as one statement on remembered state, when every command is a plain add or
/// deduct of a remembered user: fold on the cached accounts, then write the entries, the
/// accounts (only where each row is still exactly as remembered), the dedupe records (only
/// where the command id is new) and the offsets (only where they are still where this worker
/// left them), and commit if every row was written. `None` when the batch does not qualify or
/// anything did not match (the transaction is rolled back, the users forgotten): the caller
/// then takes the full path, which reloads everything under lock and reports precisely.
#[allow(clippy::too_many_arguments)]
async fn fast_path(
    pool: &PgPool,
    stream: &str,
    envelopes: &[Envelope],
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
    positions: &HashMap<Uuid, (u32, u64)>,
    cache: &mut AccountCache,
    rules: Arc<Rules>,
) -> Option<ledger::Effects> {
    let mut state = State {
        now: Utc::now(),
        rules,
        ..State::default()
    };
    for envelope in envelopes {
        let credit_type = match &envelope.command {
            Command::Add {
                expires_at: None,
                credit_type,
                ..
            }
            | Command::Deduct { credit_type, .. } => credit_type,
            _ => return None,
        };
        let user = (envelope.app_id, envelope.command.user_id().to_string());
        let rows = cache.remembered(&user)?;
        // A type the user has no row of yet needs an insert: the full path's.
        if !rows.iter().any(|(known, _)| known == credit_type) {
            return None;
        }
        if !state.last_seq.contains_key(&user) {
            for (known, account) in rows {
                state.insert_account((user.0, user.1.clone(), known.clone()), *account);
            }
            // An app that records events needs the user's last event number: remembered, or
            // the full path loads it.
            if state.rules.contains_key(&user.0) {
                state
                    .event_seq
                    .insert(user.clone(), cache.event_seq(&user)?);
            }
        }
    }
    let event_seqs_before = state.event_seq.clone();
    let before = state.accounts.clone();
    let users: BTreeSet<UserKey> = state.last_seq.keys().cloned().collect();
    let effects = ledger::fold(&mut state, envelopes);
    // A balance alert crossed needs the alert state, which only the full path loads.
    // So does an auto top-up below its threshold: the full path makes the attempt.
    let only_entries = !effects.alert_crossings
        && effects.topup_due.is_empty()
        && effects.payments.is_empty()
        && effects.webhooks.is_empty()
        && effects.lots.is_empty()
        && effects.holds.is_empty()
        && effects.allocations.is_empty()
        && effects.system_commands.is_empty()
        && effects.entries.iter().all(|entry| {
            entry.refunded_ledger_id.is_none()
                && entry.expires_at.is_none()
                && entry.lot_id.is_none()
                && entry.hold_id.is_none()
        });
    if !only_entries {
        return None;
    }
    let written = write_fast(
        pool,
        stream,
        &before,
        &event_seqs_before,
        &state,
        &effects,
        expected,
        offsets,
        positions,
    )
    .await;
    match written {
        Ok(true) => {
            cache.fast_batch_committed(&state.accounts, &state.event_seq);
            Some(effects)
        }
        Ok(false) => {
            metrics::counter!("tally_worker_fast_path_misses_total").increment(1);
            cache.fast_batch_failed(&users);
            None
        }
        Err(error) => {
            metrics::counter!("tally_worker_fast_path_errors_total").increment(1);
            tracing::debug!(%error, "fast batch failed; taking the full path");
            cache.fast_batch_failed(&users);
            None
        }
    }
}

/// The fast path's one call (`tally_apply_plain_batch`, migrations 0004_fast_batches and
/// 0008_credit_types), committed
/// on its own. `Ok(false)`: something was not as remembered, and nothing was written.
#[allow(clippy::too_many_arguments)]
async fn write_fast(
    pool: &PgPool,
    stream: &str,
    before: &HashMap<AccountKey, Account>,
    event_seqs_before: &HashMap<UserKey, i64>,
    state: &State,
    effects: &ledger::Effects,
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
    positions: &HashMap<Uuid, (u32, u64)>,
) -> Result<bool, sqlx::Error> {
    let partitions: Vec<i32> = offsets.keys().map(|p| *p as i32).collect();
    let expected_seqs: Vec<i64> = offsets
        .keys()
        .map(|p| expected.get(p).copied().unwrap_or(u64::MAX) as i64)
        .collect();
    let new_seqs: Vec<i64> = offsets.values().map(|s| *s as i64).collect();

    // Every row of every user the batch read, changed or not: a rejection decided on a stale
    // balance must not commit either, and the next entry number depends on all of a user's
    // rows. Sorted, so concurrent batches lock rows in one order.
    let mut users: Vec<(&AccountKey, &Account, &Account)> = before
        .iter()
        .map(|(key, old)| (key, old, &state.accounts[key]))
        .collect();
    users.sort_by(|a, b| a.0.cmp(b.0));
    let account_apps: Vec<Uuid> = users.iter().map(|(k, _, _)| k.0).collect();
    let account_users: Vec<&str> = users.iter().map(|(k, _, _)| k.1.as_str()).collect();
    let account_types: Vec<&str> = users.iter().map(|(k, _, _)| k.2.as_str()).collect();
    let old_balances: Vec<i64> = users.iter().map(|(_, old, _)| old.balance).collect();
    let old_counts: Vec<i64> = users.iter().map(|(_, old, _)| old.entry_count).collect();
    let new_balances: Vec<i64> = users.iter().map(|(_, _, new)| new.balance).collect();
    let new_counts: Vec<i64> = users.iter().map(|(_, _, new)| new.entry_count).collect();

    let entries = EntryColumns::new(&effects.entries);
    let processed = ProcessedColumns::new(&effects.finished, positions);
    let events = EventColumns::new(&effects.events);
    let sequences: Vec<(&UserKey, i64, i64)> = effects
        .event_seqs
        .iter()
        .map(|user| (user, event_seqs_before[user], state.event_seq[user]))
        .collect();

    let written = sqlx::query(
        "SELECT tally_apply_plain_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                        $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24,
                                        $25, $26, $27, $28, $29, $30, $31, $32, $33, $34,
                                        $35, $36, $37, $38, $39, $40, $41, $42)",
    )
    .bind(stream)
    .bind(&partitions)
    .bind(&expected_seqs)
    .bind(&new_seqs)
    .bind(&account_apps)
    .bind(&account_users)
    .bind(&account_types)
    .bind(&old_balances)
    .bind(&old_counts)
    .bind(&new_balances)
    .bind(&new_counts)
    .bind(&entries.ids)
    .bind(&entries.apps)
    .bind(&entries.users)
    .bind(&entries.credit_types)
    .bind(&entries.seqs)
    .bind(&entries.types)
    .bind(&entries.amounts)
    .bind(&entries.balances)
    .bind(&entries.sources)
    .bind(&entries.descriptions)
    .bind(&entries.metadata)
    .bind(&entries.commands)
    .bind(&processed.ids)
    .bind(&processed.apps)
    .bind(&processed.statuses)
    .bind(&processed.http)
    .bind(&processed.bodies)
    .bind(&processed.hashes)
    .bind(&processed.partitions)
    .bind(&processed.seqs)
    .bind(&events.ids)
    .bind(&events.apps)
    .bind(&events.users)
    .bind(&events.types)
    .bind(&events.sequences)
    .bind(&events.ledger_ids)
    .bind(&events.data)
    .bind(
        sequences
            .iter()
            .map(|(user, _, _)| user.0)
            .collect::<Vec<_>>(),
    )
    .bind(
        sequences
            .iter()
            .map(|(user, _, _)| user.1.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(sequences.iter().map(|(_, old, _)| *old).collect::<Vec<_>>())
    .bind(sequences.iter().map(|(_, _, new)| *new).collect::<Vec<_>>())
    .execute(pool)
    .await;
    match written {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some(BATCH_MISMATCH) => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// SQLSTATE of a fast batch that no longer matches the database (migration 0004_fast_batches).
const BATCH_MISMATCH: &str = "TA001";

/// Loads, under lock, what `envelopes` and the expiries due for `extra_users` read, and folds.
pub(super) async fn load_and_fold(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[Envelope],
    extra_users: BTreeSet<(Uuid, String)>,
    now: DateTime<Utc>,
    rules: Arc<Rules>,
) -> Result<(State, ledger::Effects), sqlx::Error> {
    let refs: Vec<&Envelope> = envelopes.iter().collect();
    let mut state = State {
        now,
        rules,
        ..State::default()
    };
    let mut users = load::users(&refs);
    users.extend(extra_users);
    load::processed(tx, &refs, &mut state).await?;
    load::accounts(tx, &users, &load::named_accounts(&refs), &mut state).await?;
    load::payments(tx, &refs, &mut state).await?;
    load::entries(tx, &refs, &mut state).await?;
    load::lots_and_holds(tx, &refs, &users, &mut state).await?;
    load::event_state(tx, &users, &mut state).await?;
    load::topups(tx, &refs, &mut state).await?;
    let effects = ledger::fold(&mut state, envelopes);
    Ok((state, effects))
}

/// Writes a fold's effects with set-based statements.
pub(super) async fn write_effects(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    effects: &ledger::Effects,
    positions: &HashMap<Uuid, (u32, u64)>,
) -> Result<(), StoreError> {
    write::insert_entries(tx, &effects.entries).await?;
    write::update_accounts(tx, &effects.changed_accounts(state)).await?;
    write::upsert_payments(tx, &effects.payments).await?;
    write::insert_webhooks(tx, &effects.webhooks).await?;
    write::upsert_lots(tx, state, &effects.lots).await?;
    write::upsert_holds(tx, state, &effects.holds).await?;
    write::upsert_allocations(tx, state, &effects.allocations).await?;
    write::insert_system_commands(tx, &effects.system_commands).await?;
    write::insert_events(tx, state, effects).await?;
    write::upsert_alert_states(tx, state, &effects.alert_states).await?;
    write::update_topups(tx, state, effects).await?;
    let attempts = write::insert_topup_attempts(tx, &effects.topup_due).await?;
    if attempts > 0 {
        metrics::counter!("tally_auto_topup_attempts_total").increment(attempts);
    }
    write::insert_processed(tx, &effects.finished, positions).await?;
    Ok(())
}
