//! The batch transaction: lock, load, fold, write — one Postgres transaction per batch.
//!
//! Order inside the transaction:
//! 1. lock the batch's partition offsets and check they are where this worker left them (the
//!    fence: a stale owner's batch can never commit);
//! 2. load what the commands read (prior results, accounts under `FOR UPDATE`, refund targets,
//!    payments);
//! 3. [`ledger::fold`] in stream order, in memory;
//! 4. write with a handful of set-based statements and advance the offsets; commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tally_common::command::{Command, Envelope, Outcome, ReplyTo, Status};
use tally_common::webhook::{Provider, WebhookAction};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::ledger::{
    self, Account, Allocation, EntryRef, EntryType, Hold, HoldStatus, Lot, Payment, Prior, State,
};

/// One consumed message, decoded or not.
#[derive(Clone, Debug)]
pub struct Item {
    pub partition: u32,
    pub stream_seq: u64,
    /// `None` when the payload could not be decoded (a poison message: skipped, dead-lettered).
    pub envelope: Option<Envelope>,
    pub reply_to: Option<ReplyTo>,
}

#[cfg(test)]
impl Item {
    /// An item that carries no command, for tests where only its position matters.
    pub(crate) fn at(partition: u32, stream_seq: u64) -> Self {
        Self {
            partition,
            stream_seq,
            envelope: None,
            reply_to: None,
        }
    }
}

/// What a committed batch produced.
#[derive(Debug)]
pub struct Committed {
    /// One answer per decoded item, in batch order, with the item's reply subject.
    pub answers: Vec<(Option<ReplyTo>, Outcome)>,
    /// New last applied sequence of each partition in the batch.
    pub offsets: BTreeMap<u32, u64>,
    pub entries_written: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another worker advanced these partitions: this worker's view of them is stale.
    #[error("partitions {0:?} were advanced by another worker")]
    Fenced(Vec<u32>),
    /// A command id of the batch was recorded concurrently (an ingress cancellation or a stale
    /// owner): redo the batch, which will see it as processed.
    #[error("a command of the batch was recorded concurrently")]
    Raced,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether retrying the same batch later may succeed without any change to it.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Fenced(_) | Self::Raced => true,
            Self::Database(error) => is_transient(error),
        }
    }
}

/// Connection loss, pool exhaustion, serialization failures, deadlocks, shutdowns and
/// resource exhaustion pass; anything else points at the batch itself.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57")
                || code == "40001"
                || code == "40P01"
        }
        _ => false,
    }
}

/// Ensures the offset rows of `partitions` exist and returns their last applied sequences.
pub async fn partition_offsets(
    pool: &PgPool,
    stream: &str,
    partitions: &[u32],
) -> Result<HashMap<u32, u64>, sqlx::Error> {
    let partitions: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
    sqlx::query(
        "INSERT INTO partition_offsets (stream, partition)
         SELECT $1, p FROM UNNEST($2::int4[]) AS p ON CONFLICT DO NOTHING",
    )
    .bind(stream)
    .bind(&partitions)
    .execute(pool)
    .await?;
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, last_seq FROM partition_offsets WHERE stream = $1 AND partition = ANY($2)",
    )
    .bind(stream)
    .bind(&partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, last_seq)| (partition as u32, last_seq as u64))
        .collect())
}

/// What the owner of some partitions remembers of their users between batches: the account
/// rows it last committed for users with no unexpired lots and nothing held. A batch of plain
/// adds and deducts for such users needs nothing else from the database, so it skips every
/// load (see [`apply_batch`]). The copy is only a guess: the batch's write checks every row it
/// relied on, and a mismatch sends the batch down the full path, which reloads.
#[derive(Debug, Default)]
pub struct AccountCache {
    accounts: HashMap<(Uuid, String), Cached>,
}

#[derive(Clone, Copy, Debug)]
struct Cached {
    partition: u32,
    account: Account,
}

