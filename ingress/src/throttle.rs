//! Failed authentication is budgeted per client address, so that guessing keys, tokens or
//! webhook signatures is slow and a flood of bad credentials costs the database nothing.
//!
//! - **The client address** is the socket's peer, or — when the peer is one of
//!   `TALLY_TRUSTED_PROXIES` — the right-most address of `X-Forwarded-For` that is not a
//!   trusted proxy (the left part of the header is whatever the client wrote). IPv6 addresses
//!   count by their /64, the block one end site is given, so a client cannot make itself a
//!   fresh budget per address.
//! - **Budgets**: a token bucket per address, [`AUTH_FAILURES_PER_MINUTE_DEFAULT`] failures a
//!   minute for API keys, admin tokens and webhook signatures, and a stricter one,
//!   [`LOGIN_FAILURES_PER_MINUTE_DEFAULT`], for dashboard logins. A failure takes a token;
//!   an address without tokens gets `429` with `Retry-After` before anything is looked up,
//!   unless it presents a key already known to be valid. Successes cost nothing.
//! - **Memory** is bounded: at most [`CLIENTS_MAX`] addresses are tracked. When the table is
//!   full, addresses whose budget has refilled are forgotten (at most once every
//!   [`SWEEP_INTERVAL`]); if it is still full, every address not in it shares one overflow
//!   budget — a spread-out attack is then throttled as one client rather than not at all.
//!
//! The budgets live in each ingress's memory: with N ingresses an address may fail up to N
//! times the budget.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

use crate::error::ApiError;
use crate::{AbuseConfig, AppState};

/// Failed authentications a client address may make a minute (the contract's 100).
pub const AUTH_FAILURES_PER_MINUTE_DEFAULT: u32 = 100;
/// Failed dashboard logins a client address may make a minute (the contract's 10).
pub const LOGIN_FAILURES_PER_MINUTE_DEFAULT: u32 = 10;
/// Most client addresses a budget tracks (about 50 bytes each).
pub const CLIENTS_MAX: usize = 100_000;
/// Least time between two sweeps of a full table: a sweep walks every entry.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What failed: the label of `tally_ingress_auth_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A missing, malformed, unknown or revoked API key.
    ApiKey,
    /// A missing or wrong admin token on `/admin/*`.
    AdminToken,
    /// A payment webhook that is not signed by a secret of its app, or names no app.
    WebhookSignature,
    /// A wrong token at the dashboard's login.
    DashboardLogin,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::AdminToken => "admin_token",
            Self::WebhookSignature => "webhook_signature",
            Self::DashboardLogin => "dashboard_login",
        }
    }
}

/// The client addresses of this ingress and their budgets.
pub struct Throttle {
    trusted_proxies: Vec<IpNet>,
    auth: FailureBudget,
    logins: FailureBudget,
}

impl Throttle {
    pub fn from_config(config: &AbuseConfig) -> anyhow::Result<Self> {
        Ok(Self {
            trusted_proxies: parse_proxies(config.trusted_proxies.as_deref().unwrap_or(""))?,
            auth: FailureBudget::new(config.auth_failures_per_minute, CLIENTS_MAX),
            logins: FailureBudget::new(config.login_failures_per_minute, CLIENTS_MAX),
        })
    }

    /// The address a request is budgeted under (see the module's documentation).
    pub fn client(&self, extensions: &Extensions, headers: &HeaderMap) -> IpAddr {
        let peer = crate::server::peer(extensions)
            .map(|addr| addr.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        budget_key(forwarded_client(
            canonical(peer),
            headers,
            &self.trusted_proxies,
        ))
    }

    /// `429` when `client` has spent its failed-authentication budget.
    pub fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        refuse_when_spent(self.auth.over_budget(client), "failed_auth")
    }

    /// Records one failed authentication of `client`.
    pub fn failed(&self, client: IpAddr, failure: Failure) {
        metrics::counter!("tally_ingress_auth_failures_total", "kind" => failure.as_str())
            .increment(1);
        self.auth.fail(client);
    }

    /// `429` when `client` has spent its dashboard login budget.
    pub fn check_login(&self, client: IpAddr) -> Result<(), ApiError> {
        refuse_when_spent(self.logins.over_budget(client), "dashboard_login")
    }

    /// Records one failed dashboard login of `client`.
    pub fn login_failed(&self, client: IpAddr) {
        metrics::counter!("tally_ingress_auth_failures_total", "kind" => Failure::DashboardLogin.as_str())
            .increment(1);
        self.logins.fail(client);
    }
}

