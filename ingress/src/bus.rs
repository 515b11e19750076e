//! Publishing commands to JetStream and waiting for the worker's answer.
//!
//! **Group commit.** With `sync_interval: always` the broker fsyncs every acknowledged publish,
//! so one publish per command would cap the ingress at the disk's fsync rate, and every stored
//! message costs the broker work to write, index and deliver. Callers therefore hand their
//! command to a publisher task through a bounded queue. The publisher takes whatever is queued
//! — up to [`BATCH_MAX`] commands or [`BATCH_BYTES_MAX`] bytes, never waiting for more, so a
//! lone command goes out at once — and publishes the take as **one message per owning worker**
//! ([`CommandBatch`], on a routed subject, [`crate::shards`]): one write, one fsync and one
//! delivery per worker that owns some of its commands, whatever the number of commands. Up to
//! [`BATCHES_IN_FLIGHT`] takes await their acks at once; while they do, new commands queue up
//! and form the next take, so batches grow with the load by themselves. A caller gets `Ok` only
//! once the ack covering its command arrived; if its message's publish fails, it gets `Err`.
//!
//! **Order and partitions.** Each command carries its partition inside the batch. The stream's
//! order (then the order inside a batch) is the order of acceptance; a worker applies the
//! commands of the partitions it owns in that order, so per-user order holds across ingresses.
//! A caller's commands always travel in one message (several, in order, only past
//! [`BATCH_BYTES_MAX`], each routed to every owner of any of the caller's commands), and a take
//! is published only once the previous one is acknowledged.
//!
//! **Message IDs.** A batch message carries `Nats-Msg-Id` = an ID kept across its retries, so a
//! retry after a lost ack is stored once. Commands have no broker-level ID: a republished
//! command (an idempotency retry, a webhook delivered twice) is a new message, and the worker
//! dedupes it by command id in Postgres and answers it with the stored answer (invariant 4).
//!
//! **Replies.** The ingress subscribes to its own inbox. Each waiting request registers a
//! token before publishing; a worker answers the commands of a committed batch with one message
//! per ingress inbox holding every outcome for it ([`Reply`]), and the router hands each one to
//! its waiting request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use async_nats::HeaderMap;
use backon::{ExponentialBuilder, Retryable};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tally_common::command::{Envelope, Outcome, Reply, ReplyTo};
use tally_common::events::DeliveryMessage;
use tally_common::partition::{partition_of, Names};
use tally_common::routing::{self, ShardMask};
use tokio::sync::{mpsc, oneshot, Semaphore};
use uuid::Uuid;

use crate::shards::{Shards, Table};

/// How long one publish attempt may take: sending the message and receiving the ack.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Publish attempts before the callers get an error. Every attempt carries the batch's message
/// ID, so the broker stores the batch once however many attempts reach it.
const PUBLISH_ATTEMPTS: usize = 3;
/// Most commands in one batch message. Past a few hundred, a bigger batch saves little and
/// makes the worker's transactions longer.
pub const BATCH_MAX: usize = 512;
/// Most bytes of commands in one batch message, well under the broker's `max_payload`
/// (1 MiB by default). A single larger command still goes out, alone.
pub const BATCH_BYTES_MAX: usize = 256 * 1024;
/// Batches awaiting their acks at once, per ingress. More than one lets the next batch be sent
/// while the broker stores the previous one; few enough that under load each batch is large.
pub const BATCHES_IN_FLIGHT: usize = 1;
/// Commands waiting for the publisher, at most: enough for every batch in flight plus a full
/// next one many times over, while bounding the memory a stalled broker can pin.
pub const PUBLISH_QUEUE_MAX: usize = 8192;
/// How long a caller waits for room in a full queue before it is refused (and answered 503).
pub const PUBLISH_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

#[derive(Clone)]
pub struct Bus {
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    shard_count: u32,
    reply_inbox: String,
    next_token: Arc<AtomicU64>,
    waiters: Waiters,
    queue: mpsc::Sender<Pending>,
}

/// Why a command was not accepted.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the broker did not acknowledge the command: {0}")]
pub struct PublishError(String);

impl PublishError {
    fn disconnected() -> Self {
        Self("not connected to the broker".into())
    }
}