/// Most users remembered; past it the cache starts over (it refills as users come back).
pub const ACCOUNT_CACHE_USERS_MAX: usize = 1_000_000;

impl AccountCache {
    /// Forgets the users of `partition` (its ownership changed hands).
    pub fn forget_partition(&mut self, partition: u32) {
        self.accounts
            .retain(|_, cached| cached.partition != partition);
    }

    fn forget_users<'a>(&mut self, users: impl IntoIterator<Item = &'a (Uuid, String)>) {
        for user in users {
            self.accounts.remove(user);
        }
    }

    /// Remembers the users of a committed full-path batch that are simple (no unexpired lot,
    /// nothing held) and forgets the others.
    fn learn(&mut self, state: &State, partitions: &HashMap<(Uuid, String), u32>) {
        if self.accounts.len() > ACCOUNT_CACHE_USERS_MAX {
            self.accounts.clear();
        }
        let with_lots: BTreeSet<(Uuid, &str)> = state
            .lots
            .values()
            .filter(|lot| lot.expired_at.is_none())
            .map(|lot| (lot.app_id, lot.user_id.as_str()))
            .collect();
        for (key, account) in &state.accounts {
            let Some(&partition) = partitions.get(key) else {
                continue;
            };
            if account.held == 0 && !with_lots.contains(&(key.0, key.1.as_str())) {
                self.accounts.insert(
                    key.clone(),
                    Cached {
                        partition,
                        account: *account,
                    },
                );
            } else {
                self.accounts.remove(key);
            }
        }
    }
}

/// The worker's two pools: each plans its statements its own way
/// ([`tally_common::db::Planning`]).
#[derive(Clone, Debug)]
pub struct Pools {
    /// The full path and the sweeper, whose statements join arrays to tables: planned per
    /// execution.
    pub full: PgPool,
    /// The fast path, whose one call reaches rows by key only: cached plans.
    pub fast: PgPool,
}

/// Applies `items` (in stream order per partition) in one transaction and moves each partition
/// of `offsets` from its `expected` last applied sequence to the one given.
pub async fn apply_batch(
    pools: &Pools,
    stream: &str,
    items: &[Item],
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
    cache: &mut AccountCache,
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
                load_and_fold(&mut tx, &owned, BTreeSet::new(), Utc::now()).await?;
            write_effects(&mut tx, &state, &effects, &positions).await?;
            advance_offsets(&mut tx, stream, offsets).await?;
            tx.commit().await?;
            cache.learn(&state, &user_partitions);
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
    })
}

/// The batch as one statement on remembered state, when every command is a plain add or
/// deduct of a remembered user: fold on the cached accounts, then write the entries, the
/// accounts (only where each row is still exactly as remembered), the dedupe records (only
/// where the command id is new) and the offsets (only where they are still where this worker
/// left them), and commit if every row was written. `None` when the batch does not qualify or
/// anything did not match (the transaction is rolled back, the users forgotten): the caller
/// then takes the full path, which reloads everything under lock and reports precisely.
async fn fast_path(
    pool: &PgPool,
    stream: &str,
    envelopes: &[Envelope],
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
    positions: &HashMap<Uuid, (u32, u64)>,
    cache: &mut AccountCache,
) -> Option<ledger::Effects> {
    let mut state = State {
        now: Utc::now(),
        ..State::default()
    };
    for envelope in envelopes {
        let plain = matches!(
            envelope.command,
            Command::Add {
                expires_at: None,
                ..
            } | Command::Deduct { .. }
        );
        let key = (envelope.app_id, envelope.command.user_id().to_string());
        let cached = cache.accounts.get(&key)?;
        if !plain {
            return None;
        }
        state.accounts.insert(key, cached.account);
    }
    let before = state.accounts.clone();
    let effects = ledger::fold(&mut state, envelopes);
    let only_entries = effects.payments.is_empty()
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
    match write_fast(
        pool, stream, &before, &state, &effects, expected, offsets, positions,
    )
    .await
    {
        Ok(true) => {
            for (key, account) in &state.accounts {
                if let Some(cached) = cache.accounts.get_mut(key) {
                    cached.account = *account;
                }
            }
            Some(effects)
        }
        Ok(false) => {
            metrics::counter!("tally_worker_fast_path_misses_total").increment(1);
            cache.forget_users(before.keys());
            None
        }
        Err(error) => {
            metrics::counter!("tally_worker_fast_path_errors_total").increment(1);
            tracing::debug!(%error, "fast batch failed; taking the full path");
            cache.forget_users(before.keys());
            None
        }
    }
}