fn refuse_when_spent(wait: Option<Duration>, kind: &'static str) -> Result<(), ApiError> {
    match wait {
        None => Ok(()),
        Some(wait) => {
            metrics::counter!("tally_ingress_rate_limited_total", "kind" => kind).increment(1);
            Err(ApiError::Throttled {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            })
        }
    }
}

/// The address a request is budgeted under ([`Throttle::client`]), as an extractor.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            state.throttle.client(&parts.extensions, &parts.headers),
        ))
    }
}

/// `TALLY_TRUSTED_PROXIES`: comma-separated addresses and CIDRs.
pub fn parse_proxies(text: &str) -> anyhow::Result<Vec<IpNet>> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(|net| match net {
                    // A v4 proxy may reach a dual-stack socket as a v4-mapped v6 peer; peers are
                    // compared in their v4 form.
                    IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                        Some(v4) if v6.prefix_len() >= 96 => {
                            ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                                .map(IpNet::V4)
                                .unwrap_or(IpNet::V6(v6))
                        }
                        _ => IpNet::V6(v6),
                    },
                    net => net,
                })
                .with_context(|| {
                    format!("TALLY_TRUSTED_PROXIES: `{entry}` is not an IP address or CIDR")
                })
        })
        .collect()
}

/// A v4-mapped v6 address as the v4 address it is.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// What an address is budgeted under: itself (v4), or its /64 (v6).
fn budget_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy; then the right-most
/// hop of `X-Forwarded-For` that is not a trusted proxy. A hop that is not an address ends the
/// walk at the proxy that wrote it; when every hop is trusted, the left-most one.
fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|value| value.as_bytes())
        .collect();
    let hops = values
        .iter()
        .flat_map(|value| value.split(|byte| *byte == b','));
    let mut client = peer;
    for hop in hops.rev() {
        let Some(addr) = parse_hop(hop) else {
            break;
        };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`[v6]:port`, `v4:port`).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(canonical)
}

/// A token bucket per client address: `per_minute` tokens, refilled at `per_minute` a minute;
/// each failure takes one.
struct FailureBudget {
    per_minute: u32,
    clients_max: usize,
    clients: Mutex<Clients>,
}

struct Clients {
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by every address not in `buckets` while it is full.
    overflow: Bucket,
    swept: Option<Instant>,
}

