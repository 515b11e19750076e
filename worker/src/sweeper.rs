//! The sweeper: a task that expires due lots and holds of every user, every [`SWEEP_INTERVAL`].

use std::time::Duration;

use sqlx::PgPool;

use crate::store;

/// How often due lots and holds are looked for. Expiries land within about this long (plus
/// one transaction) of their time.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// Expires due lots and holds, forever. Every worker sweeps every user: the account locks make
/// concurrent sweeps (and the batches of the partition's owner) write each expiry once.
pub(crate) async fn sweep_forever(pool: PgPool) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Drain what is due, a bounded chunk per transaction.
        loop {
            match store::sweep(&pool, chrono::Utc::now()).await {
                Ok(swept) if swept as i64 >= store::SWEEP_USERS_MAX => continue,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep failed; retrying");
                    break;
                }
            }
        }
    }
}