/// The fast path's one call (`tally_apply_plain_batch`, migration 0004_fast_batches), committed
/// on its own. `Ok(false)`: something was not as remembered, and nothing was written.
#[allow(clippy::too_many_arguments)]
async fn write_fast(
    pool: &PgPool,
    stream: &str,
    before: &HashMap<(Uuid, String), Account>,
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

    // Every user the batch read, changed or not: a rejection decided on a stale balance must
    // not commit either. Sorted, so concurrent batches lock rows in one order.
    let mut users: Vec<(&(Uuid, String), &Account, &Account)> = before
        .iter()
        .map(|(key, old)| (key, old, &state.accounts[key]))
        .collect();
    users.sort_by(|a, b| a.0.cmp(b.0));
    let account_apps: Vec<Uuid> = users.iter().map(|(k, _, _)| k.0).collect();
    let account_users: Vec<&str> = users.iter().map(|(k, _, _)| k.1.as_str()).collect();
    let old_balances: Vec<i64> = users.iter().map(|(_, old, _)| old.balance).collect();
    let old_counts: Vec<i64> = users.iter().map(|(_, old, _)| old.entry_count).collect();
    let new_balances: Vec<i64> = users.iter().map(|(_, _, new)| new.balance).collect();
    let new_counts: Vec<i64> = users.iter().map(|(_, _, new)| new.entry_count).collect();

    let entries = EntryColumns::new(&effects.entries);
    let processed = ProcessedColumns::new(&effects.finished, positions);

    let written = sqlx::query(
        "SELECT tally_apply_plain_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                                        $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24,
                                        $25, $26, $27, $28, $29)",
    )
    .bind(stream)
    .bind(&partitions)
    .bind(&expected_seqs)
    .bind(&new_seqs)
    .bind(&account_apps)
    .bind(&account_users)
    .bind(&old_balances)
    .bind(&old_counts)
    .bind(&new_balances)
    .bind(&new_counts)
    .bind(&entries.ids)
    .bind(&entries.apps)
    .bind(&entries.users)
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
async fn load_and_fold(
    tx: &mut Transaction<'_, Postgres>,
    envelopes: &[Envelope],
    extra_users: BTreeSet<(Uuid, String)>,
    now: DateTime<Utc>,
) -> Result<(State, ledger::Effects), sqlx::Error> {
    let refs: Vec<&Envelope> = envelopes.iter().collect();
    let mut state = State {
        now,
        ..State::default()
    };
    let mut users = users(&refs);
    users.extend(extra_users);
    load_processed(tx, &refs, &mut state).await?;
    load_accounts(tx, &users, &mut state).await?;
    load_payments(tx, &refs, &mut state).await?;
    load_entries(tx, &refs, &mut state).await?;
    load_lots_and_holds(tx, &refs, &users, &mut state).await?;
    let effects = ledger::fold(&mut state, envelopes);
    Ok((state, effects))
}