/// `tokens` as of `updated`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl FailureBudget {
    fn new(per_minute: u32, clients_max: usize) -> Self {
        let now = Instant::now();
        Self {
            per_minute: per_minute.max(1),
            clients_max,
            clients: Mutex::new(Clients {
                buckets: HashMap::new(),
                overflow: Bucket {
                    tokens: f64::from(per_minute),
                    updated: now,
                },
                swept: None,
            }),
        }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// The bucket's tokens at `now`.
    fn tokens(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.per_second()).min(f64::from(self.per_minute))
    }

    fn over_budget(&self, client: IpAddr) -> Option<Duration> {
        self.over_budget_at(client, Instant::now())
    }

    /// How long until `client` may fail again, if it may not now.
    fn over_budget_at(&self, client: IpAddr, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().expect("failure budget lock");
        let bucket = match clients.buckets.get(&client) {
            Some(bucket) => bucket,
            None if clients.buckets.len() >= self.clients_max => &clients.overflow,
            None => return None,
        };
        let tokens = self.tokens(bucket, now);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.per_second()))
    }

    fn fail(&self, client: IpAddr) {
        self.fail_at(client, Instant::now());
    }

    fn fail_at(&self, client: IpAddr, now: Instant) {
        let mut guard = self.clients.lock().expect("failure budget lock");
        let clients = &mut *guard;
        if !clients.buckets.contains_key(&client) && clients.buckets.len() >= self.clients_max {
            let due = clients
                .swept
                .is_none_or(|swept| now.saturating_duration_since(swept) >= SWEEP_INTERVAL);
            if due {
                clients.swept = Some(now);
                let full = f64::from(self.per_minute);
                clients
                    .buckets
                    .retain(|_, bucket| self.tokens(bucket, now) < full);
            }
        }
        let full = Bucket {
            tokens: f64::from(self.per_minute),
            updated: now,
        };
        let bucket = if clients.buckets.len() < self.clients_max {
            clients.buckets.entry(client).or_insert(full)
        } else {
            clients
                .buckets
                .get_mut(&client)
                .unwrap_or(&mut clients.overflow)
        };
        bucket.tokens = (self.tokens(bucket, now) - 1.0).max(0.0);
        bucket.updated = now.max(bucket.updated);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients
            .lock()
            .expect("failure budget lock")
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_is_refused_after_its_budget_then_admitted_as_it_refills() {
        let budget = FailureBudget::new(60, 10);
        let (client, other) = (addr("192.0.2.1"), addr("192.0.2.2"));
        let start = Instant::now();
        for _ in 0..60 {
            assert_eq!(budget.over_budget_at(client, start), None);
            budget.fail_at(client, start);
        }
        let wait = budget.over_budget_at(client, start).expect("spent");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(budget.over_budget_at(other, start), None);
        // One failure a second refills at 60 a minute.
        let later = start + Duration::from_secs(1);
        assert_eq!(budget.over_budget_at(client, later), None);
        budget.fail_at(client, later);
        assert!(budget.over_budget_at(client, later).is_some());
    }

    #[test]
    fn the_table_stays_bounded_and_the_overflow_is_throttled_as_one_client() {
        let budget = FailureBudget::new(3, 4);
        let now = Instant::now();
        for i in 0..4 {
            budget.fail_at(addr(&format!("192.0.2.{i}")), now);
        }
        assert_eq!(budget.tracked(), 4);
        // Full of clients that have not refilled: newcomers share the overflow budget.
        for i in 10..13 {
            let client = addr(&format!("192.0.2.{i}"));
            assert_eq!(budget.over_budget_at(client, now), None);
            budget.fail_at(client, now);
        }
        assert_eq!(budget.tracked(), 4);
        assert!(budget.over_budget_at(addr("198.51.100.7"), now).is_some());
        // Tracked clients keep their own budgets.
        assert_eq!(budget.over_budget_at(addr("192.0.2.0"), now), None);
        // Once the tracked clients have refilled they are forgotten and newcomers tracked.
        let later = now + Duration::from_secs(60);
        budget.fail_at(addr("198.51.100.7"), later);
        assert_eq!(budget.tracked(), 1);
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let trusted = parse_proxies("10.0.0.0/8, 192.0.2.9").unwrap();
        let headers = forwarded(&["203.0.113.5, 10.1.1.1"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            forwarded_client(addr("198.51.100.1"), &headers, &trusted),
            addr("198.51.100.1")
        );
        // Through two trusted proxies: the right-most untrusted hop.
        assert_eq!(
            forwarded_client(addr("192.0.2.9"), &headers, &trusted),
            addr("203.0.113.5")
        );
        // What the client wrote on the left is not believed.
        let spoofed = forwarded(&["1.2.3.4", "203.0.113.5"]);
        assert_eq!(
            forwarded_client(addr("10.0.0.1"), &spoofed, &trusted),
            addr("203.0.113.5")
        );
        // Garbage ends the walk at the proxy that passed it on.
        let garbage = forwarded(&["203.0.113.5, nonsense, 10.2.2.2"]);
        assert_eq!(
            forwarded_client(addr("10.0.0.1"), &garbage, &trusted),
            addr("10.2.2.2")
        );
        // No header: the proxy itself.
        assert_eq!(
            forwarded_client(addr("10.0.0.1"), &HeaderMap::new(), &trusted),
            addr("10.0.0.1")
        );
        // Ports and brackets are allowed.
        let ported = forwarded(&["[2001:db8::1]:4711, 203.0.113.5:80"]);
        assert_eq!(
            forwarded_client(addr("10.0.0.1"), &ported, &trusted),
            addr("203.0.113.5")
        );
    }

    #[test]
    fn v6_clients_count_by_their_64_and_mapped_v4_is_v4() {
        assert_eq!(
            budget_key(addr("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            addr("2001:db8:1:2::")
        );
        assert_eq!(canonical(addr("::ffff:192.0.2.1")), addr("192.0.2.1"));
        let trusted = parse_proxies("::ffff:10.0.0.0/104").unwrap();
        assert!(trusted[0].contains(&addr("10.1.2.3")));
    }

    #[test]
    fn a_bad_proxy_list_names_the_variable() {
        let error = parse_proxies("10.0.0.0/8, example.com").unwrap_err();
        assert!(format!("{error:#}").contains("TALLY_TRUSTED_PROXIES"));
        assert!(parse_proxies("").unwrap().is_empty());
        assert!(parse_proxies(" , ").unwrap().is_empty());
    }
}
