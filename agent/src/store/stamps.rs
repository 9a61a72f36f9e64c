//! Acknowledgement stamps taken and not yet written.
//!
//! An ingest call takes its `received_ms` stamp before it is validated and queued for the writer; its events reach
//! the outbox (fleet mode) only when the writer has applied the group. The forwarder claims, with its watermark,
//! that every event received before it is in the shared ledger, so the watermark must stay below every stamp
//! still on its way: [`Stamps::low_water`] is the oldest such stamp (or the clock, when none is). A stamp is
//! taken and the low water read under one lock, so a stamp taken after a low water is read is never below it (on
//! a clock that does not step back; a step back is what [`crate::fleet`]'s small margin is for).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::clock::{SharedClock, UnixMillis};

/// The stamps of ingest calls under way (a multiset: calls in the same millisecond share an entry).
pub struct Stamps {
    taken: Mutex<BTreeMap<UnixMillis, u32>>,
    /// Only a spool has a forwarder that reads the low water; a store that is not one hands out stamps that
    /// only read the clock (no lock, no map entry, on every call).
    tracking: bool,
}

impl Default for Stamps {
    fn default() -> Self {
        Stamps::tracking()
    }
}

/// One call's stamp, given back when dropped (after its write, or when the call is given up).
pub struct Stamp {
    stamps: Option<Arc<Stamps>>,
    pub ms: UnixMillis,
}

impl Stamps {
    /// Stamps whose low water is kept (a spool: the forwarder reads it).
    pub fn tracking() -> Self {
        Stamps { taken: Mutex::default(), tracking: true }
    }

    /// Stamps that are clock readings only: [`Stamps::low_water`] is then the clock.
    pub fn untracked() -> Self {
        Stamps { taken: Mutex::default(), tracking: false }
    }

    /// Reads the clock for a call and holds the reading until the returned stamp is dropped.
    pub fn take(self: &Arc<Self>, clock: &SharedClock) -> Stamp {
        if !self.tracking {
            return Stamp { stamps: None, ms: clock.now_ms() };
        }
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let ms = clock.now_ms();
        *taken.entry(ms).or_default() += 1;
        Stamp { stamps: Some(self.clone()), ms }
    }

    /// The oldest stamp still held, or the clock's reading now when none is: every call stamped below it has
    /// given its stamp back.
    pub fn low_water(&self, clock: &SharedClock) -> UnixMillis {
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock.now_ms();
        taken.first_key_value().map_or(now, |(&oldest, _)| oldest.min(now))
    }

    /// How many calls hold a stamp (for tests).
    pub fn held(&self) -> usize {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).values().map(|&n| n as usize).sum()
    }
}

impl Drop for Stamp {
    fn drop(&mut self) {
        let Some(stamps) = &self.stamps else { return };
        let mut taken = stamps.taken.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::btree_map::Entry::Occupied(mut e) = taken.entry(self.ms) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn the_low_water_is_the_oldest_stamp_held_until_it_is_given_back() {
        let clock = ManualClock::new(1_000);
        let shared: SharedClock = clock.clone();
        let stamps = Arc::new(Stamps::default());
        assert_eq!(stamps.low_water(&shared), 1_000, "none held: the clock");
        let a = stamps.take(&shared);
        let b = stamps.take(&shared);
        clock.advance(500);
        let c = stamps.take(&shared);
        clock.advance(500);
        assert_eq!((a.ms, b.ms, c.ms), (1_000, 1_000, 1_500));
        assert_eq!(stamps.low_water(&shared), 1_000);
        drop(a);
        assert_eq!(stamps.low_water(&shared), 1_000, "two calls shared the millisecond; one still holds it");
        drop(b);
        assert_eq!(stamps.low_water(&shared), 1_500);
        drop(c);
        assert_eq!(stamps.low_water(&shared), 2_000);
        assert_eq!(stamps.held(), 0);
    }

    #[test]
    fn untracked_stamps_read_the_clock_and_hold_nothing() {
        let clock = ManualClock::new(1_000);
        let shared: SharedClock = clock.clone();
        let stamps = Arc::new(Stamps::untracked());
        let a = stamps.take(&shared);
        clock.advance(500);
        assert_eq!(a.ms, 1_000);
        assert_eq!(stamps.held(), 0);
        assert_eq!(stamps.low_water(&shared), 1_500, "the clock: nothing is forwarded from a store without a spool");
    }
}