/// Writes a fold's effects with set-based statements.
async fn write_effects(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    effects: &ledger::Effects,
    positions: &HashMap<Uuid, (u32, u64)>,
) -> Result<(), StoreError> {
    insert_entries(tx, &effects.entries).await?;
    update_accounts(tx, &effects.changed_accounts(state)).await?;
    upsert_payments(tx, &effects.payments).await?;
    insert_webhooks(tx, &effects.webhooks).await?;
    upsert_lots(tx, state, &effects.lots).await?;
    upsert_holds(tx, state, &effects.holds).await?;
    upsert_allocations(tx, state, &effects.allocations).await?;
    insert_system_commands(tx, &effects.system_commands).await?;
    insert_processed(tx, &effects.finished, positions).await?;
    Ok(())
}

/// How many users one sweep transaction handles.
pub const SWEEP_USERS_MAX: i64 = 200;

/// Expires the lots and holds that are due, for up to [`SWEEP_USERS_MAX`] users, in one
/// transaction. Safe to run from every worker at once: each user's state is re-read under its
/// account lock, so an expiry is written exactly once. Returns how many users were swept.
pub async fn sweep(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let due: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT app_id, user_id FROM (
             SELECT app_id, user_id FROM lots WHERE expired_at IS NULL AND expires_at <= $1
             UNION ALL
             SELECT app_id, user_id FROM holds WHERE status = 'active' AND expires_at <= $1) due
         LIMIT $2",
    )
    .bind(now)
    .bind(SWEEP_USERS_MAX)
    .fetch_all(pool)
    .await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let (state, effects) = load_and_fold(&mut tx, &[], due.iter().cloned().collect(), now).await?;
    write_effects(&mut tx, &state, &effects, &HashMap::new()).await?;
    tx.commit().await?;
    Ok(due.len())
}

async fn fence(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    expected: &BTreeMap<u32, u64>,
    offsets: &BTreeMap<u32, u64>,
) -> Result<(), StoreError> {
    let partitions: Vec<i32> = offsets.keys().map(|p| *p as i32).collect();
    let rows = sqlx::query(
        "SELECT partition, last_seq FROM partition_offsets
         WHERE stream = $1 AND partition = ANY($2) ORDER BY partition FOR UPDATE",
    )
    .bind(stream)
    .bind(&partitions)
    .fetch_all(&mut **tx)
    .await?;
    let actual: HashMap<u32, u64> = rows
        .iter()
        .map(|row| (row.get::<i32, _>(0) as u32, row.get::<i64, _>(1) as u64))
        .collect();
    let stale: Vec<u32> = offsets
        .keys()
        .filter(|p| !actual.contains_key(p) || actual.get(p) != expected.get(p))
        .copied()
        .collect();
    if stale.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Fenced(stale))
    }
}

async fn load_processed(
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
fn users(envelopes: &[&Envelope]) -> BTreeSet<(Uuid, String)> {
    envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Webhook(event) => match &event.action {
                WebhookAction::Credit { user_id, .. } | WebhookAction::Clawback { user_id, .. } => {
                    Some((e.app_id, user_id.clone()))
                }
                _ => None,
            },
            command => Some((e.app_id, command.user_id().to_string())),
        })
        .collect()
}

async fn load_accounts(
    tx: &mut Transaction<'_, Postgres>,
    users: &BTreeSet<(Uuid, String)>,
    state: &mut State,
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    let (apps, ids): (Vec<Uuid>, Vec<String>) = users.iter().cloned().unzip();
    sqlx::query(
        "INSERT INTO accounts (app_id, user_id)
         SELECT * FROM UNNEST($1::uuid[], $2::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&apps)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(
        "SELECT a.app_id, a.user_id, a.balance, a.held, a.entry_count
         FROM accounts a JOIN UNNEST($1::uuid[], $2::text[]) AS k(app_id, user_id)
           ON a.app_id = k.app_id AND a.user_id = k.user_id
         ORDER BY a.app_id, a.user_id FOR UPDATE OF a",
    )
    .bind(&apps)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        state.accounts.insert(
            (row.get(0), row.get(1)),
            Account {
                balance: row.get(2),
                held: row.get(3),
                entry_count: row.get(4),
            },
        );
    }
    Ok(())
}

