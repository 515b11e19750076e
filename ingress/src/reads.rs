//! Balance reads, looked up in groups.
//!
//! A balance read is one indexed lookup of the account; alone, it costs Postgres a round trip,
//! a bind and an execution, and the ingress a pool checkout and two socket wakeups. Concurrent
//! reads are handed to one task ([`group`]) that looks them all up with one statement: each
//! element of the arrays is one lookup by primary key (the `LIMIT 1` lateral subquery runs
//! once per element whatever the planner knows of the table), so a group costs what one read
//! did plus a few µs per read.

use std::sync::Arc;

use sqlx::PgPool;
use tally_common::credit_type::CreditType;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::error::ApiError;
use tally_common::group;

/// Most reads in one statement.
pub const READS_PER_QUERY_MAX: usize = 256;
/// Reads waiting for a statement, at most.
const READS_QUEUE_MAX: usize = 8192;
/// Statements running at once.
const QUERIES_IN_FLIGHT: usize = 4;

/// What one account lookup finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub balance: i64,
    pub held: i64,
    /// The user has lots not yet expired by the worker (the read then needs their details).
    pub open_lots: bool,
}

type Answer = Result<Option<Account>, Arc<sqlx::Error>>;

struct Read {
    app_id: Uuid,
    user_id: String,
    credit_type: CreditType,
    done: oneshot::Sender<Answer>,
}

#[derive(Clone)]
pub struct BalanceReads {
    queue: mpsc::Sender<Read>,
}

impl BalanceReads {
    pub fn start(pool: PgPool) -> Self {
        let limits = group::Limits {
            max: READS_PER_QUERY_MAX,
            queue: READS_QUEUE_MAX,
            in_flight: QUERIES_IN_FLIGHT,
        };
        let queue = group::start(limits, move |group| look_up(pool.clone(), group));
        Self { queue }
    }

    /// The account of `user_id`'s `credit_type` in `app_id`, if it exists.
    pub async fn account(
        &self,
        app_id: Uuid,
        user_id: String,
        credit_type: CreditType,
    ) -> Result<Option<Account>, ApiError> {
        let (done, answer) = oneshot::channel();
        let unavailable = || ApiError::Unavailable("the balance reader stopped; retry".into());
        self.queue
            .send(Read {
                app_id,
                user_id,
                credit_type,
                done,
            })
            .await
            .map_err(|_| unavailable())?;
        match answer.await.map_err(|_| unavailable())? {
            Ok(account) => Ok(account),
            Err(error) => Err(ApiError::from_shared(&error)),
        }
    }
}

async fn look_up(pool: PgPool, group: Vec<Read>) {
    let apps: Vec<Uuid> = group.iter().map(|read| read.app_id).collect();
    let users: Vec<&str> = group.iter().map(|read| read.user_id.as_str()).collect();
    let types: Vec<&str> = group.iter().map(|read| read.credit_type.as_str()).collect();
    let rows: Result<Vec<(i32, i64, i64, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT r.i::int4, a.balance, a.held,
                EXISTS (SELECT 1 FROM lots l WHERE l.app_id = a.app_id AND l.user_id = a.user_id
                          AND l.credit_type = a.credit_type AND l.expired_at IS NULL)
         FROM UNNEST($1::uuid[], $2::text[], $3::text[])
                WITH ORDINALITY AS r(app_id, user_id, credit_type, i)
         CROSS JOIN LATERAL (SELECT balance, held, app_id, user_id, credit_type FROM accounts
                             WHERE app_id = r.app_id AND user_id = r.user_id
                               AND credit_type = r.credit_type LIMIT 1) a",
    )
    .bind(&apps)
    .bind(&users)
    .bind(&types)
    .fetch_all(&pool)
    .await;
    match rows {
        Ok(rows) => {
            let mut found = vec![None; group.len()];
            for (i, balance, held, open_lots) in rows {
                if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| found.get_mut(i)) {
                    *slot = Some(Account {
                        balance,
                        held,
                        open_lots,
                    });
                }
            }
            for (read, account) in group.into_iter().zip(found) {
                let _ = read.done.send(Ok(account));
            }
        }
        Err(error) => {
            tracing::warn!(%error, reads = group.len(), "could not read balances");
            let error = Arc::new(error);
            for read in group {
                let _ = read.done.send(Err(error.clone()));
            }
        }
    }
}
