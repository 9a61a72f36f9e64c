//! Where the emulator's "now" comes from. The submission window, the month-end rule and future-timestamp checks
//! all read it, so tests (and the agent's `--simulate`) can put the service at any instant.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// Real wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; for tests that must land on exact hours and month ends.
#[derive(Debug)]
pub struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self(Mutex::new(start))
    }

    /// A clock at `secs` seconds after the Unix epoch.
    pub fn at_epoch_secs(secs: u64) -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(secs))
    }

    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the epoch (negative before it), so times before 1970 never panic.
pub(crate) fn epoch_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) const HOUR_MS: i64 = 3_600_000;

pub(crate) fn hour_start_ms(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The month-end cap: records for a month are accepted until 06:00 UTC on the 1st of the next month.
/// Returns that instant (ms) for the month containing `ms`.
pub(crate) fn month_grace_end_ms(ms: i64) -> Option<i64> {
    use chrono::{Datelike, NaiveDate};
    let dt = chrono::DateTime::from_timestamp_millis(ms)?;
    let (y, m) = if dt.month() == 12 { (dt.year() + 1, 1) } else { (dt.year(), dt.month() + 1) };
    let first = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(6, 0, 0)?;
    Some(first.and_utc().timestamp_millis())
}

/// Same UTC calendar month.
pub(crate) fn same_month(a_ms: i64, b_ms: i64) -> bool {
    use chrono::Datelike;
    match (chrono::DateTime::from_timestamp_millis(a_ms), chrono::DateTime::from_timestamp_millis(b_ms)) {
        (Some(a), Some(b)) => a.year() == b.year() && a.month() == b.month(),
        _ => false,
    }
}

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// RFC 7231 `Date` header form: `Fri, 27 Nov 2026 12:30:00 GMT`.
pub(crate) fn http_date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_grace_end_rolls_over_the_year() {
        // 2026-12-31T23:00:00Z
        let dec31 = 1_798_758_000_000;
        assert_eq!(rfc3339(dec31), "2026-12-31T23:00:00Z");
        assert_eq!(rfc3339(month_grace_end_ms(dec31).unwrap()), "2027-01-01T06:00:00Z");
        assert!(!same_month(dec31, dec31 + HOUR_MS));
        assert!(same_month(dec31, dec31 + 59 * 60_000));
    }

    #[test]
    fn hour_start_is_utc_floor() {
        assert_eq!(hour_start_ms(HOUR_MS + 1), HOUR_MS);
        assert_eq!(hour_start_ms(-1), -HOUR_MS);
    }
}
