//! The retry schedule of outbound event deliveries (`TALLY_WEBHOOK_RETRY_SCHEDULE`): the delays
//! between a delivery's attempts, e.g. `5s,5m,30m,2h,5h,10h,10h`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The schedule when none is configured: retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and
/// 10 h (about 28 hours in all), then failed.
pub const RETRY_SCHEDULE_DEFAULT: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Most retries a schedule may list.
const RETRIES_MAX: usize = 100;

/// Longest a whole schedule may take: a delivery waits for its next attempt in the delivery
/// stream, which keeps a message at most `DELIVERY_MAX_AGE` (7 days); a day is left for outages.
const SCHEDULE_TOTAL_MAX: Duration =
    Duration::from_secs(tally_common::broker::DELIVERY_MAX_AGE.as_secs() - 24 * 3600);

/// The delays before each retry of a failed delivery, in order: the `n`th failed attempt is
/// retried after the `n`th delay; a delivery whose attempts outnumber the delays has failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// How long to wait after the `attempts`th failed attempt (counting from 1), or `None`
    /// when the schedule is exhausted and the delivery has failed.
    pub fn delay_after(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    /// The delays, in order.
    pub fn delays(&self) -> &[Duration] {
        &self.delays
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RETRY_SCHEDULE_DEFAULT
            .parse()
            .expect("the default schedule parses")
    }
}

impl FromStr for RetrySchedule {
    type Err = String;

    /// Comma-separated delays, each a whole number of seconds, minutes or hours (`30s`, `5m`,
    /// `2h`) of at least one second.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let delays = text
            .split(',')
            .map(|item| parse_delay(item.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > RETRIES_MAX {
            return Err(format!("lists more than {RETRIES_MAX} retries"));
        }
        let total: Duration = delays.iter().sum();
        if total > SCHEDULE_TOTAL_MAX {
            return Err(format!(
                "takes {}h in all, more than the {}h a delivery may wait in its stream",
                total.as_secs() / 3600,
                SCHEDULE_TOTAL_MAX.as_secs() / 3600
            ));
        }
        Ok(Self { delays })
    }
}

/// One delay: digits, then `s`, `m` or `h`.
fn parse_delay(item: &str) -> Result<Duration, String> {
    let unit_at = item
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{item}` has no unit (s, m or h)"))?;
    let (digits, unit) = item.split_at(unit_at);
    let count: u64 = digits
        .parse()
        .map_err(|_| format!("`{item}` is not a whole number followed by s, m or h"))?;
    let seconds = match unit {
        "s" => Some(count),
        "m" => count.checked_mul(60),
        "h" => count.checked_mul(3600),
        _ => return Err(format!("`{item}` has an unknown unit (use s, m or h)")),
    }
    .filter(|seconds| *seconds > 0 && *seconds <= SCHEDULE_TOTAL_MAX.as_secs())
    .ok_or_else(|| format!("`{item}` is not between 1s and the longest schedule"))?;
    Ok(Duration::from_secs(seconds))
}

impl fmt::Display for RetrySchedule {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, delay) in self.delays.iter().enumerate() {
            if index > 0 {
                formatter.write_str(",")?;
            }
            let seconds = delay.as_secs();
            match seconds {
                s if s % 3600 == 0 => write!(formatter, "{}h", s / 3600)?,
                s if s % 60 == 0 => write!(formatter, "{}m", s / 60)?,
                s => write!(formatter, "{s}s")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_is_the_documented_one() {
        let schedule = RetrySchedule::default();
        let hours = |h: u64| Duration::from_secs(h * 3600);
        assert_eq!(
            schedule.delays(),
            [
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                hours(2),
                hours(5),
                hours(10),
                hours(10),
            ]
        );
        assert_eq!(schedule.to_string(), RETRY_SCHEDULE_DEFAULT);
    }

    #[test]
    fn each_failed_attempt_waits_for_its_delay_until_the_schedule_runs_out() {
        let schedule: RetrySchedule = "1s, 2s,4s".parse().unwrap();
        assert_eq!(schedule.delay_after(1), Some(Duration::from_secs(1)));
        assert_eq!(schedule.delay_after(3), Some(Duration::from_secs(4)));
        assert_eq!(schedule.delay_after(4), None);
        assert_eq!(schedule.delay_after(0), None);
    }

    #[test]
    fn malformed_schedules_are_refused_with_a_reason() {
        for bad in [
            "",
            "5",
            "5x",
            "s",
            "-5s",
            "0s",
            "1.5s",
            "5s,,5s",
            "5 s",
            "200h",
            "100h,100h",
        ] {
            assert!(bad.parse::<RetrySchedule>().is_err(), "{bad:?} parsed");
        }
        let reason = "5s,5d".parse::<RetrySchedule>().unwrap_err();
        assert!(reason.contains("5d"), "{reason}");
    }
}
