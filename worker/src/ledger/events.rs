//! The events a fold records with its changes (the outbox): entry events for every entry of a
//! subscribed type, `hold.expired`, and balance alerts decided from each changed account's
//! `available` before and after the command — never by polling.
//!
//! What an app records is an input ([`AppRules`]): the types some enabled endpoint subscribes
//! to, and its thresholds. An app that records nothing costs nothing: no event, no sequence.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};
use tally_common::credit_type::CreditType;
use tally_common::events::EventType;
use uuid::Uuid;

use super::{Account, AccountKey, EntryType, UserKey};

/// What one app records: the event types some enabled endpoint of it subscribes to, and its
/// balance alert thresholds (the app's default per credit type, and users' own lists).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppRules {
    pub subscribed: HashSet<EventType>,
    pub default_thresholds: HashMap<CreditType, Vec<i64>>,
    pub user_thresholds: HashMap<(String, CreditType), Vec<i64>>,
    /// The enabled auto top-ups' thresholds, per user and credit type.
    pub auto_topup: HashMap<(String, CreditType), i64>,
}

impl AppRules {
    pub fn records(&self, event_type: EventType) -> bool {
        self.subscribed.contains(&event_type)
    }

    /// The thresholds that apply to a user's type: the user's own list if it has one, else
    /// the app's default.
    pub fn thresholds(&self, user_id: &str, credit_type: &CreditType) -> &[i64] {
        self.user_thresholds
            .get(&(user_id.to_string(), credit_type.clone()))
            .or_else(|| self.default_thresholds.get(credit_type))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether balance alerts need the state of which thresholds were crossed downwards.
    pub fn tracks_alerts(&self) -> bool {
        self.records(EventType::BalanceLow) || self.records(EventType::BalanceRecovered)
    }
}

/// Every app's rules; an app absent records nothing.
pub type Rules = HashMap<Uuid, Arc<AppRules>>;

/// An event to record, in the order the fold decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    pub event_type: EventType,
    /// The user's next event number.
    pub sequence: i64,
    /// An entry event's entry: its `data` is the entry as history shows it.
    pub ledger_id: Option<Uuid>,
    /// The `data` of any other event.
    pub data: Option<Value>,
}

/// The event an entry of `entry_type` is.
pub fn entry_event(entry_type: EntryType) -> EventType {
    match entry_type {
        EntryType::Add => EventType::CreditsAdded,
        EntryType::Deduct => EventType::CreditsDeducted,
        EntryType::Refund => EventType::CreditsRefunded,
        EntryType::Expire => EventType::CreditsExpired,
        EntryType::Payment => EventType::PaymentCredited,
        EntryType::Clawback => EventType::PaymentClawedBack,
    }
}

/// One account's change of `available` within one command, and what it crosses.
pub struct Crossing<'a> {
    pub key: &'a AccountKey,
    pub before: i64,
    pub after: Account,
}

/// A balance alert decided from a crossing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub event_type: EventType,
    pub threshold: i64,
}

/// The alerts a change of `available` from `before` to `after` fires, given the thresholds and
/// those already crossed downwards (`below`, updated): `balance.low` per threshold crossed
/// downwards (highest first), `balance.depleted` when it reaches 0 from above, and
/// `balance.recovered` per threshold that had fired `balance.low` and is reached again (lowest
/// first).
pub fn alerts(
    thresholds: &[i64],
    before: i64,
    after: i64,
    below: &mut BTreeSet<i64>,
) -> Vec<Alert> {
    let mut fired = Vec::new();
    let mut descending: Vec<i64> = thresholds.to_vec();
    descending.sort_unstable_by(|a, b| b.cmp(a));
    descending.dedup();
    if after < before {
        for &threshold in &descending {
            if before >= threshold && after < threshold {
                below.insert(threshold);
                fired.push(Alert {
                    event_type: EventType::BalanceLow,
                    threshold,
                });
            }
        }
        if before > 0 && after <= 0 {
            fired.push(Alert {
                event_type: EventType::BalanceDepleted,
                threshold: 0,
            });
        }
    } else if after > before {
        for &threshold in descending.iter().rev() {
            if before < threshold && after >= threshold && below.remove(&threshold) {
                fired.push(Alert {
                    event_type: EventType::BalanceRecovered,
                    threshold,
                });
            }
        }
    }
    fired
}

