//! Publishing commands to JetStream and waiting for the worker's answer.
//!
//! The ingress holds one wildcard subscription under its own inbox prefix. Each waiting request
//! registers a token before publishing; the worker publishes the outcome to the subject carried
//! in the command's `Tally-Reply-To` header, and the router hands it to the waiting request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use tally_common::command::{Envelope, Outcome, HEADER_REPLY_TO};
use tally_common::partition::{partition_of, Names};
use tokio::sync::oneshot;
use uuid::Uuid;

/// How long one publish waits for the broker's acknowledgement.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Publish attempts (same message ID, so the broker keeps one) before giving up.
const PUBLISH_ATTEMPTS: usize = 3;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Outcome>>>>;

#[derive(Clone)]
pub struct Bus {
    js: jetstream::Context,
    names: Names,
    partitions: u32,
    reply_prefix: String,
    next_token: Arc<AtomicU64>,
    waiters: Waiters,
}

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
#[error("the broker did not acknowledge the command: {0}")]
pub struct PublishError(String);

/// The broker's answer to an accepted command.
pub struct Accepted {
    /// The broker already had this message ID: no worker answers this publish.
    pub duplicate: bool,
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
        Ok(Self {
            js: jetstream::new(client),
            names,
            partitions,
            reply_prefix,
            next_token: Arc::default(),
            waiters,
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
    /// stored it. Retries with the same message ID, so a retry can never store it twice.
    pub async fn publish(
        &self,
        envelope: &Envelope,
        waiter: Option<&Waiter>,
    ) -> Result<Accepted, PublishError> {
        let partition = partition_of(envelope.app_id, envelope.command.user_id(), self.partitions);
        let subject = self.names.command_subject(partition);
        let payload: bytes::Bytes = serde_json::to_vec(envelope)
            .expect("envelopes serialize")
            .into();
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            envelope.command_id.to_string().as_str(),
        );
        if let Some(waiter) = waiter {
            headers.insert(HEADER_REPLY_TO, waiter.subject.as_str());
        }
        let attempt = || async {
            let ack_future = self
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await
                .map_err(|e| PublishError(e.to_string()))?;
            let ack = tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack_future)
                .await
                .map_err(|_| PublishError("timed out".into()))?
                .map_err(|e| PublishError(e.to_string()))?;
            Ok::<_, PublishError>(Accepted {
                duplicate: ack.duplicate,
            })
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_times(PUBLISH_ATTEMPTS - 1),
            )
            .notify(|error, after| tracing::warn!(%error, retry_in_ms = after.as_millis() as u64, "publish failed; retrying"))
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