/// Commands waiting for the publisher, and where their caller waits for the result. They are
/// published in one message, never split: a request's group of commands is accepted or
/// refused whole.
struct Pending {
    /// Elements of the batch's `commands` array, comma-separated, serialized by the caller's
    /// task.
    json: Bytes,
    /// How many commands `json` holds.
    commands: usize,
    /// The shards of the caller's commands (of all its groups, which travel together).
    shards: ShardMask,
    done: oneshot::Sender<Result<(), PublishError>>,
}

/// A registered wait for one command's outcome; unregisters itself when dropped.
pub struct Waiter {
    token: u64,
    inbox: String,
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
        shards: Shards,
    ) -> anyhow::Result<Self> {
        let reply_inbox = names.reply_prefix(Uuid::now_v7());
        let mut subscription = client.subscribe(reply_inbox.clone()).await?;
        let waiters: Waiters = Arc::default();
        let router_waiters = waiters.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let Ok(replies) = serde_json::from_slice::<Vec<Reply>>(&message.payload) else {
                    tracing::warn!("undecodable reply ignored");
                    continue;
                };
                let mut waiters = router_waiters.lock().expect("waiters lock");
                for reply in replies {
                    if let Some(waiter) = waiters.remove(&reply.token) {
                        let _ = waiter.send(reply.outcome);
                    }
                }
            }
        });
        let js = jetstream::new(client.clone());
        let (queue, pending) = mpsc::channel(PUBLISH_QUEUE_MAX);
        tokio::spawn(run_publisher(
            client,
            js.clone(),
            names.clone(),
            shards,
            pending,
        ));
        Ok(Self {
            js,
            names,
            partitions,
            shard_count: routing::shard_count(partitions),
            reply_inbox,
            next_token: Arc::default(),
            waiters,
            queue,
        })
    }

    /// Registers interest in a reply; pass the waiter to [`Bus::publish`].
    pub fn waiter(&self) -> Waiter {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(token, sender);
        Waiter {
            token,
            inbox: self.reply_inbox.clone(),
            receiver: Some(receiver),
            waiters: self.waiters.clone(),
        }
    }

    /// Publishes `envelope` for its user's partition and waits until the broker has durably
    /// stored it, together with whatever other commands were waiting (see the module docs).
    pub async fn publish(
        &self,
        envelope: &Envelope,
        waiter: Option<&Waiter>,
    ) -> Result<(), PublishError> {
        let mut results = self.publish_many(&[(envelope, waiter)]).await;
        results.pop().expect("one group").1
    }

    /// Publishes `commands` in their order, in as few messages as [`BATCH_BYTES_MAX`] allows
    /// (one, unless they are many and large), and waits for the broker's acks. Returns each
    /// message's result with how many of the commands, in order, it carried: a message is
    /// accepted or refused whole, so a caller refuses exactly the commands of a refused one.
    pub async fn publish_many(
        &self,
        commands: &[(&Envelope, Option<&Waiter>)],
    ) -> Vec<(usize, Result<(), PublishError>)> {
        let mut chunks: Vec<(BytesMut, usize)> = Vec::new();
        let mut json = BytesMut::new();
        let mut count = 0;
        let mut shards: ShardMask = 0;
        for (envelope, waiter) in commands {
            let partition =
                partition_of(envelope.app_id, envelope.command.user_id(), self.partitions);
            shards |= routing::mask_of([partition], self.shard_count);
            let element = element(partition, envelope, *waiter);
            if count > 0 && json.len() + element.len() + 1 > BATCH_BYTES_MAX {
                chunks.push((std::mem::take(&mut json), count));
                count = 0;
            }
            if count > 0 {
                json.put_u8(b',');
            }
            json.put_slice(&element);
            count += 1;
        }
        if count > 0 {
            chunks.push((json, count));
        }
        let groups: Vec<_> = chunks
            .into_iter()
            .map(|(json, count)| pending(json, count, shards))
            .collect();
        // Enqueued in order, so the commands keep their order in the stream.
        let mut results = Vec::with_capacity(groups.len());
        let mut receivers = Vec::with_capacity(groups.len());
        for (group, receiver) in groups {
            let commands = group.commands;
            // Not enqueued means not published: the caller may safely refuse the commands.
            let queued =
                match tokio::time::timeout(PUBLISH_QUEUE_TIMEOUT, self.queue.send(group)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(PublishError("the publisher has stopped".into())),
                    Err(_) => Err(PublishError("the publish queue stayed full".into())),
                };
            receivers.push((commands, queued.map(|()| receiver)));
        }
        for (commands, receiver) in receivers {
            let result = match receiver {
                // The batch task answers within its attempts' timeouts; a closed channel means
                // it died.
                Ok(receiver) => receiver.await.unwrap_or_else(|_| {
                    Err(PublishError("the publisher dropped the command".into()))
                }),
                Err(error) => Err(error),
            };
            results.push((commands, result));
        }
        results
    }

    /// Asks a worker to deliver one outbound event to one endpoint: publishes `message` on the
    /// delivery stream under `message_id` (hyphenated, as the worker's relay writes a delivery's
    /// id: the broker stores one message per id, so retries and repeats of a publish are one
    /// message) and waits for the broker's ack.
    pub async fn publish_delivery(
        &self,
        message: &DeliveryMessage,
        message_id: Uuid,
    ) -> Result<(), PublishError> {
        let subject = self.names.delivery_subject();
        let payload =
            Bytes::from(serde_json::to_vec(message).expect("delivery messages serialize"));
        let message_id = message_id.to_string();
        let client = self.js.client();
        let connected = || client.connection_state() == async_nats::connection::State::Connected;
        with_retries(1, connected, || {
            publish_with_id(&self.js, &subject, &message_id, payload.clone())
        })
        .await
    }

    /// Whether the broker answers (for `/readyz`).
    pub async fn ready(&self) -> bool {
        let stream = self.names.command_stream();
        tokio::time::timeout(Duration::from_secs(2), self.js.get_stream(stream))
            .await
            .is_ok_and(|result| result.is_ok())
    }
}

