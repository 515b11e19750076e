//! What one apply lane remembers of its users' account rows between batches, and the events
//! that make it remember or forget them.

use std::collections::{BTreeSet, HashMap};

use tally_common::credit_type::CreditType;
use uuid::Uuid;

use crate::ledger::{Account, AccountKey, State, UserKey};

/// What the owner of some partitions remembers of their users between batches: every account
/// row (one per credit type) it last committed for users with no unexpired lots and nothing
/// held in any type. A batch of plain adds and deducts for such users needs nothing else from
/// the database, so it skips every load (the fast path of [`super::Store::apply_batch`]). The
/// copy is only a guess: the batch's write checks every row it relied on, and a mismatch sends
/// the batch down the full path, which reloads.
///
/// Only [`super::Store`] holds one; it is filled and emptied through the events below.
#[derive(Debug, Default)]
pub(super) struct AccountCache {
    users: HashMap<UserKey, Cached>,
}

#[derive(Clone, Debug)]
struct Cached {
    /// The user's partition, so that a change of its owner forgets the user.
    partition: u32,
    /// Every row of the user, one per credit type: the user's next entry number depends on
    /// all of them.
    rows: Vec<(CreditType, Account)>,
}

/// Most users remembered; past it the cache starts over (it refills as users come back).
const ACCOUNT_CACHE_USERS_MAX: usize = 1_000_000;

impl AccountCache {
    /// Every row last committed for `user`, if remembered.
    pub(super) fn remembered(&self, user: &UserKey) -> Option<&[(CreditType, Account)]> {
        self.users.get(user).map(|cached| cached.rows.as_slice())
    }

    /// A fast batch committed `accounts`: its users (all remembered, with every row) are
    /// remembered as written.
    pub(super) fn fast_batch_committed(&mut self, accounts: &HashMap<AccountKey, Account>) {
        for ((app_id, user_id, credit_type), account) in accounts {
            let Some(cached) = self.users.get_mut(&(*app_id, user_id.clone())) else {
                continue;
            };
            if let Some(row) = cached.rows.iter_mut().find(|(t, _)| t == credit_type) {
                row.1 = *account;
            }
        }
    }

