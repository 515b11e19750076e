//! The API's resources: `credits()`, `commands()`, `webhooks()`, the write request builder and
//! the handle of a command answered 202 (batches are in [`crate::batch`]).

use std::fmt::Display;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::batch::{BatchItem, BatchRequest};
use crate::types::*;
use crate::{decode, Client, Error, WriteBody};

/// `client.credits()`.
#[derive(Clone, Copy, Debug)]
pub struct Credits<'a> {
    client: &'a Client,
}

impl<'a> Credits<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// Balance alert thresholds: the app's default per credit type and users' own lists.
    pub fn alerts(&self) -> crate::Alerts<'a> {
        crate::Alerts::new(self.client)
    }

    /// Users' auto top-up settings: a saved card charged when `available` falls below a
    /// threshold.
    pub fn auto_topup(&self) -> crate::AutoTopups<'a> {
        crate::AutoTopups::new(self.client)
    }

    /// `POST /credits/add`.
    pub fn add(&self, params: &AddParams) -> WriteRequest<'a, WriteResponse> {
        WriteRequest::new(self.client, "/credits/add", params)
    }

    /// `POST /credits/deduct`: [`Error::InsufficientCredits`] when the user cannot spend it.
    pub fn deduct(&self, params: &DeductParams) -> WriteRequest<'a, WriteResponse> {
        WriteRequest::new(self.client, "/credits/deduct", params)
    }

    /// `POST /credits/refund`.
    pub fn refund(&self, params: &RefundParams) -> WriteRequest<'a, RefundResponse> {
        WriteRequest::new(self.client, "/credits/refund", params)
    }

    /// `POST /credits/hold`.
    pub fn hold(&self, params: &HoldParams) -> WriteRequest<'a, HoldResponse> {
        WriteRequest::new(self.client, "/credits/hold", params)
    }

    /// `POST /credits/capture`.
    pub fn capture(&self, params: &CaptureParams) -> WriteRequest<'a, CaptureResponse> {
        WriteRequest::new(self.client, "/credits/capture", params)
    }

    /// `POST /credits/release`.
    pub fn release(&self, params: &ReleaseParams) -> WriteRequest<'a, ReleaseResponse> {
        WriteRequest::new(self.client, "/credits/release", params)
    }

    /// `GET /credits/balance`: the default credit type's balance (`credits`).
    pub async fn balance(&self, user_id: &str) -> Result<BalanceResponse, Error> {
        self.client
            .get("/credits/balance", &[("user_id", user_id.to_string())])
            .await
    }

    /// `GET /credits/balance?credit_type=`: the balance of one credit type (0 for a type the
    /// user has never been written).
    pub async fn balance_of(
        &self,
        user_id: &str,
        credit_type: &str,
    ) -> Result<BalanceResponse, Error> {
        let query = [
            ("user_id", user_id.to_string()),
            ("credit_type", credit_type.to_string()),
        ];
        self.client.get("/credits/balance", &query).await
    }

    /// `GET /credits/balances`: every credit type the user has, ordered by type.
    pub async fn balances(&self, user_id: &str) -> Result<BalancesResponse, Error> {
        self.client
            .get("/credits/balances", &[("user_id", user_id.to_string())])
            .await
    }

    /// `POST /credits/batch`: many operations in one call. Each is applied as if sent alone,
    /// unless [`BatchRequest::atomic`] asks for all or none (then only add, deduct and hold of
    /// one user).
    pub fn batch<I>(&self, operations: I) -> BatchRequest<'a>
    where
        I: IntoIterator,
        I::Item: Into<BatchItem>,
    {
        BatchRequest::new(
            self.client,
            operations.into_iter().map(Into::into).collect(),
        )
    }

    /// `GET /credits/history`: one page, newest first.
    pub async fn history(&self, params: &HistoryParams) -> Result<HistoryResponse, Error> {
        let mut query = vec![("user_id", params.user_id.clone())];
        push_credit_type(&mut query, &params.credit_type);
        push_paging(&mut query, params.limit, &params.cursor);
        self.client.get("/credits/history", &query).await
    }

    /// Every history entry of a user, newest first, following `next_cursor` page after page
    /// (200 entries a page).
    pub fn history_all(
        &self,
        user_id: &str,
    ) -> impl Stream<Item = Result<HistoryEntry, Error>> + Send + 'static {
        self.history_all_with(HistoryParams {
            user_id: user_id.to_string(),
            limit: Some(HISTORY_ALL_PAGE_SIZE),
            ..Default::default()
        })
    }

    /// Like [`Credits::history_all`], from `params.cursor` on, `params.limit` entries a page.
    pub fn history_all_with(
        &self,
        params: HistoryParams,
    ) -> impl Stream<Item = Result<HistoryEntry, Error>> + Send + 'static {
        let client = self.client.clone();
        futures::stream::try_unfold(Some(params), move |next| {
            let client = client.clone();
            async move {
                let Some(params) = next else {
                    return Ok(None);
                };
                let page = client.credits().history(&params).await?;
                let next = page.next_cursor.map(|cursor| HistoryParams {
                    cursor: Some(cursor),
                    ..params
                });
                Ok(Some((page.entries, next)))
            }
        })
        .map_ok(|entries| futures::stream::iter(entries.into_iter().map(Ok)))
        .try_flatten()
    }

    /// `GET /credits/holds`.
    pub async fn holds(&self, params: &HoldsParams) -> Result<HoldsResponse, Error> {
        let mut query = vec![("user_id", params.user_id.clone())];
        if let Some(status) = &params.status {
            query.push(("status", status.clone()));
        }
        push_credit_type(&mut query, &params.credit_type);
        push_paging(&mut query, params.limit, &params.cursor);
        self.client.get("/credits/holds", &query).await
    }
}

