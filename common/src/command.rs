//! Commands as they travel from the ingress to a worker, and results as they travel back.
//!
//! Every field here has already been validated by the ingress; the worker trusts the shape and
//! decides only what needs the ledger's state (balances, refundable amounts, holds).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::credit_type::CreditType;
use crate::webhook::WebhookEvent;

/// Header carrying the subject where the worker publishes the result. A consumed JetStream
/// message's own `reply` is its ack subject, so the requester's inbox travels in a header.
pub const HEADER_REPLY_TO: &str = "Tally-Reply-To";

/// One command, addressed to one user's partition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Unique per accepted command; the broker message ID and the worker's dedupe key.
    pub command_id: Uuid,
    pub app_id: Uuid,
    /// SHA-256 (hex) of the method, path and canonical body when the request carried an
    /// `Idempotency-Key`: a duplicate with another hash is a conflict, not a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    pub accepted_at: DateTime<Utc>,
    pub command: Command,
    /// Who asked: the API (absent on the wire) or the dashboard; the `source` of its entries.
    #[serde(default, skip_serializing_if = "Origin::is_api")]
    pub origin: Origin,
}

/// Where a command came from, recorded as the `source` of the entries it writes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    #[default]
    Api,
    Dashboard,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Dashboard => "dashboard",
        }
    }

    pub fn is_api(&self) -> bool {
        *self == Self::Api
    }
}

/// What to do. Amounts are validated integers in `1..=10^12`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    Add {
        user_id: String,
        amount: i64,
        /// Which of the user's balances (absent on the wire: the default type).
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
        description: Option<String>,
        metadata: Map<String, Value>,
        /// When the credits of this add expire (`None`: never).
        #[serde(default)]
        expires_at: Option<DateTime<Utc>>,
    },
    Deduct {
        user_id: String,
        amount: i64,
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
        description: Option<String>,
        metadata: Map<String, Value>,
    },
    Refund {
        /// The user the refunded entry belongs to (looked up by the ingress for routing).
        user_id: String,
        ledger_id: Uuid,
        /// `None`: everything that is left.
        amount: Option<i64>,
        description: Option<String>,
        metadata: Map<String, Value>,
    },
    /// Reserve `amount` of the user's available credits until captured, released or expired.
    Hold {
        user_id: String,
        amount: i64,
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
        expires_in_seconds: i64,
        description: Option<String>,
        metadata: Map<String, Value>,
    },
    /// Charge `amount` (default: all) of a hold and release the rest.
    Capture {
        /// The hold's user (looked up by the ingress for routing).
        user_id: String,
        hold_id: Uuid,
        amount: Option<i64>,
    },
    /// Release all of a hold.
    Release { user_id: String, hold_id: Uuid },
    /// A verified payment-provider event.
    Webhook(WebhookEvent),
    /// Adds, deducts and holds of one user (any of their credit types), applied in order and
    /// all or none: one rejection rejects the batch, and nothing of it is written.
    AtomicBatch {
        user_id: String,
        /// Only `Add`, `Deduct` and `Hold` of `user_id`, checked by the ingress.
        operations: Vec<Command>,
    },
    /// What Stripe answered to an auto top-up attempt's charge (published by a worker's
    /// charger under an id derived from the attempt, so it applies once).
    AutoTopupCharge {
        user_id: String,
        #[serde(default, skip_serializing_if = "CreditType::is_default")]
        credit_type: CreditType,
        attempt_id: Uuid,
        result: crate::plans::ChargeResult,
    },
}

impl Command {
    /// The user whose partition orders this command.
    pub fn user_id(&self) -> &str {
        match self {
            Self::Add { user_id, .. }
            | Self::Deduct { user_id, .. }
            | Self::Refund { user_id, .. }
            | Self::Hold { user_id, .. }
            | Self::Capture { user_id, .. }
            | Self::Release { user_id, .. }
            | Self::AtomicBatch { user_id, .. }
            | Self::AutoTopupCharge { user_id, .. } => user_id,
            Self::Webhook(event) => event.partition_key(),
        }
    }

    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Add { .. } => "add",
            Self::Deduct { .. } => "deduct",
            Self::Refund { .. } => "refund",
            Self::Hold { .. } => "hold",
            Self::Capture { .. } => "capture",
            Self::Release { .. } => "release",
            Self::Webhook(_) => "webhook",
            Self::AtomicBatch { .. } => "atomic_batch",
            Self::AutoTopupCharge { .. } => "auto_topup_charge",
        }
    }
}

/// How a command ended. `Rejected` is a business answer (402, 409, 422 …), never a failure.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Rejected => "rejected",
        }
    }
}

/// The result of one command: the HTTP answer the synchronous call returns, stored durably by
/// the worker in the same transaction as the command's effect.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    pub command_id: Uuid,
    pub status: Status,
    pub http_status: u16,
    pub body: Value,
}

/// Where a worker sends one command's outcome: the inbox of the ingress instance that waits
/// for it, and the token of the waiting request within that instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplyTo {
    pub inbox: String,
    pub token: u64,
}

impl ReplyTo {
    /// Reads the `<inbox>.<token>` form of a single-command message's [`HEADER_REPLY_TO`].
    pub fn parse_subject(subject: &str) -> Option<Self> {
        let (inbox, token) = subject.rsplit_once('.')?;
        Some(Self {
            inbox: inbox.to_string(),
            token: token.parse().ok()?,
        })
    }
}

/// One command of a [`CommandBatch`], with what the worker needs to route it without looking
/// inside: its partition and where to answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct BatchedCommand<E = Envelope> {
    pub partition: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    pub envelope: E,
}

/// The payload of one message on the batch subject: the commands one ingress published
/// together, in the order it accepted them. The broker stores it (and fsyncs it) once.
#[derive(Debug, Serialize, Deserialize)]
pub struct CommandBatch<E = Envelope> {
    pub commands: Vec<BatchedCommand<E>>,
}

/// One outcome in a worker's reply message to an ingress inbox.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub token: u64,
    pub outcome: Outcome,
}
