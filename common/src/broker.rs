//! NATS connection and JetStream provisioning.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, stream};
use backon::{ConstantBuilder, Retryable};

use crate::command::{BatchedCommand, CommandBatch};
use crate::config::STARTUP_CONNECT_TIMEOUT;
use crate::partition::Names;

/// Window in which the broker drops a republished message ID. Postgres dedupe is the final
/// word; this only spares the workers the obvious duplicates (client and ingress retries).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long an unapplied command may wait in the stream. Workers apply commands in
/// milliseconds; a week covers any outage an operator would let run.
pub const COMMAND_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest command stream, in bytes. Past it the broker refuses new commands (503), never
/// drops an unapplied one.
pub const COMMAND_STREAM_BYTES_MAX: i64 = 8 * 1024 * 1024 * 1024;
/// Stream metadata key recording the partition count the stream was created with.
const METADATA_PARTITIONS: &str = "tally_partitions";
/// Longest pause between two reconnection attempts. The client's default backs off to 4 s,
/// which would add up to 4 s of downtime after the broker is back; a few processes probing a
/// down server every quarter second cost it nothing.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(250);

/// Delay before reconnection attempt `attempts` (1-based): at once, then 50 ms more per attempt
/// up to [`RECONNECT_DELAY_MAX`].
pub fn reconnect_delay(attempts: usize) -> Duration {
    let steps = attempts.saturating_sub(1).min(1_000) as u32;
    (Duration::from_millis(50) * steps).min(RECONNECT_DELAY_MAX)
}

/// Connects to NATS; fails with one clear line when no server answers.
pub async fn connect(nats_url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(STARTUP_CONNECT_TIMEOUT)
        .reconnect_delay_callback(reconnect_delay)
        .request_timeout(Some(Duration::from_secs(5)));
    let servers: Vec<async_nats::ServerAddr> = nats_url
        .split(',')
        .map(|url| url.trim().parse())
        .collect::<Result<_, _>>()
        .context("TALLY_NATS_URL is not a valid list of NATS URLs")?;
    let shown = redact(nats_url);
    tokio::time::timeout(STARTUP_CONNECT_TIMEOUT, options.connect(servers))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach NATS at {shown}: timed out"))?
        .with_context(|| format!("cannot reach NATS at {shown}"))
}

