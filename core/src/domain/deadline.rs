//! When a sealed hour must be accepted by: AWS's window, capped at month end, minus a safety margin.

use chrono::{Datelike, TimeZone, Utc};

use crate::clock::UnixMillis;

/// 06:00 UTC on the 1st of the month after the one containing `hour_ms`: AWS's month-end cut-off.
pub fn month_end_cutoff(hour_ms: UnixMillis) -> UnixMillis {
    let Some(t) = Utc.timestamp_millis_opt(hour_ms).single() else { return i64::MAX };
    let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
    Utc.with_ymd_and_hms(y, m, 1, 6, 0, 0).single().map(|d| d.timestamp_millis()).unwrap_or(i64::MAX)
}

/// min(hour start + window, month-end cut-off) − margin.
pub fn deadline(hour_ms: UnixMillis, window_ms: i64, margin_ms: i64) -> UnixMillis {
    hour_ms.saturating_add(window_ms).min(month_end_cutoff(hour_ms)).saturating_sub(margin_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i32, mo: u32, d: u32, h: u32) -> UnixMillis {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap().timestamp_millis()
    }
    const H: i64 = 3_600_000;

    #[test]
    fn mid_month_hours_get_the_full_window() {
        assert_eq!(deadline(ms(2026, 11, 10, 5), 24 * H, 0), ms(2026, 11, 11, 5));
        assert_eq!(deadline(ms(2026, 11, 10, 5), 24 * H, H), ms(2026, 11, 11, 4));
    }

    #[test]
    fn the_last_hours_of_a_month_are_capped_at_six_on_the_first() {
        assert_eq!(deadline(ms(2026, 11, 30, 23), 24 * H, 0), ms(2026, 12, 1, 6));
        assert_eq!(deadline(ms(2026, 11, 30, 5), 24 * H, 0), ms(2026, 12, 1, 5));
        assert_eq!(deadline(ms(2026, 12, 31, 22), 24 * H, 30 * 60_000), ms(2027, 1, 1, 6) - 30 * 60_000);
        // February in a leap year.
        assert_eq!(deadline(ms(2028, 2, 29, 12), 24 * H, 0), ms(2028, 3, 1, 6));
    }

    /// AWS's ceiling is 10 BatchMeterUsage calls/s x 25 records = 900,000 records an hour, so a seller at the
    /// ceiling needs every hour's whole quota to send the previous hour. Deadlines never decrease with the hour
    /// (both terms of the min are non-decreasing), so the queue's most-urgent-first order is oldest hour first:
    /// each full hour, sealed `seal_grace` after it ends, is sent within the hour after, and every record meets
    /// its deadline with either window, across a month end (where the last day's hours all fall due at 06:00 on
    /// the 1st) and with the default 30-minute margin.
    #[test]
    fn a_full_hour_every_hour_at_the_quota_meets_every_deadline_across_a_month_end() {
        let (records_per_hour, per_second) = (900_000i64, 250i64);
        let (grace, margin) = (5 * 60_000, 30 * 60_000);
        for window in [24 * H, 6 * H] {
            let first = ms(2026, 11, 28, 0);
            let hours: Vec<i64> = (0..5 * 24).map(|i| first + i * H).collect();
            let deadlines: Vec<i64> = hours.iter().map(|h| deadline(*h, window, margin)).collect();
            assert!(deadlines.windows(2).all(|w| w[0] <= w[1]), "most urgent first = oldest hour first");
            let mut sent_by = i64::MIN;
            for h in hours {
                let sealed = h + H + grace;
                sent_by = sent_by.max(sealed) + records_per_hour / per_second * 1000;
                assert!(sent_by <= deadline(h, window, margin), "hour {h} in window {window}");
            }
        }
    }

    #[test]
    fn a_short_window_is_never_extended_by_the_month_end_rule() {
        assert_eq!(deadline(ms(2026, 11, 30, 23), 6 * H, 0), ms(2026, 12, 1, 5));
    }
}
