//! One atomic write to the default tree, kept op by op: the redo log ([`super::redo`]) records exactly what sled
//! applies, and a `sled::Batch` cannot be read back.

use sled::IVec;

#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(IVec, Option<IVec>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.ops.push((key.into(), None));
    }

    /// Each op in order: a key and its new value, or `None` for a removal (a later op on a key wins).
    pub fn ops(&self) -> impl ExactSizeIterator<Item = (&[u8], Option<&[u8]>)> {
        self.ops.iter().map(|(k, v)| (k.as_ref(), v.as_deref()))
    }

    /// The same write for sled (cheap: values are shared, not copied, once longer than sled keeps inline).
    pub fn to_sled(&self) -> sled::Batch {
        let mut b = sled::Batch::default();
        for (k, v) in &self.ops {
            match v {
                Some(v) => b.insert(k.clone(), v.clone()),
                None => b.remove(k.clone()),
            }
        }
        b
    }

    /// Applies the write to `db` without logging it: for the open, migrations and other threads' writes that
    /// a crash may lose without harm (see [`super::redo`]).
    pub fn apply_unlogged(self, db: &sled::Db) -> Result<(), sled::Error> {
        db.apply_batch(self.to_sled())
    }
}

impl From<Vec<(Vec<u8>, Option<Vec<u8>>)>> for Batch {
    fn from(ops: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Self {
        Batch { ops: ops.into_iter().map(|(k, v)| (k.into(), v.map(Into::into))).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_applies_the_ops_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"gone", b"x").unwrap();
        let mut b = Batch::default();
        b.insert(b"k", b"1");
        b.insert(b"k".to_vec(), vec![2u8]);
        b.remove(b"gone");
        assert_eq!(b.ops().len(), 3);
        b.apply_unlogged(&db).unwrap();
        assert_eq!(db.get(b"k").unwrap().unwrap().as_ref(), &[2u8]);
        assert!(db.get(b"gone").unwrap().is_none());
    }
}
