//! Stored types as their own types: the explicit byte layouts of every value the store keeps, separate from the
//! domain's structs so that a refactor of those (a field moved, a type widened) can never change what is on disk.
//! The domain types are converted at this edge (`From` both ways, [`Stored`]); nothing reaches the disk through
//! a serde layout.
//!
//! Rules for every layout here (after Vector's disk buffer v2 records):
//! - the first byte is the layout's **encoding version**; a decoder refuses a version it does not know (an older
//!   meterd stops rather than misreading a newer store);
//! - fields follow in the documented order and are **never reordered**; a new or changed field is a new version;
//! - integers are LEB128 varints (unsigned) or zigzag varints (signed); strings and byte strings are a varint
//!   length and the bytes; an `Option` is a `u8` 0 (absent) or 1 followed by the value; an enum is a `u8` tag
//!   followed by its fields; a list is a varint count followed by its items;
//! - the value ends with a CRC32 (IEEE, big-endian) of every byte before it, checked before any field is read.
//!
//! Damage is reported as [`DecodeError`] naming the field, and by the store as `StoreError::Corrupt` naming the
//! key family; decoding never panics (property-tested on arbitrary bytes). Golden tests pin each layout byte for
//! byte: a change to one of them fails a test before it can reach a disk.
//!
//! | key family          | stored type                        | version | module         |
//! |---------------------|------------------------------------|---------|----------------|
//! | `dedupe/<start>.seg` files | dedupe journal records (store v4) | 1 | [`journal`] |
//! | `d/<start>` trees   | idempotency entry (store v2–v3; read by the migration to v4) | 1 | [`entry`] |
//! | `m/journal`         | `crate::store::journal::Mark`      | –       | `journal`      |
//! | `b/` open bucket    | [`ledger::StoredBucket`]           | 1       | [`ledger`]     |
//! | `r/` sealed record  | [`ledger::StoredRecord`]           | 1       | [`ledger`]     |
//! | `c/` carry          | [`ledger::StoredCarry`]            | 1       | [`ledger`]     |
//! | `t/` tenant mapping | [`customer::StoredMapping`]        | 1       | [`customer`]   |
//! | `s/` customer       | [`customer::StoredLifecycle`]      | 1       | [`customer`]   |
//! | `m/compacted`       | [`meta::StoredCompacted`]          | 1       | [`meta`]       |
//! | `m/lost`            | [`meta::StoredLost`]               | 1       | [`meta`]       |
//! | `m/pending`         | [`meta::StoredPending`]            | 1       | [`meta`]       |
//! | `m/seal_progress`   | [`meta::StoredSealProgress`]       | 1       | [`meta`]       |
//! | `m/sealed_through`  | [`meta::StoredSealedThrough`]      | 1       | [`meta`]       |
//! | `outbox/<first seq>.seg` files | framed outbox blocks ([`outbox::encode_events`], entries: [`outbox::StoredOutboxEntry`]) | 1 (blocks: 3) | [`outbox_file`] |
//! | `o/` outbox block   | read only, moved to the files at open ([`outbox::decode_value`]) | 3 (2 read) | [`outbox`] |
//! | `m/outbox_end`, `m/outbox_forwarded` | marks of the outbox files | – | [`outbox_file`] |
//! | `m/open_buckets`    | [`counts::StoredOpenBuckets`]      | 1       | [`counts`]     |
//! | `m/customers`       | [`counts::StoredCustomerCounts`]   | 1       | [`counts`]     |
//! | `h/` hour summary   | [`counts::StoredHourSummary`]      | 1       | [`counts`]     |

mod codec;
pub mod counts;
pub mod customer;
pub mod entry;
#[cfg(test)]
pub(crate) mod golden;
pub mod journal;
pub mod ledger;
pub mod meta;
pub mod outbox;
pub mod outbox_file;
pub mod redo;

pub use entry::{ENTRY_VERSION, V1StoredEvent, decode_entry, encode_entry};

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoding version {0} is unknown to this meterd")]
    Version(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("field `{field}` truncated or malformed at byte {at}")]
    Field { field: &'static str, at: usize },
}

/// A value the store keeps, with the stored type that fixes its bytes. Implemented for the domain (and store)
/// types the writer handles, so the store's code reads `encode(&bucket)` while the layout lives here.
pub trait Stored: Sized {
    /// The key family the value lives under, named when its bytes do not decode.
    const FAMILY: &'static str;
    fn to_stored(&self) -> Vec<u8>;
    fn from_stored(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Implements [`Stored`] for `$domain` through its stored type `$stored` (`From` both ways).
macro_rules! stored_via {
    ($domain:ty, $stored:ty, $family:literal) => {
        impl $crate::store::schema::Stored for $domain {
            const FAMILY: &'static str = $family;
            fn to_stored(&self) -> Vec<u8> {
                <$stored>::from(self).encode()
            }
            fn from_stored(bytes: &[u8]) -> Result<Self, $crate::store::schema::DecodeError> {
                <$stored>::decode(bytes).map(Self::from)
            }
        }
    };
}
pub(crate) use stored_via;

/// The bytes the store keeps for `value`.
pub fn encode<T: Stored>(value: &T) -> Vec<u8> {
    value.to_stored()
}

/// Reads a stored value back; damage names the key family and what failed.
pub fn decode<T: Stored>(bytes: &[u8]) -> Result<T, super::StoreError> {
    T::from_stored(bytes).map_err(|e| super::StoreError::Corrupt(format!("{} value: {e}", T::FAMILY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_names_the_key_family_and_the_field() {
        let mut bytes = encode(&crate::domain::event::Bucket::default());
        bytes[1] ^= 0x40;
        let e = decode::<crate::domain::event::Bucket>(&bytes).unwrap_err();
        assert_eq!(e.to_string(), "store data is corrupt: b/ open bucket value: checksum mismatch");
        let mut short = codec::Writer::new(ledger::BUCKET_VERSION);
        short.varint(1);
        let e = decode::<crate::domain::event::Bucket>(&short.finish()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "store data is corrupt: b/ open bucket value: field `events` truncated or malformed at byte 2"
        );
    }
}
