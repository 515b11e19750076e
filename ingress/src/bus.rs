//! Publishing commands to JetStream and waiting for the worker's answer.
//!
//! **Group commit.** With `sync_interval: always` the broker fsyncs every acknowledged publish,
//! so one publish per command caps the ingress at the disk's fsync rate. Callers therefore hand
//! their command to a publisher task through a bounded queue. The publisher takes whatever is
//! queued — up to [`BATCH_MAX`], never waiting for more, so a lone command goes out at once.
//! From [`ATOMIC_BATCH_MIN`] commands on, the take is published as one JetStream *atomic
//! batch*: the broker stages the messages, then stores all or none of them, syncing the stream
//! once, when the last one (`Nats-Batch-Commit: 1`) arrives; that message's ack covers the whole
//! batch.
//! A smaller take goes out as plain publishes, all in flight together (an atomic batch has a
//! fixed cost that only a bigger batch repays). Up to [`BATCHES_IN_FLIGHT`] takes await their
//! acks at once; while they do, new commands queue up and form the next take, so batches grow
//! with the load by themselves. A caller gets `Ok` only once the ack covering its command
//! arrived; if anything about an atomic batch fails, every caller in it gets `Err`.
//!
//! **Message IDs.** A plain publish carries `Nats-Msg-Id` = command id, as before. Batched
//! messages carry none: the broker rejects a whole atomic batch when any of its message IDs is
//! already in the duplicate window or appears twice in the batch (nats-server
//! `checkMsgHeadersPreClusteredProposal`, error 10201), and republishing a command is routine
//! here (an idempotency retry, a webhook delivered several times), so one duplicate would fail
//! the innocent commands batched with it. Postgres dedupes by command id anyway (invariant 4)
//! and the worker answers a repeated command with the stored answer, so the broker's dedupe was
//! only ever an optimisation.
//!
//! **Replies.** The ingress holds one wildcard subscription under its own inbox prefix. Each
//! waiting request registers a token before publishing; the worker publishes the outcome to the
//! subject carried in the command's `Tally-Reply-To` header, and the router hands it to the
//! waiting request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE, NATS_MESSAGE_ID,
};
use async_nats::jetstream;
use async_nats::HeaderMap;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::StreamExt;
use tally_common::command::{Envelope, Outcome, HEADER_REPLY_TO};
use tally_common::partition::{partition_of, Names};
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

/// How long one publish attempt may take: sending the message(s) and receiving the ack.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Publish attempts before the caller(s) get an error. A plain publish keeps its message ID
/// across attempts, so the broker stores it once; a batch is retried under a new batch ID, and
/// a copy stored by an attempt that only seemed to fail is deduped by the worker.
const PUBLISH_ATTEMPTS: usize = 3;
/// Most commands in one atomic batch. Must stay within the broker's `max_batch_size` (1,000 by
/// default, nats-server `streamDefaultMaxAtomicBatchSize`), or every full batch is refused.
/// 256 commands are a few hundred kilobytes; past that a bigger batch saves little.
pub const BATCH_MAX: usize = 256;
/// Fewest commands worth an atomic batch; fewer go out as plain publishes, all in flight at
/// once. On a single file-storage node the broker stages each atomic batch in a store of its
/// own (a directory, two synced metadata files, removed after the commit): about 2 ms here,
/// against ~0.15 ms per plain publish, so a batch pays off only from about this size on.
pub const ATOMIC_BATCH_MIN: usize = 16;
/// Batches awaiting their acks at once, per ingress. More than one lets the next batch be sent
/// while the broker stores the previous one. The broker allows 50 open atomic batches per
/// stream across all publishers (`max_batch_inflight_per_stream`); a batch is open only while
/// it is being sent, but this keeps a dozen ingresses clear of that limit even so.
pub const BATCHES_IN_FLIGHT: usize = 4;
/// Commands waiting for the publisher, at most: enough for every batch in flight plus a full
/// next one many times over, while bounding the memory a stalled broker can pin.
pub const PUBLISH_QUEUE_MAX: usize = 4096;
/// How long a caller waits for room in a full queue before it is refused (and answered 503).
pub const PUBLISH_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

#[derive(Clone)]
pub struct Bus {
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    reply_prefix: String,
    next_token: Arc<AtomicU64>,
    waiters: Waiters,
    queue: mpsc::Sender<Pending>,
}

/// Why a command was not accepted.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the broker did not acknowledge the command: {0}")]
pub struct PublishError(String);

/// The broker's answer to an accepted command.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    /// The broker already had this message ID: no worker answers this publish. Always false
    /// for a batched command, which carries no message ID (the worker answers it).
    pub duplicate: bool,
}

