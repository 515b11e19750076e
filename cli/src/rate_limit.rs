//! `tally app set-rate-limit`: one app's API rate limit, overriding the ingresses' default
//! (`TALLY_RATE_LIMIT_RPS`). Every ingress reloads the overrides within 2 s.

use anyhow::bail;
use serde_json::{json, Value};
use sqlx::PgPool;
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

/// Largest rate or burst accepted (the column is a Postgres integer).
const LIMIT_MAX: u32 = i32::MAX as u32;

pub async fn set(pool: &PgPool, args: SetRateLimit) -> anyhow::Result<Value> {
    super::ensure_app(pool, args.app).await?;
    if args.default {
        sqlx::query("DELETE FROM app_rate_limits WHERE app_id = $1")
            .bind(args.app)
            .execute(pool)
            .await?;
        return Ok(json!({ "ok": true, "app_id": args.app, "rate_limit": "default" }));
    }
    let limit = match (args.unlimited, args.rps) {
        (true, _) => None,
        (false, Some(rps)) => {
            let burst = args.burst.unwrap_or(rps);
            if rps == 0 || rps > LIMIT_MAX || burst == 0 || burst > LIMIT_MAX {
                bail!("--rps and --burst must be from 1 to {LIMIT_MAX}");
            }
            Some((rps as i32, burst as i32))
        }
        (false, None) => bail!("give --rps, --unlimited or --default"),
    };
    sqlx::query(
        "INSERT INTO app_rate_limits (app_id, requests_per_second, burst) VALUES ($1, $2, $3)
         ON CONFLICT (app_id) DO UPDATE
           SET requests_per_second = EXCLUDED.requests_per_second, burst = EXCLUDED.burst,
               updated_at = now()",
    )
    .bind(args.app)
    .bind(limit.map(|(rps, _)| rps))
    .bind(limit.map(|(_, burst)| burst))
    .execute(pool)
    .await?;
    let rate_limit = match limit {
        None => json!("unlimited"),
        Some((rps, burst)) => json!({ "rps": rps, "burst": burst }),
    };
    Ok(json!({ "ok": true, "app_id": args.app, "rate_limit": rate_limit }))
}
