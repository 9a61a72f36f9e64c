//! Adaptive pacing of one account's BatchMeterUsage calls, after the AWS SDKs' "adaptive" retry mode (botocore
//! `retries/adaptive.py`, `throttling.py`, `bucket.py`): a client-side send rate that drops multiplicatively on
//! `ThrottlingException` and climbs back along a CUBIC curve, so meterd takes what the account's quota leaves
//! (other tools share it) without being told, and returns to the configured rate when the quota frees up.
//!
//! Differences from botocore, and why:
//! - the rate never exceeds `calls_per_second` (the operator's ceiling) and starts there; botocore starts
//!   unlimited and only turns the limiter on after the first throttle;
//! - sends are spaced 1/rate apart with no burst credit (botocore's bucket holds one second's worth), counted
//!   from the moment a call really left: AWS does not document its limiter's shape, and a burst after an idle
//!   moment, or two calls brought closer by a late wake-up, is exactly what a rolling-window limit refuses;
//! - the climb after a throttle settles a margin *below* the rate that was throttled and takes `HOLD_SECS` to
//!   return to it (botocore's curve is back at that rate in about two seconds): against a limiter that counts
//!   calls in a rolling window, a client at its exact quota is throttled by every few milliseconds of jitter,
//!   so returning there quickly means a throttle every few seconds (see [`Curve`]);
//! - the rate that was throttled is measured from the times of the last few calls, not botocore's
//!   half-second buckets (too coarse at these rates);
//! - botocore also caps the rate at twice the measured send rate; the ceiling bounds it here, and an idle
//!   submitter (measured rate 0) must not be slowed to the floor by it.
//!
//! Pure logic on injected time (seconds from any origin): the caller sleeps.

/// The rate never falls below this (botocore's token-bucket minimum).
pub const MIN_RATE: f64 = 0.5;
/// Multiplicative decrease on a throttle (botocore's `_BETA`).
const BETA: f64 = 0.7;
/// How fast the cubic climbs (botocore's `_SCALE_CONSTANT`).
const SCALE: f64 = 0.4;
/// Where the climb settles: this fraction below the rate that was throttled (a rolling window at 10 calls/s
/// leaves 30 ms of slack per ten calls at 9.7/s, more than a loaded host's usual jitter).
const MARGIN: f64 = 0.03;
/// How long the climb takes from the settling rate back to the throttled rate, before probing beyond it: the
/// throttled share stays near one call in `HOLD_SECS × rate` (0.5% at 10/s), and freed quota is found again
/// within about this long.
const HOLD_SECS: f64 = 20.0;
/// How many of the latest calls the send-rate meter looks at.
const METER_CALLS: usize = 10;
/// Calls further apart than this many intervals (at the current rate) are not one run of sending.
const METER_MAX_GAP_INTERVALS: f64 = 3.0;

/// The send rate after the last throttle, which happened at rate `w_max`: a CUBIC curve stretched in the
/// middle. Over `t` seconds since the throttle:
/// - `[0, k)`: concave, from `BETA · w_max` up to `settle = (1 − MARGIN) · w_max` along
///   `settle − SCALE·(k − t)³` (botocore's curve, aimed a margin below the rate that was too much);
/// - `[k, k + HOLD_SECS)`: `settle + MARGIN · w_max · ((t − k) / HOLD_SECS)³`, nearly flat at first and back at
///   `w_max` at the end: rising slowly through the margin finds the highest rate the jitter allows, and the
///   next throttle (at whatever rate it comes) restarts the curve from there;
/// - beyond: `w_max + SCALE · (t − k − HOLD_SECS)³`, convex: nothing has throttled at `w_max` for a while, so
///   quota has freed up (another client stopped) and the rate climbs to the ceiling within seconds.
#[derive(Debug, Clone)]
struct Curve {
    w_max: f64,
    k: f64,
    last_throttle: f64,
}

impl Curve {
    /// A throttle at `rate`, `now`.
    fn after_throttle(rate: f64, now: f64) -> Self {
        let k = (((1.0 - MARGIN) * rate - BETA * rate).max(0.0) / SCALE).cbrt();
        Self { w_max: rate, k, last_throttle: now }
    }

    fn settle(&self) -> f64 {
        (1.0 - MARGIN) * self.w_max
    }

    fn rate_at(&self, now: f64) -> f64 {
        let t = now - self.last_throttle;
        if t < self.k {
            self.settle() - SCALE * (self.k - t).powi(3)
        } else if t < self.k + HOLD_SECS {
            self.settle() + MARGIN * self.w_max * ((t - self.k) / HOLD_SECS).powi(3)
        } else {
            self.w_max + SCALE * (t - self.k - HOLD_SECS).powi(3)
        }
    }
}

