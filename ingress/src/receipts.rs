//! Receipts of commands answered `202`, written in groups.
//!
//! `GET /commands/{id}` must say `pending` from the moment a `202` is sent, so the receipt is
//! durable before the answer. One commit per receipt would make fire-and-forget pay a Postgres
//! commit per request on top of the broker's; instead, callers hand their receipt to a writer
//! task that takes whatever is queued (up to [`RECEIPTS_PER_INSERT_MAX`], never waiting for
//! more) and inserts it with one statement, one commit. Under load a commit carries hundreds.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use tally_common::group;

/// Most receipts in one insert.
pub const RECEIPTS_PER_INSERT_MAX: usize = 1024;
/// Receipts waiting for the writer, at most.
pub const RECEIPTS_QUEUE_MAX: usize = 8192;
/// Inserts running at once: one may commit while the next forms.
const INSERTS_IN_FLIGHT: usize = 2;
/// How long a caller waits for its receipt before answering without it (the command is
/// accepted either way; its status URL then answers `404` until a worker applies it).
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(2);

struct Receipt {
    command_id: Uuid,
    app_id: Uuid,
    done: oneshot::Sender<bool>,
}

#[derive(Clone)]
pub struct Receipts {
    queue: mpsc::Sender<Receipt>,
}

impl Receipts {
    pub fn start(pool: PgPool) -> Self {
        let limits = group::Limits {
            max: RECEIPTS_PER_INSERT_MAX,
            queue: RECEIPTS_QUEUE_MAX,
            in_flight: INSERTS_IN_FLIGHT,
        };
        let queue = group::start(limits, move |group| insert(pool.clone(), group));
        Self { queue }
    }

    /// Records that `command_id` was accepted; true once the receipt is committed.
    pub async fn record(&self, app_id: Uuid, command_id: Uuid) -> bool {
        let (done, result) = oneshot::channel();
        let receipt = Receipt {
            command_id,
            app_id,
            done,
        };
        let recorded = async {
            self.queue.send(receipt).await.ok()?;
            result.await.ok()
        };
        matches!(
            tokio::time::timeout(RECEIPT_TIMEOUT, recorded).await,
            Ok(Some(true))
        )
    }
}

async fn insert(pool: PgPool, group: Vec<Receipt>) {
    let ids: Vec<Uuid> = group.iter().map(|r| r.command_id).collect();
    let apps: Vec<Uuid> = group.iter().map(|r| r.app_id).collect();
    let result = sqlx::query(
        "INSERT INTO command_receipts (command_id, app_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&apps)
    .execute(&pool)
    .await;
    if let Err(error) = &result {
        tracing::warn!(%error, receipts = group.len(), "could not record command receipts");
    }
    for receipt in group {
        let _ = receipt.done.send(result.is_ok());
    }
}
