//! The worker's SQL: the batch transaction and what it loads and writes, dead letters, the
//! expiry sweep and the partition offsets. Each statement is set-based (arrays joined with
//! `UNNEST`), so a batch costs a handful of round trips whatever its size.
//!
//! Order inside the batch transaction ([`Store::apply_batch`]):
//! 1. lock the batch's partition offsets and check they are where this worker left them (the
//!    fence: a stale owner's batch can never commit);
//! 2. load what the commands read (prior results, accounts under `FOR UPDATE`, refund targets,
//!    payments);
//! 3. [`ledger::fold`](crate::ledger::fold) in stream order, in memory;
//! 4. write with a handful of set-based statements and advance the offsets; commit.
//!
//! A batch of plain adds and deducts for remembered users skips all of it: one guarded call
//! (the fast path). What each apply lane remembers of its users lives in its [`Store`], and
//! only there.

mod account_cache;
mod batch;
mod columns;
mod dead_letters;
mod load;
mod offsets;
mod sweep;
mod write;

use std::collections::BTreeMap;

use sqlx::PgPool;
use tally_common::command::{Envelope, Outcome, ReplyTo};

use crate::store::account_cache::AccountCache;
pub use offsets::partition_offsets;
pub use sweep::{sweep, SWEEP_USERS_MAX};

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

/// Why a batch or a dead letter did not commit.
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

/// The database as one apply lane uses it: the pools, the stream whose offsets the lane moves,
/// and what the lane remembers of its partitions' users (an `AccountCache`), which only this
/// fills and empties.
#[derive(Debug)]
pub struct Store {
    pools: Pools,
    /// The command stream's name, under which the offsets are kept.
    stream: String,
    cache: AccountCache,
}

impl Store {
    /// A lane's store over `pools`, for the offsets of `stream`, remembering nobody yet.
    pub fn new(pools: Pools, stream: String) -> Self {
        Self {
            pools,
            stream,
            cache: AccountCache::default(),
        }
    }

    /// Applies `items` (in stream order per partition) in one transaction and moves each
    /// partition of `offsets` from its `expected` last applied sequence to the one given: by the
    /// fast path when every command is a plain add or deduct of a remembered user, else by
    /// the full path (fence, load under lock, fold, write).
    pub async fn apply_batch(
        &mut self,
        items: &[Item],
        expected: &BTreeMap<u32, u64>,
        offsets: &BTreeMap<u32, u64>,
    ) -> Result<Committed, StoreError> {
        batch::apply(
            &self.pools,
            &self.stream,
            items,
            expected,
            offsets,
            &mut self.cache,
        )
        .await
    }

    /// Records `item` as failed (500) after `attempts` and parks it in `dead_letters` with
    /// `error`, fenced at `expected_last_seq`, which it leaves as it is. Returns the answer for
    /// its requester.
    pub async fn record_failure(
        &self,
        item: &Item,
        expected_last_seq: u64,
        error: &str,
        attempts: u32,
    ) -> Result<Option<Outcome>, StoreError> {
        dead_letters::record_failure(
            &self.pools.full,
            &self.stream,
            item,
            expected_last_seq,
            error,
            attempts,
        )
        .await
    }

    /// `partition` changed hands — the lane took it or gave it up, or found it advanced by
    /// another worker (fenced) — so its users are forgotten.
    pub fn partition_changed_hands(&mut self, partition: u32) {
        self.cache.partition_changed_hands(partition);
    }
}

/// Envelopes for the store's unit tests.
#[cfg(test)]
mod test_envelopes {
    use serde_json::Map;
    use tally_common::command::{Command, Envelope, Origin};
    use uuid::Uuid;

    /// `command` of `app_id`, from the API, accepted now.
    pub(super) fn envelope(app_id: Uuid, command: Command) -> Envelope {
        Envelope {
            command_id: Uuid::now_v7(),
            app_id,
            request_hash: None,
            accepted_at: chrono::Utc::now(),
            command,
            origin: Origin::Api,
        }
    }

    /// A deduct of 1 from `user` of `app_id`.
    pub(super) fn deduct(app_id: Uuid, user: &str) -> Envelope {
        let command = Command::Deduct {
            user_id: user.into(),
            amount: 1,
            credit_type: Default::default(),
            description: None,
            metadata: Map::new(),
        };
        envelope(app_id, command)
    }
}