/// One element of a batch message's `commands` array: the command, its partition, and where
/// its answer goes.
fn element(partition: u32, envelope: &Envelope, waiter: Option<&Waiter>) -> Vec<u8> {
    let command = tally_common::command::BatchedCommand {
        partition,
        reply_to: waiter.map(|waiter| ReplyTo {
            inbox: waiter.inbox.clone(),
            token: waiter.token,
        }),
        envelope,
    };
    serde_json::to_vec(&command).expect("commands serialize")
}

fn pending(
    json: BytesMut,
    commands: usize,
    shards: ShardMask,
) -> (Pending, oneshot::Receiver<Result<(), PublishError>>) {
    let (done, result) = oneshot::channel();
    let pending = Pending {
        json: json.freeze(),
        commands,
        shards,
        done,
    };
    (pending, result)
}

/// A take's commands grouped into messages: those the same workers own share one, under the
/// subject marking those workers' shards. Groups keep the take's order.
fn route(table: &Table, names: &Names, take: Vec<Pending>) -> Vec<(String, Vec<Pending>)> {
    let mut messages: Vec<(Option<ShardMask>, Vec<Pending>)> = Vec::new();
    for pending in take {
        let marks = table.marks(pending.shards);
        match messages.iter_mut().find(|(m, _)| *m == marks) {
            Some((_, group)) => group.push(pending),
            None => messages.push((marks, vec![pending])),
        }
    }
    messages
        .into_iter()
        .map(|(marks, group)| (table.subject(names, marks), group))
        .collect()
}

