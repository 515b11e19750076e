//! Dead letters: a command that cannot be applied is recorded as failed (its answer) and parked
//! in `dead_letters` for an operator, in one fenced transaction.

use std::collections::BTreeMap;

use sqlx::{PgPool, Postgres, Transaction};
use tally_common::command::{Envelope, Outcome, Status};

use super::offsets::{advance_offsets, fence};
use super::{Item, StoreError};

/// Records a command that cannot be applied as failed (500) and parks it in `dead_letters`
/// (migration 0006_dead_letters) with `error` and the `attempts` it was given, fenced like a
/// batch. Returns the answer for its requester. The partition's offset stays where it is: the
/// message may hold more commands of the partition, and the caller advances it once they are
/// all settled.
pub(super) async fn record_failure(
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
