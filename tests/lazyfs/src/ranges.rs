//! A set of disjoint byte ranges: the parts of a file changed since its last fsync.
//!
//! Tracking ranges rather than copying the file keeps fsync cheap: sled fsyncs a log file of tens
//! of MB many times a second, and each fsync only has to copy what was written since the last one.
//! Ranges (not fixed pages) also keep a long sequential write to a single entry.

use std::collections::BTreeMap;
use std::ops::Range;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RangeSet {
    /// start -> end (exclusive); ranges are disjoint and never touch (touching ones are merged).
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub(crate) fn insert(&mut self, range: Range<u64>) {
        let (mut start, mut end) = (range.start, range.end);
        if start >= end {
            return;
        }
        // A range starting at or before `start` that reaches it absorbs the new one.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        // Every range starting inside [start, end] is merged too.
        let inside: Vec<(u64, u64)> = self.ranges.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(set: &RangeSet) -> Vec<Range<u64>> {
        set.iter().collect()
    }

    #[test]
    fn merges_overlapping_and_touching_ranges() {
        let mut set = RangeSet::default();
        set.insert(10..20);
        set.insert(30..40);
        assert_eq!(ranges(&set), vec![10..20, 30..40]);
        set.insert(20..25); // touches the first
        assert_eq!(ranges(&set), vec![10..25, 30..40]);
        set.insert(5..35); // swallows the first, overlaps the second
        assert_eq!(ranges(&set), vec![5..40]);
        set.insert(0..0); // empty: ignored
        set.insert(50..60);
        set.insert(12..14); // inside
        assert_eq!(ranges(&set), vec![5..40, 50..60]);
        set.insert(0..100);
        assert_eq!(ranges(&set), vec![0..100]);
        set.clear();
        assert!(set.is_empty());
    }
}