/// A command waiting for the publisher, and where its caller waits for the result.
struct Pending {
    command_id: Uuid,
    subject: String,
    payload: Bytes,
    reply_to: Option<String>,
    done: oneshot::Sender<Result<Accepted, PublishError>>,
}

/// A registered wait for one command's outcome; unregisters itself when dropped.
pub struct Waiter {
    token: u64,
    subject: String,
    receiver: Option<oneshot::Receiver<Outcome>>,
    waiters: Waiters,
}

impl Waiter {
    pub async fn wait(mut self, timeout: Duration) -> Option<Outcome> {
        let receiver = self.receiver.take()?;
        tokio::time::timeout(timeout, receiver).await.ok()?.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .expect("waiters lock")
            .remove(&self.token);
    }
}

impl Bus {
    /// Subscribes to this instance's inbox and starts routing replies.
    pub async fn start(
        client: async_nats::Client,
        names: Names,
        partitions: u32,
    ) -> anyhow::Result<Self> {
        let reply_prefix = names.reply_prefix(Uuid::now_v7());
        let mut subscription = client.subscribe(format!("{reply_prefix}.>")).await?;
        let waiters: Waiters = Arc::default();
        let router_waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Some(token) = message
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|t| t.parse::<u64>().ok())
                else {
                    continue;
                };
                let Ok(outcome) = serde_json::from_slice::<Outcome>(&message.payload) else {
                    tracing::warn!("undecodable reply ignored");
                    continue;
                };
                let waiter = router_waiters.lock().expect("waiters lock").remove(&token);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(outcome);
                }
            }
        });
        let js = jetstream::new(client.clone());
        let (queue, pending) = mpsc::channel(PUBLISH_QUEUE_MAX);
        tokio::spawn(run_publisher(client, js.clone(), pending));
        Ok(Self {
            js,
            names,
            partitions,
            reply_prefix,
            next_token: Arc::default(),
            waiters,
            queue,
        })
    }

    /// Registers interest in a reply; pass the waiter's subject to [`Bus::publish`].
    pub fn waiter(&self) -> Waiter {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(token, sender);
        Waiter {
            token,
            subject: format!("{}.{token}", self.reply_prefix),
            receiver: Some(receiver),
            waiters: self.waiters.clone(),
        }
    }

    /// Publishes `envelope` to its user's partition and waits until the broker has durably
    /// stored it, together with whatever other commands were waiting (see the module docs).
    pub async fn publish(
        &self,
        envelope: &Envelope,
        waiter: Option<&Waiter>,
    ) -> Result<Accepted, PublishError> {
        let partition = partition_of(envelope.app_id, envelope.command.user_id(), self.partitions);
        let (done, result) = oneshot::channel();
        let pending = Pending {
            command_id: envelope.command_id,
            subject: self.names.command_subject(partition),
            payload: serde_json::to_vec(envelope)
                .expect("envelopes serialize")
                .into(),
            reply_to: waiter.map(|waiter| waiter.subject.clone()),
            done,
        };
        // Not enqueued means not published: the caller may safely refuse the command.
        match tokio::time::timeout(PUBLISH_QUEUE_TIMEOUT, self.queue.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PublishError("the publisher has stopped".into())),
            Err(_) => return Err(PublishError("the publish queue stayed full".into())),
        }
        // The batch task answers within its attempts' timeouts; a closed channel means it died.
        result
            .await
            .unwrap_or_else(|_| Err(PublishError("the publisher dropped the command".into())))
    }

    /// Whether the broker answers (for `/readyz`).
    pub async fn ready(&self) -> bool {
        let stream = self.names.command_stream();
        tokio::time::timeout(Duration::from_secs(2), self.js.get_stream(stream))
            .await
            .is_ok_and(|result| result.is_ok())
    }
}

