//! What the owner of some partitions remembers of their users' account rows between batches,
//! so that a batch of plain adds and deducts needs no reads.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use crate::ledger::{Account, State};

/// What the owner of some partitions remembers of their users between batches: the account
/// rows it last committed for users with no unexpired lots and nothing held. A batch of plain
/// adds and deducts for such users needs nothing else from the database, so it skips every
/// load (see [`super::apply_batch`]). The copy is only a guess: the batch's write checks every row it
/// relied on, and a mismatch sends the batch down the full path, which reloads.
#[derive(Debug, Default)]
pub struct AccountCache {
    pub(super) accounts: HashMap<(Uuid, String), Cached>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Cached {
    partition: u32,
    pub(super) account: Account,
}

/// Most users remembered; past it the cache starts over (it refills as users come back).
pub const ACCOUNT_CACHE_USERS_MAX: usize = 1_000_000;

impl AccountCache {
    /// Forgets the users of `partition` (its ownership changed hands).
    pub fn forget_partition(&mut self, partition: u32) {
        self.accounts
            .retain(|_, cached| cached.partition != partition);
    }

    pub(super) fn forget_users<'a>(&mut self, users: impl IntoIterator<Item = &'a (Uuid, String)>) {
        for user in users {
            self.accounts.remove(user);
        }
    }

    /// Remembers the users of a committed full-path batch that are simple (no unexpired lot,
    /// nothing held) and forgets the others.
    pub(super) fn learn(&mut self, state: &State, partitions: &HashMap<(Uuid, String), u32>) {
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
}
