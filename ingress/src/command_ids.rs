//! Command ids the ingress can vouch for.
//!
//! `GET /commands/{id}` must say `pending` from the moment a `202` is sent. Instead of a receipt
//! row per accepted command, the id itself carries the proof that this deployment minted it for
//! this app: it is a UUIDv7 whose 74 free bits hold
//!
//! | bits | what |
//! | --- | --- |
//! | 16 | the minting process's instance number (a Postgres sequence, taken at start) |
//! | 26 | a counter that continues the millisecond timestamp, so one process never repeats an id |
//! | 32 | a MAC: HMAC-SHA256 under the deployment's key of the app id and the rest of the id |
//!
//! Ids are unique by construction (a process's own ids by the monotonic counter, two processes'
//! by their instance numbers), not by chance, so no two commands ever share an id. A guessed or
//! mistyped id passes the MAC once in 2³² tries, and then only reads `pending`; an id of one app
//! never verifies for another. Ids from before signed ids, webhook commands (UUIDv5) and dead
//! letters replayed by the CLI keep their receipt rows in `command_receipts`.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

const COUNTER_BITS: u32 = 26;
const MAC_BITS: u32 = 32;
const INSTANCE_BITS: u32 = 16;
/// Where the 74 free bits start: bits 76..80 hold the version, 62..64 the variant.
const RAND_B_BITS: u32 = 62;
const VERSION: u128 = 0x7 << 76;
const VARIANT: u128 = 0b10 << 62;

pub struct CommandIds {
    /// HMAC-SHA256 keyed once with the deployment's key; each MAC starts from a clone.
    keyed: HmacSha256,
    instance: u16,
    /// The last id's milliseconds and counter.
    last: Mutex<(u64, u32)>,
}

impl CommandIds {
    /// The deployment's key and a fresh instance number.
    pub async fn load(pool: &PgPool) -> anyhow::Result<Self> {
        let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM command_id_keys WHERE id = 1")
            .fetch_one(pool)
            .await?;
        let instance: i64 = sqlx::query_scalar("SELECT nextval('command_id_instances')")
            .fetch_one(pool)
            .await?;
        let key = key
            .try_into()
            .map_err(|_| anyhow::anyhow!("command_id_keys holds a key that is not 32 bytes"))?;
        Ok(Self::new(key, instance as u16))
    }

    pub fn new(key: [u8; 32], instance: u16) -> Self {
        Self {
            keyed: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
            instance,
            last: Mutex::new((0, 0)),
        }
    }

    /// A new command id of `app_id`, later than every id this process minted before.
    pub fn mint(&self, app_id: Uuid) -> Uuid {
        self.mint_at(app_id, unix_millis())
    }

    fn mint_at(&self, app_id: Uuid, now_ms: u64) -> Uuid {
        let (ms, counter) = {
            let mut last = self.last.lock().expect("the id clock is never poisoned");
            *last = if last.0 >= now_ms {
                // Within one millisecond (or with the clock set back), count on; a full counter
                // carries into the milliseconds.
                if last.1 + 1 < 1 << COUNTER_BITS {
                    (last.0, last.1 + 1)
                } else {
                    (last.0 + 1, 0)
                }
            } else {
                // A new millisecond starts its counter at a random point in the lower half, so
                // the ids do not tell how many commands came before within it.
                (
                    now_ms,
                    rand::random::<u32>() & ((1 << (COUNTER_BITS - 1)) - 1),
                )
            };
            *last
        };
        let ms = u128::from(ms) & ((1 << 48) - 1);
        let counter = u128::from(counter);
        let payload =
            (u128::from(self.instance) << (COUNTER_BITS + MAC_BITS)) | (counter << MAC_BITS);
        // The MAC fills the id's last 32 bits, left zero in `unsigned`.
        let unsigned = layout(ms, payload);
        Uuid::from_u128(unsigned | u128::from(self.mac(app_id, unsigned)))
    }

