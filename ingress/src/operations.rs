//! The write operations — add, deduct, refund, hold, capture, release — read from a JSON body
//! into commands, the same way whether the body is a request of its own or one operation of a
//! batch. Refunds, captures and releases name an entry or a hold, whose user (the partition
//! that orders them) is looked up before they become commands.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgPool;
use tally_common::command::Command;
use tally_common::limits::{
    CREDIT_LIFETIME_SECONDS_MAX, CREDIT_LIFETIME_SECONDS_MIN, HOLD_SECONDS_DEFAULT,
    HOLD_SECONDS_MAX, HOLD_SECONDS_MIN,
};
use uuid::Uuid;

use crate::error::ApiError;
use crate::validate::Fields;

/// A write operation, as a batch names it (`op`) and as its endpoint is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Add,
    Deduct,
    Refund,
    Hold,
    Capture,
    Release,
}

impl Operation {
    pub const ALL: [Self; 6] = [
        Self::Add,
        Self::Deduct,
        Self::Refund,
        Self::Hold,
        Self::Capture,
        Self::Release,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Deduct => "deduct",
            Self::Refund => "refund",
            Self::Hold => "hold",
            Self::Capture => "capture",
            Self::Release => "release",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The endpoint of the operation alone; part of its idempotency hash, so a key used for a
    /// batch's operation and for the same request sent alone is the same request.
    pub fn path(self) -> &'static str {
        match self {
            Self::Add => "/credits/add",
            Self::Deduct => "/credits/deduct",
            Self::Refund => "/credits/refund",
            Self::Hold => "/credits/hold",
            Self::Capture => "/credits/capture",
            Self::Release => "/credits/release",
        }
    }

    /// Reads `object` (the endpoint's body) into what the operation does; `400` naming the
    /// first bad field.
    pub fn read(self, object: Map<String, Value>) -> Result<Parsed, ApiError> {
        match self {
            Self::Add => add(object).map(Parsed::Ready),
            Self::Deduct => deduct(object).map(Parsed::Ready),
            Self::Hold => hold(object).map(Parsed::Ready),
            Self::Refund => refund(object),
            Self::Capture => capture(object),
            Self::Release => release(object),
        }
    }
}

/// An operation read from its body: a command, or one waiting for the user of the entry or
/// hold it names.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    Ready(Command),
    Refund {
        ledger_id: Uuid,
        amount: Option<i64>,
        description: Option<String>,
        metadata: Map<String, Value>,
    },
    Capture {
        hold_id: Uuid,
        amount: Option<i64>,
    },
    Release {
        hold_id: Uuid,
    },
}

/// What a parsed operation names, whose user routes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Entry(Uuid),
    Hold(Uuid),
}

impl Parsed {
    pub fn target(&self) -> Option<Target> {
        match self {
            Self::Ready(_) => None,
            Self::Refund { ledger_id, .. } => Some(Target::Entry(*ledger_id)),
            Self::Capture { hold_id, .. } | Self::Release { hold_id } => {
                Some(Target::Hold(*hold_id))
            }
        }
    }

    /// The command, routed to `user_id` (the user of its target, if it has one).
    pub fn into_command(self, user_id: String) -> Command {
        match self {
            Self::Ready(command) => command,
            Self::Refund {
                ledger_id,
                amount,
                description,
                metadata,
            } => Command::Refund {
                user_id,
                ledger_id,
                amount,
                description,
                metadata,
            },
            Self::Capture { hold_id, amount } => Command::Capture {
                user_id,
                hold_id,
                amount,
            },
            Self::Release { hold_id } => Command::Release { user_id, hold_id },
        }
    }

    /// The command, with its target's user looked up; `404` when the app has no such entry
    /// or hold.
    pub async fn route(self, pool: &PgPool, app_id: Uuid) -> Result<Command, ApiError> {
        let Some(target) = self.target() else {
            return Ok(self.into_command(String::new()));
        };
        let users = target_users(pool, app_id, &[target]).await?;
        match users.get(&target) {
            Some(user_id) => Ok(self.into_command(user_id.clone())),
            None => Err(not_found(target)),
        }
    }
}

/// The answer to an operation whose entry or hold the app does not have.
pub fn not_found(target: Target) -> ApiError {
    match target {
        Target::Entry(id) => ApiError::NotFound(format!("no ledger entry {id}")),
        Target::Hold(id) => ApiError::NotFound(format!("no hold {id}")),
    }
}

/// The users of the app's entries and holds among `targets`, in two lookups at most; a target
/// the app does not have is absent.
pub async fn target_users(
    pool: &PgPool,
    app_id: Uuid,
    targets: &[Target],
) -> Result<HashMap<Target, String>, ApiError> {
    let entries: Vec<Uuid> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Entry(id) => Some(*id),
            Target::Hold(_) => None,
        })
        .collect();
    let holds: Vec<Uuid> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Hold(id) => Some(*id),
            Target::Entry(_) => None,
        })
        .collect();
    let mut users = HashMap::new();
    if !entries.is_empty() {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, user_id FROM ledger_entries WHERE app_id = $1 AND id = ANY($2)",
        )
        .bind(app_id)
        .bind(&entries)
        .fetch_all(pool)
        .await?;
        users.extend(rows.into_iter().map(|(id, user)| (Target::Entry(id), user)));
    }
    if !holds.is_empty() {
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT id, user_id FROM holds WHERE app_id = $1 AND id = ANY($2)")
                .bind(app_id)
                .bind(&holds)
                .fetch_all(pool)
                .await?;
        users.extend(rows.into_iter().map(|(id, user)| (Target::Hold(id), user)));
    }
    Ok(users)
}

