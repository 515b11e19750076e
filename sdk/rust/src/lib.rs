//! A client for the Tally credits API.
//!
//! ```no_run
//! # async fn run() -> Result<(), tally_client::Error> {
//! use tally_client::{AddParams, Client, DeductParams, Error};
//!
//! let tally = Client::new("tk_...", "http://127.0.0.1:8080")?;
//! tally.credits().add(&AddParams { user_id: "user_abc123".into(), amount: 500, ..Default::default() }).await?;
//! match tally.credits().deduct(&DeductParams { user_id: "user_abc123".into(), amount: 50, ..Default::default() }).await {
//!     Ok(deducted) => println!("{} left", deducted.balance_after),
//!     Err(Error::InsufficientCredits { balance, .. }) => println!("only {balance} credits"),
//!     Err(other) => return Err(other),
//! }
//! let balance = tally.credits().balance("user_abc123").await?.balance;
//! # Ok(()) }
//! ```
//!
//! Every write carries an `Idempotency-Key` (a fresh UUID unless the caller gives one), the same
//! on each retry, so a retried write takes effect once. Calls are retried only on network
//! errors, timeouts, 429, 503 and `409 idempotency_in_progress`.

mod batch;
mod error;
mod events;
mod plans;
mod resources;
mod retry;
mod types;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use batch::{
    BatchHandle, BatchItem, BatchOperation, BatchRequest, BatchResponse, BatchResult,
    OperationAnswer,
};
pub use error::{ApiError, Error};
pub use events::{Alerts, Events, WebhookDeliveries, WebhookEndpoints};
pub use plans::{AutoTopups, Products};
pub use resources::{CommandHandle, Commands, Credits, WaitOptions, Webhooks, WriteRequest};
pub use retry::{
    parse_retry_after, RetryPolicy, BACKOFF_BASE, BACKOFF_MAX, DEFAULT_MAX_RETRIES, RETRY_AFTER_MAX,
};
pub use types::*;

/// Environment variable read for the API key when none is given.
pub const API_KEY_ENV: &str = "TALLY_API_KEY";
/// Environment variable read for the base URL when none is given.
pub const BASE_URL_ENV: &str = "TALLY_BASE_URL";
/// How long one attempt may take, unless the client says otherwise. Longer than the server's
/// default sync timeout (5 s), after which a write answers 202 rather than keep the caller waiting.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A Tally client: cheap to clone, share one per application.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// Without a trailing slash; paths start with one.
    base_url: String,
    /// `Bearer <api key>`, marked sensitive so it never shows in debug output.
    authorization: HeaderValue,
    retry: RetryPolicy,
}

/// Builds a [`Client`]; an API key or base URL not given is read from `TALLY_API_KEY` /
/// `TALLY_BASE_URL`.
#[derive(Clone, Debug, Default)]
pub struct ClientBuilder {
    api_key: Option<String>,
    base_url: Option<String>,
    timeout: Option<Duration>,
    max_retries: Option<u32>,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// E.g. `http://127.0.0.1:8080`.
    pub fn base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = Some(base_url.into());
        self
    }

    /// How long one attempt may take (default 30 s); a timeout counts as a network failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries after the first attempt (default 2, so 3 attempts at most); 0 disables them.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = Some(max_retries);
        self
    }

    /// A `reqwest::Client` of the caller's (proxies, TLS roots); `timeout` is then ignored.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let api_key = self
            .api_key
            .filter(|key| !key.is_empty())
            .or_else(|| from_env(API_KEY_ENV))
            .ok_or_else(|| Error::Config(format!("no API key: pass one or set {API_KEY_ENV}")))?;
        let base_url = self
            .base_url
            .filter(|url| !url.is_empty())
            .or_else(|| from_env(BASE_URL_ENV))
            .ok_or_else(|| Error::Config(format!("no base URL: pass one or set {BASE_URL_ENV}")))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base_url)
            .map_err(|error| Error::Config(format!("base URL {base_url:?}: {error}")))?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {api_key}"))
            .map_err(|_| Error::Config("the API key is not a valid header value".into()))?;
        authorization.set_sensitive(true);
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .timeout(self.timeout.unwrap_or(DEFAULT_TIMEOUT))
                .build()
                .map_err(|error| Error::Config(format!("http client: {error}")))?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base_url,
                authorization,
                retry: RetryPolicy {
                    max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
                    ..RetryPolicy::default()
                },
            }),
        })
    }
}

impl Client {
    pub fn new(api_key: impl Into<String>, base_url: impl Into<String>) -> Result<Self, Error> {
        Self::builder().api_key(api_key).base_url(base_url).build()
    }