    /// Whether this deployment minted `id` for `app_id`.
    pub fn vouches(&self, app_id: Uuid, id: Uuid) -> bool {
        let value = id.as_u128();
        if value & (0xf << 76) != VERSION || value & (0b11 << 62) != VARIANT {
            return false;
        }
        let claimed = (value & ((1 << MAC_BITS) - 1)) as u32;
        let expected = self.mac(app_id, value & !((1 << MAC_BITS) - 1));
        subtle::ConstantTimeEq::ct_eq(&claimed, &expected).into()
    }

    /// The first 32 bits of HMAC-SHA256(key, app id ‖ the id with its MAC bits zero).
    fn mac(&self, app_id: Uuid, unsigned: u128) -> u32 {
        let mut mac = self.keyed.clone();
        mac.update(app_id.as_bytes());
        mac.update(&unsigned.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]])
    }
}

/// The UUIDv7 of `ms` and the 74-bit `payload`: version, then the payload's top 12 bits
/// (`rand_a`), the variant, its low 62 bits (`rand_b`).
fn layout(ms: u128, payload: u128) -> u128 {
    let rand_a = payload >> RAND_B_BITS;
    let rand_b = payload & ((1 << RAND_B_BITS) - 1);
    (ms << 80) | VERSION | (rand_a << 64) | VARIANT | rand_b
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

const _: () = assert!(INSTANCE_BITS + COUNTER_BITS + MAC_BITS == 74);

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ids(instance: u16) -> CommandIds {
        CommandIds::new([7; 32], instance)
    }

    #[test]
    fn an_id_is_a_uuid_v7_of_its_millisecond_that_verifies_for_its_app_only() {
        let minter = ids(3);
        let (app, other) = (Uuid::now_v7(), Uuid::now_v7());
        let id = minter.mint_at(app, 1_764_800_000_123);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (1_764_800_000, 123));
        assert!(minter.vouches(app, id));
        assert!(!minter.vouches(other, id), "another app's id");
        assert!(!CommandIds::new([8; 32], 3).vouches(app, id), "another key");
        assert!(
            !minter.vouches(app, Uuid::now_v7()),
            "an id it did not mint"
        );
    }

    #[test]
    fn every_changed_bit_of_an_id_is_refused() {
        let minter = ids(9);
        let app = Uuid::now_v7();
        let id = minter.mint(app).as_u128();
        for bit in 0..128 {
            assert!(
                !minter.vouches(app, Uuid::from_u128(id ^ (1 << bit))),
                "bit {bit} flipped"
            );
        }
    }

    #[test]
    fn ids_of_one_process_are_unique_and_increase_even_when_the_clock_stands_or_goes_back() {
        let minter = ids(1);
        let app = Uuid::now_v7();
        let mut seen = Vec::new();
        for now in [5_000, 5_000, 5_000, 4_000, 5_001, 5_001, 3_000] {
            for _ in 0..1_000 {
                seen.push(minter.mint_at(app, now));
            }
        }
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(seen.iter().all(|id| minter.vouches(app, *id)));
    }

    #[test]
    fn two_processes_never_mint_the_same_id_in_the_same_millisecond() {
        let app = Uuid::now_v7();
        let mut seen = HashSet::new();
        for instance in [0, 1, u16::MAX] {
            let minter = ids(instance);
            // Force both to the same counter values: only the instance keeps them apart.
            *minter.last.lock().unwrap() = (5_000, 0);
            for _ in 0..1_000 {
                assert!(seen.insert(minter.mint_at(app, 5_000)));
            }
        }
    }

    #[test]
    fn a_full_counter_carries_into_the_next_millisecond() {
        let minter = ids(2);
        let app = Uuid::now_v7();
        *minter.last.lock().unwrap() = (5_000, (1 << COUNTER_BITS) - 1);
        let id = minter.mint_at(app, 5_000);
        assert_eq!(id.as_u128() >> 80, 5_001);
        assert!(minter.vouches(app, id));
    }
}
