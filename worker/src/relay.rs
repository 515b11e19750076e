//! The relay: hands recorded events to the broker. For each event it creates one delivery per
//! enabled endpoint of the app that subscribes to the event's type (a `ping`: its one
//! endpoint) and commits them, then publishes one delivery message per delivery not attempted
//! yet, then marks the event relayed. A message is published only once its delivery is
//! committed (a deliverer never finds a message without its delivery), and an event is marked
//! relayed only once its messages are acknowledged.
//!
//! The appliers and the sweeper pass the events they just committed; the relay also looks, every
//! [`SWEEP_INTERVAL`], for events left unrelayed (a worker that stopped between the commit and
//! the relay, a failed publish), so no recorded event is ever left behind. Two relays of one
//! event are harmless: deliveries are unique per event and endpoint, and a delivery message's
//! broker message id is its delivery's id.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream;
use async_nats::HeaderMap;
use sqlx::PgPool;
use tally_common::events::{DeliveryMessage, EventType};
use tally_common::partition::Names;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often unrelayed events are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How old an unrelayed event must be before the sweep takes it (younger ones are on their way).
const SWEEP_AGE: &str = "2 seconds";
/// Most events relayed in one transaction.
pub const EVENTS_PER_RELAY_MAX: usize = 500;
/// Events waiting for the relay, at most; past it, they wait for the sweep instead.
const QUEUE_MAX: usize = 65_536;

/// Where the appliers and the sweeper pass the events they committed.
#[derive(Clone, Debug)]
pub struct RelayHandle(mpsc::Sender<Vec<Uuid>>);

impl RelayHandle {
    /// Asks for `events` to be relayed soon; never waits (a full queue leaves them to the
    /// sweep).
    pub fn relay(&self, events: Vec<Uuid>) {
        if !events.is_empty() {
            let _ = self.0.try_send(events);
        }
    }
}

/// Starts the relay; it runs until every handle is dropped.
pub fn start(pool: PgPool, js: jetstream::Context, names: Names) -> RelayHandle {
    let (sender, mut receiver) = mpsc::channel::<Vec<Uuid>>(QUEUE_MAX / EVENTS_PER_RELAY_MAX);
    tokio::spawn(async move {
        let subject = names.delivery_subject();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wanted = tokio::select! {
                events = receiver.recv() => match events {
                    Some(mut events) => {
                        while events.len() < EVENTS_PER_RELAY_MAX {
                            match receiver.try_recv() {
                                Ok(more) => events.extend(more),
                                Err(_) => break,
                            }
                        }
                        Some(events)
                    }
                    None => return,
                },
                _ = sweep.tick() => None,
            };
            loop {
                match relay(&pool, &js, &subject, wanted.as_deref()).await {
                    // The sweep drains what is left, a bounded chunk per transaction.
                    Ok(relayed) if wanted.is_none() && relayed == EVENTS_PER_RELAY_MAX => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "could not relay events; the sweep retries them");
                        break;
                    }
                }
            }
        }
    });
    RelayHandle(sender)
}

/// Relays `events` (or, with `None`, the oldest unrelayed ones); returns how many.
async fn relay(
    pool: &PgPool,
    js: &jetstream::Context,
    subject: &str,
    events: Option<&[Uuid]>,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    // Locked, and skipped when another relay holds them: one relays, the other moves on.
    let rows: Vec<(Uuid, Uuid, String, Option<Uuid>)> = match events {
        Some(ids) => {
            sqlx::query_as(
                "SELECT id, app_id, type, endpoint_id FROM events
                 WHERE id = ANY($1) AND NOT relayed ORDER BY id FOR UPDATE SKIP LOCKED",
            )
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT id, app_id, type, endpoint_id FROM events
                 WHERE NOT relayed AND created_at < now() - interval '{SWEEP_AGE}'
                 ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED"
            ))
            .bind(EVENTS_PER_RELAY_MAX as i64)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let mut apps: Vec<Uuid> = rows.iter().map(|row| row.1).collect();
    apps.sort();
    apps.dedup();
    let endpoints: Vec<(Uuid, Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT id, app_id, events FROM webhook_endpoints
         WHERE app_id = ANY($1) AND enabled AND deleted_at IS NULL",
    )
    .bind(&apps)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_app: HashMap<Uuid, Vec<(Uuid, Vec<String>)>> = HashMap::new();
    for (id, app_id, events) in endpoints {
        by_app.entry(app_id).or_default().push((id, events));
    }
    let mut deliveries: Vec<(Uuid, Uuid, Uuid, Uuid, String)> = Vec::new();
    for (event_id, app_id, event_type, only) in &rows {
        let parsed = EventType::parse(event_type);
        for (endpoint_id, subscribed) in by_app.get(app_id).into_iter().flatten() {
            let wanted = match only {
                Some(only) => only == endpoint_id,
                None => parsed.is_some_and(|t| t.subscribed_by(subscribed)),
            };
            if wanted {
                deliveries.push((
                    Uuid::now_v7(),
                    *event_id,
                    *endpoint_id,
                    *app_id,
                    event_type.clone(),
                ));
            }
        }
    }
    let event_ids: Vec<Uuid> = rows.iter().map(|row| row.0).collect();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, app_id, event_type)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[])
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
    )
    .bind(deliveries.iter().map(|d| d.0).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.1).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.2).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.3).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.4.as_str()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    // Every delivery of these events not attempted yet: the new ones, and those an earlier
    // relay created but could not publish.
    let to_publish: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries
         WHERE event_id = ANY($1) AND status = 'pending' AND attempts = 0",
    )
    .bind(&event_ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    // A relay of these events in between publishes the same messages: their message ids
    // (the deliveries' ids) make the broker keep one of each.
    let mut acks = Vec::with_capacity(to_publish.len());
    for delivery_id in &to_publish {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, delivery_id.to_string().as_str());
        let message = DeliveryMessage {
            delivery_id: *delivery_id,
            redeliver: false,
        };
        let payload = serde_json::to_vec(&message).expect("delivery messages serialize");
        acks.push(
            js.publish_with_headers(subject.to_string(), headers, payload.into())
                .await?,
        );
    }
    for ack in acks {
        ack.await?;
    }
    sqlx::query("UPDATE events SET relayed = true WHERE id = ANY($1)")
        .bind(&event_ids)
        .execute(pool)
        .await?;
    metrics::counter!("tally_worker_events_relayed_total").increment(event_ids.len() as u64);
    metrics::counter!("tally_worker_deliveries_published_total").increment(to_publish.len() as u64);
    Ok(event_ids.len())
}
