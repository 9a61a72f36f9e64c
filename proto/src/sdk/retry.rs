//! Retry timing: exponential backoff with jitter, bounded by attempts and by the call's overall timeout.

use std::time::Duration;

/// How a call is retried when the agent is unavailable or slow. Every retry resends the same request, with the
/// same idempotency keys, so a retry can never count an event twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Pause before the first retry; doubled after every retry, up to `max_backoff`. Each pause is drawn
    /// uniformly from [half, all] of the current value.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts, 20 ms doubling to 1 s: about 5 s of retrying, enough for an agent restart.
    fn default() -> Self {
        Self { max_attempts: 10, initial_backoff: Duration::from_millis(20), max_backoff: Duration::from_secs(1) }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The pause before retry number `retry` (1-based).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(20)).min(self.max_backoff);
        let half = base / 2;
        half + Duration::from_nanos(rand::random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(10) && b1 <= Duration::from_millis(20), "{b1:?}");
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(40) && b3 <= Duration::from_millis(80), "{b3:?}");
            assert!(p.backoff(40) <= Duration::from_secs(1));
        }
    }
}
