//! One delivery message: decide whether an attempt is due, make it, record it, and answer the
//! broker (ack: done; nak with a delay: hand it out again then).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::{DateTime, Utc};
use tally_common::events::DeliveryMessage;
use tracing::Instrument;
use uuid::Uuid;

use super::call::Answer;
use super::records::{self, Attempt, Loaded, Next, Target};
use super::{signature, Shared};

/// How long to put a message back when the database cannot be read or written; the attempt
/// (or its record) is made again then.
const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A message that arrives this much before its delivery's next attempt is due is early (a
/// duplicate carrier of the delivery) and waits until then.
const EARLY_SLACK: Duration = Duration::from_secs(1);

/// How long a delivery waits for a place at its saturated endpoint before it is put back: a
/// fast endpoint frees one within milliseconds, a slow one holds its places for seconds.
const SLOT_WAIT: Duration = Duration::from_millis(250);

/// How often a message naming a delivery not (yet) visible is read again before it is dropped.
const UNKNOWN_DELIVERY_READS_MAX: i64 = 5;

/// Handles one message and answers the broker.
pub(super) async fn handle(shared: &Shared, message: jetstream::Message) {
    let request: DeliveryMessage = match serde_json::from_slice(&message.payload) {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(%error, "undecodable delivery message dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
    let span = tracing::info_span!("delivery", delivery.id = %request.delivery_id);
    let answer = deliver(shared, &request, delivered).instrument(span).await;
    if let Err(error) = message.ack_with(answer).await {
        // The broker hands the message out again after its ack wait; the delivery row says
        // whether anything is left to do.
        tracing::debug!(%error, delivery.id = %request.delivery_id, "cannot answer a delivery message");
    }
}

/// What to answer the broker for `request`, after attempting it if it is due.
async fn deliver(shared: &Shared, request: &DeliveryMessage, delivered: i64) -> AckKind {
    let Loaded { target, envelope } = match shared.records.load(request.delivery_id).await {
        Ok(Some(loaded)) => loaded,
        Ok(None) if delivered < UNKNOWN_DELIVERY_READS_MAX => {
            return AckKind::Nak(Some(Duration::from_secs(1)))
        }
        Ok(None) => {
            tracing::warn!("message names no delivery; dropped");
            return AckKind::Ack;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read a delivery; retrying");
            return AckKind::Nak(Some(DATABASE_RETRY_DELAY));
        }
    };
    let one_off = match due(&target, request, delivered, Utc::now()) {
        Due::Now { one_off } => one_off,
        Due::Unsendable { status, reason } => {
            return close(shared, request.delivery_id, status, reason).await
        }
        Due::Not(answer) => return answer,
    };
    let Some(envelope) = envelope else {
        // Events are kept longer than any schedule: this one was removed by hand.
        return close(shared, request.delivery_id, "failed", "event not found").await;
    };
    let slot = match shared
        .slots
        .take_within(target.endpoint_id, SLOT_WAIT)
        .await
    {
        Ok(slot) => slot,
        Err(wait) => {
            metrics::counter!("tally_worker_deliveries_turned_away_total").increment(1);
            return AckKind::Nak(Some(wait));
        }
    };
    let at = Utc::now();
    let started = Instant::now();
    let answer = send(shared, &target, &envelope, at.timestamp()).await;
    drop(slot);
    metrics::histogram!("tally_worker_delivery_attempt_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "tally_worker_delivery_attempts_total",
        "outcome" => if answer.succeeded() { "succeeded" } else { "failed" }
    )
    .increment(1);
    let attempts = u32::try_from(target.attempts)
        .unwrap_or(0)
        .saturating_add(1);
    let retry_after = if one_off {
        None
    } else {
        shared.schedule.delay_after(attempts)
    };
    let reason = answer.error.clone();
    let recorded = shared
        .records
        .record(Attempt {
            delivery_id: request.delivery_id,
            endpoint_id: target.endpoint_id,
            attempts_before: target.attempts,
            at,
            answer,
            retry_after,
        })
        .await;
    match recorded {
        Ok(Some(Next::Retry(delay))) => {
            tracing::debug!(attempts, reason, "delivery attempt failed");
            AckKind::Nak(Some(delay))
        }
        Ok(Some(Next::Failed)) => {
            tracing::info!(
                attempts,
                endpoint.id = %target.endpoint_id,
                reason,
                "delivery failed"
            );
            AckKind::Ack
        }
        Ok(Some(Next::Succeeded)) => AckKind::Ack,
        // Another message of this delivery recorded an attempt meanwhile: it carries the
        // delivery on; this one is dropped.
        Ok(None) => AckKind::Ack,
        Err(error) => {
            tracing::warn!(%error, "cannot record a delivery attempt; it will be made again");
            AckKind::Nak(Some(DATABASE_RETRY_DELAY))
        }
    }
}

/// Whether a message's delivery is attempted now.
#[derive(Debug)]
enum Due {
    /// Now: as the next attempt of its schedule, or as a one-off redelivery of a settled one.
    Now { one_off: bool },
    /// Never: its endpoint is gone or turned off; a pending delivery is closed with this
    /// status and reason.
    Unsendable {
        status: &'static str,
        reason: &'static str,
    },
    /// Not now: the answer to the broker (done, or come back when the attempt is due).
    Not(AckKind),
}

/// Decides what to do with `request`, its `delivered`th hand-out by the broker, at `now`.
fn due(target: &Target, request: &DeliveryMessage, delivered: i64, now: DateTime<Utc>) -> Due {
    if target.deleted {
        return Due::Unsendable {
            status: "cancelled",
            reason: "endpoint deleted",
        };
    }
    if !target.enabled {
        return Due::Unsendable {
            status: "failed",
            reason: "endpoint disabled",
        };
    }
    match target.status.as_str() {
        "pending" => {
            // A redelivery is sent at once; any other message waits until the attempt is due
            // (one handed out early, or a second message for the delivery). A redelivery put
            // back once goes on as the delivery's message like any other.
            let forced = request.redeliver && delivered == 1;
            let due_in = target
                .next_attempt_at
                .and_then(|at| (at - now).to_std().ok())
                .filter(|wait| *wait > EARLY_SLACK);
            match due_in {
                Some(wait) if !forced => Due::Not(AckKind::Nak(Some(wait))),
                _ => Due::Now { one_off: false },
            }
        }
        // One more attempt of a settled delivery, whatever its status.
        "succeeded" | "failed" if request.redeliver => Due::Now { one_off: true },
        // Cancelled, or settled by another message.
        _ => Due::Not(AckKind::Ack),
    }
}

/// Closes a pending delivery without an attempt; the answer to the broker.
async fn close(shared: &Shared, id: Uuid, status: &str, reason: &str) -> AckKind {
    match records::close_unsent(&shared.pool, id, status, reason).await {
        Ok(()) => AckKind::Ack,
        Err(error) => {
            tracing::warn!(%error, "cannot close a delivery; retrying");
            AckKind::Nak(Some(DATABASE_RETRY_DELAY))
        }
    }
}

/// Signs the envelope and POSTs it to the endpoint.
async fn send(
    shared: &Shared,
    target: &Target,
    envelope: &serde_json::Value,
    timestamp: i64,
) -> Answer {
    let body = serde_json::to_vec(envelope).expect("a JSON value serializes");
    let id = target.event_id.to_string();
    let mut secrets = vec![target.secret.as_str()];
    secrets.extend(target.previous_secret.as_deref());
    let signature = match signature::sign(&secrets, &id, timestamp, &body) {
        Ok(signature) => signature,
        Err(error) => return Answer::failed(error.to_string()),
    };
    let headers = [
        ("webhook-id", id),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    shared.caller.post(&target.url, &headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(status: &str, next_attempt_at: Option<DateTime<Utc>>) -> Target {
        Target {
            event_id: Uuid::now_v7(),
            endpoint_id: Uuid::now_v7(),
            app_id: Uuid::now_v7(),
            status: status.to_string(),
            attempts: 1,
            next_attempt_at,
            url: "https://hooks.example.com/".to_string(),
            enabled: true,
            deleted: false,
            secret: "whsec_dGVzdA==".to_string(),
            previous_secret: None,
        }
    }

    fn message(redeliver: bool) -> DeliveryMessage {
        DeliveryMessage {
            delivery_id: Uuid::now_v7(),
            redeliver,
        }
    }

    #[test]
    fn a_pending_delivery_is_attempted_when_due_and_put_back_until_then() {
        let now = Utc::now();
        let due_now = target("pending", Some(now));
        assert!(matches!(
            due(&due_now, &message(false), 2, now),
            Due::Now { one_off: false }
        ));
        let later = target("pending", Some(now + chrono::Duration::minutes(5)));
        match due(&later, &message(false), 2, now) {
            Due::Not(AckKind::Nak(Some(wait))) => {
                assert!(wait > Duration::from_secs(299) && wait <= Duration::from_secs(300))
            }
            other => panic!("{other:?}"),
        }
        // A redelivery goes now, the first time it is handed out.
        assert!(matches!(
            due(&later, &message(true), 1, now),
            Due::Now { one_off: false }
        ));
        assert!(matches!(
            due(&later, &message(true), 2, now),
            Due::Not(AckKind::Nak(Some(_)))
        ));
    }

    #[test]
    fn a_settled_delivery_is_attempted_again_only_when_redelivered() {
        let now = Utc::now();
        for status in ["succeeded", "failed"] {
            let settled = target(status, None);
            assert!(matches!(
                due(&settled, &message(false), 1, now),
                Due::Not(AckKind::Ack)
            ));
            assert!(matches!(
                due(&settled, &message(true), 3, now),
                Due::Now { one_off: true }
            ));
        }
        let cancelled = target("cancelled", None);
        assert!(matches!(
            due(&cancelled, &message(true), 1, now),
            Due::Not(AckKind::Ack)
        ));
    }

    #[test]
    fn nothing_goes_to_a_deleted_or_disabled_endpoint() {
        let now = Utc::now();
        let mut deleted = target("pending", None);
        deleted.deleted = true;
        assert!(matches!(
            due(&deleted, &message(true), 1, now),
            Due::Unsendable {
                status: "cancelled",
                ..
            }
        ));
        let mut disabled = target("succeeded", None);
        disabled.enabled = false;
        assert!(matches!(
            due(&disabled, &message(true), 1, now),
            Due::Unsendable {
                status: "failed",
                ..
            }
        ));
    }
}
