//! Fault decisions and the calls-per-second limit. Every call draws the same number of random values in the
//! same order whatever the probabilities are, so a seed replays a run exactly (for a serial client), and
//! changing one probability does not reshuffle the others.

use std::time::Instant;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// A token bucket on real (monotonic) time: the quota is about calls per real second, whatever the service
/// clock says, so a frozen or fast-forwarded test clock neither starves nor floods it.
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
    pub fn try_take(&mut self) -> bool {
        if self.per_sec <= 0.0 {
            return true;
        }
        let now = Instant::now();
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
        let mut b = TokenBucket::new(3.0);
        let ok = (0..10).filter(|_| b.try_take()).count();
        assert!((3..=4).contains(&ok), "{ok}");
        let mut off = TokenBucket::new(0.0);
        assert!((0..100).all(|_| off.try_take()));
    }
}