fn add(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(
        object,
        &[
            "user_id",
            "amount",
            "description",
            "metadata",
            "expires_at",
            "expires_in_seconds",
            "credit_type",
        ],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let credit_type = fields.credit_type()?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    let expires_at = expiry(&mut fields)?;
    fields.finish()?;
    Ok(Command::Add {
        user_id,
        amount,
        credit_type,
        description,
        metadata,
        expires_at,
    })
}

/// `expires_at` or `expires_in_seconds` of an add: at most one, in the future.
fn expiry(fields: &mut Fields) -> Result<Option<DateTime<Utc>>, ApiError> {
    let at = fields.optional_time("expires_at")?;
    let in_seconds = fields.optional_integer(
        "expires_in_seconds",
        CREDIT_LIFETIME_SECONDS_MIN,
        CREDIT_LIFETIME_SECONDS_MAX,
    )?;
    match (at, in_seconds) {
        (Some(_), Some(_)) => Err(ApiError::field(
            "expires_at",
            "give expires_at or expires_in_seconds, not both",
        )),
        (Some(at), None) if at <= Utc::now() => {
            Err(ApiError::field("expires_at", "must be in the future"))
        }
        (Some(at), None) => Ok(Some(at)),
        (None, Some(seconds)) => Ok(Some(Utc::now() + chrono::Duration::seconds(seconds))),
        (None, None) => Ok(None),
    }
}

fn deduct(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(
        object,
        &[
            "user_id",
            "amount",
            "description",
            "metadata",
            "credit_type",
        ],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let credit_type = fields.credit_type()?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    Ok(Command::Deduct {
        user_id,
        amount,
        credit_type,
        description,
        metadata,
    })
}

fn refund(object: Map<String, Value>) -> Result<Parsed, ApiError> {
    let mut fields = Fields::new(object, &["ledger_id", "amount", "description", "metadata"])?;
    let ledger_id = fields.uuid("ledger_id")?;
    let amount = fields.optional_amount("amount")?;
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    Ok(Parsed::Refund {
        ledger_id,
        amount,
        description,
        metadata,
    })
}

fn hold(object: Map<String, Value>) -> Result<Command, ApiError> {
    let mut fields = Fields::new(
        object,
        &[
            "user_id",
            "amount",
            "expires_in_seconds",
            "description",
            "metadata",
            "credit_type",
        ],
    )?;
    let user_id = fields.user_id("user_id")?;
    let amount = fields.amount("amount")?;
    let credit_type = fields.credit_type()?;
    let expires_in_seconds = fields
        .optional_integer("expires_in_seconds", HOLD_SECONDS_MIN, HOLD_SECONDS_MAX)?
        .unwrap_or(HOLD_SECONDS_DEFAULT);
    let description = fields.description()?;
    let metadata = fields.metadata()?;
    fields.finish()?;
    Ok(Command::Hold {
        user_id,
        amount,
        credit_type,
        expires_in_seconds,
        description,
        metadata,
    })
}

fn capture(object: Map<String, Value>) -> Result<Parsed, ApiError> {
    let mut fields = Fields::new(object, &["hold_id", "amount"])?;
    let hold_id = fields.uuid("hold_id")?;
    let amount = fields.optional_amount("amount")?;
    fields.finish()?;
    Ok(Parsed::Capture { hold_id, amount })
}

fn release(object: Map<String, Value>) -> Result<Parsed, ApiError> {
    let mut fields = Fields::new(object, &["hold_id"])?;
    let hold_id = fields.uuid("hold_id")?;
    fields.finish()?;
    Ok(Parsed::Release { hold_id })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn every_operation_is_named_as_its_endpoint() {
        for op in Operation::ALL {
            assert_eq!(Operation::parse(op.name()), Some(op));
            assert_eq!(op.path(), format!("/credits/{}", op.name()));
        }
        assert_eq!(Operation::parse("transfer"), None);
    }

    #[test]
    fn writes_of_a_user_are_ready_and_writes_of_an_entry_or_hold_wait_for_its_user() {
        let deduct = Operation::Deduct
            .read(object(json!({ "user_id": "u", "amount": 5 })))
            .unwrap();
        assert_eq!(deduct.target(), None);
        let id = Uuid::now_v7();
        let refund = Operation::Refund
            .read(object(json!({ "ledger_id": id })))
            .unwrap();
        assert_eq!(refund.target(), Some(Target::Entry(id)));
        match refund.into_command("owner".into()) {
            Command::Refund {
                user_id, ledger_id, ..
            } => {
                assert_eq!((user_id.as_str(), ledger_id), ("owner", id));
            }
            other => panic!("{other:?}"),
        }
        let release = Operation::Release
            .read(object(json!({ "hold_id": id })))
            .unwrap();
        assert_eq!(release.target(), Some(Target::Hold(id)));
    }

    #[test]
    fn a_bad_field_is_named() {
        let error = Operation::Hold
            .read(object(
                json!({ "user_id": "u", "amount": 5, "expires_in_seconds": 0 }),
            ))
            .unwrap_err();
        let (status, body) = error.within("operations[2]").status_and_body();
        assert_eq!(status, 400);
        assert_eq!(body["field"], "operations[2].expires_in_seconds");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .starts_with("operations[2].expires_in_seconds: must be"));
    }
}
