//! The deliverer: calls the apps' endpoints with their events.

mod schedule;

pub use self::schedule::{RetrySchedule, RETRY_SCHEDULE_DEFAULT};
