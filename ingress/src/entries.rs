//! One row of `ledger_entries` as the reads see it: the columns they select ([`COLUMNS`]), the
//! row ([`Entry`]) and its JSON form (the `/admin/*` shape; `GET /credits/history` maps it to
//! its own, narrower schema).

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

use crate::responses::rfc3339;

/// The select list that reads an [`Entry`]: `SELECT {COLUMNS} FROM ledger_entries …`.
pub const COLUMNS: &str =
    "id AS ledger_id, app_id, user_id, credit_type, seq, type AS entry_type, amount,
    balance_after, description, metadata, source, refunded_ledger_id, hold_id, lot_id,
    expires_at, created_at";

/// A ledger entry with every field a read shows.
#[derive(Clone, Debug, sqlx::FromRow, Serialize)]
pub struct Entry {
    pub ledger_id: Uuid,
    pub app_id: Uuid,
    pub user_id: String,
    /// The balance the entry changed.
    pub credit_type: String,
    /// The entry's place in its user's history (1, 2, 3 … in the order applied); history
    /// pages by it, so it is not part of the JSON.
    #[serde(skip)]
    pub seq: i64,
    /// add, deduct, refund, payment, expire or clawback.
    #[serde(rename = "type")]
    pub entry_type: String,
    /// Signed: negative for what left the balance.
    pub amount: i64,
    pub balance_after: i64,
    pub description: Option<String>,
    pub metadata: Value,
    /// api, stripe, polar, system or dashboard.
    pub source: String,
    /// The entry a refund refunds.
    pub refunded_ledger_id: Option<Uuid>,
    /// The hold a capture's deduct came from.
    pub hold_id: Option<Uuid>,
    /// The lot an add or payment granted, or an expire entry emptied.
    pub lot_id: Option<Uuid>,
    /// When an add's credits expire (null: never).
    #[serde(serialize_with = "optional_time_json")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "time_json")]
    pub created_at: DateTime<Utc>,
}

/// A time as every JSON body writes it ([`rfc3339`]: microseconds, `Z`).
pub fn time_json<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

/// [`time_json`], or null.
pub fn optional_time_json<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => time_json(time, serializer),
        None => serializer.serialize_none(),
    }
}
