//! The partition offsets: each owned partition's last applied stream sequence, read when a
//! reader starts, checked (the fence) and advanced inside every batch transaction.

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgPool, Postgres, Row, Transaction};

use super::StoreError;

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

/// The fence: locks the offset rows of the partitions of `offsets`, in partition order, and
/// fails with [`StoreError::Fenced`] naming each that is not where this worker left it
/// (`expected`), so that a stale owner's batch never commits.
pub(super) async fn fence(
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

/// Moves each partition of `offsets` to its new last applied sequence.
pub(super) async fn advance_offsets(
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
