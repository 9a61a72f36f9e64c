//! The spool's outbox entries (`o/`, fleet mode): an acknowledged event as the caller sent it, until forwarded.
//!
//! Outbox entry, version 2 (version 1 was a postcard layout, converted by the v2 → v3 migration): `version` ·
//! `idempotency key` string · `product` string · `identity` (as in [`super::ledger`]) · `dimension` string ·
//! `quantity` varint (micro-units) · `timestamp` option zigzag · `tags` count, then key string and value string
//! per tag, keys strictly ascending · `received at` zigzag · CRC32. One entry per `o/` key.
//!
//! Outbox block, version 3 (what this build writes): `version` · `count` varint (1 or more) · then `count` times the
//! fields of a version-2 entry, from `idempotency key` to `received at` (no version byte or checksum of their own) ·
//! CRC32 over the whole block. One block per `o/` key holds consecutive entries of one ingest group: a group of
//! 1,000 new events is a handful of sled writes instead of 1,000 (the spool's writer cost, docs/fleet.md). A
//! version-2 value still reads, as a block of one.

use super::codec::{Reader, Writer};
use super::ledger::{IdentityRef, StoredIdentity, get_tags};
use super::{DecodeError, stored_via};
use crate::clock::UnixMillis;
use crate::domain::event::UsageEvent;
use crate::domain::quantity::Micros;
use crate::store::outbox::Entry;

pub const OUTBOX_VERSION: u8 = 2;
/// The block layout (what a spool writes).
pub const OUTBOX_BLOCK_VERSION: u8 = 3;

/// `o/` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutboxEntry {
    pub idempotency_key: String,
    pub product: String,
    pub identity: StoredIdentity,
    pub dimension: String,
    pub quantity: u128,
    pub timestamp_ms: Option<i64>,
    pub tags: Vec<(String, String)>,
    pub received_ms: i64,
}

impl StoredOutboxEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(OUTBOX_VERSION);
        self.put(&mut w);
        w.finish()
    }

    fn put(&self, w: &mut Writer) {
        EntryFields {
            idempotency_key: &self.idempotency_key,
            product: &self.product,
            identity: (&self.identity).into(),
            dimension: &self.dimension,
            quantity: self.quantity,
            timestamp_ms: self.timestamp_ms,
            tags: self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            received_ms: self.received_ms,
        }
        .put(w)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, OUTBOX_VERSION)?;
        let v = Self::get(&mut r)?;
        r.end()?;
        Ok(v)
    }

    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(StoredOutboxEntry {
            idempotency_key: r.str("idempotency key")?,
            product: r.str("product")?,
            identity: StoredIdentity::get(r, "identity")?,
            dimension: r.str("dimension")?,
            quantity: r.varint("quantity")?,
            timestamp_ms: r.opt("timestamp", |r| r.i64("timestamp"))?,
            tags: get_tags(r, "tags")?,
            received_ms: r.i64("received at")?,
        })
    }
}

/// An entry's fields, borrowed from whatever holds them: the stored type, the outbox's [`Entry`], or the event
/// itself as the writer adds it (no copy of its strings per event on the ingest path).
struct EntryFields<'a, T> {
    idempotency_key: &'a str,
    product: &'a str,
    identity: IdentityRef<'a>,
    dimension: &'a str,
    quantity: u128,
    timestamp_ms: Option<i64>,
    /// In ascending key order.
    tags: T,
    received_ms: i64,
}

impl<'a, T: ExactSizeIterator<Item = (&'a str, &'a str)>> EntryFields<'a, T> {
    /// The fields, in their order (never reorder: versions 2 and 3 both read them so).
    fn put(self, w: &mut Writer) {
        w.str(self.idempotency_key);
        w.str(self.product);
        self.identity.put(w);
        w.str(self.dimension);
        w.varint(self.quantity);
        w.opt(self.timestamp_ms, |w, t| w.i64(t));
        w.u64(self.tags.len() as u64);
        for (k, v) in self.tags {
            w.str(k);
            w.str(v);
        }
        w.i64(self.received_ms);
    }
}

/// The entries of an `o/` value: a version-3 block, or a version-2 single entry (written by earlier builds).
pub fn decode_value(bytes: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    if bytes.first() == Some(&OUTBOX_VERSION) {
        return StoredOutboxEntry::decode(bytes).map(|e| vec![e.into()]);
    }
    let mut r = Reader::open(bytes, OUTBOX_BLOCK_VERSION)?;
    let count = r.u64("count")?;
    // Each entry takes well over one byte: a count beyond the bytes is damage, not an allocation to make.
    if count == 0 || count > bytes.len() as u64 {
        return Err(DecodeError::Field { field: "count", at: 1 });
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push(StoredOutboxEntry::get(&mut r)?.into());
    }
    r.end()?;
    Ok(out)
}

/// How many entries an `o/` value holds, its checksum verified but no entry decoded (the outbox's depth and the
/// spool's next sequence read only this of the last block).
pub fn count_of(bytes: &[u8]) -> Result<u64, DecodeError> {
    if bytes.first() == Some(&OUTBOX_VERSION) {
        return Reader::open(bytes, OUTBOX_VERSION).map(|_| 1);
    }
    let count = Reader::open(bytes, OUTBOX_BLOCK_VERSION)?.u64("count")?;
    if count == 0 || count > bytes.len() as u64 {
        return Err(DecodeError::Field { field: "count", at: 1 });
    }
    Ok(count)
}

