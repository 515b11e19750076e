//! `POST /credits/batch`: many operations in one call, typed going in ([`BatchOperation`]) and
//! coming out ([`OperationAnswer`], or the [`Error`] that operation alone would have had).

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::resources::{settle, CommandHandle, WaitOptions, WriteRequest};
use crate::types::*;
use crate::{decode, Client, Error};

/// One operation of a batch: which endpoint, with that endpoint's parameters.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BatchOperation {
    Add(AddParams),
    Deduct(DeductParams),
    Refund(RefundParams),
    Hold(HoldParams),
    Capture(CaptureParams),
    Release(ReleaseParams),
}

impl BatchOperation {
    /// This operation with an `idempotency_key` of its own, which works like that request's
    /// `Idempotency-Key` sent alone (not taken in an atomic batch).
    pub fn idempotency_key(self, key: impl Into<String>) -> BatchItem {
        BatchItem {
            operation: self,
            idempotency_key: Some(key.into()),
        }
    }
}

/// An operation as sent in a batch, with its own idempotency key if it has one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BatchItem {
    #[serde(flatten)]
    pub operation: BatchOperation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

impl From<BatchOperation> for BatchItem {
    fn from(operation: BatchOperation) -> Self {
        Self {
            operation,
            idempotency_key: None,
        }
    }
}

macro_rules! operation_from_params {
    ($($params:ident => $variant:ident),* $(,)?) => {$(
        impl From<$params> for BatchOperation {
            fn from(params: $params) -> Self {
                Self::$variant(params)
            }
        }

        impl From<$params> for BatchItem {
            fn from(params: $params) -> Self {
                BatchOperation::$variant(params).into()
            }
        }
    )*};
}

operation_from_params!(
    AddParams => Add,
    DeductParams => Deduct,
    RefundParams => Refund,
    HoldParams => Hold,
    CaptureParams => Capture,
    ReleaseParams => Release,
);

/// What an applied operation answered, typed by its operation.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationAnswer {
    Add(WriteResponse),
    Deduct(WriteResponse),
    Refund(RefundResponse),
    Hold(HoldResponse),
    Capture(CaptureResponse),
    Release(ReleaseResponse),
}

/// One operation's result, in request order: the status and answer that request alone would
/// have had.
#[derive(Debug)]
pub struct BatchResult {
    /// The operation's place in the batch (from 0).
    pub index: usize,
    /// 200, or the refusal's status (402, 404, 409 ...).
    pub status: u16,
    /// The typed answer, or the error that request alone would have returned.
    pub outcome: Result<OperationAnswer, Error>,
}

/// The answer to a batch: one result per operation, in request order.
#[derive(Debug)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// The body of `POST /credits/batch`.
#[derive(Serialize)]
struct BatchBody<'a> {
    atomic: bool,
    operations: &'a [BatchItem],
}

/// A batch's answer as the server sends it, before each body is typed.
#[derive(Debug, Deserialize)]
pub(crate) struct RawBatch {
    results: Vec<RawResult>,
}

#[derive(Debug, Deserialize)]
struct RawResult {
    index: usize,
    status: u16,
    body: Value,
}

/// A batch about to be sent. `.await` it (or call [`BatchRequest::send`]) for every result, or
/// call [`BatchRequest::respond_async`] for a handle as soon as it is durable.
#[must_use = "a batch does nothing until it is awaited"]
pub struct BatchRequest<'a> {
    client: &'a Client,
    items: Vec<BatchItem>,
    atomic: bool,
    idempotency_key: Option<String>,
}

impl<'a> BatchRequest<'a> {
    pub(crate) fn new(client: &'a Client, items: Vec<BatchItem>) -> Self {
        Self {
            client,
            items,
            atomic: false,
            idempotency_key: None,
        }
    }

    /// All or none: only add, deduct and hold of one user, applied in one transaction; a
    /// refusal is [`Error::BatchRejected`] and nothing is written.
    pub fn atomic(mut self, atomic: bool) -> Self {
        self.atomic = atomic;
        self
    }

