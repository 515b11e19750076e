//! Verified payment-provider events, reduced by the ingress to what the worker acts on.

use serde::{Deserialize, Serialize};

use crate::credit_type::CreditType;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Stripe,
    Polar,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stripe => "stripe",
            Self::Polar => "polar",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "stripe" => Some(Self::Stripe),
            "polar" => Some(Self::Polar),
            _ => None,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One received event: who sent it, its id and type, and what it asks of the ledger.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WebhookEvent {
    pub provider: Provider,
    /// The provider's event id (Stripe `evt_…`, Polar's `webhook-id`).
    pub event_id: String,
    pub event_type: String,
    pub action: WebhookAction,
}

impl WebhookEvent {
    /// The key that picks the partition: the user when known, else the event id (an audit-only
    /// event still travels the queue so that every event is recorded the same way).
    pub fn partition_key(&self) -> &str {
        match &self.action {
            WebhookAction::Credit { user_id, .. } | WebhookAction::Clawback { user_id, .. } => {
                user_id
            }
            WebhookAction::Ignore { .. } | WebhookAction::Reject { user_id: None, .. } => {
                &self.event_id
            }
            WebhookAction::Reject {
                user_id: Some(user_id),
                ..
            } => user_id,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum WebhookAction {
    /// Credit `credits` to `user_id` once per `payment_ref`.
    Credit {
        payment_ref: String,
        user_id: String,
        credits: i64,
        /// What the customer paid, in the currency's minor unit (for proportional clawbacks).
        amount_minor: Option<i64>,
        expires_in_days: Option<i64>,
        /// The balance credited (metadata `tally_credit_type`; absent: the default type).
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
    },
    /// Take back credits of an earlier payment in proportion to the refunded or disputed part.
    Clawback {
        payment_ref: String,
        user_id: String,
        /// Cumulative refunded amount (minor units) as the provider reports it, if a refund.
        refunded_minor_total: Option<i64>,
        /// Disputed amount (minor units), if a dispute.
        disputed_minor: Option<i64>,
        /// The payment's amount (minor units) as the event reports it.
        amount_minor: Option<i64>,
    },
    /// A verified event Tally does not act on.
    Ignore { reason: String },
    /// A verified event Tally would act on, whose data is unusable (bad metadata).
    Reject {
        reason: String,
        user_id: Option<String>,
    },
}
