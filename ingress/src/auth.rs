//! API key authentication: `Authorization: Bearer tk_…`, looked up by SHA-256 and cached for a
//! few seconds so that a hot key costs no query, while a revocation still takes effect within
//! [`KEY_CACHE_TTL`].
//!
//! Only a well-formed key ([`tally_common::apikey::is_well_formed`]) is looked up. Every
//! failure is charged to the client address's budget ([`crate::throttle`]); an address that
//! has spent it gets `429` without a lookup, unless its key is one this ingress has seen to be
//! valid (in the cache, even past its freshness), so a client that shares its address with an
//! attacker keeps working.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::throttle::Failure;
use crate::AppState;

/// How long a verified key is trusted without asking the database again. Revocation is
/// effective within this time (the contract promises 5 s).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(4);
/// Most keys kept in the cache; past it the cache is emptied (keys are re-verified).
const KEY_CACHE_ENTRIES_MAX: usize = 100_000;

/// The app a request acts for.
#[derive(Clone, Copy, Debug)]
pub struct Auth {
    pub app_id: Uuid,
}

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], (Uuid, Instant)>>,
}

impl KeyCache {
    fn get(&self, hash: &[u8; 32]) -> Option<Uuid> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .get(hash)
            .filter(|(_, fetched)| fetched.elapsed() < KEY_CACHE_TTL)
            .map(|(app, _)| *app)
    }

    /// Whether the key was valid when last looked up (fresh or not).
    fn known(&self, hash: &[u8; 32]) -> bool {
        let entries = self.entries.lock().expect("key cache lock");
        entries.contains_key(hash)
    }

    /// Forgets a key that no longer resolves (revoked).
    fn forget(&self, hash: &[u8; 32]) {
        let mut entries = self.entries.lock().expect("key cache lock");
        entries.remove(hash);
    }

    fn put(&self, hash: [u8; 32], app_id: Uuid) {
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= KEY_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(hash, (app_id, Instant::now()));
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client = state.throttle.client(&parts.extensions, &parts.headers);
        let key = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|header| {
                header
                    .strip_prefix("Bearer ")
                    .or_else(|| header.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|key| tally_common::apikey::is_well_formed(key));
        let Some(key) = key else {
            state.throttle.check(client)?;
            state.throttle.failed(client, Failure::ApiKey);
            return Err(ApiError::Unauthorized);
        };
        let hash = tally_common::apikey::hash(key);
        if let Some(app_id) = state.keys.get(&hash) {
            return admit(state, app_id);
        }
        if !state.keys.known(&hash) {
            state.throttle.check(client)?;
        }
        let row: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT app_id, key_hash FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .fetch_optional(&state.pool)
        .await?;
        match row {
            Some((app_id, stored)) if bool::from(stored.as_slice().ct_eq(&hash[..])) => {
                state.keys.put(hash, app_id);
                admit(state, app_id)
            }
            _ => {
                state.keys.forget(&hash);
                state.throttle.failed(client, Failure::ApiKey);
                Err(ApiError::Unauthorized)
            }
        }
    }
}

/// An authenticated request still has to fit in its app's API budget.
fn admit(state: &AppState, app_id: Uuid) -> Result<Auth, ApiError> {
    state
        .limits
        .check(app_id, crate::ratelimit::Budget::Api)
        .map_err(ApiError::RateLimited)?;
    Ok(Auth { app_id })
}
