//! `tally app set-rate-limit`: one app's API rate limit, overriding the ingresses' default
//! (`TALLY_RATE_LIMIT_RPS`). Every ingress reloads the overrides within 2 s.

use anyhow::bail;
use serde_json::{json, Value};
use sqlx::PgPool;
use tally_common::apps::{self, RateLimitOverride, SetRateLimitError};
use uuid::Uuid;

/// What to set: exactly one of a rate, `--unlimited` or `--default`.
#[derive(clap::Args, Debug)]
pub struct SetRateLimit {
    #[arg(long)]
    pub app: Uuid,
    /// Sustained requests per second.
    #[arg(long, conflicts_with_all = ["unlimited", "default"], required_unless_present_any = ["unlimited", "default"])]
    pub rps: Option<u32>,
    /// Requests at once above the rate (default: one second's worth).
    #[arg(long, requires = "rps")]
    pub burst: Option<u32>,
    /// No limit for this app, whatever the default.
    #[arg(long, conflicts_with = "default")]
    pub unlimited: bool,
    /// Drop this app's override: the ingresses' default applies again.
    #[arg(long)]
    pub default: bool,
}

pub async fn set(pool: &PgPool, args: SetRateLimit) -> anyhow::Result<Value> {
    super::ensure_app(pool, args.app).await?;
    let limit = match (args.default, args.unlimited, args.rps) {
        (true, _, _) => RateLimitOverride::Default,
        (false, true, _) => RateLimitOverride::Unlimited,
        (false, false, Some(rps)) => RateLimitOverride::Limited {
            rps,
            burst: args.burst.unwrap_or(rps),
        },
        (false, false, None) => bail!("give --rps, --unlimited or --default"),
    };
    match apps::set_rate_limit(pool, args.app, limit).await {
        Ok(()) => {}
        Err(SetRateLimitError::Invalid(_)) => {
            bail!(
                "--rps and --burst must be from 1 to {}",
                apps::RATE_LIMIT_MAX
            )
        }
        Err(SetRateLimitError::Database(error)) => return Err(error.into()),
    }
    let rate_limit = match limit {
        RateLimitOverride::Default => json!("default"),
        RateLimitOverride::Unlimited => json!("unlimited"),
        RateLimitOverride::Limited { rps, burst } => json!({ "rps": rps, "burst": burst }),
    };
    Ok(json!({ "ok": true, "app_id": args.app, "rate_limit": rate_limit }))
}
