//! What one apply lane remembers of its users' account rows between batches, and the events
//! that make it remember or forget them.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::ledger::{Account, State, UserKey};

/// What the owner of some partitions remembers of their users between batches: the account
/// rows it last committed for users with no unexpired lots and nothing held. A batch of plain
/// adds and deducts for such users needs nothing else from the database, so it skips every
/// load (the fast path of [`super::Store::apply_batch`]). The copy is only a guess: the
/// batch's write checks every row it relied on, and a mismatch sends the batch down the full
/// path, which reloads.
///
/// Only [`super::Store`] holds one; it is filled and emptied through the events below.
#[derive(Debug, Default)]
pub(super) struct AccountCache {
    accounts: HashMap<UserKey, Cached>,
}

#[derive(Clone, Copy, Debug)]
struct Cached {
    /// The user's partition, so that a change of its owner forgets the user.
    partition: u32,
    account: Account,
}

/// Most users remembered; past it the cache starts over (it refills as users come back).
const ACCOUNT_CACHE_USERS_MAX: usize = 1_000_000;

impl AccountCache {
    /// The row last committed for `user`, if remembered.
    pub(super) fn remembered(&self, user: &UserKey) -> Option<Account> {
        self.accounts.get(user).map(|cached| cached.account)
    }

    /// A fast batch committed `accounts`: its users (all remembered) are remembered as written.
    pub(super) fn fast_batch_committed(&mut self, accounts: &HashMap<UserKey, Account>) {
        for (user, account) in accounts {
            if let Some(cached) = self.accounts.get_mut(user) {
                cached.account = *account;
            }
        }
    }

    /// A fast batch did not match the database, or failed: its `users` are forgotten, and the
    /// full path reloads them.
    pub(super) fn fast_batch_failed<'a>(&mut self, users: impl IntoIterator<Item = &'a UserKey>) {
        for user in users {
            self.accounts.remove(user);
        }
    }

    /// A full-path batch committed `state`: its users that are simple (no unexpired lot,
    /// nothing held) are remembered, with their `partitions`, and the others forgotten.
    pub(super) fn full_batch_committed(
        &mut self,
        state: &State,
        partitions: &HashMap<UserKey, u32>,
    ) {
        if self.accounts.len() > ACCOUNT_CACHE_USERS_MAX {
            self.accounts.clear();
        }
        let with_lots: BTreeSet<(Uuid, &str)> = state
            .lots
            .values()
            .filter(|lot| lot.expired_at.is_none())
            .map(|lot| (lot.app_id, lot.user_id.as_str()))
            .collect();
        for (key, account) in &state.accounts {
            let Some(&partition) = partitions.get(key) else {
                continue;
            };
            if account.held == 0 && !with_lots.contains(&(key.0, key.1.as_str())) {
                self.accounts.insert(
                    key.clone(),
                    Cached {
                        partition,
                        account: *account,
                    },
                );
            } else {
                self.accounts.remove(key);
            }
        }
    }

    /// `partition` changed hands — this lane took it or gave it up, or found it advanced by
    /// another worker (fenced) — so its users' rows may have been written elsewhere: they are
    /// forgotten.
    pub(super) fn partition_changed_hands(&mut self, partition: u32) {
        self.accounts
            .retain(|_, cached| cached.partition != partition);
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

    fn account(balance: i64, held: i64) -> Account {
        Account {
            balance,
            held,
            entry_count: 1,
        }
    }

    /// A committed full-path batch over `accounts`, each user of partition 0 unless named in
    /// `partitions`, and with an unexpired lot for each of `with_lot`.
    fn committed(
        accounts: &[(&str, Account)],
        partitions: &[(&str, u32)],
        with_lot: &[&str],
    ) -> AccountCache {
        let mut state = State::default();
        for (name, account) in accounts {
            state.accounts.insert(user(name), *account);
        }
        for name in with_lot {
            let lot = Lot {
                id: Uuid::now_v7(),
                app_id: APP,
                user_id: name.to_string(),
                amount: 5,
                remaining: 5,
                expires_at: Utc::now(),
                expired_at: None,
            };
            state.lots.insert(lot.id, lot);
        }
        let partitions = accounts
            .iter()
            .map(|(name, _)| {
                let named = partitions.iter().find(|(n, _)| n == name);
                (user(name), named.map_or(0, |(_, p)| *p))
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

        assert_eq!(cache.remembered(&user("plain")), Some(account(10, 0)));
        assert_eq!(cache.remembered(&user("holding")), None);
        assert_eq!(cache.remembered(&user("with_lot")), None);
    }

    #[test]
    fn a_user_who_stops_being_simple_is_forgotten_by_the_next_full_batch() {
        let mut cache = committed(&[("ann", account(10, 0))], &[], &[]);
        let mut state = State::default();
        state.accounts.insert(user("ann"), account(10, 3));

        cache.full_batch_committed(&state, &HashMap::from([(user("ann"), 0)]));

        assert_eq!(cache.remembered(&user("ann")), None);
    }

    #[test]
    fn a_fast_batch_updates_remembered_users_and_adds_none() {
        let mut cache = committed(&[("ann", account(10, 0))], &[], &[]);

        cache.fast_batch_committed(&HashMap::from([
            (user("ann"), account(7, 0)),
            (user("bob"), account(3, 0)),
        ]));

        assert_eq!(cache.remembered(&user("ann")), Some(account(7, 0)));
        assert_eq!(cache.remembered(&user("bob")), None);
    }

    #[test]
    fn a_failed_fast_batch_forgets_its_users_only() {
        let mut cache = committed(&[("ann", account(1, 0)), ("bob", account(2, 0))], &[], &[]);

        cache.fast_batch_failed([&user("ann")]);

        assert_eq!(cache.remembered(&user("ann")), None);
        assert_eq!(cache.remembered(&user("bob")), Some(account(2, 0)));
    }

    #[test]
    fn a_partition_changing_hands_forgets_its_users_only() {
        let mut cache = committed(
            &[("ann", account(1, 0)), ("bob", account(2, 0))],
            &[("ann", 3), ("bob", 4)],
            &[],
        );

        cache.partition_changed_hands(3);

        assert_eq!(cache.remembered(&user("ann")), None);
        assert_eq!(cache.remembered(&user("bob")), Some(account(2, 0)));
    }
}