/// Forms batches from the queue and publishes them, [`BATCHES_IN_FLIGHT`] at most at a time.
/// Ends when every [`Bus`] is gone.
async fn run_publisher(
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    shards: Shards,
    mut queue: mpsc::Receiver<Pending>,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        // Take a slot before taking commands: while every slot is busy, commands keep queueing
        // and the next batch takes them all. That, not a timer, is what makes batches.
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut bytes = first.json.len();
        let mut commands = first.commands;
        let mut batch = Vec::with_capacity(BATCH_MAX.min(queue.len() + 1));
        batch.push(first);
        while commands < BATCH_MAX {
            match queue.try_recv() {
                Ok(pending)
                    if bytes + pending.json.len() > BATCH_BYTES_MAX
                        || commands + pending.commands > BATCH_MAX =>
                {
                    carried = Some(pending);
                    break;
                }
                Ok(pending) => {
                    bytes += pending.json.len();
                    commands += pending.commands;
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        // A caller that went away (its client hung up) would never learn the result; skip its
        // command, as the unbatched path never published a command whose request was dropped.
        batch.retain(|pending| !pending.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let messages = route(&shards.table(), &names, batch);
        let js = js.clone();
        let client = client.clone();
        tokio::spawn(async move {
            // While the connection is down nothing is sent (a publish would sit in the client's
            // buffer and might reach the broker after its caller was refused): the callers are
            // refused at once instead of after every attempt's timeout.
            let connected =
                || client.connection_state() == async_nats::connection::State::Connected;
            let take_id = Uuid::now_v7().simple().to_string();
            // All of the take's messages are sent, in order, then their acks awaited together.
            let publishes = messages
                .into_iter()
                .enumerate()
                .map(|(index, (subject, batch))| {
                    let js = &js;
                    let message_id = format!("{take_id}.{index}");
                    async move {
                        let commands: usize = batch.iter().map(|pending| pending.commands).sum();
                        metrics::histogram!("tally_publish_batch_size").record(commands as f64);
                        let payload = batch_payload(&batch);
                        let result = with_retries(commands, connected, || {
                            publish_with_id(js, &subject, &message_id, payload.clone())
                        })
                        .await;
                        for pending in batch {
                            let _ = pending.done.send(result.clone());
                        }
                    }
                });
            futures::future::join_all(publishes).await;
            drop(slot);
        });
    }
}

/// `{"commands":[…]}` from the commands' serialized forms.
fn batch_payload(batch: &[Pending]) -> Bytes {
    const OPEN: &[u8] = br#"{"commands":["#;
    const CLOSE: &[u8] = b"]}";
    let size = OPEN.len() + CLOSE.len() + batch.iter().map(|p| p.json.len() + 1).sum::<usize>();
    let mut payload = BytesMut::with_capacity(size);
    payload.put_slice(OPEN);
    for (index, pending) in batch.iter().enumerate() {
        if index > 0 {
            payload.put_u8(b',');
        }
        payload.put_slice(&pending.json);
    }
    payload.put_slice(CLOSE);
    payload.freeze()
}

/// Runs `attempt`, each try bounded by [`PUBLISH_ACK_TIMEOUT`], until it is acknowledged or
/// [`PUBLISH_ATTEMPTS`] have failed. No attempt starts while `connected` says the connection
/// is down: the result is then an error at once.
async fn with_retries<C, F, Fut>(
    commands: usize,
    connected: C,
    attempt: F,
) -> Result<(), PublishError>
where
    C: Fn() -> bool,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let bounded = || async {
        if !connected() {
            return Err(PublishError::disconnected());
        }
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
        .when(|_| connected())
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

/// One JetStream publish under a message ID (a batch's, a delivery's). An ack that says
/// `duplicate` means an earlier attempt of this very message was stored: it is accepted.
async fn publish_with_id(
    js: &jetstream::Context,
    subject: &str,
    message_id: &str,
    payload: Bytes,
) -> Result<(), PublishError> {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, message_id);
    js.publish_with_headers(subject.to_string(), headers, payload)
        .await
        .map_err(|e| PublishError(e.to_string()))?
        .await
        .map_err(|e| PublishError(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_payload_is_a_command_batch() {
        let envelope = Envelope {
            command_id: Uuid::now_v7(),
            app_id: Uuid::now_v7(),
            request_hash: None,
            accepted_at: chrono::Utc::now(),
            origin: Default::default(),
            command: tally_common::command::Command::Deduct {
                user_id: "u1".into(),
                amount: 5,
                credit_type: Default::default(),
                description: None,
                metadata: Default::default(),
            },
        };
        let pending = |token| {
            let command = tally_common::command::BatchedCommand {
                partition: 3,
                reply_to: Some(ReplyTo {
                    inbox: "_INBOX.t.x".into(),
                    token,
                }),
                envelope: &envelope,
            };
            Pending {
                json: serde_json::to_vec(&command).unwrap().into(),
                commands: 1,
                shards: 1 << 3,
                done: oneshot::channel().0,
            }
        };
        let payload = batch_payload(&[pending(1), pending(2)]);
        let batch: tally_common::command::CommandBatch =
            serde_json::from_slice(&payload).expect("decodes");
        assert_eq!(batch.commands.len(), 2);
        assert_eq!(batch.commands[1].reply_to.as_ref().unwrap().token, 2);
        assert_eq!(batch.commands[0].partition, 3);
        assert_eq!(batch.commands[0].envelope, envelope);
    }
}
