//! The spool's outbox entries (`o/`, fleet mode): an acknowledged event as the caller sent it, until forwarded.
//!
//! Outbox entry, version 2 (version 1 was a postcard layout, converted by the v2 → v3 migration): `version` ·
//! `idempotency key` string · `product` string · `identity` (as in [`super::ledger`]) · `dimension` string ·
//! `quantity` varint (micro-units) · `timestamp` option zigzag · `tags` count, then key string and value string
//! per tag, keys strictly ascending · `received at` zigzag · CRC32.

use super::codec::{Reader, Writer};
use super::ledger::{StoredIdentity, get_tags};
use super::{DecodeError, stored_via};
use crate::domain::quantity::Micros;
use crate::store::outbox::Entry;

pub const OUTBOX_VERSION: u8 = 2;

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
        w.str(&self.idempotency_key);
        w.str(&self.product);
        self.identity.put(&mut w);
        w.str(&self.dimension);
        w.varint(self.quantity);
        w.opt(self.timestamp_ms, |w, t| w.i64(t));
        w.u64(self.tags.len() as u64);
        for (k, v) in &self.tags {
            w.str(k);
            w.str(v);
        }
        w.i64(self.received_ms);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::open(bytes, OUTBOX_VERSION)?;
        let v = StoredOutboxEntry {
            idempotency_key: r.str("idempotency key")?,
            product: r.str("product")?,
            identity: StoredIdentity::get(&mut r, "identity")?,
            dimension: r.str("dimension")?,
            quantity: r.varint("quantity")?,
            timestamp_ms: r.opt("timestamp", |r| r.i64("timestamp"))?,
            tags: get_tags(&mut r, "tags")?,
            received_ms: r.i64("received at")?,
        };
        r.end()?;
        Ok(v)
    }
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
