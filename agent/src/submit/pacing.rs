//! Adaptive pacing of one account's BatchMeterUsage calls, after the AWS SDKs' "adaptive" retry mode (botocore
//! `retries/adaptive.py`, `throttling.py`, `bucket.py`): a client-side send rate that drops multiplicatively on
//! `ThrottlingException` and climbs back along a CUBIC curve, so meterd takes what the account's quota leaves
//! (other tools share it) without being told, and returns to the configured rate when the quota frees up.
//!
//! Differences from botocore, and why:
//! - the rate never exceeds `calls_per_second` (the operator's ceiling) and starts there; botocore starts
//!   unlimited and only turns the limiter on after the first throttle;
//! - sends are spaced 1/rate apart with no burst credit (botocore's bucket holds one second's worth): AWS does
//!   not document its limiter's shape, and a burst after an idle moment is exactly what a rolling-window limit
//!   refuses;
//! - botocore also caps the rate at twice the measured send rate; the ceiling bounds it here, and an idle
//!   submitter (measured rate 0) must not be slowed to the floor by it.
//!
//! Pure logic on injected time (seconds from any origin): the caller sleeps.

/// The rate never falls below this (botocore's token-bucket minimum).
pub const MIN_RATE: f64 = 0.5;
/// Multiplicative decrease on a throttle (botocore's `_BETA`).
const BETA: f64 = 0.7;
/// How fast the cubic climbs back (botocore's `_SCALE_CONSTANT`).
const SCALE: f64 = 0.4;
/// The send-rate meter's time bucket and smoothing (botocore's `RateClocker`).
const METER_BUCKET_SECS: f64 = 0.5;
const METER_SMOOTHING: f64 = 0.8;

/// CUBIC window growth applied to a send rate: after a throttle at rate `w_max`, the rate follows
/// `SCALE * (t - k)^3 + w_max`, concave back up to `w_max` (reached after `k` seconds) and convex beyond it.
#[derive(Debug, Clone)]
struct Cubic {
    w_max: f64,
    k: f64,
    last_throttle: f64,
}

impl Cubic {
    fn new(w_max: f64, now: f64) -> Self {
        Self { w_max, k: Self::zero_point(w_max), last_throttle: now }
    }

    fn zero_point(w_max: f64) -> f64 {
        (w_max * (1.0 - BETA) / SCALE).cbrt()
    }

    fn on_success(&self, now: f64) -> f64 {
        SCALE * (now - self.last_throttle - self.k).powi(3) + self.w_max
    }

    fn on_throttle(&mut self, rate: f64, now: f64) -> f64 {
        self.w_max = rate;
        self.k = Self::zero_point(rate);
        self.last_throttle = now;
        rate * BETA
    }
}

/// The rate at which answers actually come back, smoothed over half-second buckets: a submitter held back by
/// its own work (store writes, slow answers) sends below its allowed rate, and a throttle then says that
/// *this* lower rate was too much.
#[derive(Debug, Clone)]
struct SendRateMeter {
    rate: f64,
    bucket: f64,
    count: u64,
}

impl SendRateMeter {
    fn new(now: f64) -> Self {
        Self { rate: 0.0, bucket: Self::bucket_of(now), count: 0 }
    }

    fn bucket_of(t: f64) -> f64 {
        (t / METER_BUCKET_SECS).floor() * METER_BUCKET_SECS
    }

    fn record(&mut self, now: f64) -> f64 {
        self.count += 1;
        let bucket = Self::bucket_of(now);
        if bucket > self.bucket {
            let current = self.count as f64 / (bucket - self.bucket);
            self.rate = current * METER_SMOOTHING + self.rate * (1.0 - METER_SMOOTHING);
            self.count = 0;
            self.bucket = bucket;
        }
        self.rate
    }
}

/// One account's pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    ceiling: f64,
    rate: f64,
    next_send: Option<f64>,
    cubic: Cubic,
    meter: SendRateMeter,
}

impl Pacer {
    /// `ceiling`: calls per second never to exceed (validated > 0 by the config).
    pub fn new(ceiling: f64, now: f64) -> Self {
        let ceiling = ceiling.max(MIN_RATE);
        Self {
            ceiling,
            rate: ceiling,
            next_send: None,
            cubic: Cubic::new(ceiling, now),
            meter: SendRateMeter::new(now),
        }
    }

    /// The current allowed send rate, calls per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Reserves the next call's slot and returns how long to wait before sending it (seconds, >= 0). A slot is
    /// 1/rate after the previous one, never earlier than now: time spent not sending earns no burst.
    pub fn reserve(&mut self, now: f64) -> f64 {
        let at = self.next_send.map_or(now, |n| n.max(now));
        self.next_send = Some(at + 1.0 / self.rate);
        at - now
    }