/// How many entries a version-3 block holds and its first entry, its checksum verified but no other entry decoded
/// (what the outbox's index needs of each block at open).
pub fn count_and_first(bytes: &[u8]) -> Result<(u64, Entry), DecodeError> {
    let mut r = Reader::open(bytes, OUTBOX_BLOCK_VERSION)?;
    let count = r.u64("count")?;
    if count == 0 || count > bytes.len() as u64 {
        return Err(DecodeError::Field { field: "count", at: 1 });
    }
    Ok((count, StoredOutboxEntry::get(&mut r)?.into()))
}

/// A version-3 block of newly stored events (at least one), each with the time it was acknowledged, written
/// straight from the events.
pub fn encode_events(events: &[(&UsageEvent, UnixMillis)]) -> Vec<u8> {
    // ~150 bytes an entry: one allocation for most blocks instead of a dozen doublings.
    let mut w = Writer::with_capacity(OUTBOX_BLOCK_VERSION, 16 + 160 * events.len());
    w.u64(events.len() as u64);
    for &(e, received_ms) in events {
        EntryFields {
            idempotency_key: &e.idempotency_key,
            product: &e.product,
            identity: (&e.identity).into(),
            dimension: &e.dimension,
            quantity: e.quantity.0,
            timestamp_ms: e.timestamp_ms,
            tags: e.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            received_ms,
        }
        .put(&mut w)
    }
    w.finish()
}

impl From<&Entry> for StoredOutboxEntry {
    fn from(e: &Entry) -> Self {
        StoredOutboxEntry {
            idempotency_key: e.idempotency_key.clone(),
            product: e.product.clone(),
            identity: (&e.identity).into(),
            dimension: e.dimension.clone(),
            quantity: e.quantity.0,
            timestamp_ms: e.timestamp_ms,
            tags: e.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            received_ms: e.received_ms,
        }
    }
}

impl From<StoredOutboxEntry> for Entry {
    fn from(s: StoredOutboxEntry) -> Self {
        Entry {
            idempotency_key: s.idempotency_key,
            product: s.product,
            identity: s.identity.into(),
            dimension: s.dimension,
            quantity: Micros(s.quantity),
            timestamp_ms: s.timestamp_ms,
            tags: s.tags.into_iter().collect(),
            received_ms: s.received_ms,
        }
    }
}

stored_via!(Entry, StoredOutboxEntry, "o/ outbox entry");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::schema::golden;

    /// A block of `entries`, encoded as the writer does: from their events.
    fn encode_block(entries: &[Entry]) -> Vec<u8> {
        let events: Vec<UsageEvent> = entries.iter().map(Entry::event).collect();
        let pairs: Vec<(&UsageEvent, UnixMillis)> =
            events.iter().zip(entries).map(|(ev, e)| (ev, e.received_ms)).collect();
        encode_events(&pairs)
    }

    #[test]
    fn a_block_is_the_version_2_fields_after_a_count_and_one_checksum() {
        let e = golden::outbox();
        let single = StoredOutboxEntry::from(&e).encode();
        let block = encode_block(&[e.clone(), e.clone()]);
        // Version 3, count 2, then the version-2 entry's fields twice (its own version byte and CRC left out),
        // then one CRC32 over everything before it.
        let fields = &single[1..single.len() - 4];
        let mut expected = vec![OUTBOX_BLOCK_VERSION, 2];
        expected.extend_from_slice(fields);
        expected.extend_from_slice(fields);
        expected.extend_from_slice(&crc32fast::hash(&expected).to_be_bytes());
        assert_eq!(block, expected);
        assert_eq!(decode_value(&block).unwrap(), vec![e.clone(), e.clone()]);
        assert_eq!((count_of(&block).unwrap(), count_of(&single).unwrap()), (2, 1));
        assert_eq!(count_and_first(&block).unwrap(), (2, e.clone()));
        // A value an earlier build wrote (one version-2 entry per key) reads as a block of one.
        assert_eq!(decode_value(&single).unwrap(), vec![e]);
    }

    #[test]
    fn a_damaged_block_is_refused_naming_what_failed() {
        let e = golden::outbox();
        let mut flipped = encode_block(std::slice::from_ref(&e));
        flipped[3] ^= 1;
        assert!(matches!(decode_value(&flipped), Err(DecodeError::Checksum)));
        assert!(matches!(count_of(&flipped), Err(DecodeError::Checksum)));
        // A count of zero, or one the bytes cannot hold, is damage (never an allocation of that size).
        for count in [0u64, 1 << 40] {
            let mut w = Writer::new(OUTBOX_BLOCK_VERSION);
            w.u64(count);
            let bytes = w.finish();
            assert!(matches!(decode_value(&bytes), Err(DecodeError::Field { field: "count", .. })), "{count}");
            assert!(matches!(count_of(&bytes), Err(DecodeError::Field { field: "count", .. })), "{count}");
        }
        // One entry promised more than the bytes hold.
        let mut w = Writer::new(OUTBOX_BLOCK_VERSION);
        w.u64(2);
        StoredOutboxEntry::from(&e).put(&mut w);
        assert!(decode_value(&w.finish()).is_err());
    }
}