/// Whether a change of `available` from `before` to `after` crosses any threshold or 0 —
/// something only a fold that knows the alert state may decide.
pub fn crosses(thresholds: &[i64], before: i64, after: i64) -> bool {
    let (low, high) = (before.min(after), before.max(after));
    low != high
        && ((low <= 0 && high > 0)
            || thresholds
                .iter()
                .any(|&threshold| low < threshold && threshold <= high))
}

/// The data of a balance alert.
pub fn alert_data(alert: &Alert, credit_type: &CreditType, account: Account) -> Value {
    json!({ "threshold": alert.threshold, "credit_type": credit_type,
            "balance": account.balance, "held": account.held, "available": account.available() })
}

/// The user an event is numbered for.
pub fn user_key(event: &NewEvent) -> UserKey {
    (event.app_id, event.user_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(fired: &[Alert]) -> Vec<(&'static str, i64)> {
        fired
            .iter()
            .map(|a| (a.event_type.as_str(), a.threshold))
            .collect()
    }

    #[test]
    fn falling_below_a_threshold_fires_once_until_it_is_reached_again() {
        let mut below = BTreeSet::new();
        let thresholds = [100, 1000];
        assert_eq!(
            types(&alerts(&thresholds, 1500, 50, &mut below)),
            [("balance.low", 1000), ("balance.low", 100)],
            "a change crossing two thresholds fires two"
        );
        assert!(alerts(&thresholds, 50, 20, &mut below).is_empty());
        assert_eq!(
            types(&alerts(&thresholds, 20, 0, &mut below)),
            [("balance.depleted", 0)]
        );
        assert_eq!(
            types(&alerts(&thresholds, 0, 150, &mut below)),
            [("balance.recovered", 100)]
        );
        assert_eq!(
            types(&alerts(&thresholds, 150, 90, &mut below)),
            [("balance.low", 100)]
        );
        assert_eq!(
            types(&alerts(&thresholds, 90, 2000, &mut below)),
            [("balance.recovered", 100), ("balance.recovered", 1000)]
        );
        assert!(below.is_empty());
    }

    #[test]
    fn rising_past_a_threshold_that_never_fired_is_not_a_recovery() {
        let mut below = BTreeSet::new();
        assert!(alerts(&[100], 0, 500, &mut below).is_empty());
        assert!(
            alerts(&[100], 500, 100, &mut below).is_empty(),
            "at it is not below it"
        );
    }

    #[test]
    fn crossings_are_seen_without_the_alert_state() {
        assert!(crosses(&[100], 150, 50));
        assert!(crosses(&[100], 50, 100));
        assert!(crosses(&[], 5, 0));
        assert!(crosses(&[], 0, 5));
        assert!(!crosses(&[100], 500, 101));
        assert!(!crosses(&[100], 99, 1));
        assert!(!crosses(&[100], 7, 7));
    }

    #[test]
    fn a_users_own_list_replaces_the_apps_default() {
        let credits = CreditType::default();
        let rules = AppRules {
            default_thresholds: HashMap::from([(credits.clone(), vec![100])]),
            user_thresholds: HashMap::from([(("vip".to_string(), credits.clone()), vec![])]),
            ..AppRules::default()
        };
        assert_eq!(rules.thresholds("anyone", &credits), [100]);
        assert!(rules.thresholds("vip", &credits).is_empty());
        assert!(rules
            .thresholds("anyone", &CreditType::parse("image").unwrap())
            .is_empty());
    }
}