/// The rate at which calls were really made, from the times of the last few answers: a submitter held back
/// by its own work (store writes, slow answers) sends below its allowed rate, and a throttle then says that
/// *this* lower rate was too much. Exact for evenly spaced calls, where botocore's half-second buckets read 4
/// or 6 calls/s off a steady 5 (and a throttle taken at the low reading settles far too low).
#[derive(Debug, Clone, Default)]
struct SendRateMeter {
    times: std::collections::VecDeque<f64>,
}

impl SendRateMeter {
    fn record(&mut self, now: f64) {
        if self.times.len() == METER_CALLS {
            self.times.pop_front();
        }
        self.times.push_back(now);
    }

    /// Calls per second over the latest run of calls no more than `max_gap` apart (a longer gap is the
    /// submitter idling, not sending slowly); None with fewer than three calls in that run.
    fn rate(&self, max_gap: f64) -> Option<f64> {
        let newest = *self.times.back()?;
        let (mut oldest, mut calls) = (newest, 1u32);
        for &t in self.times.iter().rev().skip(1) {
            if oldest - t > max_gap {
                break;
            }
            oldest = t;
            calls += 1;
        }
        (calls >= 3 && newest > oldest).then(|| f64::from(calls - 1) / (newest - oldest))
    }
}

/// One account's pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    ceiling: f64,
    rate: f64,
    next_send: Option<f64>,
    /// None until the first throttle: the rate stays at the ceiling.
    curve: Option<Curve>,
    meter: SendRateMeter,
}

