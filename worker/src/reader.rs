//! The reader: follows the command stream with one ordered consumer, decodes each message into
//! its commands and hands them to the apply lanes, until the stream fails or stops feeding it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use serde_json::value::RawValue;
use tally_common::command::{CommandBatch, Envelope, ReplyTo, HEADER_REPLY_TO};
use tally_common::partition::Names;
use tokio::sync::Notify;

use crate::lanes::Lanes;
use crate::store::Item;

/// How long the reader waits for a message before it checks that it is still being fed.
const READER_IDLE_CHECK: Duration = Duration::from_millis(500);
/// How long that check may wait for the broker.
const READER_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a reader needs to notice that its consumer is gone: a broker restart loses the ordered
/// consumer (it lives in the server's memory), and a cluster loses it with its node. The
/// client's own detection waits for two missed 15 s heartbeats; this notices within a second.
pub(crate) struct Watch {
    pub(crate) client: async_nats::Client,
    pub(crate) stream: jetstream::stream::Stream,
    /// Stream sequence of the last message read.
    pub(crate) last_read: u64,
    /// Told when the reader stops, whatever the reason.
    pub(crate) stopped: Arc<Notify>,
    /// The subject names, to tell a message's kind by its subject.
    pub(crate) names: Names,
    /// The consumer's subject filters.
    pub(crate) filters: Vec<String>,
}

impl Watch {
    /// Whether the reader should start over: the connection was re-established since it began
    /// (the server may have lost its consumer), or the stream holds messages for this reader
    /// past the last one read and none arrived since the previous check either.
    async fn stalled(&self, connects_at_start: u64, behind_before: &mut bool) -> bool {
        if self.client.statistics().connects.load(Ordering::Relaxed) != connects_at_start {
            tracing::warn!("reconnected to the broker; reading the stream again");
            return true;
        }
        let behind = match tokio::time::timeout(READER_CHECK_TIMEOUT, self.stream.get_info()).await
        {
            Ok(Ok(info)) => {
                info.state.last_sequence > self.last_read && self.pending_for_reader().await
            }
            // No answer (the broker or the stream's leader is away): nothing to conclude yet.
            _ => false,
        };
        if behind && *behind_before {
            tracing::warn!(
                stream.seq = self.last_read,
                "the stream is ahead of its reader, which gets nothing; reading it again"
            );
            return true;
        }
        *behind_before = behind;
        false
    }
}

impl Watch {
    /// Whether a message past the last one read matches the reader's filters (other workers'
    /// shards make the stream grow without this reader getting anything).
    async fn pending_for_reader(&self) -> bool {
        if self.filters == [self.names.command_all_wildcard()] {
            return true;
        }
        for filter in &self.filters {
            let next = self
                .stream
                .raw_message_builder()
                .sequence(self.last_read + 1)
                .next_by_subject(filter.clone())
                .send();
            match tokio::time::timeout(READER_CHECK_TIMEOUT, next).await {
                Ok(Ok(_)) => return true,
                Ok(Err(_)) => {}
                // No answer: nothing to conclude.
                Err(_) => return false,
            }
        }
        false
    }
}

/// Reads the command stream in order and hands each message's commands to the applier, until
/// the stream fails or stalls (see [`Watch`]); then tells the manager, which starts over.
pub(crate) async fn read_stream(
    generation: u64,
    mut messages: jetstream::consumer::pull::Ordered,
    lanes: Lanes,
    mut watch: Watch,
) {
    let connects_at_start = watch.client.statistics().connects.load(Ordering::Relaxed);
    let mut behind_before = false;
    loop {
        let message = match tokio::time::timeout(READER_IDLE_CHECK, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "stream read failed");
                break;
            }
            Ok(None) => break,
            Err(_idle) => {
                if watch.stalled(connects_at_start, &mut behind_before).await {
                    break;
                }
                continue;
            }
        };
        behind_before = false;
        let stream_seq = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::warn!(%error, "message without stream sequence");
                break;
            }
        };
        watch.last_read = stream_seq;
        let items = decode(
            &watch.names,
            &message.subject,
            message.headers.as_ref(),
            &message.payload,
            stream_seq,
        );
        // Every command delivered to this worker, its own or not: the measure of the routing.
        metrics::counter!("tally_worker_commands_read_total").increment(items.len() as u64);
        if lanes.message(generation, stream_seq, items).await.is_err() {
            break;
        }
    }
    watch.stopped.notify_one();
}