    /// Every answer (or failure) of a call: a throttle lowers the rate, anything else lets it climb back.
    pub fn on_response(&mut self, now: f64, throttled: bool) {
        let measured = self.meter.record(now);
        let next = if throttled {
            // The rate that was too much: what was really sent, if the meter has seen enough to say.
            let sent = if measured > 0.0 { measured.min(self.rate) } else { self.rate };
            self.cubic.on_throttle(sent, now)
        } else {
            self.cubic.on_success(now)
        };
        let next = if next.is_finite() { next.clamp(MIN_RATE, self.ceiling) } else { self.ceiling };
        // A reserved slot computed at a higher rate moves out to the new spacing.
        if let Some(n) = self.next_send
            && next < self.rate
        {
            self.next_send = Some(n + 1.0 / next - 1.0 / self.rate);
        }
        self.rate = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `n` calls as fast as the pacer allows from `t`, all answered after `latency`; returns the time
    /// after the last answer.
    fn drive(p: &mut Pacer, mut t: f64, n: usize, latency: f64, throttled: impl Fn(usize) -> bool) -> f64 {
        for i in 0..n {
            t += p.reserve(t) + latency;
            p.on_response(t, throttled(i));
        }
        t
    }

    #[test]
    fn starts_at_the_ceiling_and_spaces_calls_without_bursts() {
        let mut p = Pacer::new(10.0, 0.0);
        assert_eq!(p.rate(), 10.0);
        assert_eq!(p.reserve(0.0), 0.0);
        assert!((p.reserve(0.0) - 0.1).abs() < 1e-9);
        // After an idle second, the next call goes at once, and the one after it waits a full interval.
        assert_eq!(p.reserve(5.0), 0.0);
        assert!((p.reserve(5.0) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn successes_never_exceed_the_ceiling() {
        let mut p = Pacer::new(10.0, 0.0);
        drive(&mut p, 0.0, 500, 0.01, |_| false);
        assert_eq!(p.rate(), 10.0);
    }

    #[test]
    fn a_throttle_cuts_the_rate_and_it_climbs_back() {
        let mut p = Pacer::new(10.0, 0.0);
        let t = drive(&mut p, 0.0, 40, 0.0, |_| false);
        p.on_response(t, true);
        let cut = p.rate();
        assert!((6.0..=7.01).contains(&cut), "cut to {cut}");
        // Back at the ceiling a few seconds of successes later (k = cbrt(10 * 0.3 / 0.4) ≈ 1.96 s).
        let t2 = drive(&mut p, t, 20, 0.0, |_| false);
        assert!(t2 - t < 5.0, "{}", t2 - t);
        p.on_response(t + 2.5, false);
        assert!(p.rate() > 9.9, "{}", p.rate());
    }

    #[test]
    fn repeated_throttles_back_off_to_the_floor_and_no_further() {
        let mut p = Pacer::new(10.0, 0.0);
        let mut t = 0.0;
        for _ in 0..30 {
            t += p.reserve(t);
            p.on_response(t, true);
        }
        assert_eq!(p.rate(), MIN_RATE);
        // At the floor, calls are two seconds apart.
        let wait = p.reserve(t);
        assert!(wait <= 2.0 + 1e-9, "{wait}");
    }

    #[test]
    fn a_lowered_rate_moves_the_reserved_slot_out() {
        let mut p = Pacer::new(10.0, 0.0);
        assert_eq!(p.reserve(0.0), 0.0);
        p.on_response(0.05, true);
        // The slot reserved at 10/s (0.1) moves to the new spacing (1/7 s after the call).
        let wait = p.reserve(0.05);
        assert!((wait - (1.0 / p.rate() - 0.05)).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn sharing_the_quota_takes_what_is_left() {
        // AWS's quota as a token bucket (10/s, burst 10) shared with another client steadily using 5/s: over a
        // long run the pacer must get most of the 5/s left, with few of its calls throttled.
        let mut p = Pacer::new(10.0, 0.0);
        let (mut t, mut other_next) = (0.0f64, 0.0f64);
        let (mut tokens, mut last) = (10.0f64, 0.0f64);
        let mut take = |at: f64| {
            tokens = (tokens + (at - last) * 10.0).min(10.0);
            last = at;
            let ok = tokens >= 1.0;
            if ok {
                tokens -= 1.0;
            }
            ok
        };
        let (mut ok, mut throttled) = (0u32, 0u32);
        while t < 600.0 {
            t += p.reserve(t);
            while other_next <= t {
                take(other_next);
                other_next += 0.2;
            }
            let admitted = take(t);
            if admitted {
                ok += 1;
            } else {
                throttled += 1;
            }
            t += 0.02;
            p.on_response(t, !admitted);
        }
        let admitted_rate = f64::from(ok) / t;
        assert!(admitted_rate > 4.0, "admitted {admitted_rate}/s of the 5/s left");
        assert!(f64::from(throttled) / f64::from(ok + throttled) < 0.05, "{throttled} of {}", ok + throttled);
    }

    #[test]
    fn the_meter_reads_the_actual_send_rate() {
        let mut m = SendRateMeter::new(0.0);
        let mut r = 0.0;
        for i in 0..100 {
            r = m.record(f64::from(i) * 0.25);
        }
        assert!((r - 4.0).abs() < 0.5, "{r}");
    }
}
