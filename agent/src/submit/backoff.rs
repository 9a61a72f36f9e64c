//! Exponential backoff with full jitter, so many records (or agents) retrying never move in lockstep. (Call
//! pacing is `pacing.rs`.)

use std::time::Duration;

use rand::Rng;

const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(300);

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)].
pub fn full_jitter(attempt: u32) -> Duration {
    let ceiling = BASE.saturating_mul(1u32 << attempt.min(16)).min(CAP);
    rand::rng().random_range(Duration::ZERO..=ceiling)
}

/// When a record in flight may be resent if this attempt's outcome is never learned (crash, timeout,
/// unprocessed): a little after a call could possibly still be running, growing with each attempt.
pub fn record_retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(2) + full_jitter(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_ceiling() {
        for attempt in 0..40 {
            let d = full_jitter(attempt);
            assert!(d <= CAP);
            assert!(d <= BASE.saturating_mul(1 << attempt.min(16)));
        }
    }
}
