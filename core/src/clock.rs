//! The one source of "now". Everything time-dependent reads a [`Clock`] so tests can move time by hand and
//! the demo can run hours in minutes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub type UnixMillis = i64;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMillis;
}

pub type SharedClock = Arc<dyn Clock>;

/// Wall-clock UTC.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        system_now_ms()
    }
}

pub fn system_now_ms() -> UnixMillis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: UnixMillis) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(start_ms)))
    }
    pub fn set(&self, ms: UnixMillis) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Time that runs `factor` times faster than the wall clock from the moment it is made: the demo shows
/// hours of metering in minutes.
#[derive(Debug)]
pub struct ScaledClock {
    origin_ms: UnixMillis,
    started: std::time::Instant,
    factor: f64,
}

impl ScaledClock {
    pub fn new(factor: f64) -> Arc<Self> {
        Arc::new(Self { origin_ms: system_now_ms(), started: std::time::Instant::now(), factor })
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> UnixMillis {
        self.origin_ms + (self.started.elapsed().as_secs_f64() * 1000.0 * self.factor) as i64
    }
}

/// The wall clock shifted by a fixed offset: real durations, a chosen "now". Several processes given the same
/// offset agree on the time (unlike a [`ScaledClock`], which starts counting when it is made), so a benchmark can
/// place an hour's end a few seconds ahead for a fleet of agents and its emulator.
#[derive(Debug, Clone, Copy)]
pub struct OffsetClock {
    pub offset_ms: i64,
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> UnixMillis {
        system_now_ms() + self.offset_ms
    }
}

pub const HOUR_MS: i64 = 3_600_000;

/// Start of the UTC hour containing `ms`.
pub fn hour_start(ms: UnixMillis) -> UnixMillis {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// RFC 3339 rendering for messages and reports.
pub fn rfc3339(ms: UnixMillis) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("{ms}ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_clock_is_the_wall_clock_shifted() {
        let c = OffsetClock { offset_ms: -2 * HOUR_MS };
        let (before, now, after) = (system_now_ms(), c.now_ms(), system_now_ms());
        assert!((before - 2 * HOUR_MS..=after - 2 * HOUR_MS).contains(&now), "{before} {now} {after}");
    }

    #[test]
    fn hour_start_truncates_in_utc() {
        assert_eq!(hour_start(0), 0);
        assert_eq!(hour_start(HOUR_MS - 1), 0);
        assert_eq!(hour_start(HOUR_MS), HOUR_MS);
        assert_eq!(hour_start(-1), -HOUR_MS);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now_ms(), 1000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1500);
        c.set(7);
        assert_eq!(c.now_ms(), 7);
    }
}