/// `TALLY_NATS_URL` fit for a log line or an error: the credentials of every URL (a user and
/// password, or a token in the user's place) replaced by `***`.
pub fn redact(nats_url: &str) -> String {
    nats_url
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            match entry.rsplit_once('@') {
                Some((credentials, host)) => match credentials.split_once("://") {
                    Some((scheme, _)) => format!("{scheme}://***@{host}"),
                    None => format!("***@{host}"),
                },
                None => entry.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The command stream's configuration.
pub fn command_stream_config(names: &Names, partitions: u32, replicas: u16) -> stream::Config {
    stream::Config {
        name: names.command_stream(),
        description: Some("Tally credit commands, on subjects routed by shard".to_string()),
        subjects: vec![
            names.command_subjects_wildcard(),
            names.command_routed_wildcard(),
        ],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_age: COMMAND_MAX_AGE,
        max_bytes: COMMAND_STREAM_BYTES_MAX,
        storage: stream::StorageType::File,
        num_replicas: replicas.into(),
        duplicate_window: DUPLICATE_WINDOW,
        // Earlier ingresses published atomic batches; kept so they work during an upgrade.
        allow_atomic_publish: true,
        metadata: HashMap::from([(METADATA_PARTITIONS.to_string(), partitions.to_string())]),
        ..Default::default()
    }
}

/// How long a delivery may wait in its stream: longer than the whole default retry schedule
/// (about 28 hours) with room for an outage.
pub const DELIVERY_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The stream of outbound event deliveries: a work queue every worker's deliverer shares (a
/// message is removed once delivered or given up).
pub fn delivery_stream_config(names: &Names, replicas: u16) -> stream::Config {
    stream::Config {
        name: names.delivery_stream(),
        description: Some("Tally outbound event deliveries to do".to_string()),
        subjects: vec![names.delivery_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::Old,
        max_age: DELIVERY_MAX_AGE,
        storage: stream::StorageType::File,
        num_replicas: replicas.into(),
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// What [`provision`] does with an existing stream whose replica count differs from the
/// configured one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicas {
    /// Leave it and warn (services starting during a rolling change must not fight over it).
    Warn,
    /// Change it (`tally migrate`): NATS copies the stream to the new replicas online.
    Apply,
}

/// Creates the command stream, or checks the existing one. Safe when many processes start at
/// once. Refuses to run with a partition count other than the stream's.
pub async fn provision(
    js: &jetstream::Context,
    names: &Names,
    partitions: u32,
    replicas: u16,
    on_mismatch: Replicas,
) -> anyhow::Result<stream::Stream> {
    let config = command_stream_config(names, partitions, replicas);
    let mut last_error = None;
    // A cluster that just started (or lost its meta leader) answers JetStream requests only
    // once it has elected one: keep asking for the start-up timeout.
    let started = std::time::Instant::now();
    while started.elapsed() < STARTUP_CONNECT_TIMEOUT {
        match js.get_or_create_stream(config.clone()).await {
            Ok(mut stream) => {
                let mut info = stream
                    .info()
                    .await
                    .context("cannot read the command stream")?
                    .clone();
                let existing = info.config.metadata.get(METADATA_PARTITIONS).cloned();
                if let Some(existing) = existing {
                    if existing != partitions.to_string() {
                        bail!(
                            "stream {} has {existing} partitions but TALLY_PARTITIONS is {partitions}",
                            config.name
                        );
                    }
                }
                // A stream created by an earlier version takes the routed subjects too. Every
                // process starting adds the same subjects, so concurrent updates agree.
                let missing: Vec<&String> = config
                    .subjects
                    .iter()
                    .filter(|subject| !info.config.subjects.contains(subject))
                    .collect();
                if !missing.is_empty() {
                    let mut wanted = info.config.clone();
                    wanted.subjects.extend(missing.into_iter().cloned());
                    js.update_stream(&wanted).await.with_context(|| {
                        format!("cannot add the routed subjects to stream {}", config.name)
                    })?;
                    info.config = wanted;
                    tracing::info!(stream = %config.name, "added the routed subjects to the command stream");
                }
                let current = info.config.num_replicas;
                if current != usize::from(replicas) {
                    match on_mismatch {
                        Replicas::Warn => tracing::warn!(
                            stream = %config.name,
                            stream.replicas = current,
                            configured = replicas,
                            "the command stream's replica count differs from TALLY_STREAM_REPLICAS; `tally migrate` changes it"
                        ),
                        Replicas::Apply => {
                            let mut wanted = info.config.clone();
                            wanted.num_replicas = replicas.into();
                            change_replicas(js, &wanted).await.with_context(|| {
                                format!(
                                    "cannot change stream {} from {current} to {replicas} replicas",
                                    config.name
                                )
                            })?;
                            tracing::info!(stream = %config.name, from = current, to = replicas, "changed the command stream's replicas");
                        }
                    }
                }
                provision_deliveries(js, names, replicas, on_mismatch).await?;
                return Ok(stream);
            }
            Err(error) => {
                last_error = Some(error);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(anyhow::anyhow!(
        "cannot create stream {}: {}",
        config.name,
        last_error.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// Creates the delivery stream, or brings an existing one's replicas to the configured count
/// (`Replicas::Apply`).
async fn provision_deliveries(
    js: &jetstream::Context,
    names: &Names,
    replicas: u16,
    on_mismatch: Replicas,
) -> anyhow::Result<()> {
    let config = delivery_stream_config(names, replicas);
    // Like the command stream's: a cluster that has just elected its meta leader may time out
    // the first requests.
    let started = std::time::Instant::now();
    let mut stream = loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(error) if started.elapsed() < STARTUP_CONNECT_TIMEOUT => {
                tracing::debug!(%error, stream = %config.name, "creating the stream; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!("cannot create stream {}: {error}", config.name),
        }
    };
    let info = stream
        .info()
        .await
        .context("cannot read the delivery stream")?;
    if info.config.num_replicas != usize::from(replicas) && on_mismatch == Replicas::Apply {
        let mut wanted = info.config.clone();
        wanted.num_replicas = replicas.into();
        change_replicas(js, &wanted).await.with_context(|| {
            format!(
                "cannot change stream {} to {replicas} replicas",
                config.name
            )
        })?;
    }
    Ok(())
}

/// How long `tally migrate` waits for the cluster to be able to place a stream's new replicas.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(30);
const PLACEMENT_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Updates a stream to a new replica count. The meta leader places replicas only on peers it
/// has heard from lately: on a cluster that just formed, or with a node down or just back, an
/// attempt may find "no suitable peers" (code 10005), or no meta leader at all while one is
/// elected (a timeout). Those answers are retried for [`PLACEMENT_TIMEOUT`]: the update sets a
/// count, so applying it twice is the same as once. Any other error is returned at once.
async fn change_replicas(
    js: &jetstream::Context,
    wanted: &stream::Config,
) -> Result<(), jetstream::context::UpdateStreamError> {
    let attempts = PLACEMENT_TIMEOUT.as_millis() / PLACEMENT_RETRY_DELAY.as_millis();
    (|| async { js.update_stream(wanted).await.map(drop) })
        .retry(
            ConstantBuilder::default()
                .with_delay(PLACEMENT_RETRY_DELAY)
                .with_max_times(attempts as usize),
        )
        .when(placement_pending)
        .notify(|error, after| {
            tracing::info!(
                %error,
                stream = %wanted.name,
                retry_in_ms = after.as_millis() as u64,
                "the cluster cannot place the new replicas yet; retrying"
            );
        })
        .await
}

/// Whether an update failed only because the cluster cannot place replicas right now.
fn placement_pending(error: &jetstream::context::UpdateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match error.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(error) => [
            jetstream::ErrorCode::CLUSTER_NO_PEERS,
            jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
        ]
        .contains(&error.error_code()),
        _ => false,
    }
}

/// Publishes one command on its own (a replayed dead letter, a charge's result) as a batch of
/// one on the command subject, under `message_id` when given, and waits for the broker's ack.
/// The envelope may be a stored one as it was received (any serializable form).
pub async fn publish_command<E: serde::Serialize>(
    js: &jetstream::Context,
    names: &Names,
    partition: u32,
    envelope: E,
    message_id: Option<&str>,
) -> anyhow::Result<()> {
    let batch = CommandBatch {
        commands: vec![BatchedCommand {
            partition,
            reply_to: None,
            envelope,
        }],
    };
    let payload = serde_json::to_vec(&batch).expect("a batch serializes");
    let mut headers = async_nats::HeaderMap::new();
    if let Some(id) = message_id {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    }
    js.publish_with_headers(names.command_batch_subject(), headers, payload.into())
        .await
        .context("cannot publish the command")?
        .await
        .context("the broker did not confirm the command")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_credentials_never_show() {
        assert_eq!(
            redact("nats://tally:s3cret@nats:4222, nats://t0ken@n2:4222,nats://n3:4222"),
            "nats://***@nats:4222,nats://***@n2:4222,nats://n3:4222"
        );
        assert_eq!(redact("tally:s3cret@nats:4222"), "***@nats:4222");
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
