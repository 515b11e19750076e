//! Outbound events: their types, the envelope an endpoint receives (read back from the outbox
//! the same way by the events API and by the deliverer), and the broker message that asks a
//! worker to deliver one event to one endpoint.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Every event type an endpoint may subscribe to, and `ping` (sent only on request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    CreditsAdded,
    CreditsDeducted,
    CreditsRefunded,
    CreditsExpired,
    PaymentCredited,
    PaymentClawedBack,
    BalanceLow,
    BalanceDepleted,
    BalanceRecovered,
    HoldExpired,
    CommandDeadLettered,
    AutoTopupSucceeded,
    AutoTopupFailed,
    AutoTopupActionRequired,
    AutoTopupDisabled,
    Ping,
}

/// What an endpoint lists to receive every type.
pub const SUBSCRIBE_ALL: &str = "*";

impl EventType {
    pub const ALL: [Self; 16] = [
        Self::CreditsAdded,
        Self::CreditsDeducted,
        Self::CreditsRefunded,
        Self::CreditsExpired,
        Self::PaymentCredited,
        Self::PaymentClawedBack,
        Self::BalanceLow,
        Self::BalanceDepleted,
        Self::BalanceRecovered,
        Self::HoldExpired,
        Self::CommandDeadLettered,
        Self::AutoTopupSucceeded,
        Self::AutoTopupFailed,
        Self::AutoTopupActionRequired,
        Self::AutoTopupDisabled,
        Self::Ping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreditsAdded => "credits.added",
            Self::CreditsDeducted => "credits.deducted",
            Self::CreditsRefunded => "credits.refunded",
            Self::CreditsExpired => "credits.expired",
            Self::PaymentCredited => "payment.credited",
            Self::PaymentClawedBack => "payment.clawed_back",
            Self::BalanceLow => "balance.low",
            Self::BalanceDepleted => "balance.depleted",
            Self::BalanceRecovered => "balance.recovered",
            Self::HoldExpired => "hold.expired",
            Self::CommandDeadLettered => "command.dead_lettered",
            Self::AutoTopupSucceeded => "auto_topup.succeeded",
            Self::AutoTopupFailed => "auto_topup.failed",
            Self::AutoTopupActionRequired => "auto_topup.action_required",
            Self::AutoTopupDisabled => "auto_topup.disabled",
            Self::Ping => "ping",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether an endpoint subscribed to `events` (type names, or [`SUBSCRIBE_ALL`]) receives
    /// this type. A `ping` goes only to the endpoint it was sent to, never by subscription.
    pub fn subscribed_by(self, events: &[String]) -> bool {
        self != Self::Ping
            && events
                .iter()
                .any(|event| event == SUBSCRIBE_ALL || event == self.as_str())
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The payload of a message on the delivery subject: deliver this delivery's event to its
/// endpoint (again, for a redelivery).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryMessage {
    pub delivery_id: Uuid,
    /// Asked for by `POST /webhook_deliveries/{id}/redeliver`: attempt it whatever its status.
    /// Otherwise a delivery that is no longer pending (a repeated message) is left alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redeliver: bool,
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One event as stored, with its ledger entry's history form for an entry event.
#[derive(Clone, Debug, sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    app_id: Uuid,
    user_id: Option<String>,
    #[sqlx(rename = "type")]
    event_type: String,
    sequence: i64,
    data: Option<Value>,
    created_at: DateTime<Utc>,
    entry_id: Option<Uuid>,
    entry_type: Option<String>,
    credit_type: Option<String>,
    amount: Option<i64>,
    balance_after: Option<i64>,
    description: Option<String>,
    metadata: Option<Value>,
    source: Option<String>,
    refunded_ledger_id: Option<Uuid>,
    hold_id: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    lot_id: Option<Uuid>,
    entry_created_at: Option<DateTime<Utc>>,
}

impl EventRow {
    fn envelope(self) -> Value {
        let data = match self.data {
            Some(data) => data,
            // The entry exactly as `GET /credits/history` shows it.
            None => json!({
                "ledger_id": self.entry_id, "type": self.entry_type,
                "credit_type": self.credit_type, "amount": self.amount,
                "balance_after": self.balance_after, "description": self.description,
                "metadata": self.metadata, "source": self.source,
                "refunded_ledger_id": self.refunded_ledger_id, "hold_id": self.hold_id,
                "expires_at": self.expires_at.map(rfc3339), "lot_id": self.lot_id,
                "created_at": self.entry_created_at.map(rfc3339),
            }),
        };
        json!({
            "id": self.id, "type": self.event_type, "created_at": rfc3339(self.created_at),
            "app_id": self.app_id, "user_id": self.user_id, "sequence": self.sequence,
            "data": data,
        })
    }
}

/// The envelopes of the app's events `ids` (the missing ones are absent): what an endpoint
/// receives, and what `GET /events` lists.
pub async fn envelopes<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    app_id: Uuid,
    ids: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, Value>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT v.id, v.app_id, v.user_id, v.type, v.sequence, v.data, v.created_at,
                e.id AS entry_id, e.type AS entry_type, e.credit_type, e.amount, e.balance_after,
                e.description, e.metadata, e.source, e.refunded_ledger_id, e.hold_id,
                e.expires_at, e.lot_id, e.created_at AS entry_created_at
         FROM events v LEFT JOIN ledger_entries e ON e.id = v.ledger_id
         WHERE v.app_id = $1 AND v.id = ANY($2)",
    )
    .bind(app_id)
    .bind(ids)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, row.envelope()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_reads_back_from_its_name() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
        }
        assert_eq!(EventType::parse("balance.high"), None);
    }

    #[test]
    fn subscriptions_name_types_or_everything_but_never_ping() {
        let all = vec![SUBSCRIBE_ALL.to_string()];
        let low = vec!["balance.low".to_string()];
        assert!(EventType::CreditsDeducted.subscribed_by(&all));
        assert!(EventType::BalanceLow.subscribed_by(&low));
        assert!(!EventType::CreditsDeducted.subscribed_by(&low));
        assert!(!EventType::Ping.subscribed_by(&all));
    }
}
