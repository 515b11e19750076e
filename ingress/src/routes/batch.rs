//! `POST /credits/batch`: many operations in one call — each its own command, applied as if
//! sent alone (not atomic), or one user's adds, deducts and holds applied all or none
//! (atomic).

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Map, Value};
use tally_common::command::Command;
use tally_common::limits::{BATCH_BODY_BYTES_MAX, BATCH_OPERATIONS_MAX};
use utoipa::ToSchema;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::operations::{self, Operation, Parsed, Target};
use crate::responses::{json_response, AcceptedResponse, ErrorResponse};
use crate::submit::batch::{
    store_batch_answer, submit_batch, BatchAnswer, BatchCommand, BatchOperation, BatchResult,
};
use crate::submit::{submit, Submission};
use crate::validate;
use crate::AppState;

/// Body of `POST /credits/batch`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchRequest {
    /// `true`: only `add`, `deduct` and `hold` of one user, applied all or none. Default false.
    atomic: Option<bool>,
    /// 1..=1000 operations, each `{ "op", "idempotency_key"?, ...that endpoint's body }`.
    #[schema(min_items = 1, max_items = 1000)]
    operations: Vec<BatchOperationSchema>,
}

/// One operation: `op` names the endpoint (`add` → `POST /credits/add` …) and the other fields
/// are that endpoint's body. `idempotency_key` works like that request's `Idempotency-Key`
/// (not in an atomic batch).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = BatchOperation)]
pub struct BatchOperationSchema {
    /// add, deduct, refund, hold, capture or release.
    op: String,
    /// 1..=255 characters.
    idempotency_key: Option<String>,
}

/// Answer to a batch: one result per operation, in request order.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BatchResponse {
    results: Vec<BatchResultSchema>,
}

/// One operation's answer: the status and body that request would have had alone.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = BatchOperationResult)]
pub struct BatchResultSchema {
    index: usize,
    status: u16,
    #[schema(value_type = Object)]
    body: Value,
}

#[utoipa::path(post, path = "/credits/batch", request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the whole answer"),
           ("Prefer" = Option<String>, Header, description = "`respond-async`: every result a 202 body (atomic: one 202)")),
    responses((status = 200, body = BatchResponse), (status = 202, body = AcceptedResponse),
              (status = 400, description = "an invalid operation: nothing was sent", body = ErrorResponse),
              (status = 401, body = ErrorResponse),
              (status = 409, description = "idempotency_conflict or idempotency_in_progress", body = ErrorResponse),
              (status = 413, body = ErrorResponse),
              (status = 422, description = "batch_rejected (atomic): nothing was written", body = ErrorResponse),
              (status = 503, body = ErrorResponse)),
    security(("api_key" = [])))]
pub async fn batch(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = validate::idempotency_key(&headers)?;
    let object = validate::json_object_within(&headers, body, BATCH_BODY_BYTES_MAX).await?;
    let batch_idempotency = key.map(|key| {
        (
            key,
            validate::request_hash("POST", "/credits/batch", &object),
        )
    });
    let respond_async = validate::prefers_async(&headers);
    let (atomic, operations) = read_batch(object)?;
    if atomic {
        let command = atomic_command(operations)?;
        return submit(
            &state,
            Submission {
                app_id: auth.app_id,
                command,
                idempotency: batch_idempotency,
                respond_async,
                origin: Default::default(),
            },
        )
        .await;
    }
    let operations = route(&state, auth.app_id, operations).await?;
    let result = submit_batch(
        &state,
        auth.app_id,
        operations,
        batch_idempotency.as_ref(),
        respond_async,
        Default::default(),
    )
    .await;
    let answers = match result {
        Ok(BatchResult::Replayed(body)) => return Ok(json_response(200, body)),
        Ok(BatchResult::Answers(answers)) => answers,
        Err(error) => {
            if let (ApiError::Unavailable(_), Some((key, _))) = (&error, &batch_idempotency) {
                // Nothing was accepted: the key is free for the retry.
                let _ = sqlx::query(
                    "DELETE FROM idempotency_keys
                     WHERE app_id = $1 AND key = $2 AND batch_response IS NULL",
                )
                .bind(auth.app_id)
                .bind(key)
                .execute(&state.pool)
                .await;
            }
            return Err(error);
        }
    };
    let body = json!({ "results": answers.into_iter().enumerate().map(|(index, answer)| {
        let (status, body) = match answer {
            BatchAnswer::Answer(answer) => answer.status_and_body(),
            BatchAnswer::Refused(error) => error.status_and_body(),
        };
        json!({ "index": index, "status": status, "body": body })
    }).collect::<Vec<_>>() });
    if let Some((key, _)) = &batch_idempotency {
        store_batch_answer(&state, auth.app_id, key, &body).await;
    }
    Ok(json_response(200, body))
}

