//! The HTTP server: accepts connections up to a cap and serves each with hyper's HTTP/1
//! connection driven by a timer, so that no client holds a connection, a request or a slot
//! for free.
//!
//! - **Headers**: a request's headers must be complete within the header deadline (hyper's
//!   `header_read_timeout`, which also runs while a kept-alive connection waits for its next
//!   request), or the connection is closed.
//! - **Bodies**: a body that sends nothing for the body stall deadline fails to read
//!   (tower-http's [`RequestBodyTimeoutLayer`], restarted at every chunk); the handler answers
//!   `408` ([`crate::validate::raw_body`]) and the connection closes.
//! - **Connections**: at most `connections_max` are served at once; past it the listener is not
//!   read until one closes (new clients wait in the kernel's backlog), so a flood of idle
//!   connections costs bounded memory and file descriptors, and every one of them is gone
//!   within a deadline.
//!
//! HTTP/2 is not served: no client of the API needs it, and hyper-util's `auto` builder reads
//! the protocol preface before the header deadline starts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long a client may take to send a request's headers (the contract's 10 s).
pub const HEADER_READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a request body may send nothing before the request fails (the contract's 30 s).
pub const BODY_STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Connections served at once by default. Each idle one costs a task and its buffers (a few
/// KiB) and a file descriptor: keep the cap under the process's descriptor limit.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// How long a stopping ingress waits for its requests in flight before it exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Pause after an accept error that is not about one connection (out of file descriptors):
/// retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The server's deadlines and caps.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub body_stall_timeout: Duration,
    pub connections_max: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT_DEFAULT,
            body_stall_timeout: BODY_STALL_TIMEOUT_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets the
/// connections finish what they are doing (at most [`SHUTDOWN_GRACE`]) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = router.layer(RequestBodyTimeoutLayer::new(limits.body_stall_timeout));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_connection_error(&error) {
                        tracing::error!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = graceful
            .watch(http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service)));
        metrics::gauge!("tally_ingress_connections").increment(1.0);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            metrics::gauge!("tally_ingress_connections").decrement(1.0);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; exiting anyway");
    }
}

/// Errors of one connection (it was reset before it was accepted): nothing to wait for.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The peer a request came from, as [`serve`] records it (`None` outside a server, in tests
/// that call the router directly).
pub fn peer(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr)
}
