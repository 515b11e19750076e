//! Requests that concurrent callers hand to one task, which serves whatever queued up together.
//!
//! A caller sends its item with a `oneshot` for the answer; the task takes the first item and
//! everything queued behind it (up to `max`, never waiting for more) and runs `serve` on the
//! group, with at most `in_flight` groups running at once. An idle service answers a lone
//! request at once; under load one statement carries many requests, so Postgres and the
//! ingress pay one round trip, one parse and one wakeup per group instead of per request.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

/// Sizes of a grouping task.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most items in one group.
    pub max: usize,
    /// Items waiting for the task, at most (senders wait beyond it).
    pub queue: usize,
    /// Groups served at once: one may run while the next forms.
    pub in_flight: usize,
}

/// Starts the task; items sent to the returned queue are served in groups by `serve`.
pub fn start<T, F, Fut>(limits: Limits, serve: F) -> mpsc::Sender<T>
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, mut queue) = mpsc::channel(limits.queue);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(limits.in_flight));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut group = vec![first];
            while group.len() < limits.max {
                match queue.try_recv() {
                    Ok(item) => group.push(item),
                    Err(_) => break,
                }
            }
            let served = serve(group);
            tokio::spawn(async move {
                served.await;
                drop(slot);
            });
        }
    });
    sender
}