/// One operation as read: its own idempotency key with its request hash, and its parsed body.
pub(crate) struct ReadOperation {
    idempotency: Option<(String, String)>,
    parsed: Parsed,
}

/// `atomic` and the operations, every one checked: `400` naming `operations[i].field` for the
/// first that is not valid, before anything is sent.
pub(crate) fn read_batch(
    mut object: Map<String, Value>,
) -> Result<(bool, Vec<ReadOperation>), ApiError> {
    if let Some(unknown) = object
        .keys()
        .find(|key| !["atomic", "operations"].contains(&key.as_str()))
    {
        return Err(ApiError::field(unknown, "unknown field"));
    }
    let atomic = match object.remove("atomic") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(atomic)) => atomic,
        Some(_) => return Err(ApiError::field("atomic", "must be true or false")),
    };
    let items = match object.remove("operations") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(ApiError::field("operations", "is required")),
        Some(_) => return Err(ApiError::field("operations", "must be an array")),
    };
    if items.is_empty() || items.len() > BATCH_OPERATIONS_MAX {
        return Err(ApiError::field(
            "operations",
            format!("must hold 1 to {BATCH_OPERATIONS_MAX} operations"),
        ));
    }
    let operations = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            read_operation(item, atomic).map_err(|e| e.within(&format!("operations[{index}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((atomic, operations))
}

fn read_operation(item: Value, atomic: bool) -> Result<ReadOperation, ApiError> {
    let Value::Object(mut object) = item else {
        return Err(ApiError::invalid("must be a JSON object"));
    };
    let operation = match object.remove("op") {
        Some(Value::String(name)) => Operation::parse(&name).ok_or_else(|| {
            ApiError::field(
                "op",
                "must be add, deduct, refund, hold, capture or release",
            )
        })?,
        None | Some(Value::Null) => return Err(ApiError::field("op", "is required")),
        Some(_) => return Err(ApiError::field("op", "must be a string")),
    };
    if atomic
        && !matches!(
            operation,
            Operation::Add | Operation::Deduct | Operation::Hold
        )
    {
        return Err(ApiError::field(
            "op",
            "an atomic batch takes only add, deduct and hold",
        ));
    }
    let key = match object.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(_) if atomic => {
            return Err(ApiError::field(
                "idempotency_key",
                "is not taken in an atomic batch (its own Idempotency-Key covers it)",
            ))
        }
        Some(Value::String(key)) => Some(validate::check_idempotency_key("idempotency_key", key)?),
        Some(_) => return Err(ApiError::field("idempotency_key", "must be a string")),
    };
    // The key's hash is the one the endpoint would compute for this body sent alone.
    let idempotency = key.map(|key| {
        (
            key,
            validate::request_hash("POST", operation.path(), &object),
        )
    });
    let parsed = operation.read(object)?;
    Ok(ReadOperation {
        idempotency,
        parsed,
    })
}

/// The operations of an atomic batch as one command: all of one user.
fn atomic_command(operations: Vec<ReadOperation>) -> Result<Command, ApiError> {
    let mut user: Option<String> = None;
    let mut commands = Vec::with_capacity(operations.len());
    for (index, read) in operations.into_iter().enumerate() {
        let Parsed::Ready(command) = read.parsed else {
            unreachable!("an atomic batch was checked to hold only add, deduct and hold");
        };
        match &user {
            None => user = Some(command.user_id().to_string()),
            Some(user) if user != command.user_id() => {
                return Err(ApiError::field(
                    "user_id",
                    "every operation of an atomic batch must name the same user",
                )
                .within(&format!("operations[{index}]")));
            }
            Some(_) => {}
        }
        commands.push(command);
    }
    Ok(Command::AtomicBatch {
        user_id: user.expect("at least one operation"),
        operations: commands,
    })
}

/// Routes each operation to its user: the users of the entries and holds named are looked up
/// together; an operation naming one the app does not have is answered `404`, as alone.
async fn route(
    state: &AppState,
    app_id: uuid::Uuid,
    operations: Vec<ReadOperation>,
) -> Result<Vec<BatchOperation>, ApiError> {
    let targets: Vec<Target> = operations
        .iter()
        .filter_map(|read| read.parsed.target())
        .collect();
    let users: HashMap<Target, String> = if targets.is_empty() {
        HashMap::new()
    } else {
        operations::target_users(&state.pool, app_id, &targets).await?
    };
    Ok(operations
        .into_iter()
        .map(|read| {
            let user = match read.parsed.target() {
                None => String::new(),
                Some(target) => users
                    .get(&target)
                    .cloned()
                    .ok_or_else(|| operations::not_found(target))?,
            };
            Ok(BatchCommand {
                command: read.parsed.into_command(user),
                idempotency: read.idempotency,
            })
        })
        .collect())
}
