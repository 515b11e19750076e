//! One HTTP call to an endpoint: only to addresses the outbound rules allow (checked on what
//! the name resolves to at each new connection), no redirects, no proxy, a bounded time and a
//! bounded read of the answer.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;
use tally_common::outbound::{self, Refused};

/// Longest an attempt may take, from the connection to the end of the answer; a slower
/// endpoint has failed that attempt.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest a connection (TCP and TLS) may take to open, within the attempt's time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an answer's body is read (and dropped): enough to finish a short answer so
/// its connection can serve the next attempt, never more.
const ANSWER_BYTES_MAX: usize = 4 * 1024;

/// How long an idle connection to an endpoint is kept for its next delivery.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest reason kept in `last_error`, in characters.
const REASON_CHARS_MAX: usize = 200;

/// How an attempt went: the endpoint's status code, if it answered, and why it failed, if it
/// did. Success is a 2xx answer within the attempt's time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

impl Answer {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// A failure before or without an answer.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            status_code: None,
            error: Some(shorten(reason.into())),
        }
    }
}

/// Resolves names like the system does, then refuses the lot if any address is not allowed:
/// the client connects only to addresses checked at the moment it connects.
struct CheckedResolver {
    allow_private: bool,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            // Port 0: the client puts the URL's port in.
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|error| Refused(format!("host does not resolve ({error})")))?
                .collect();
            if addresses.is_empty() {
                return Err(Refused("host resolves to no address".into()).into());
            }
            for address in &addresses {
                outbound::check_address(address.ip(), allow_private)?;
            }
            let addresses: Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// The deliverer's HTTP client, shared by every attempt (connections are kept per endpoint).
#[derive(Clone)]
pub(crate) struct Caller {
    client: reqwest::Client,
    allow_private: bool,
}

impl Caller {
    pub fn new(allow_private: bool) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("Tally-Webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would connect on our behalf to unchecked addresses.
            .no_proxy()
            .https_only(!allow_private)
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(ATTEMPT_TIMEOUT)
            .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            allow_private,
        })
    }

    /// POSTs `body` to `url` with `headers`; what happened, within [`ATTEMPT_TIMEOUT`].
    pub async fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        // The URL's form and a literal address are checked here (the resolver never sees a
        // literal); a name's addresses are checked by the resolver.
        let url: Url = match outbound::check_url(url, self.allow_private) {
            Ok(url) => url,
            Err(refused) => return Answer::failed(format!("url refused: {refused}")),
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.exchange(url, headers, body)).await {
            Ok(answer) => answer,
            Err(_) => Answer::failed(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
        }
    }

    async fn exchange(&self, url: Url, headers: &[(&str, String)], body: Vec<u8>) -> Answer {
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut response = match request.body(body).send().await {
            Ok(response) => response,
            Err(error) => return Answer::failed(describe(&error)),
        };
        let status = response.status();
        // A few KiB at most, so that a short answer leaves its connection reusable.
        let mut read = 0;
        while read < ANSWER_BYTES_MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        let error = if status.is_success() {
            None
        } else if status.is_redirection() {
            Some(format!("answered {status} (redirects are not followed)"))
        } else {
            Some(format!("answered {status}"))
        };
        Answer {
            status_code: Some(status.as_u16()),
            error: error.map(shorten),
        }
    }
}

/// A short reason for a failed request: the address refusal, the timeout, or the innermost
/// cause (a connection refused, a TLS failure…).
fn describe(error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    let mut innermost = error.to_string();
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<Refused>() {
            return format!("url refused: {refused}");
        }
        innermost = current.to_string();
        source = current.source();
    }
    if error.is_timeout() {
        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
    } else if error.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        format!("request failed: {innermost}")
    }
}

/// At most [`REASON_CHARS_MAX`] characters.
fn shorten(mut reason: String) -> String {
    if let Some((cut, _)) = reason.char_indices().nth(REASON_CHARS_MAX) {
        reason.truncate(cut);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_unless_allowed() {
        let refusing = CheckedResolver {
            allow_private: false,
        };
        let error = refusing
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert!(error.downcast_ref::<Refused>().is_some(), "{error}");

        let allowing = CheckedResolver {
            allow_private: true,
        };
        let addresses: Vec<SocketAddr> = allowing
            .resolve("localhost".parse().unwrap())
            .await
            .expect("resolved")
            .collect();
        assert!(addresses.iter().all(|address| address.ip().is_loopback()));
    }

    #[tokio::test]
    async fn a_literal_private_address_is_refused_before_any_connection() {
        let caller = Caller::new(false).unwrap();
        let answer = caller
            .post("https://127.0.0.1:9/hook", &[], b"{}".to_vec())
            .await;
        assert_eq!(answer.status_code, None);
        let reason = answer.error.expect("failed");
        assert!(reason.starts_with("url refused"), "{reason}");
    }

    #[tokio::test]
    async fn a_refusal_by_the_resolver_is_the_reason_given() {
        let caller = Caller::new(false).unwrap();
        // `post` would refuse the name itself; the resolver is what stands behind it.
        let url = Url::parse("https://localhost:9/hook").unwrap();
        let answer = caller.exchange(url, &[], b"{}".to_vec()).await;
        let reason = answer.error.expect("failed");
        assert!(reason.starts_with("url refused: resolves to"), "{reason}");
    }

    #[test]
    fn reasons_are_kept_short() {
        let long = "é".repeat(REASON_CHARS_MAX * 2);
        assert_eq!(shorten(long).chars().count(), REASON_CHARS_MAX);
    }
}