    /// Reads `TALLY_API_KEY` and `TALLY_BASE_URL`.
    pub fn from_env() -> Result<Self, Error> {
        Self::builder().build()
    }

    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Add, deduct, refund, hold, capture, release, batch; balance(s), history, holds.
    pub fn credits(&self) -> Credits<'_> {
        Credits::new(self)
    }

    /// What became of a command answered 202.
    pub fn commands(&self) -> Commands<'_> {
        Commands::new(self)
    }

    /// The audit list of received payment webhooks.
    pub fn webhooks(&self) -> Webhooks<'_> {
        Webhooks::new(self)
    }

    /// The URLs Tally sends the app's events to (see [`webhooks::verify`] for the receiving end).
    pub fn webhook_endpoints(&self) -> WebhookEndpoints<'_> {
        WebhookEndpoints::new(self)
    }

    /// Redelivering one event to one endpoint.
    pub fn webhook_deliveries(&self) -> WebhookDeliveries<'_> {
        WebhookDeliveries::new(self)
    }

    /// The app's events, as its endpoints receive them.
    pub fn events(&self) -> Events<'_> {
        Events::new(self)
    }

    /// What each provider product (a Stripe Price, a Polar Product) buys.
    pub fn products(&self) -> Products<'_> {
        Products::new(self)
    }

    /// One call with its retries: sends the request until it gets an answer that is not
    /// retryable or no retry is left. Returns the status and JSON body of a 2xx answer.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        write: Option<&WriteBody>,
    ) -> Result<(u16, Value), Error> {
        let mut retry = 0;
        loop {
            let error = match self.attempt(method.clone(), path, query, write).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.is_retryable() => error,
                Err(error) => return Err(error),
            };
            let Some(delay) = self
                .inner
                .retry
                .delay(retry, error.retry_after(), rand::random())
            else {
                return Err(error);
            };
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    async fn attempt(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        write: Option<&WriteBody>,
    ) -> Result<(u16, Value), Error> {
        let mut request = self
            .inner
            .http
            .request(method, format!("{}{path}", self.inner.base_url))
            .header(AUTHORIZATION, self.inner.authorization.clone());
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(write) = write {
            request = request.headers(write.headers()?).body(write.json.clone());
        }
        let response = request.send().await.map_err(Error::Connection)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let text = response.text().await.map_err(Error::Connection)?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if (200..300).contains(&status) {
            Ok((status, body))
        } else {
            Err(Error::from_response(status, body, retry_after))
        }
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let (status, body) = self.call(Method::GET, path, query, None).await?;
        decode(status, body)
    }

    /// A call that is not a ledger write: `params` as the query (fields left `None` are not
    /// sent) and `json` as the body. A POST carries a fresh `Idempotency-Key`, the same on each
    /// of its retries. Returns the status and body of the 2xx answer (an empty body: null).
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        params: Option<&impl Serialize>,
        json: Option<&impl Serialize>,
    ) -> Result<(u16, Value), Error> {
        let query = params.map(query_pairs).unwrap_or_default();
        let query: Vec<(&str, String)> = query
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone()))
            .collect();
        let idempotency_key = (method == Method::POST).then(|| uuid::Uuid::new_v4().to_string());
        let write = match (json, idempotency_key) {
            (None, None) => None,
            (json, idempotency_key) => Some(WriteBody {
                json: json
                    .map(|json| {
                        serde_json::to_vec(json).expect("request parameters serialize to JSON")
                    })
                    .unwrap_or_default(),
                idempotency_key,
                respond_async: false,
            }),
        };
        let (status, body) = self.call(method, path, &query, write.as_ref()).await?;
        Ok((status, if status == 204 { Value::Null } else { body }))
    }
}

/// A parameters struct as query pairs; `None` fields are left out.
fn query_pairs(params: &impl Serialize) -> Vec<(String, String)> {
    let Ok(Value::Object(fields)) = serde_json::to_value(params) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|(name, value)| match value {
            Value::Null => None,
            Value::String(text) => Some((name, text)),
            other => Some((name, other.to_string())),
        })
        .collect()
}

/// A request's serialized body (empty: none) and headers, the same on every attempt.
#[derive(Clone, Debug)]
pub(crate) struct WriteBody {
    json: Vec<u8>,
    idempotency_key: Option<String>,
    respond_async: bool,
}

impl WriteBody {
    fn headers(&self) -> Result<HeaderMap, Error> {
        let mut headers = HeaderMap::new();
        if !self.json.is_empty() {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some(key) = &self.idempotency_key {
            let key = HeaderValue::from_str(key).map_err(|_| {
                Error::Config("the idempotency key is not a valid header value".into())
            })?;
            headers.insert("idempotency-key", key);
        }
        if self.respond_async {
            headers.insert("prefer", HeaderValue::from_static("respond-async"));
        }
        Ok(headers)
    }
}

/// A 2xx body as `T`; a body that is not what the API documents is an [`Error::Api`].
pub(crate) fn decode<T: DeserializeOwned>(status: u16, body: Value) -> Result<T, Error> {
    serde_json::from_value(body.clone()).map_err(|error| {
        Error::Api(ApiError {
            status,
            code: "unexpected_response".into(),
            message: format!("the response body does not match the API: {error}"),
            body,
        })
    })
}