/// The commands of one stream message: a batch (a routed subject, or the batch subject of
/// earlier ingresses and of commands republished on their own), or a single command on a
/// partition subject as published by earlier versions. A command that cannot be decoded
/// becomes an item without envelope (recorded as poison, its partition moves on).
fn decode(
    names: &Names,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
    stream_seq: u64,
) -> Vec<Item> {
    let poison = |error: &dyn std::fmt::Display| {
        metrics::counter!("tally_worker_poison_messages_total").increment(1);
        tracing::error!(stream.seq = stream_seq, %error, "undecodable command skipped");
    };
    if names.is_batch(subject) {
        return match serde_json::from_slice::<CommandBatch<Box<RawValue>>>(payload) {
            Ok(batch) => batch
                .commands
                .into_iter()
                .map(|command| Item {
                    partition: command.partition,
                    stream_seq,
                    envelope: serde_json::from_str::<Envelope>(command.envelope.get())
                        .map_err(|error| poison(&error))
                        .ok(),
                    reply_to: command.reply_to,
                })
                .collect(),
            Err(error) => {
                poison(&error);
                Vec::new()
            }
        };
    }
    let Some(partition) = subject
        .rsplit('.')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        poison(&format!("unexpected subject {subject}"));
        return Vec::new();
    };
    let reply_to = headers
        .and_then(|headers| headers.get(HEADER_REPLY_TO))
        .and_then(|value| ReplyTo::parse_subject(value.as_str()));
    vec![Item {
        partition,
        stream_seq,
        envelope: serde_json::from_slice::<Envelope>(payload)
            .map_err(|error| poison(&error))
            .ok(),
        reply_to,
    }]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn envelope_json(user: &str) -> serde_json::Value {
        json!({
            "command_id": uuid::Uuid::now_v7(),
            "app_id": uuid::Uuid::now_v7(),
            "accepted_at": "2025-01-01T00:00:00Z",
            "command": {"kind": "deduct", "user_id": user, "amount": 5,
                        "description": null, "metadata": {}},
        })
    }

    fn users(items: &[Item]) -> Vec<Option<String>> {
        items
            .iter()
            .map(|item| {
                let envelope = item.envelope.as_ref()?;
                Some(envelope.command.user_id().to_string())
            })
            .collect()
    }

    #[test]
    fn a_batch_message_gives_each_command_its_partition_and_inbox() {
        let payload = json!({"commands": [
            {"partition": 3, "reply_to": {"inbox": "_INBOX.a", "token": 9},
             "envelope": envelope_json("ann")},
            {"partition": 5, "envelope": envelope_json("bob")},
        ]});
        let subject = Names::new("t").command_routed_subject(0b1010, 4);

        let items = decode(
            &Names::new("t"),
            &subject,
            None,
            payload.to_string().as_bytes(),
            42,
        );

        assert_eq!(users(&items), [Some("ann".into()), Some("bob".into())]);
        let routes: Vec<(u32, u64)> = items.iter().map(|i| (i.partition, i.stream_seq)).collect();
        assert_eq!(routes, [(3, 42), (5, 42)]);
        assert_eq!(
            items[0].reply_to,
            Some(ReplyTo {
                inbox: "_INBOX.a".into(),
                token: 9
            })
        );
        assert_eq!(items[1].reply_to, None);
    }

    #[test]
    fn an_undecodable_command_in_a_batch_becomes_an_item_without_envelope() {
        let payload = json!({"commands": [
            {"partition": 3, "envelope": {"kind": "unknown"}},
            {"partition": 3, "envelope": envelope_json("bob")},
        ]});
        let subject = Names::new("t").command_batch_subject();

        let items = decode(
            &Names::new("t"),
            &subject,
            None,
            payload.to_string().as_bytes(),
            1,
        );

        assert_eq!(users(&items), [None, Some("bob".into())]);
    }

    #[test]
    fn an_undecodable_batch_gives_no_items() {
        let subject = Names::new("t").command_batch_subject();
        assert!(decode(&Names::new("t"), &subject, None, b"not json", 1).is_empty());
    }

    #[test]
    fn a_single_command_takes_its_partition_from_the_subject_and_its_inbox_from_a_header() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_REPLY_TO, "_INBOX.a.7");
        let subject = Names::new("t").command_subject(12);
        let payload = envelope_json("ann").to_string();

        let items = decode(
            &Names::new("t"),
            &subject,
            Some(&headers),
            payload.as_bytes(),
            8,
        );

        assert_eq!(users(&items), [Some("ann".into())]);
        assert_eq!((items[0].partition, items[0].stream_seq), (12, 8));
        assert_eq!(
            items[0].reply_to,
            Some(ReplyTo {
                inbox: "_INBOX.a".into(),
                token: 7
            })
        );
    }

    #[test]
    fn a_message_on_an_unexpected_subject_gives_no_items() {
        let payload = envelope_json("ann").to_string();
        assert!(decode(&Names::new("t"), "t.cmd.other", None, payload.as_bytes(), 1).is_empty());
    }
}
