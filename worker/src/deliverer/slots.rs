//! Per-endpoint limits: at most a few attempts to one endpoint at a time in this worker, so
//! that a slow endpoint holds a few of the deliverer's slots, never all of them. A delivery
//! that finds its endpoint saturated waits a moment for a place ([`EndpointSlots::take_within`]:
//! a fast endpoint frees one within milliseconds); past that it is put back (not an attempt),
//! and the more of them an endpoint turns away, the longer they wait, so a large backlog for
//! one slow endpoint is not read again and again while it is busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// The shortest wait of a delivery turned away by a saturated endpoint.
const TURNED_AWAY_DELAY_MIN: Duration = Duration::from_secs(1);

/// The longest wait of a delivery turned away by a saturated endpoint.
const TURNED_AWAY_DELAY_MAX: Duration = Duration::from_secs(30);

/// The attempts in flight to each endpoint, and how many deliveries each turned away since it
/// last had room.
#[derive(Clone)]
pub(crate) struct EndpointSlots {
    per_endpoint: usize,
    endpoints: Arc<Mutex<HashMap<Uuid, Usage>>>,
}

#[derive(Default)]
struct Usage {
    in_flight: usize,
    turned_away: u32,
    /// Deliveries waiting in [`EndpointSlots::take_within`] for a place.
    waiting: usize,
    /// Wakes one of them when a place is given back.
    freed: Arc<Notify>,
}

/// One attempt's place at its endpoint, given back on drop.
pub(crate) struct Slot {
    endpoint: Uuid,
    endpoints: Arc<Mutex<HashMap<Uuid, Usage>>>,
}

impl EndpointSlots {
    pub fn new(per_endpoint: usize) -> Self {
        Self {
            per_endpoint: per_endpoint.max(1),
            endpoints: Arc::default(),
        }
    }

    /// A place for one attempt to `endpoint`, or how long to put the delivery back for.
    #[cfg(test)]
    pub fn take(&self, endpoint: Uuid) -> Result<Slot, Duration> {
        let mut endpoints = self.endpoints.lock().expect("endpoint slots");
        let usage = endpoints.entry(endpoint).or_default();
        if usage.in_flight < self.per_endpoint {
            usage.in_flight += 1;
            usage.turned_away = 0;
            return Ok(Slot {
                endpoint,
                endpoints: self.endpoints.clone(),
            });
        }
        Err(self.turn_away(usage))
    }

    /// A place for one attempt to `endpoint`, waiting up to `wait` for one; past it, how long
    /// to put the delivery back for.
    pub async fn take_within(&self, endpoint: Uuid, wait: Duration) -> Result<Slot, Duration> {
        let deadline = Instant::now() + wait;
        loop {
            let freed = {
                let mut endpoints = self.endpoints.lock().expect("endpoint slots");
                let usage = endpoints.entry(endpoint).or_default();
                if usage.in_flight < self.per_endpoint {
                    usage.in_flight += 1;
                    usage.turned_away = 0;
                    return Ok(Slot {
                        endpoint,
                        endpoints: self.endpoints.clone(),
                    });
                }
                usage.waiting += 1;
                usage.freed.clone()
            };
            let woken = tokio::time::timeout_at(deadline, freed.notified()).await;
            let mut endpoints = self.endpoints.lock().expect("endpoint slots");
            let usage = endpoints.entry(endpoint).or_default();
            usage.waiting -= 1;
            if woken.is_err() {
                let wait = self.turn_away(usage);
                if usage.in_flight == 0 && usage.waiting == 0 {
                    endpoints.remove(&endpoint);
                }
                return Err(wait);
            }
        }
    }

    /// Counts a delivery turned away by a saturated endpoint; how long it waits.
    fn turn_away(&self, usage: &mut Usage) -> Duration {
        usage.turned_away = usage.turned_away.saturating_add(1);
        // About as long as the deliveries turned away so far take to go through the
        // endpoint's slots at one a second each, spread so they do not all come back at once.
        let waiting = usage.turned_away as f64 / self.per_endpoint as f64;
        let base = TURNED_AWAY_DELAY_MIN
            .as_secs_f64()
            .max(waiting)
            .min(TURNED_AWAY_DELAY_MAX.as_secs_f64());
        let jitter = rand::thread_rng().gen_range(0.0..=0.5);
        Duration::from_secs_f64(base * (1.0 + jitter)).min(TURNED_AWAY_DELAY_MAX)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut endpoints = self.endpoints.lock().expect("endpoint slots");
        if let Some(usage) = endpoints.get_mut(&self.endpoint) {
            usage.in_flight -= 1;
            if usage.waiting > 0 {
                usage.freed.notify_one();
            } else if usage.in_flight == 0 {
                endpoints.remove(&self.endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gets_its_share_and_others_are_unaffected() {
        let slots = EndpointSlots::new(2);
        let (slow, other) = (Uuid::now_v7(), Uuid::now_v7());
        let first = slots.take(slow).expect("room");
        let _second = slots.take(slow).expect("room");
        let wait = slots.take(slow).err().expect("saturated");
        assert!(wait >= TURNED_AWAY_DELAY_MIN && wait <= TURNED_AWAY_DELAY_MAX);
        assert!(slots.take(other).is_ok());
        drop(first);
        assert!(slots.take(slow).is_ok());
    }

    #[test]
    fn a_long_queue_for_a_saturated_endpoint_waits_longer() {
        let slots = EndpointSlots::new(1);
        let endpoint = Uuid::now_v7();
        let _busy = slots.take(endpoint).expect("room");
        let mut last = Duration::ZERO;
        for _ in 0..200 {
            last = slots.take(endpoint).err().expect("saturated");
        }
        assert!(last >= Duration::from_secs(20), "{last:?}");
        assert!(last <= TURNED_AWAY_DELAY_MAX);
    }

    #[tokio::test]
    async fn a_delivery_waits_a_moment_for_a_place_then_is_turned_away() {
        let slots = EndpointSlots::new(1);
        let endpoint = Uuid::now_v7();
        let busy = slots.take(endpoint).expect("room");
        let wait = slots
            .take_within(endpoint, Duration::from_millis(20))
            .await
            .err()
            .expect("still saturated");
        assert!(wait >= TURNED_AWAY_DELAY_MIN);
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move {
                slots
                    .take_within(endpoint, Duration::from_secs(10))
                    .await
                    .is_ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(busy);
        assert!(
            waiting.await.unwrap(),
            "the freed place went to the waiting delivery"
        );
        assert!(slots.endpoints.lock().unwrap().is_empty());
    }

    #[test]
    fn an_idle_endpoint_is_forgotten() {
        let slots = EndpointSlots::new(4);
        drop(slots.take(Uuid::now_v7()).expect("room"));
        assert!(slots.endpoints.lock().unwrap().is_empty());
    }
}
