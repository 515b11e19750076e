//! Apps and their credentials and settings (API keys, payment-webhook secrets, rate-limit
//! overrides): the one place that writes them. The `tally` CLI, `/admin/*` and the dashboard
//! all call these functions; none of them writes those tables itself.

use sqlx::PgPool;
use uuid::Uuid;

use crate::apikey;
use crate::limits::STRIPE_KEY_CHARS_MAX;
use crate::plans::{SecretKey, StoredKey};
use crate::webhook::Provider;

/// Longest app name (the `apps` table's check).
pub const APP_NAME_CHARS_MAX: usize = 200;
/// Longest webhook secret accepted.
pub const WEBHOOK_SECRET_CHARS_MAX: usize = 1_000;
/// Largest rate or burst of a rate-limit override (the columns are Postgres integers).
pub const RATE_LIMIT_MAX: u32 = i32::MAX as u32;

/// A value refused before anything is written: which field, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} {message}")]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl Invalid {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// An app name as stored: trimmed, 1 to [`APP_NAME_CHARS_MAX`] characters, without the NUL
/// character (which Postgres text cannot hold).
pub fn check_name(name: &str) -> Result<String, Invalid> {
    if name.contains('\0') {
        return Err(Invalid::new("name", "must not contain the NUL character"));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > APP_NAME_CHARS_MAX {
        return Err(Invalid::new(
            "name",
            format!("must be 1 to {APP_NAME_CHARS_MAX} characters"),
        ));
    }
    Ok(name.to_string())
}

/// A webhook secret as stored: a known provider, and the secret trimmed, 1 to
/// [`WEBHOOK_SECRET_CHARS_MAX`] characters, without the NUL character.
pub fn check_secret(provider: &str, secret: &str) -> Result<(Provider, String), Invalid> {
    let provider = Provider::parse(provider)
        .ok_or_else(|| Invalid::new("provider", "must be stripe or polar"))?;
    if secret.contains('\0') {
        return Err(Invalid::new("secret", "must not contain the NUL character"));
    }
    let secret = secret.trim();
    if secret.is_empty() || secret.chars().count() > WEBHOOK_SECRET_CHARS_MAX {
        return Err(Invalid::new(
            "secret",
            format!("must be 1 to {WEBHOOK_SECRET_CHARS_MAX} characters"),
        ));
    }
    Ok((provider, secret.to_string()))
}

/// Creates an app (its name already checked by [`check_name`]) and its first API key, in one
/// transaction. The key is returned once; only its hash is stored.
pub async fn create(pool: &PgPool, name: &str) -> sqlx::Result<(Uuid, String)> {
    let app_id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO apps (id, name) VALUES ($1, $2)")
        .bind(app_id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let key = insert_key(&mut *tx, app_id).await?;
    tx.commit().await?;
    Ok((app_id, key))
}

/// Whether the app exists.
pub async fn exists(pool: &PgPool, app_id: Uuid) -> sqlx::Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar("SELECT id FROM apps WHERE id = $1")
        .bind(app_id)
        .fetch_optional(pool)
        .await?;
    Ok(found.is_some())
}

/// Creates an API key for `app_id` and stores its hash; the key itself is returned, once.
pub async fn insert_key<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    app_id: Uuid,
) -> sqlx::Result<String> {
    let key = apikey::generate();
    sqlx::query("INSERT INTO api_keys (id, app_id, key_hash, key_prefix) VALUES ($1, $2, $3, $4)")
        .bind(Uuid::now_v7())
        .bind(app_id)
        .bind(&apikey::hash(&key)[..])
        .bind(apikey::display_prefix(&key))
        .execute(executor)
        .await?;
    Ok(key)
}

/// Which key to revoke: by its id, or by the key itself.
#[derive(Debug)]
pub enum KeyRef<'a> {
    Id(Uuid),
    Key(&'a str),
}

impl<'a> KeyRef<'a> {
    /// An id when the text is a UUID, else the key itself.
    pub fn parse(text: &'a str) -> Self {
        match Uuid::parse_str(text) {
            Ok(id) => Self::Id(id),
            Err(_) => Self::Key(text),
        }
    }
}

/// Revokes an active key (of `app_id` only, when given); ingresses stop accepting it within
/// their key cache's lifetime. Returns whether an active key matched.
pub async fn revoke_key(
    pool: &PgPool,
    app_id: Option<Uuid>,
    key: KeyRef<'_>,
) -> sqlx::Result<bool> {
    let query = match key {
        KeyRef::Id(id) => sqlx::query(
            "UPDATE api_keys SET revoked_at = now()
             WHERE id = $1 AND ($2::uuid IS NULL OR app_id = $2) AND revoked_at IS NULL",
        )
        .bind(id),
        KeyRef::Key(key) => sqlx::query(
            "UPDATE api_keys SET revoked_at = now()
             WHERE key_hash = $1 AND ($2::uuid IS NULL OR app_id = $2) AND revoked_at IS NULL",
        )
        .bind(apikey::hash(key).to_vec()),
    };
    let revoked = query.bind(app_id).execute(pool).await?;
    Ok(revoked.rows_affected() > 0)
}