/// Page size of [`Credits::history_all`]: the API's largest.
pub const HISTORY_ALL_PAGE_SIZE: u32 = 200;

fn push_credit_type(query: &mut Vec<(&str, String)>, credit_type: &Option<String>) {
    if let Some(credit_type) = credit_type {
        query.push(("credit_type", credit_type.clone()));
    }
}

fn push_paging(query: &mut Vec<(&str, String)>, limit: Option<u32>, cursor: &Option<String>) {
    if let Some(limit) = limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor.clone()));
    }
}

/// `client.commands()`.
#[derive(Clone, Copy, Debug)]
pub struct Commands<'a> {
    client: &'a Client,
}

impl<'a> Commands<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `GET /commands/{command_id}`: `pending`, `applied` or `rejected`.
    pub async fn get(&self, command_id: impl Display) -> Result<CommandStatus, Error> {
        let path = format!("/commands/{}", encode_path_segment(&command_id.to_string()));
        self.client.get(&path, &[]).await
    }
}

/// `client.webhooks()`.
#[derive(Clone, Copy, Debug)]
pub struct Webhooks<'a> {
    client: &'a Client,
}

impl<'a> Webhooks<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        Self { client }
    }

    /// `GET /webhooks/events`: received payment webhooks, newest first.
    pub async fn events(
        &self,
        params: &WebhookEventsParams,
    ) -> Result<WebhookEventsResponse, Error> {
        let mut query = Vec::new();
        if let Some(provider) = &params.provider {
            query.push(("provider", provider.clone()));
        }
        push_paging(&mut query, params.limit, &params.cursor);
        self.client.get("/webhooks/events", &query).await
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, so an id is one segment.
pub(crate) fn encode_path_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A write about to be sent. `.await` it (or call [`WriteRequest::send`]) for the result, or
/// call [`WriteRequest::respond_async`] for a handle as soon as the command is durable.
#[must_use = "a write does nothing until it is awaited"]
pub struct WriteRequest<'a, T> {
    client: &'a Client,
    path: &'static str,
    json: Vec<u8>,
    idempotency_key: Option<String>,
    response: PhantomData<fn() -> T>,
}

