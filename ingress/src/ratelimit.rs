//! Per-app rate limits: a token bucket per app and budget, held in this ingress's memory.
//!
//! Two budgets, so that a flood of API calls can never starve payments: [`Budget::Api`] counts
//! every authenticated API request, [`Budget::Webhook`] every payment webhook. Each has a
//! default for every app (unlimited when unset); the API budget can be overridden per app with
//! `tally app set-rate-limit`, stored in `app_rate_limits` and reloaded by a background task
//! every [`OVERRIDES_REFRESH_INTERVAL`] — a request never waits on the database for its limit.
//!
//! The buckets are per ingress: with N ingresses behind a load balancer an app may get up to
//! N times its rate (and N bursts). Set the limit to the wanted total divided by N.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// How often the per-app overrides are reloaded: `tally app set-rate-limit` takes effect on
/// every ingress within this time.
pub const OVERRIDES_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Most buckets kept; past it every bucket is forgotten (refilled), which only ever errs on the
/// side of letting requests through.
const BUCKETS_MAX: usize = 100_000;

/// A sustained rate and how many requests may come at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// `per_second` with `burst` (default: one second's worth), or `None` (unlimited) when no
    /// rate is given.
    pub fn from_config(per_second: Option<u32>, burst: Option<u32>) -> Option<Rate> {
        per_second.filter(|rate| *rate > 0).map(|per_second| Rate {
            per_second,
            burst: burst.filter(|burst| *burst > 0).unwrap_or(per_second),
        })
    }
}

/// Which budget a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Budget {
    Api,
    Webhook,
}

impl Budget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Webhook => "webhook",
        }
    }
}

/// One app's bucket: `tokens` as of `updated`, refilled at the rate's pace up to its burst.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            updated: now,
        }
    }

    /// Takes one token, or says how long until one is there.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now.max(self.updated);
        self.rate = rate;
        self.tokens =
            (self.tokens + elapsed * f64::from(rate.per_second)).min(f64::from(rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(
                missing / f64::from(rate.per_second),
            ))
        }
    }
}

/// What `app_rate_limits` says about one app.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Override {
    Unlimited,
    Limited(Rate),
}

/// Refused: the budget is spent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub budget: Budget,
    pub rate: Rate,
    /// Until a request would be admitted again.
    pub retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// Every app's buckets in this ingress.
pub struct RateLimits {
    api_default: Option<Rate>,
    webhook_default: Option<Rate>,
    overrides: RwLock<Arc<HashMap<Uuid, Override>>>,
    buckets: Mutex<HashMap<(Uuid, Budget), Bucket>>,
}

impl RateLimits {
    pub fn new(api_default: Option<Rate>, webhook_default: Option<Rate>) -> Self {
        Self {
            api_default,
            webhook_default,
            overrides: RwLock::default(),
            buckets: Mutex::default(),
        }
    }

    /// The rate that applies to `app_id`'s `budget`, or `None` when unlimited.
    pub fn rate(&self, app_id: Uuid, budget: Budget) -> Option<Rate> {
        match budget {
            Budget::Webhook => self.webhook_default,
            Budget::Api => {
                let overrides = self.overrides.read().expect("rate limit overrides lock");
                match overrides.get(&app_id) {
                    Some(Override::Unlimited) => None,
                    Some(Override::Limited(rate)) => Some(*rate),
                    None => self.api_default,
                }
            }
        }
    }

    /// Admits one request of `app_id` against `budget`, counting refusals in metrics.
    pub fn check(&self, app_id: Uuid, budget: Budget) -> Result<(), Limited> {
        let result = self.check_at(app_id, budget, Instant::now());
        if result.is_err() {
            metrics::counter!("tally_ingress_rate_limited_total", "kind" => budget.as_str())
                .increment(1);
        }
        result
    }

    /// [`RateLimits::check`] at a given instant (the pure part, for tests).
    pub fn check_at(&self, app_id: Uuid, budget: Budget, now: Instant) -> Result<(), Limited> {
        let Some(rate) = self.rate(app_id, budget) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().expect("rate limit buckets lock");
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(&(app_id, budget)) {
            buckets.clear();
        }
        buckets
            .entry((app_id, budget))
            .or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
            .map_err(|retry_after| Limited {
                budget,
                rate,
                retry_after,
            })
    }

    /// Replaces the per-app overrides.
    pub fn set_overrides(&self, overrides: HashMap<Uuid, Override>) {
        *self.overrides.write().expect("rate limit overrides lock") = Arc::new(overrides);
    }