/// Adds a payment-webhook secret (checked by [`check_secret`]); the two newest per app and
/// provider are accepted, so adding one is how a secret is rotated.
pub async fn add_webhook_secret(
    pool: &PgPool,
    app_id: Uuid,
    provider: Provider,
    secret: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_secrets (id, app_id, provider, secret) VALUES ($1, $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(app_id)
    .bind(provider.as_str())
    .bind(secret)
    .execute(pool)
    .await?;
    Ok(())
}

/// A Stripe secret key as stored: `sk_` or `rk_` (a restricted key) and then `A-Z a-z 0-9 _`,
/// at most [`STRIPE_KEY_CHARS_MAX`] characters. The message never repeats the key.
pub fn check_stripe_key(key: &str) -> Result<String, Invalid> {
    let valid = (key.starts_with("sk_") || key.starts_with("rk_"))
        && (4..=STRIPE_KEY_CHARS_MAX).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(key.to_string())
    } else {
        Err(Invalid::new(
            "secret_key",
            format!(
                "must be a Stripe secret key: sk_ or rk_ and then up to {STRIPE_KEY_CHARS_MAX} \
                 characters of A-Z, a-z, 0-9 and _"
            ),
        ))
    }
}

/// Sets the app's Stripe secret key (checked by [`check_stripe_key`]), sealed under `sealing`
/// when the deployment has a `TALLY_SECRET_KEY`. It is never read back but to charge.
pub async fn set_stripe_key(
    pool: &PgPool,
    app_id: Uuid,
    stripe_key: &str,
    sealing: Option<&SecretKey>,
) -> sqlx::Result<()> {
    let stored = StoredKey::seal(app_id, stripe_key, sealing);
    sqlx::query(
        "INSERT INTO app_stripe_keys (app_id, secret, nonce) VALUES ($1, $2, $3)
         ON CONFLICT (app_id) DO UPDATE
         SET secret = EXCLUDED.secret, nonce = EXCLUDED.nonce, updated_at = now()",
    )
    .bind(app_id)
    .bind(&stored.secret)
    .bind(&stored.nonce)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the app has a Stripe secret key.
pub async fn has_stripe_key(pool: &PgPool, app_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM app_stripe_keys WHERE app_id = $1)")
        .bind(app_id)
        .fetch_one(pool)
        .await
}

/// One app's API rate limit, overriding the ingresses' default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitOverride {
    /// The ingresses' default applies (no override).
    Default,
    /// No limit, whatever the default.
    Unlimited,
    /// Requests per second, and how many at once above that rate.
    Limited { rps: u32, burst: u32 },
}

/// Sets or drops an app's rate-limit override; every ingress reloads them within 2 s.
pub async fn set_rate_limit(
    pool: &PgPool,
    app_id: Uuid,
    limit: RateLimitOverride,
) -> Result<(), SetRateLimitError> {
    let (rps, burst) = match limit {
        RateLimitOverride::Default => {
            sqlx::query("DELETE FROM app_rate_limits WHERE app_id = $1")
                .bind(app_id)
                .execute(pool)
                .await?;
            return Ok(());
        }
        RateLimitOverride::Unlimited => (None, None),
        RateLimitOverride::Limited { rps, burst } => {
            if rps == 0 || rps > RATE_LIMIT_MAX || burst == 0 || burst > RATE_LIMIT_MAX {
                return Err(SetRateLimitError::Invalid(Invalid::new(
                    "rps",
                    format!("and burst must be from 1 to {RATE_LIMIT_MAX}"),
                )));
            }
            (Some(rps as i32), Some(burst as i32))
        }
    };
    sqlx::query(
        "INSERT INTO app_rate_limits (app_id, requests_per_second, burst) VALUES ($1, $2, $3)
         ON CONFLICT (app_id) DO UPDATE
           SET requests_per_second = EXCLUDED.requests_per_second, burst = EXCLUDED.burst,
               updated_at = now()",
    )
    .bind(app_id)
    .bind(rps)
    .bind(burst)
    .execute(pool)
    .await?;
    Ok(())
}

/// Why a rate-limit override was not set.
#[derive(Debug, thiserror::Error)]
pub enum SetRateLimitError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(check_name("  demo ").unwrap(), "demo");
        assert_eq!(check_name("   ").unwrap_err().field, "name");
        assert!(check_name(&"x".repeat(APP_NAME_CHARS_MAX)).is_ok());
        assert!(check_name(&"x".repeat(APP_NAME_CHARS_MAX + 1)).is_err());
        assert_eq!(check_name("a\0b").unwrap_err().field, "name");
    }

    #[test]
    fn secrets_need_a_known_provider_and_some_text() {
        assert_eq!(
            check_secret("stripe", " whsec_x ").unwrap(),
            (Provider::Stripe, "whsec_x".to_string())
        );
        assert_eq!(check_secret("paypal", "x").unwrap_err().field, "provider");
        assert_eq!(check_secret("polar", "  ").unwrap_err().field, "secret");
        assert!(check_secret("polar", &"x".repeat(WEBHOOK_SECRET_CHARS_MAX + 1)).is_err());
        assert_eq!(
            check_secret("stripe", "whsec_\0").unwrap_err().field,
            "secret"
        );
    }

    #[test]
    fn a_key_ref_is_an_id_when_it_parses_as_one() {
        let id = Uuid::now_v7();
        assert!(matches!(KeyRef::parse(&id.to_string()), KeyRef::Id(parsed) if parsed == id));
        assert!(matches!(KeyRef::parse("tk_abc"), KeyRef::Key("tk_abc")));
    }
}