fn payment_keys(envelopes: &[&Envelope]) -> BTreeSet<(Uuid, Provider, String)> {
    envelopes
        .iter()
        .filter_map(|e| match &e.command {
            Command::Webhook(event) => match &event.action {
                WebhookAction::Credit { payment_ref, .. }
                | WebhookAction::Clawback { payment_ref, .. } => {
                    Some((e.app_id, event.provider, payment_ref.clone()))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn load_payments(
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
                p.unrecovered_credits
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
            },
        );
    }
    Ok(())
}

async fn load_entries(
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
        "SELECT e.id, e.app_id, e.user_id, e.type, e.amount,
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
                reversed: row.get(5),
            },
        );
    }
    Ok(())
}

/// [`ledger::NewEntry`] rows as the columns of an `UNNEST` insert.
struct EntryColumns<'a> {
    ids: Vec<Uuid>,
    apps: Vec<Uuid>,
    users: Vec<&'a str>,
    seqs: Vec<i64>,
    types: Vec<&'static str>,
    amounts: Vec<i64>,
    balances: Vec<i64>,
    sources: Vec<&'static str>,
    descriptions: Vec<Option<&'a str>>,
    metadata: Vec<String>,
    refunded: Vec<Option<Uuid>>,
    expires: Vec<Option<DateTime<Utc>>>,
    commands: Vec<Uuid>,
    lots: Vec<Option<Uuid>>,
    holds: Vec<Option<Uuid>>,
}

impl<'a> EntryColumns<'a> {
    fn new(entries: &'a [ledger::NewEntry]) -> Self {
        Self {
            ids: entries.iter().map(|e| e.id).collect(),
            apps: entries.iter().map(|e| e.app_id).collect(),
            users: entries.iter().map(|e| e.user_id.as_str()).collect(),
            seqs: entries.iter().map(|e| e.seq).collect(),
            types: entries.iter().map(|e| e.entry_type.as_str()).collect(),
            amounts: entries.iter().map(|e| e.amount).collect(),
            balances: entries.iter().map(|e| e.balance_after).collect(),
            sources: entries.iter().map(|e| e.source).collect(),
            descriptions: entries.iter().map(|e| e.description.as_deref()).collect(),
            metadata: entries.iter().map(|e| e.metadata.to_string()).collect(),
            refunded: entries.iter().map(|e| e.refunded_ledger_id).collect(),
            expires: entries.iter().map(|e| e.expires_at).collect(),
            commands: entries.iter().map(|e| e.command_id).collect(),
            lots: entries.iter().map(|e| e.lot_id).collect(),
            holds: entries.iter().map(|e| e.hold_id).collect(),
        }
    }
}

async fn insert_entries(
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
                                     lot_id, hold_id)
         SELECT id, app_id, user_id, seq, type, amount, balance_after, source, description,
                metadata::jsonb, refunded_ledger_id, expires_at, command_id, lot_id, hold_id
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::text[], $6::int8[],
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::uuid[],
                     $12::timestamptz[], $13::uuid[], $14::uuid[], $15::uuid[])
           AS t(id, app_id, user_id, seq, type, amount, balance_after, source, description,
                metadata, refunded_ledger_id, expires_at, command_id, lot_id, hold_id)",
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn update_accounts(
    tx: &mut Transaction<'_, Postgres>,
    accounts: &[(&(Uuid, String), &Account)],
) -> Result<(), sqlx::Error> {
    if accounts.is_empty() {
        return Ok(());
    }
    let apps: Vec<Uuid> = accounts.iter().map(|(k, _)| k.0).collect();
    let users: Vec<&str> = accounts.iter().map(|(k, _)| k.1.as_str()).collect();
    let balances: Vec<i64> = accounts.iter().map(|(_, a)| a.balance).collect();
    let held: Vec<i64> = accounts.iter().map(|(_, a)| a.held).collect();
    let counts: Vec<i64> = accounts.iter().map(|(_, a)| a.entry_count).collect();
    sqlx::query(
        "UPDATE accounts a SET balance = u.balance, held = u.held, entry_count = u.entry_count,
                               updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::int8[])
           AS u(app_id, user_id, balance, held, entry_count)
         WHERE a.app_id = u.app_id AND a.user_id = u.user_id",
    )
    .bind(&apps)
    .bind(&users)
    .bind(&balances)
    .bind(&held)
    .bind(&counts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_payments(
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
                               unrecovered_credits)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[],
                              $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
                              $11::int8[])
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_webhooks(
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

/// Finished commands as the columns of an `UNNEST` insert into `processed_commands`.
struct ProcessedColumns<'a> {
    ids: Vec<Uuid>,
    apps: Vec<Uuid>,
    statuses: Vec<&'static str>,
    http: Vec<i16>,
    bodies: Vec<String>,
    hashes: Vec<Option<&'a str>>,
    partitions: Vec<i32>,
    seqs: Vec<i64>,
}

