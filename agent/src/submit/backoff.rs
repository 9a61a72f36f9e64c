//! Pacing: a token bucket that keeps meterd under its share of AWS's rate limit, and exponential backoff
//! with full jitter so many records (or agents) retrying never move in lockstep.

use std::time::Duration;

use rand::Rng;

/// Calls are spaced at least 1/rate apart (burst of one): meterd itself never causes throttling.
pub struct RateLimiter {
    interval: Duration,
    next: Option<tokio::time::Instant>,
}

impl RateLimiter {
    pub fn new(calls_per_second: f64) -> Self {
        Self { interval: Duration::from_secs_f64(1.0 / calls_per_second), next: None }
    }

    pub async fn acquire(&mut self) {
        let now = tokio::time::Instant::now();
        let at = self.next.map_or(now, |n| n.max(now));
        self.next = Some(at + self.interval);
        tokio::time::sleep_until(at).await;
    }
}

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

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_calls() {
        let mut l = RateLimiter::new(5.0);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        // 11 calls at 5/s: the last may start after 10 intervals, never sooner.
        assert!(start.elapsed() >= Duration::from_millis(2000));
    }
}
