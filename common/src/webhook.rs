//! Verified payment-provider events, reduced by the ingress to what the worker acts on.

use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use crate::credit_type::CreditType;
use crate::plans::{AutoTopupPayment, ChargeError};

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
            WebhookAction::Credit { user_id, .. }
            | WebhookAction::CreditLines { user_id, .. }
            | WebhookAction::Clawback { user_id, .. }
            | WebhookAction::AutoTopupFailed { user_id, .. } => user_id,
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
        /// When the credits expire, when the event says (a subscription order's period end);
        /// takes the place of `expires_in_days`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<DateTime<Utc>>,
        /// The auto top-up attempt that made this payment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        auto_topup: Option<AutoTopupPayment>,
    },
    /// Credit each line of a paid invoice once (a subscription's allowance per line).
    CreditLines {
        user_id: String,
        lines: Vec<CreditLine>,
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
        /// Further payments the same refund or dispute reverses (the other lines of an
        /// invoice), clawed back in the same proportion.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<String>,
    },
    /// A payment of an auto top-up attempt failed (`payment_intent.payment_failed`).
    AutoTopupFailed {
        user_id: String,
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
        attempt_id: uuid::Uuid,
        payment_intent_id: String,
        error: ChargeError,
    },
    /// A verified event Tally does not act on.
    Ignore { reason: String },
    /// A verified event Tally would act on, whose data is unusable (bad metadata).
    Reject {
        reason: String,
        user_id: Option<String>,
    },
}

/// One line of a paid invoice: credited once per `payment_ref` (invoice and line).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CreditLine {
    pub payment_ref: String,
    pub credits: i64,
    /// The invoice's amount paid (minor units): a refund of the invoice's payment reverses
    /// every line in the same proportion.
    pub amount_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "CreditType::is_default")]
    pub credit_type: CreditType,
    /// The end of the line's period: the allowance does not roll over.
    pub expires_at: Option<DateTime<Utc>>,
    /// What a refund of this line names (the invoice's payment intent).
    pub refund_ref: Option<String>,
}