impl<'a> ProcessedColumns<'a> {
    fn new(finished: &'a [(Envelope, Outcome)], positions: &HashMap<Uuid, (u32, u64)>) -> Self {
        let ids: Vec<Uuid> = finished.iter().map(|(e, _)| e.command_id).collect();
        Self {
            apps: finished.iter().map(|(e, _)| e.app_id).collect(),
            statuses: finished.iter().map(|(_, o)| o.status.as_str()).collect(),
            http: finished.iter().map(|(_, o)| o.http_status as i16).collect(),
            bodies: finished.iter().map(|(_, o)| o.body.to_string()).collect(),
            hashes: finished
                .iter()
                .map(|(e, _)| e.request_hash.as_deref())
                .collect(),
            partitions: ids.iter().map(|id| positions[id].0 as i32).collect(),
            seqs: ids.iter().map(|id| positions[id].1 as i64).collect(),
            ids,
        }
    }
}

async fn insert_processed(
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

async fn advance_offsets(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    offsets: &BTreeMap<u32, u64>,
) -> Result<(), sqlx::Error> {
    let partitions: Vec<i32> = offsets.keys().map(|p| *p as i32).collect();
    let seqs: Vec<i64> = offsets.values().map(|s| *s as i64).collect();
    sqlx::query(
        "UPDATE partition_offsets o SET last_seq = u.seq, updated_at = now()
         FROM UNNEST($2::int4[], $3::int8[]) AS u(partition, seq)
         WHERE o.stream = $1 AND o.partition = u.partition",
    )
    .bind(stream)
    .bind(&partitions)
    .bind(&seqs)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a command that cannot be applied as failed (500) and parks it in `dead_letters`
/// (migration 0006_dead_letters) with `error` and the `attempts` it was given, fenced like a
/// batch. Returns the answer for its requester. The partition's offset stays where it is: the
/// message may hold more commands of the partition, and the caller advances it once they are
/// all settled.
pub async fn record_failure(
    pool: &PgPool,
    stream: &str,
    item: &Item,
    expected_last_seq: u64,
    error: &str,
    attempts: u32,
) -> Result<Option<Outcome>, StoreError> {
    let mut tx = pool.begin().await?;
    let offsets = BTreeMap::from([(item.partition, expected_last_seq)]);
    let expected = BTreeMap::from([(item.partition, expected_last_seq)]);
    fence(&mut tx, stream, &expected, &offsets).await?;
    let answer = match &item.envelope {
        Some(envelope) => {
            let outcome = Outcome {
                command_id: envelope.command_id,
                status: Status::Rejected,
                http_status: 500,
                body: tally_common::error_code::ErrorCode::Internal
                    .body("the command could not be applied; it was set aside for an operator"),
            };
            sqlx::query(
                "INSERT INTO processed_commands (command_id, app_id, status, http_status, response,
                                                 request_hash, partition, stream_seq)
                 VALUES ($1, $2, 'rejected', 500, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(envelope.command_id)
            .bind(envelope.app_id)
            .bind(&outcome.body)
            .bind(&envelope.request_hash)
            .bind(item.partition as i32)
            .bind(item.stream_seq as i64)
            .execute(&mut *tx)
            .await?;
            park(&mut tx, stream, item, envelope, error, attempts).await?;
            Some(outcome)
        }
        None => None,
    };
    advance_offsets(&mut tx, stream, &offsets).await?;
    tx.commit().await?;
    Ok(answer)
}

/// Lists a failed command in `dead_letters`, or parks it again if an operator's retry failed.
async fn park(
    tx: &mut Transaction<'_, Postgres>,
    stream: &str,
    item: &Item,
    envelope: &Envelope,
    error: &str,
    attempts: u32,
) -> Result<(), sqlx::Error> {
    let envelope_json = serde_json::to_value(envelope).expect("an envelope serializes");
    sqlx::query(
        "INSERT INTO dead_letters (command_id, app_id, stream, partition, stream_seq, envelope,
                                   error, attempts, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'parked')
         ON CONFLICT (command_id) DO UPDATE
         SET stream = EXCLUDED.stream, partition = EXCLUDED.partition,
             stream_seq = EXCLUDED.stream_seq, error = EXCLUDED.error,
             attempts = EXCLUDED.attempts, state = 'parked', dead_lettered_at = now()",
    )
    .bind(envelope.command_id)
    .bind(envelope.app_id)
    .bind(stream)
    .bind(item.partition as i32)
    .bind(item.stream_seq as i64)
    .bind(envelope_json)
    .bind(error)
    .bind(attempts as i32)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type LotRow = (
    Uuid,
    Uuid,
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
        amount: row.3,
        remaining: row.4,
        expires_at: row.5,
        expired_at: row.6,
    }
}

const LOT_COLUMNS: &str = "id, app_id, user_id, amount, remaining, expires_at, expired_at";

/// Loads the users' unexpired lots, the holds the commands name and the users' holds that are
/// due, the allocations of the deducts being refunded and of those holds, and every lot an
/// allocation names — all under lock.
async fn load_lots_and_holds(
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
        "SELECT id, app_id, user_id, amount, captured, status, description, metadata, expires_at,
                ledger_id, command_id, finished_at
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
            amount: row.3,
            captured: row.4,
            status: HoldStatus::parse(&row.5).expect("constrained by the schema"),
            description: row.6,
            metadata: row.7,
            expires_at: row.8,
            ledger_id: row.9,
            command_id: row.10,
            finished_at: row.11,
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

async fn upsert_lots(
    tx: &mut Transaction<'_, Postgres>,
    state: &State,
    changed: &BTreeSet<Uuid>,
) -> Result<(), sqlx::Error> {
    let lots: Vec<&Lot> = changed.iter().filter_map(|id| state.lots.get(id)).collect();
    if lots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO lots (id, app_id, user_id, amount, remaining, expires_at, expired_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[],
                              $6::timestamptz[], $7::timestamptz[])
         ON CONFLICT (id) DO UPDATE SET remaining = EXCLUDED.remaining, expired_at = EXCLUDED.expired_at",
    )
    .bind(lots.iter().map(|l| l.id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.app_id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.user_id.as_str()).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.amount).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.remaining).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.expired_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_holds(
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
                            expires_at, ledger_id, command_id, finished_at)
         SELECT id, app_id, user_id, amount, captured, status, description, metadata::jsonb,
                expires_at, ledger_id, command_id, finished_at
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int8[], $5::int8[], $6::text[],
                     $7::text[], $8::text[], $9::timestamptz[], $10::uuid[], $11::uuid[],
                     $12::timestamptz[])
           AS t(id, app_id, user_id, amount, captured, status, description, metadata, expires_at,
                ledger_id, command_id, finished_at)
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_allocations(
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
async fn insert_system_commands(
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