/// Forms batches from the queue and publishes them, [`BATCHES_IN_FLIGHT`] at most at a time.
/// Ends when every [`Bus`] is gone.
async fn run_publisher(
    client: async_nats::Client,
    js: jetstream::Context,
    mut queue: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // Take a slot before taking commands: while every slot is busy, commands keep queueing
        // and the next batch takes them all. That, not a timer, is what makes batches.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH_MAX.min(queue.len() + 1));
        batch.push(first);
        while batch.len() < BATCH_MAX {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        // A caller that went away (its client hung up) would never learn the result; skip its
        // command, as the unbatched path never published a command whose request was dropped.
        batch.retain(|pending| !pending.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let client = client.clone();
        let js = js.clone();
        tokio::spawn(async move {
            if batch.len() >= ATOMIC_BATCH_MIN {
                metrics::histogram!("tally_publish_batch_size", "kind" => "atomic")
                    .record(batch.len() as f64);
                let result =
                    with_retries(batch.len(), || publish_batch(&client, &js, &batch)).await;
                for pending in batch {
                    let _ = pending.done.send(result.clone());
                }
            } else {
                metrics::histogram!("tally_publish_batch_size", "kind" => "plain")
                    .record(batch.len() as f64);
                // Each its own publish, all in flight together; each caller gets its own ack.
                futures::future::join_all(batch.into_iter().map(|pending| {
                    let js = &js;
                    async move {
                        let result = with_retries(1, || publish_one(js, &pending)).await;
                        let _ = pending.done.send(result);
                    }
                }))
                .await;
            }
            drop(slot);
        });
    }
}

/// Runs `attempt`, each try bounded by [`PUBLISH_ACK_TIMEOUT`], until it is acknowledged or
/// [`PUBLISH_ATTEMPTS`] have failed.
async fn with_retries<F, Fut>(commands: usize, attempt: F) -> Result<Accepted, PublishError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Accepted, PublishError>>,
{
    let bounded = || async {
        tokio::time::timeout(PUBLISH_ACK_TIMEOUT, attempt())
            .await
            .map_err(|_| PublishError("timed out".into()))?
    };
    bounded
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(PUBLISH_ATTEMPTS - 1),
        )
        .notify(|error, after| {
            tracing::warn!(
                %error,
                commands,
                retry_in_ms = after.as_millis() as u64,
                "publish failed; retrying"
            );
        })
        .await
}

/// One command, one plain publish under its message ID, so the broker dedupes a republish and
/// says so (the caller then reads the stored answer instead of waiting for a reply).
async fn publish_one(js: &jetstream::Context, pending: &Pending) -> Result<Accepted, PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, pending.command_id.to_string().as_str());
    if let Some(reply_to) = &pending.reply_to {
        headers.insert(HEADER_REPLY_TO, reply_to.as_str());
    }
    let ack = js
        .publish_with_headers(pending.subject.clone(), headers, pending.payload.clone())
        .await
        .map_err(|e| PublishError(e.to_string()))?
        .await
        .map_err(|e| PublishError(e.to_string()))?;
    Ok(Accepted {
        duplicate: ack.duplicate,
    })
}

/// Several commands, one atomic batch. The messages before the last go out as core publishes
/// without a reply subject (the broker would otherwise send an empty ack for each); the last
/// one commits, and its ack — or error — speaks for the whole batch. A batch the broker gave up
/// on (a gap, its timeout, a limit) has its commit refused as incomplete, and a commit that gets
/// no answer times out, so no failure goes unnoticed.
async fn publish_batch(
    client: &async_nats::Client,
    js: &jetstream::Context,
    batch: &[Pending],
) -> Result<Accepted, PublishError> {
    let Some((commit, staged)) = batch.split_last() else {
        return Err(PublishError("empty batch".into()));
    };
    // A fresh ID per attempt: the broker may still hold a half-received earlier attempt.
    let batch_id = Uuid::now_v7().simple().to_string();
    let headers = |sequence: usize, pending: &Pending| {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_BATCH_ID, batch_id.as_str());
        headers.insert(NATS_BATCH_SEQUENCE, sequence.to_string().as_str());
        if let Some(reply_to) = &pending.reply_to {
            headers.insert(HEADER_REPLY_TO, reply_to.as_str());
        }
        headers
    };
    for (index, pending) in staged.iter().enumerate() {
        client
            .publish_with_headers(
                pending.subject.clone(),
                headers(index + 1, pending),
                pending.payload.clone(),
            )
            .await
            .map_err(|e| PublishError(e.to_string()))?;
    }
    let mut commit_headers = headers(batch.len(), commit);
    commit_headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
    let ack = js
        .publish_with_headers(
            commit.subject.clone(),
            commit_headers,
            commit.payload.clone(),
        )
        .await
        .map_err(|e| PublishError(e.to_string()))?
        .await
        .map_err(|e| PublishError(e.to_string()))?;
    // The ack names the batch and counts what it stored; anything else is not our batch.
    if ack.batch_id.as_deref() != Some(batch_id.as_str())
        || ack.batch_size != Some(batch.len() as u64)
    {
        return Err(PublishError(format!(
            "unexpected batch ack: batch {:?} of {:?} for batch {batch_id} of {}",
            ack.batch_id,
            ack.batch_size,
            batch.len()
        )));
    }
    Ok(Accepted { duplicate: false })
}