    /// The batch's own `Idempotency-Key` (a fresh UUID by default, the same on each retry): a
    /// repeat replays the whole answer.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn write(&self) -> WriteRequest<'a, RawBatch> {
        let body = BatchBody {
            atomic: self.atomic,
            operations: &self.items,
        };
        let write = WriteRequest::new(self.client, "/credits/batch", &body);
        match &self.idempotency_key {
            Some(key) => write.idempotency_key(key.clone()),
            None => write,
        }
    }

    /// Sends the batch and returns every operation's result. An operation the server answered
    /// 202 (its sync timeout passed) is waited for, like a synchronous write.
    pub async fn send(self) -> Result<BatchResponse, Error> {
        let raw = self.write().send().await?;
        typed(self.client, &self.items, raw, WaitOptions::default()).await
    }

    /// Sends the batch with `Prefer: respond-async`: every operation (or the atomic batch, as
    /// one command) is durable when the handle comes back; [`BatchHandle::wait`] gives the
    /// results.
    pub async fn respond_async(self) -> Result<BatchHandle, Error> {
        let handle = self.write().respond_async().await?;
        Ok(BatchHandle {
            client: self.client.clone(),
            items: self.items,
            handle,
        })
    }
}

impl<'a> IntoFuture for BatchRequest<'a> {
    type Output = Result<BatchResponse, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A batch sent with `respond_async`.
#[derive(Debug)]
pub struct BatchHandle {
    client: Client,
    items: Vec<BatchItem>,
    handle: CommandHandle<RawBatch>,
}

impl BatchHandle {
    /// An atomic batch's command id; `None` for a batch that is not atomic (each operation is
    /// a command of its own).
    pub fn command_id(&self) -> Option<uuid::Uuid> {
        self.handle.command_id()
    }

    /// Where an atomic batch's outcome can be read, relative to the base URL.
    pub fn status_url(&self) -> Option<&str> {
        self.handle.status_url()
    }

    /// Waits until every operation is applied or refused: the results the synchronous call
    /// would have returned (an atomic batch refused is [`Error::BatchRejected`]).
    pub async fn wait(self) -> Result<BatchResponse, Error> {
        self.wait_with(WaitOptions::default()).await
    }

    pub async fn wait_with(self, options: WaitOptions) -> Result<BatchResponse, Error> {
        let raw = self.handle.wait_with(options).await?;
        typed(&self.client, &self.items, raw, options).await
    }
}

/// Types each result by its operation, waiting first for those answered 202.
async fn typed(
    client: &Client,
    items: &[BatchItem],
    raw: RawBatch,
    options: WaitOptions,
) -> Result<BatchResponse, Error> {
    let mut results = Vec::with_capacity(raw.results.len());
    for RawResult {
        index,
        mut status,
        mut body,
    } in raw.results
    {
        if status == 202 {
            let accepted: Accepted = decode(status, body)?;
            (status, body) = settle(client, accepted.command_id, options).await?;
        }
        let outcome = match items.get(index) {
            Some(item) if (200..300).contains(&status) => answer(&item.operation, status, body),
            Some(_) => Err(Error::from_response(status, body, None)),
            None => Err(Error::from_response(
                status,
                serde_json::json!({ "error": "unexpected_response",
                    "message": format!("the answer has a result {index} for no operation") }),
                None,
            )),
        };
        results.push(BatchResult {
            index,
            status,
            outcome,
        });
    }
    Ok(BatchResponse { results })
}

fn answer(operation: &BatchOperation, status: u16, body: Value) -> Result<OperationAnswer, Error> {
    Ok(match operation {
        BatchOperation::Add(_) => OperationAnswer::Add(decode(status, body)?),
        BatchOperation::Deduct(_) => OperationAnswer::Deduct(decode(status, body)?),
        BatchOperation::Refund(_) => OperationAnswer::Refund(decode(status, body)?),
        BatchOperation::Hold(_) => OperationAnswer::Hold(decode(status, body)?),
        BatchOperation::Capture(_) => OperationAnswer::Capture(decode(status, body)?),
        BatchOperation::Release(_) => OperationAnswer::Release(decode(status, body)?),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn an_operation_is_its_endpoints_body_with_op_and_its_own_key() {
        let add: BatchItem = AddParams {
            user_id: "u".into(),
            amount: 5,
            credit_type: Some("image".into()),
            ..Default::default()
        }
        .into();
        let release = BatchOperation::Release(ReleaseParams {
            hold_id: Uuid::nil(),
        })
        .idempotency_key("k-1");
        let body = serde_json::to_value(BatchBody {
            atomic: false,
            operations: &[add, release],
        })
        .expect("json");
        assert_eq!(
            body,
            json!({ "atomic": false, "operations": [
                { "op": "add", "user_id": "u", "amount": 5, "credit_type": "image" },
                { "op": "release", "hold_id": Uuid::nil(), "idempotency_key": "k-1" }
            ] })
        );
    }
}