    /// Reads `app_rate_limits`.
    pub async fn load_overrides(pool: &PgPool) -> Result<HashMap<Uuid, Override>, sqlx::Error> {
        let rows: Vec<(Uuid, Option<i32>, Option<i32>)> =
            sqlx::query_as("SELECT app_id, requests_per_second, burst FROM app_rate_limits")
                .fetch_all(pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(app_id, per_second, burst)| {
                let rate = Rate::from_config(
                    per_second.and_then(|v| u32::try_from(v).ok()),
                    burst.and_then(|v| u32::try_from(v).ok()),
                );
                (app_id, rate.map_or(Override::Unlimited, Override::Limited))
            })
            .collect())
    }

    /// Reloads the overrides every [`OVERRIDES_REFRESH_INTERVAL`] for as long as `self` lives
    /// elsewhere; a failed reload keeps the last overrides (and is retried at the next tick).
    pub fn start_refresh(self: &Arc<Self>, pool: PgPool) {
        let limits = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(OVERRIDES_REFRESH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(limits) = limits.upgrade() else {
                    return;
                };
                match Self::load_overrides(&pool).await {
                    Ok(overrides) => limits.set_overrides(overrides),
                    Err(error) => {
                        tracing::warn!(%error, "could not reload rate limit overrides; keeping the last ones")
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_SECOND: Rate = Rate {
        per_second: 10,
        burst: 3,
    };

    #[test]
    fn a_burst_is_admitted_then_the_rate_refills_it() {
        let limits = RateLimits::new(Some(TEN_PER_SECOND), None);
        let app = Uuid::now_v7();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limits.check_at(app, Budget::Api, start).is_ok());
        }
        let refused = limits.check_at(app, Budget::Api, start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        let later = start + Duration::from_millis(100);
        assert!(limits.check_at(app, Budget::Api, later).is_ok());
        assert!(limits.check_at(app, Budget::Api, later).is_err());
        // Idle time refills no more than the burst.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limits.check_at(app, Budget::Api, much_later).is_ok());
        }
        assert!(limits.check_at(app, Budget::Api, much_later).is_err());
    }

    #[test]
    fn apps_and_budgets_have_their_own_buckets() {
        let limits = RateLimits::new(Some(TEN_PER_SECOND), Some(TEN_PER_SECOND));
        let (one, other) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        for _ in 0..3 {
            limits.check_at(one, Budget::Api, now).unwrap();
        }
        assert!(limits.check_at(one, Budget::Api, now).is_err());
        assert!(limits.check_at(one, Budget::Webhook, now).is_ok());
        assert!(limits.check_at(other, Budget::Api, now).is_ok());
    }

    #[test]
    fn no_default_means_unlimited_and_overrides_win() {
        let limits = RateLimits::new(None, None);
        let (limited, free) = (Uuid::now_v7(), Uuid::now_v7());
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(limits.check_at(limited, Budget::Api, now).is_ok());
        }
        limits.set_overrides(HashMap::from([(
            limited,
            Override::Limited(Rate {
                per_second: 1,
                burst: 1,
            }),
        )]));
        assert!(limits.check_at(limited, Budget::Api, now).is_ok());
        assert!(limits.check_at(limited, Budget::Api, now).is_err());
        assert!(limits.check_at(free, Budget::Api, now).is_ok());

        let limits = RateLimits::new(Some(TEN_PER_SECOND), None);
        limits.set_overrides(HashMap::from([(free, Override::Unlimited)]));
        for _ in 0..1000 {
            assert!(limits.check_at(free, Budget::Api, now).is_ok());
        }
    }

    #[test]
    fn a_lowered_limit_caps_a_full_bucket_at_the_new_burst() {
        let app = Uuid::now_v7();
        let limits = RateLimits::new(
            Some(Rate {
                per_second: 100,
                burst: 100,
            }),
            None,
        );
        let now = Instant::now();
        limits.check_at(app, Budget::Api, now).unwrap();
        limits.set_overrides(HashMap::from([(
            app,
            Override::Limited(Rate {
                per_second: 1,
                burst: 2,
            }),
        )]));
        assert!(limits.check_at(app, Budget::Api, now).is_ok());
        assert!(limits.check_at(app, Budget::Api, now).is_ok());
        assert!(limits.check_at(app, Budget::Api, now).is_err());
    }

    #[test]
    fn burst_defaults_to_one_second_of_rate() {
        assert_eq!(
            Rate::from_config(Some(50), None),
            Some(Rate {
                per_second: 50,
                burst: 50
            })
        );
        assert_eq!(Rate::from_config(None, Some(9)), None);
        assert_eq!(Rate::from_config(Some(0), Some(9)), None);
    }
}
