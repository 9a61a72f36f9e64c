//! Fault decisions and the calls-per-second limit. Every call draws the same number of random values in the
//! same order whatever the probabilities are, so a seed replays a run exactly (for a serial client), and
//! changing one probability does not reshuffle the others.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::Faults;

/// What to do to one call, decided before it is processed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CallFaults {
    pub drop_connection: bool,
    pub throttle: bool,
    pub internal_error: bool,
    pub drop_response: bool,
}

pub(crate) struct FaultRng {
    faults: ChaCha8Rng,
    ids: ChaCha8Rng,
}

impl FaultRng {
    pub fn new(seed: u64) -> Self {
        let mut ids = ChaCha8Rng::seed_from_u64(seed);
        // A separate stream, so how many ids were minted never shifts fault draws.
        ids.set_stream(1);
        Self { faults: ChaCha8Rng::seed_from_u64(seed), ids }
    }

    pub fn call(&mut self, f: &Faults) -> CallFaults {
        let draws: [f64; 4] = [self.faults.random(), self.faults.random(), self.faults.random(), self.faults.random()];
        CallFaults {
            drop_connection: draws[0] < f.drop_connection_probability,
            throttle: draws[1] < f.throttle_probability,
            internal_error: draws[2] < f.internal_error_probability,
            drop_response: draws[3] < f.drop_response_probability,
        }
    }

    pub fn unprocessed(&mut self, f: &Faults) -> bool {
        self.faults.random::<f64>() < f.unprocessed_probability
    }

    /// A MeteringRecordId: a UUID drawn from the seeded id stream.
    pub fn record_id(&mut self) -> String {
        let mut b = [0u8; 16];
        self.ids.fill_bytes(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid().to_string()
    }
}

/// The shape of the calls-per-second limit. AWS publishes the quota (10/s) but not how it is enforced, so a
/// client should be tested against more than one shape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitMode {
    /// Refills continuously, burst = one second's worth.
    #[default]
    TokenBucket,
    /// At most `rate` accepted calls in any rolling second (stricter: no credit for a slow moment earlier).
    RollingWindow,
}

/// Both limiters run on real (monotonic) time: the quota is about calls per real second, whatever the service
/// clock says, so a frozen or fast-forwarded test clock neither starves nor floods them.
pub(crate) enum RateLimiter {
    TokenBucket(TokenBucket),
    RollingWindow(RollingWindow),
}

impl RateLimiter {
    pub fn new(mode: RateLimitMode, per_sec: f64) -> Self {
        match mode {
            RateLimitMode::TokenBucket => Self::TokenBucket(TokenBucket::new(per_sec)),
            RateLimitMode::RollingWindow => Self::RollingWindow(RollingWindow::new(per_sec)),
        }
    }

    /// Admits one call; false means throttle. A rate of 0 means no limit.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        match self {
            Self::TokenBucket(b) => b.try_take_at(now),
            Self::RollingWindow(w) => w.try_take_at(now),
        }
    }
}

/// At most `n` admitted calls within any window of `n / rate` seconds, n = ⌈rate⌉ (so 10/s means 10 calls in
/// any rolling second, and a fractional rate keeps its average).
pub(crate) struct RollingWindow {
    max: usize,
    window: Duration,
    admitted: VecDeque<Instant>,
}

impl RollingWindow {
    pub fn new(per_sec: f64) -> Self {
        let max = if per_sec > 0.0 { per_sec.ceil().max(1.0) as usize } else { 0 };
        let window = if per_sec > 0.0 { Duration::from_secs_f64(max as f64 / per_sec) } else { Duration::ZERO };
        Self { max, window, admitted: VecDeque::with_capacity(max) }
    }

    pub fn try_take_at(&mut self, now: Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        while self.admitted.front().is_some_and(|t| now.saturating_duration_since(*t) >= self.window) {
            self.admitted.pop_front();
        }
        if self.admitted.len() < self.max {
            self.admitted.push_back(now);
            true
        } else {
            false
        }
    }
}

pub(crate) struct TokenBucket {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: f64) -> Self {
        // A burst of one second's worth, at least one call.
        let capacity = per_sec.max(1.0);
        Self { per_sec, capacity, tokens: capacity, last: Instant::now() }
    }

    /// Takes a token; false means throttle. A rate of 0 means no limit.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_decisions() {
        let f = Faults { throttle_probability: 0.5, unprocessed_probability: 0.3, ..Faults::default() };
        let run = |seed| {
            let mut r = FaultRng::new(seed);
            (0..50).map(|_| (r.call(&f), r.unprocessed(&f), r.record_id())).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn bucket_allows_a_burst_then_refuses() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0);
        let ok = (0..10).filter(|_| b.try_take_at(t0)).count();
        assert_eq!(ok, 3);
        // Half a second later, half a second's worth of tokens.
        let half = t0 + Duration::from_millis(500);
        assert_eq!((0..10).filter(|_| b.try_take_at(half)).count(), 1);
        let mut off = RateLimiter::new(RateLimitMode::TokenBucket, 0.0);
        assert!((0..100).all(|_| off.try_take()));
    }

    #[test]
    fn rolling_window_admits_at_most_rate_calls_in_any_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut w = RollingWindow::new(10.0);
        let mut b = TokenBucket::new(10.0);
        // A burst of 10 at 0 ms, then a call at 500 ms: the bucket has refilled 5 tokens, the window has none.
        assert!((0..10).all(|_| w.try_take_at(at(0)) && b.try_take_at(at(0))));
        assert!(b.try_take_at(at(500)));
        assert!(!w.try_take_at(at(500)));
        assert!(!w.try_take_at(at(999)));
        // One second after the burst, the whole window is free again.
        assert!((0..10).all(|_| w.try_take_at(at(1000))));
        assert!(!w.try_take_at(at(1000)));
        // Refused calls do not count: only admitted ones fill the window.
        assert!(w.try_take_at(at(2000)));
        // A fractional rate keeps its average: 2.5/s = 3 calls per 1.2 s.
        let mut f = RollingWindow::new(2.5);
        assert!((0..3).all(|_| f.try_take_at(at(0))));
        assert!(!f.try_take_at(at(1199)));
        assert!(f.try_take_at(at(1200)));
        let mut off = RateLimiter::new(RateLimitMode::RollingWindow, 0.0);
        assert!((0..100).all(|_| off.try_take()));
    }
}
