//! What each app records (the event types its enabled endpoints subscribe to, its balance alert
//! thresholds) and its users' auto top-up thresholds, kept in memory and reloaded for an app within [`RELOAD_INTERVAL`] of any change
//! to its endpoints or alerts (`app_event_config.version`), so no batch reads it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tally_common::credit_type::CreditType;
use tally_common::events::EventType;
use tokio::sync::watch;
use uuid::Uuid;

use crate::ledger::events::{AppRules, Rules};

/// How often the workers look for changed apps.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The current rules, as the appliers, the sweeper and the relay read them.
#[derive(Clone, Debug)]
pub struct RulesHandle(watch::Receiver<Arc<Rules>>);

impl RulesHandle {
    pub fn current(&self) -> Arc<Rules> {
        self.0.borrow().clone()
    }

    /// A handle that never changes (tests, and a worker before its first load).
    pub fn fixed(rules: Rules) -> Self {
        let (_, receiver) = watch::channel(Arc::new(rules));
        Self(receiver)
    }
}

/// Loads every app's rules, then keeps reloading the apps whose configuration changed until
/// the returned handle's last copy is dropped.
pub async fn start(pool: PgPool) -> sqlx::Result<RulesHandle> {
    let mut versions = versions(&pool).await?;
    let apps: Vec<Uuid> = versions.keys().copied().collect();
    let rules = load(&pool, &apps).await?;
    let (sender, receiver) = watch::channel(Arc::new(rules));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(RELOAD_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if sender.is_closed() {
                return;
            }
            match reload(&pool, &mut versions, &sender).await {
                Ok(()) => {}
                Err(error) => tracing::warn!(%error, "could not reload the apps' event rules"),
            }
        }
    });
    Ok(RulesHandle(receiver))
}

async fn versions(pool: &PgPool) -> sqlx::Result<HashMap<Uuid, i64>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as("SELECT app_id, version FROM app_event_config")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().collect())
}

/// Reloads the apps whose version moved, and publishes the new rules if any did.
async fn reload(
    pool: &PgPool,
    known: &mut HashMap<Uuid, i64>,
    sender: &watch::Sender<Arc<Rules>>,
) -> sqlx::Result<()> {
    let now = versions(pool).await?;
    let changed: Vec<Uuid> = now
        .iter()
        .filter(|(app, version)| known.get(app) != Some(version))
        .map(|(app, _)| *app)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let fresh = load(pool, &changed).await?;
    let mut rules: Rules = (**sender.borrow()).clone();
    for app in &changed {
        match fresh.get(app) {
            Some(app_rules) => rules.insert(*app, app_rules.clone()),
            None => rules.remove(app),
        };
    }
    sender.send_replace(Arc::new(rules));
    *known = now;
    tracing::debug!(apps = changed.len(), "reloaded event rules");
    Ok(())
}

/// The rules of `apps`; an app that records nothing is absent.
pub async fn load(pool: &PgPool, apps: &[Uuid]) -> sqlx::Result<Rules> {
    let mut rules: HashMap<Uuid, AppRules> = HashMap::new();
    let endpoints: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
        "SELECT app_id, events FROM webhook_endpoints
         WHERE app_id = ANY($1) AND enabled AND deleted_at IS NULL",
    )
    .bind(apps)
    .fetch_all(pool)
    .await?;
    for (app_id, events) in endpoints {
        let subscribed = &mut rules.entry(app_id).or_default().subscribed;
        subscribed.extend(subscribed_types(&events));
    }
    let alerts: Vec<(Uuid, String, String, Vec<i64>)> = sqlx::query_as(
        "SELECT app_id, user_id, credit_type, thresholds FROM balance_alerts
         WHERE app_id = ANY($1)",
    )
    .bind(apps)
    .fetch_all(pool)
    .await?;
    for (app_id, user_id, credit_type, thresholds) in alerts {
        let Ok(credit_type) = CreditType::parse(&credit_type) else {
            continue;
        };
        let app = rules.entry(app_id).or_default();
        if user_id.is_empty() {
            app.default_thresholds.insert(credit_type, thresholds);
        } else {
            app.user_thresholds
                .insert((user_id, credit_type), thresholds);
        }
    }
    let topups: Vec<(Uuid, String, String, i64)> = sqlx::query_as(
        "SELECT app_id, user_id, credit_type, threshold FROM auto_topup_settings
         WHERE app_id = ANY($1) AND enabled",
    )
    .bind(apps)
    .fetch_all(pool)
    .await?;
    for (app_id, user_id, credit_type, threshold) in topups {
        let Ok(credit_type) = CreditType::parse(&credit_type) else {
            continue;
        };
        rules
            .entry(app_id)
            .or_default()
            .auto_topup
            .insert((user_id, credit_type), threshold);
    }
    Ok(rules
        .into_iter()
        .filter(|(_, app)| !app.subscribed.is_empty() || !app.auto_topup.is_empty())
        .map(|(app_id, app)| (app_id, Arc::new(app)))
        .collect())
}

/// The types an endpoint's subscription list names.
fn subscribed_types(events: &[String]) -> HashSet<EventType> {
    EventType::ALL
        .into_iter()
        .filter(|event_type| event_type.subscribed_by(events))
        .collect()
}

#[cfg(test)]
mod tests {
    use tally_common::events::SUBSCRIBE_ALL;

    use super::*;

    #[test]
    fn everything_means_every_type_but_ping() {
        let all = subscribed_types(&[SUBSCRIBE_ALL.to_string()]);
        assert_eq!(all.len(), EventType::ALL.len() - 1);
        assert!(!all.contains(&EventType::Ping));
        let some = subscribed_types(&["balance.low".into(), "hold.expired".into()]);
        assert_eq!(
            some,
            HashSet::from([EventType::BalanceLow, EventType::HoldExpired])
        );
    }
}
