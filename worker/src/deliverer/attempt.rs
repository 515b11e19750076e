//! One delivery message: decide whether an attempt is due, make it, record it, and answer the
//! broker (ack: done; nak with a delay: hand it out again then).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chrono::Utc;
use tally_common::events::{self, DeliveryMessage};
use tracing::Instrument;

use super::call::Answer;
use super::records::{self, Attempt, Next, Target};
use super::{signature, Shared};

/// How long to put a message back when the database cannot be read or written; the attempt
/// (or its record) is made again then.
const DATABASE_RETRY_DELAY: Duration = Duration::from_secs(5);

/// A message that arrives this much before its delivery's next attempt is due is early (a
/// duplicate carrier of the delivery) and waits until then.
const EARLY_SLACK: Duration = Duration::from_secs(1);

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
    let target = match records::load(&shared.pool, request.delivery_id).await {
        Ok(Some(target)) => target,
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
    if let Some((status, reason)) = unsendable(&target) {
        return match records::close_unsent(&shared.pool, request.delivery_id, status, reason).await
        {
            Ok(()) => AckKind::Ack,
            Err(error) => {
                tracing::warn!(%error, "cannot close a delivery; retrying");
                AckKind::Nak(Some(DATABASE_RETRY_DELAY))
            }
        };
    }
    // A redelivery is one more attempt whatever the status; a delivery that is still pending
    // goes on with its schedule.
    let one_off = match target.status.as_str() {
        "pending" => {
            // A redelivery is sent now; any other message waits until its attempt is due
            // (one that was handed out early, or a second message for the delivery).
            let forced = request.redeliver && delivered == 1;
            let due_in = target
                .next_attempt_at
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .filter(|wait| *wait > EARLY_SLACK);
            if let (Some(wait), false) = (due_in, forced) {
                return AckKind::Nak(Some(wait));
            }
            false
        }
        "succeeded" | "failed" if request.redeliver => true,
        // Cancelled, or already settled by another message.
        _ => return AckKind::Ack,
    };
    let slot = match shared.slots.take(target.endpoint_id) {
        Ok(slot) => slot,
        Err(wait) => {
            metrics::counter!("tally_worker_deliveries_turned_away_total").increment(1);
            return AckKind::Nak(Some(wait));
        }
    };
    let envelope = match events::envelopes(&shared.pool, target.app_id, &[target.event_id]).await {
        Ok(mut found) => found.remove(&target.event_id),
        Err(error) => {
            tracing::warn!(%error, "cannot read an event; retrying");
            return AckKind::Nak(Some(DATABASE_RETRY_DELAY));
        }
    };
    let Some(envelope) = envelope else {
        // Events are kept longer than any schedule: this one was removed by hand.
        let closed = records::close_unsent(
            &shared.pool,
            request.delivery_id,
            "failed",
            "event not found",
        );
        return match closed.await {
            Ok(()) => AckKind::Ack,
            Err(_) => AckKind::Nak(Some(DATABASE_RETRY_DELAY)),
        };
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
    let recorded = records::record(
        &shared.pool,
        Attempt {
            delivery_id: request.delivery_id,
            target: &target,
            at,
            answer: &answer,
            retry_after,
        },
    )
    .await;
    match recorded {
        Ok(Some(Next::Retry(delay))) => {
            tracing::debug!(
                attempts,
                reason = answer.error.as_deref(),
                "delivery attempt failed"
            );
            AckKind::Nak(Some(delay))
        }
        Ok(Some(Next::Failed)) => {
            tracing::info!(
                attempts,
                endpoint.id = %target.endpoint_id,
                reason = answer.error.as_deref(),
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

/// Why a delivery is not sent at all: its endpoint is gone or turned off. A pending one is
/// closed with this status and reason.
fn unsendable(target: &Target) -> Option<(&'static str, &'static str)> {
    if target.deleted {
        Some(("cancelled", "endpoint deleted"))
    } else if !target.enabled {
        Some(("failed", "endpoint disabled"))
    } else {
        None
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
