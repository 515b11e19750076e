//! When to send a request again, and how long to wait first: exponential backoff with jitter,
//! never sooner than the server's `Retry-After`.

use std::time::Duration;

/// Retries after the first attempt unless the client says otherwise (3 attempts at most).
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Backoff before the first retry; doubled for each further one.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Longest backoff between two attempts (before `Retry-After`).
pub const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Longest `Retry-After` the client waits out; a server asking for more gets its error back
/// instead of a retry, since retrying sooner than it says is never done.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: DEFAULT_MAX_RETRIES,
            base: BACKOFF_BASE,
            max_backoff: BACKOFF_MAX,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry), or `None` when no retry is
    /// left or the server asked for a longer pause than [`RETRY_AFTER_MAX`]. `jitter` in
    /// `[0, 1]` picks a point in the upper half of the backoff (half of it is kept so the
    /// waits still grow), and `Retry-After` is a floor.
    pub fn delay(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if retry >= self.max_retries {
            return None;
        }
        if retry_after.is_some_and(|after| after > RETRY_AFTER_MAX) {
            return None;
        }
        let exponential = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let jitter = jitter.clamp(0.0, 1.0);
        let backoff = exponential / 2 + exponential.mul_f64(jitter / 2.0);
        Some(backoff.max(retry_after.unwrap_or(Duration::ZERO)))
    }
}

/// `Retry-After` as seconds (`"2"`, or a fraction such as `"0.5"`); an HTTP date or anything
/// else is ignored.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_doubles_for_each_retry_until_its_cap() {
        let policy = policy(10);
        let full = |retry| policy.delay(retry, None, 1.0).unwrap();
        assert_eq!(full(0), Duration::from_millis(250));
        assert_eq!(full(1), Duration::from_millis(500));
        assert_eq!(full(2), Duration::from_secs(1));
        assert_eq!(full(5), Duration::from_secs(8));
        assert_eq!(full(9), Duration::from_secs(8));
    }

    #[test]
    fn jitter_keeps_at_least_half_of_the_backoff() {
        let policy = policy(3);
        assert_eq!(policy.delay(1, None, 0.0), Some(Duration::from_millis(250)));
        assert_eq!(policy.delay(1, None, 0.5), Some(Duration::from_millis(375)));
        assert_eq!(policy.delay(1, None, 7.0), Some(Duration::from_millis(500)));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = policy(3);
        let after = Some(Duration::from_secs(3));
        assert_eq!(policy.delay(0, after, 1.0), Some(Duration::from_secs(3)));
        assert_eq!(
            policy.delay(0, Some(Duration::from_millis(10)), 1.0),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn max_retries_counts_retries_after_the_first_attempt() {
        assert_eq!(policy(0).delay(0, None, 1.0), None);
        let two = policy(2);
        assert!(two.delay(0, None, 1.0).is_some());
        assert!(two.delay(1, None, 1.0).is_some());
        assert_eq!(two.delay(2, None, 1.0), None);
    }

    #[test]
    fn a_retry_after_beyond_the_limit_gives_up_rather_than_retry_early() {
        assert_eq!(policy(2).delay(0, Some(Duration::from_secs(61)), 1.0), None);
        assert_eq!(
            policy(2).delay(0, Some(RETRY_AFTER_MAX), 1.0),
            Some(RETRY_AFTER_MAX)
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }
}