impl Pacer {
    /// `ceiling`: calls per second never to exceed (validated > 0 by the config).
    pub fn new(ceiling: f64) -> Self {
        let ceiling = ceiling.max(MIN_RATE);
        Self { ceiling, rate: ceiling, next_send: None, curve: None, meter: SendRateMeter::default() }
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

    /// The call reserved last is leaving now: the next one goes 1/rate after this moment, not after its slot.
    /// A wake-up later than the slot (a busy host) would otherwise bring the next call closer than 1/rate to
    /// this one, and ten calls closer together than a second are what a rolling-window limit refuses.
    pub fn sent(&mut self, now: f64) {
        let after = now + 1.0 / self.rate;
        self.next_send = Some(self.next_send.map_or(after, |n| n.max(after)));
    }

    /// Every answer (or failure) of a call: a throttle lowers the rate, anything else lets it climb back.
    pub fn on_response(&mut self, now: f64, throttled: bool) {
        self.meter.record(now);
        let next = if throttled {
            // The rate that was too much: what was really sent, if the meter has seen enough to say.
            let sent = self.meter.rate(METER_MAX_GAP_INTERVALS / self.rate).map_or(self.rate, |m| m.min(self.rate));
            self.curve = Some(Curve::after_throttle(sent, now));
            sent * BETA
        } else {
            self.curve.as_ref().map_or(self.ceiling, |c| c.rate_at(now))
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
    use std::collections::VecDeque;

    use super::*;

    /// Sends `n` calls as fast as the pacer allows from `t`, each sent when its slot comes and answered after
    /// `latency`; returns the time after the last answer.
    fn drive(p: &mut Pacer, mut t: f64, n: usize, latency: f64, throttled: impl Fn(usize) -> bool) -> f64 {
        for i in 0..n {
            t += p.reserve(t);
            p.sent(t);
            t += latency;
            p.on_response(t, throttled(i));
        }
        t
    }

    #[test]
    fn starts_at_the_ceiling_and_spaces_calls_without_bursts() {
        let mut p = Pacer::new(10.0);
        assert_eq!(p.rate(), 10.0);
        assert_eq!(p.reserve(0.0), 0.0);
        assert!((p.reserve(0.0) - 0.1).abs() < 1e-9);
        // After an idle second, the next call goes at once, and the one after it waits a full interval.
        assert_eq!(p.reserve(5.0), 0.0);
        assert!((p.reserve(5.0) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_late_send_pushes_the_next_slot_out() {
        let mut p = Pacer::new(10.0);
        assert_eq!(p.reserve(0.0), 0.0);
        // The caller woke up 40 ms late: the next call is a full interval after the real send, not 60 ms.
        p.sent(0.04);
        p.on_response(0.05, false);
        assert!((p.reserve(0.05) - 0.09).abs() < 1e-9);
        // A send on time changes nothing.
        p.sent(0.14);
        assert!((p.reserve(0.15) - 0.09).abs() < 1e-9);
    }

    #[test]
    fn successes_never_exceed_the_ceiling() {
        let mut p = Pacer::new(10.0);
        drive(&mut p, 0.0, 500, 0.01, |_| false);
        assert_eq!(p.rate(), 10.0);
    }

    #[test]
    fn a_throttle_settles_below_the_throttled_rate_and_probes_beyond_it_later() {
        // Answers take 0.2 s, so calls really go at 5/s under the ceiling of 10: that is the rate throttled.
        let mut p = Pacer::new(10.0);
        let t = drive(&mut p, 0.0, 40, 0.2, |_| false) + 0.2;
        p.on_response(t, true);
        assert!((p.rate() - 3.5).abs() < 1e-6, "cut to {}", p.rate());
        // k = cbrt((4.85 - 3.5) / 0.4) = 1.5 s: settled 3% below the throttled rate.
        p.on_response(t + 1.5, false);
        assert!((p.rate() - 4.85).abs() < 1e-6, "settled at {}", p.rate());
        // Held below it through the hold: half way, an eighth of the margin back.
        p.on_response(t + 1.5 + HOLD_SECS / 2.0, false);
        assert!((p.rate() - (4.85 + 0.15 / 8.0)).abs() < 1e-6, "{}", p.rate());
        // Back at the throttled rate after the hold, then beyond it, to the ceiling within seconds.
        p.on_response(t + 1.5 + HOLD_SECS, false);
        assert!((p.rate() - 5.0).abs() < 1e-6, "{}", p.rate());
        p.on_response(t + 1.5 + HOLD_SECS + 1.0, false);
        assert!((p.rate() - 5.4).abs() < 1e-6, "{}", p.rate());
        p.on_response(t + 1.5 + HOLD_SECS + 3.0, false);
        assert_eq!(p.rate(), 10.0);
    }

    #[test]
    fn repeated_throttles_back_off_to_the_floor_and_no_further() {
        let mut p = Pacer::new(10.0);
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
        let mut p = Pacer::new(10.0);
        assert_eq!(p.reserve(0.0), 0.0);
        p.on_response(0.05, true);
        // The slot reserved at 10/s (0.1) moves to the new spacing (1/7 s after the call).
        let wait = p.reserve(0.05);
        assert!((wait - (1.0 / p.rate() - 0.05)).abs() < 1e-9, "{wait}");
    }

    #[test]
    fn the_throttled_rate_is_what_was_really_sent() {
        // Allowed 10/s, but the submitter's own work held it to 4/s: that is the rate that was too much.
        let mut p = Pacer::new(10.0);
        let mut t = 0.0;
        for _ in 0..20 {
            t += p.reserve(t) + 0.25;
            p.on_response(t, false);
        }
        p.on_response(t + 0.25, true);
        assert!((p.rate() - 4.0 * BETA).abs() < 0.01, "{}", p.rate());
        // After a long idle moment, two calls say nothing about the rate: the allowed rate was too much.
        let mut p = Pacer::new(10.0);
        let t = drive(&mut p, 0.0, 30, 0.0, |_| false);
        p.on_response(t + 60.0, false);
        p.on_response(t + 60.1, true);
        assert!((p.rate() - 10.0 * BETA).abs() < 0.01, "{}", p.rate());
    }

    #[test]
    fn the_meter_reads_the_actual_send_rate_and_skips_idle_gaps() {
        let mut m = SendRateMeter::default();
        assert_eq!(m.rate(1.0), None);
        for i in 0..100 {
            m.record(f64::from(i) * 0.25);
        }
        assert!((m.rate(1.0).unwrap() - 4.0).abs() < 1e-9);
        // After a gap longer than allowed, only the calls since count, and two are not enough.
        m.record(100.0);
        m.record(100.1);
        assert_eq!(m.rate(1.0), None);
        m.record(100.2);
        assert!((m.rate(1.0).unwrap() - 10.0).abs() < 1e-9);
    }

    /// AWS's quota in the two shapes the emulator offers. Only admitted calls count against it.
    enum Quota {
        /// 10 calls/s refilled continuously, burst 10.
        TokenBucket { tokens: f64, last: f64 },
        /// At most 10 admitted calls in any rolling second.
        RollingWindow(VecDeque<f64>),
    }

    impl Quota {
        fn token_bucket() -> Self {
            Self::TokenBucket { tokens: 10.0, last: 0.0 }
        }

        fn rolling_window() -> Self {
            Self::RollingWindow(VecDeque::new())
        }

        fn admit(&mut self, at: f64) -> bool {
            match self {
                Self::TokenBucket { tokens, last } => {
                    *tokens = (*tokens + (at - *last).max(0.0) * 10.0).min(10.0);
                    *last = at;
                    let ok = *tokens >= 1.0;
                    if ok {
                        *tokens -= 1.0;
                    }
                    ok
                }
                Self::RollingWindow(admitted) => {
                    while admitted.front().is_some_and(|t| at - t >= 1.0) {
                        admitted.pop_front();
                    }
                    let ok = admitted.len() < 10;
                    if ok {
                        admitted.push_back(at);
                    }
                    ok
                }
            }
        }
    }

    /// Deterministic delays for the simulation (a 64-bit LCG): `base` plus up to `spread`, and now and then
    /// (`spike_odds`) up to `spike` more, as on a loaded host.
    struct Delays(u64);

    impl Delays {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }

        fn delay(&mut self, base: f64, spread: f64, spike_odds: f64, spike: f64) -> f64 {
            let mut d = base + self.uniform() * spread;
            if self.uniform() < spike_odds {
                d += self.uniform() * spike;
            }
            d
        }
    }

    struct Run {
        /// meterd's admitted calls per second, and the fraction of its calls throttled.
        admitted_rate: f64,
        throttled_share: f64,
        /// The other client's admitted calls per second.
        other_rate: f64,
    }

    /// Ten simulated minutes of the submitter's loop against `quota` (delays as measured on a loaded 2-core
    /// host: the sleep overruns by up to ~1.4 ms, sometimes 20 ms; the request reaches the limiter 0.5–2 ms
    /// later, sometimes 15 ms; the answer and the store write take a few ms), with another client making
    /// `other_rate` evenly spaced calls per second on the same quota.
    fn simulate(quota: &mut Quota, other_rate: Option<f64>, seed: u64) -> Run {
        let mut p = Pacer::new(10.0);
        let mut d = Delays(seed);
        let (mut t, mut other_next) = (0.0f64, 0.0f64);
        let (mut ok, mut throttled, mut other_ok) = (0u32, 0u32, 0u32);
        while t < 600.0 {
            t += p.reserve(t) + d.delay(0.0002, 0.0012, 0.02, 0.02);
            p.sent(t);
            let arrives = t + d.delay(0.0005, 0.0015, 0.01, 0.015);
            if let Some(rate) = other_rate {
                while other_next <= arrives {
                    let at = (other_next + d.delay(0.0003, 0.002, 0.01, 0.01)).min(arrives);
                    other_ok += u32::from(quota.admit(at));
                    other_next += 1.0 / rate;
                }
            }
            let admitted = quota.admit(arrives);
            if admitted {
                ok += 1;
            } else {
                throttled += 1;
            }
            t = arrives + d.delay(0.002, 0.003, 0.01, 0.01);
            p.on_response(t, !admitted);
            t += d.delay(0.001, 0.004, 0.02, 0.03);
        }
        Run {
            admitted_rate: f64::from(ok) / t,
            throttled_share: f64::from(throttled) / f64::from(ok + throttled),
            other_rate: f64::from(other_ok) / t,
        }
    }

    #[test]
    fn a_rolling_window_quota_is_used_without_steady_throttling() {
        // A limiter that counts admitted calls in any rolling second throttles a client at exactly the quota
        // on every bit of jitter; returning to the throttled rate within seconds (the SDKs' curve) held 89% of
        // the quota with 3.6% of calls throttled here.
        for seed in 1..=3 {
            let r = simulate(&mut Quota::rolling_window(), None, seed);
            assert!(r.admitted_rate >= 9.5, "seed {seed}: {:.2} calls/s admitted", r.admitted_rate);
            assert!(r.throttled_share <= 0.01, "seed {seed}: {:.2}% throttled", 100.0 * r.throttled_share);
        }
    }

    #[test]
    fn a_token_bucket_quota_is_used_in_full() {
        let r = simulate(&mut Quota::token_bucket(), None, 1);
        assert!(r.admitted_rate >= 9.7, "{:.2} calls/s admitted", r.admitted_rate);
        assert_eq!(r.throttled_share, 0.0);
    }

    #[test]
    fn sharing_the_quota_takes_what_is_left_with_few_throttles() {
        // Another client steadily makes 5 calls/s on the same quota: meterd must get most of what it leaves
        // (the other client loses some calls to meterd too, which leaves meterd more), and probing for more
        // must not cost many throttles (returning to the throttled rate quickly cost 6–8% here).
        for (shape, quota) in [("token bucket", Quota::token_bucket()), ("rolling window", Quota::rolling_window())] {
            let mut quota = quota;
            let r = simulate(&mut quota, Some(5.0), 1);
            let left = 10.0 - r.other_rate;
            assert!(
                r.admitted_rate >= 0.8 * left,
                "{shape}: admitted {:.2}/s of the {left:.2}/s left",
                r.admitted_rate
            );
            assert!(r.throttled_share <= 0.03, "{shape}: {:.2}% throttled", 100.0 * r.throttled_share);
        }
    }
}