impl<'a, T: DeserializeOwned + Send + 'a> WriteRequest<'a, T> {
    pub(crate) fn new(client: &'a Client, path: &'static str, params: &impl Serialize) -> Self {
        Self {
            client,
            path,
            // Parameters are plain structs with string keys: serializing them cannot fail.
            json: serde_json::to_vec(params).expect("request parameters serialize to JSON"),
            idempotency_key: None,
            response: PhantomData,
        }
    }

    /// The `Idempotency-Key` to send (1..=255 chars); by default a fresh UUID per call. Reuse a
    /// key of your own to make a write safe to repeat across process restarts.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn body(&self, respond_async: bool) -> WriteBody {
        WriteBody {
            json: self.json.clone(),
            idempotency_key: Some(
                self.idempotency_key
                    .clone()
                    .unwrap_or_else(|| Uuid::new_v4().to_string()),
            ),
            respond_async,
        }
    }

    /// Sends the write and returns the worker's answer. Should the server answer 202 (its sync
    /// timeout passed), waits for the command's outcome instead.
    pub async fn send(self) -> Result<T, Error> {
        let write = self.body(false);
        let (status, body) = self
            .client
            .call(Method::POST, self.path, &[], Some(&write))
            .await?;
        if status == 202 {
            let accepted: Accepted = decode(status, body)?;
            return CommandHandle::accepted(self.client.clone(), accepted)
                .wait()
                .await;
        }
        decode(status, body)
    }

    /// Sends the write with `Prefer: respond-async`: the handle comes back as soon as the
    /// command is durable; [`CommandHandle::wait`] then gives the result.
    pub async fn respond_async(self) -> Result<CommandHandle<T>, Error> {
        let write = self.body(true);
        let (status, body) = self
            .client
            .call(Method::POST, self.path, &[], Some(&write))
            .await?;
        if status == 202 {
            let accepted: Accepted = decode(status, body)?;
            return Ok(CommandHandle::accepted(self.client.clone(), accepted));
        }
        // A replay of an earlier synchronous call with the same key: the result is here.
        Ok(CommandHandle {
            client: self.client.clone(),
            command: None,
            ready: Some(decode(status, body)?),
        })
    }
}

impl<'a, T: DeserializeOwned + Send + 'a> IntoFuture for WriteRequest<'a, T> {
    type Output = Result<T, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// How [`CommandHandle::wait_with`] polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitOptions {
    /// Pause between two reads of the command's status.
    pub poll_interval: Duration,
    /// Give up (with [`Error::StillPending`]) after this long; the command is still applied.
    pub timeout: Duration,
}

impl Default for WaitOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(100),
            timeout: Duration::from_secs(60),
        }
    }
}

/// A write the server accepted (202) and will apply.
#[derive(Debug)]
pub struct CommandHandle<T> {
    client: Client,
    /// `None` when the server answered the write at once (an idempotent replay of an earlier
    /// synchronous answer).
    command: Option<Accepted>,
    ready: Option<T>,
}

impl<T: DeserializeOwned> CommandHandle<T> {
    fn accepted(client: Client, accepted: Accepted) -> Self {
        Self {
            client,
            command: Some(accepted),
            ready: None,
        }
    }

    /// The command's id (for `client.commands().get(..)`).
    pub fn command_id(&self) -> Option<Uuid> {
        self.command.as_ref().map(|command| command.command_id)
    }

    /// Where the command's outcome can be read, relative to the base URL.
    pub fn status_url(&self) -> Option<&str> {
        self.command
            .as_ref()
            .map(|command| command.status_url.as_str())
    }

    /// Polls the command until it is applied or rejected; resolves, or fails, exactly as the
    /// synchronous call would have.
    pub async fn wait(self) -> Result<T, Error> {
        self.wait_with(WaitOptions::default()).await
    }

    pub async fn wait_with(self, options: WaitOptions) -> Result<T, Error> {
        if let Some(ready) = self.ready {
            return Ok(ready);
        }
        let Some(command) = self.command else {
            unreachable!("a handle holds either a result or a command");
        };
        let (status, result) = settle(&self.client, command.command_id, options).await?;
        if (200..300).contains(&status) {
            decode(status, result)
        } else {
            Err(Error::from_response(status, result, None))
        }
    }
}

/// Polls a command until it is applied or rejected: the status and body the synchronous call
/// would have answered. [`Error::StillPending`] after `options.timeout`.
pub(crate) async fn settle(
    client: &Client,
    command_id: Uuid,
    options: WaitOptions,
) -> Result<(u16, serde_json::Value), Error> {
    let started = tokio::time::Instant::now();
    loop {
        let status = client.commands().get(command_id).await?;
        if let ("applied" | "rejected", Some(result)) = (status.status.as_str(), status.result) {
            return Ok((status.http_status.unwrap_or(200), result));
        }
        if started.elapsed() >= options.timeout {
            return Err(Error::StillPending {
                command_id,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(options.poll_interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_cannot_leave_its_segment() {
        assert_eq!(encode_path_segment("0193-ab_c.~"), "0193-ab_c.~");
        assert_eq!(encode_path_segment("../x?y"), "..%2Fx%3Fy");
    }
}