    /// A fast batch did not match the database, or failed: its `users` are forgotten, and the
    /// full path reloads them.
    pub(super) fn fast_batch_failed<'a>(&mut self, users: impl IntoIterator<Item = &'a UserKey>) {
        for user in users {
            self.users.remove(user);
        }
    }

    /// A full-path batch committed `state`, which holds every row of its users: the users that
    /// are simple (no unexpired lot, nothing held, in any type) are remembered, with their
    /// `partitions`, and the others forgotten.
    pub(super) fn full_batch_committed(
        &mut self,
        state: &State,
        partitions: &HashMap<UserKey, u32>,
    ) {
        if self.users.len() > ACCOUNT_CACHE_USERS_MAX {
            self.users.clear();
        }
        let mut complex: BTreeSet<(Uuid, &str)> = state
            .lots
            .values()
            .filter(|lot| lot.expired_at.is_none())
            .map(|lot| (lot.app_id, lot.user_id.as_str()))
            .collect();
        complex.extend(
            state
                .accounts
                .iter()
                .filter(|(_, account)| account.held != 0)
                .map(|((app_id, user_id, _), _)| (*app_id, user_id.as_str())),
        );
        let mut rows: HashMap<UserKey, Vec<(CreditType, Account)>> = HashMap::new();
        for ((app_id, user_id, credit_type), account) in &state.accounts {
            rows.entry((*app_id, user_id.clone()))
                .or_default()
                .push((credit_type.clone(), *account));
        }
        for (user, rows) in rows {
            let Some(&partition) = partitions.get(&user) else {
                continue;
            };
            if complex.contains(&(user.0, user.1.as_str())) {
                self.users.remove(&user);
            } else {
                self.users.insert(user, Cached { partition, rows });
            }
        }
    }

    /// `partition` changed hands — this lane took it or gave it up, or found it advanced by
    /// another worker (fenced) — so its users' rows may have been written elsewhere: they are
    /// forgotten.
    pub(super) fn partition_changed_hands(&mut self, partition: u32) {
        self.users.retain(|_, cached| cached.partition != partition);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::ledger::Lot;

    const APP: Uuid = Uuid::from_u128(1);

    fn user(name: &str) -> UserKey {
        (APP, name.to_string())
    }

    fn row(name: &str, credit_type: &str) -> AccountKey {
        (
            APP,
            name.to_string(),
            CreditType::parse(credit_type).unwrap(),
        )
    }

    fn account(balance: i64, held: i64) -> Account {
        Account {
            balance,
            held,
            entry_count: 1,
        }
    }

    fn only(account: Account) -> Option<Vec<(CreditType, Account)>> {
        Some(vec![(CreditType::default(), account)])
    }

    fn remembered(cache: &AccountCache, name: &str) -> Option<Vec<(CreditType, Account)>> {
        cache.remembered(&user(name)).map(|rows| {
            let mut rows = rows.to_vec();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            rows
        })
    }

    /// A committed full-path batch over `accounts` (`name` or `name:type`), each user of
    /// partition 0 unless named in `partitions`, and with an unexpired lot for each of
    /// `with_lot`.
    fn committed(
        accounts: &[(&str, Account)],
        partitions: &[(&str, u32)],
        with_lot: &[&str],
    ) -> AccountCache {
        let mut state = State::default();
        for (name, account) in accounts {
            let (name, credit_type) = name.split_once(':').unwrap_or((name, "credits"));
            state.insert_account(row(name, credit_type), *account);
        }
        for name in with_lot {
            let lot = Lot {
                id: Uuid::now_v7(),
                app_id: APP,
                user_id: name.to_string(),
                credit_type: CreditType::default(),
                amount: 5,
                remaining: 5,
                expires_at: Utc::now(),
                expired_at: None,
            };
            state.lots.insert(lot.id, lot);
        }
        let partitions = state
            .last_seq
            .keys()
            .map(|key| {
                let named = partitions.iter().find(|(n, _)| *n == key.1);
                (key.clone(), named.map_or(0, |(_, p)| *p))
            })
            .collect();
        let mut cache = AccountCache::default();
        cache.full_batch_committed(&state, &partitions);
        cache
    }

    #[test]
    fn a_full_batch_remembers_only_users_with_nothing_held_and_no_unexpired_lot() {
        let cache = committed(
            &[
                ("plain", account(10, 0)),
                ("holding", account(10, 4)),
                ("with_lot", account(10, 0)),
            ],
            &[],
            &["with_lot"],
        );

        assert_eq!(remembered(&cache, "plain"), only(account(10, 0)));
        assert_eq!(remembered(&cache, "holding"), None);
        assert_eq!(remembered(&cache, "with_lot"), None);
    }

    #[test]
    fn a_user_is_remembered_with_every_type_or_not_at_all() {
        let cache = committed(
            &[
                ("ann", account(10, 0)),
                ("ann:image", account(3, 0)),
                ("bob", account(10, 0)),
                ("bob:image", account(3, 1)),
            ],
            &[],
            &[],
        );

        assert_eq!(
            remembered(&cache, "ann"),
            Some(vec![
                (CreditType::default(), account(10, 0)),
                (CreditType::parse("image").unwrap(), account(3, 0)),
            ])
        );
        assert_eq!(remembered(&cache, "bob"), None, "a hold in one type");
    }

    #[test]
    fn a_user_who_stops_being_simple_is_forgotten_by_the_next_full_batch() {
        let mut cache = committed(&[("ann", account(10, 0))], &[], &[]);
        let mut state = State::default();
        state.insert_account(row("ann", "credits"), account(10, 3));

        cache.full_batch_committed(&state, &HashMap::from([(user("ann"), 0)]));

        assert_eq!(remembered(&cache, "ann"), None);
    }

    #[test]
    fn a_fast_batch_updates_remembered_users_and_adds_none() {
        let mut cache = committed(&[("ann", account(10, 0))], &[], &[]);

        cache.fast_batch_committed(&HashMap::from([
            (row("ann", "credits"), account(7, 0)),
            (row("bob", "credits"), account(3, 0)),
        ]));

        assert_eq!(remembered(&cache, "ann"), only(account(7, 0)));
        assert_eq!(remembered(&cache, "bob"), None);
    }

    #[test]
    fn a_failed_fast_batch_forgets_its_users_only() {
        let mut cache = committed(&[("ann", account(1, 0)), ("bob", account(2, 0))], &[], &[]);

        cache.fast_batch_failed([&user("ann")]);

        assert_eq!(remembered(&cache, "ann"), None);
        assert_eq!(remembered(&cache, "bob"), only(account(2, 0)));
    }

    #[test]
    fn a_partition_changing_hands_forgets_its_users_only() {
        let mut cache = committed(
            &[("ann", account(1, 0)), ("bob", account(2, 0))],
            &[("ann", 3), ("bob", 4)],
            &[],
        );

        cache.partition_changed_hands(3);

        assert_eq!(remembered(&cache, "ann"), None);
        assert_eq!(remembered(&cache, "bob"), only(account(2, 0)));
    }
}
