//! Idempotency entry, version 1 (the value of an idempotency key in a dedupe segment; the key is the caller's
//! idempotency key itself, so the check stays exact):
//!
//! | # | field                | encoding                                                                       |
//! |---|----------------------|--------------------------------------------------------------------------------|
//! | 1 | version              | `u8` = 1                                                                       |
//! | 2 | flags                | `u8`: bit 0 late, bit 1 digest is of the v1 layout (migrated), others 0        |
//! | 3 | digest               | 16 bytes: the first 16 bytes of the content's SHA-256                          |
//! | 4 | recorded_at          | zigzag varint: `recorded_at_ms − segment start`                                |
//! | 5 | event time           | zigzag varint: `recorded_at_ms − event_time_ms`                                |
//! | 6 | hour                 | zigzag varint: `(hour_ms − hour_start(event_time_ms)) / 1 h`                   |
//! | 7 | quantity             | varint: micro-units                                                            |
//! | 8 | product              | varint length + UTF-8 bytes                                                    |
//! | 9 | checksum             | `u32` big-endian: CRC32 of bytes 1–8                                           |

use super::DecodeError;
use super::codec::put_varint;
use crate::clock::{HOUR_MS, UnixMillis, hour_start};
use crate::domain::event::{ContentDigest, StoredEvent};
use crate::domain::quantity::Micros;

/// The idempotency entry layout this build writes.
pub const ENTRY_VERSION: u8 = 1;

const FLAG_LATE: u8 = 1;
const FLAG_V1_DIGEST: u8 = 2;

/// Encodes `e` as a version-1 idempotency entry of the segment starting at `segment_start_ms`.
pub fn encode_entry(e: &StoredEvent, segment_start_ms: UnixMillis) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + e.product.len());
    out.push(ENTRY_VERSION);
    let (digest, legacy) = match e.digest {
        ContentDigest::V2(d) => (d, false),
        ContentDigest::V1(d) => (d, true),
    };
    out.push(if e.late { FLAG_LATE } else { 0 } | if legacy { FLAG_V1_DIGEST } else { 0 });
    out.extend_from_slice(&digest);
    put_varint(&mut out, zigzag(e.recorded_at_ms.wrapping_sub(segment_start_ms)));
    put_varint(&mut out, zigzag(e.recorded_at_ms.wrapping_sub(e.event_time_ms)));
    put_varint(&mut out, zigzag(e.hour_ms.wrapping_sub(hour_start(e.event_time_ms)) / HOUR_MS));
    put_varint(&mut out, e.quantity.0);
    put_varint(&mut out, e.product.len() as u128);
    out.extend_from_slice(e.product.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes an idempotency entry of the segment starting at `segment_start_ms`.
pub fn decode_entry(bytes: &[u8], segment_start_ms: UnixMillis) -> Result<StoredEvent, DecodeError> {
    let version = *bytes.first().ok_or(DecodeError::Malformed(0))?;
    if version != ENTRY_VERSION {
        return Err(DecodeError::Version(version));
    }
    let body_len = bytes.len().checked_sub(4).ok_or(DecodeError::Malformed(bytes.len()))?;
    let (body, crc) = bytes.split_at(body_len);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader { buf: body, pos: 1 };
    let flags = r.take(1)?[0];
    if flags & !(FLAG_LATE | FLAG_V1_DIGEST) != 0 {
        return Err(DecodeError::Malformed(1));
    }
    let digest: [u8; 16] = r.take(16)?.try_into().expect("16 bytes");
    let recorded_at_ms = segment_start_ms.wrapping_add(r.signed()?);
    let event_time_ms = recorded_at_ms.wrapping_sub(r.signed()?);
    let hours = r.signed()?;
    let hour_ms = hours.checked_mul(HOUR_MS).map(|d| hour_start(event_time_ms).wrapping_add(d));
    let hour_ms = hour_ms.ok_or(DecodeError::Malformed(r.pos))?;
    let quantity = Micros(r.varint()?);
    let len = usize::try_from(r.varint()?).map_err(|_| DecodeError::Malformed(r.pos))?;
    let at = r.pos;
    let product = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| DecodeError::Malformed(at))?;
    if r.pos != body.len() {
        return Err(DecodeError::Malformed(r.pos));
    }
    Ok(StoredEvent {
        digest: if flags & FLAG_V1_DIGEST != 0 { ContentDigest::V1(digest) } else { ContentDigest::V2(digest) },
        late: flags & FLAG_LATE != 0,
        product,
        event_time_ms,
        hour_ms,
        recorded_at_ms,
        quantity,
    })
}

/// The v1 store's value under `e/<key>`: postcard of these fields in this order (frozen; read only by migration).
#[derive(serde::Deserialize, serde::Serialize)]
pub struct V1StoredEvent {
    pub digest: [u8; 32],
    pub late: bool,
    pub product: String,
    pub event_time_ms: UnixMillis,
    pub hour_ms: UnixMillis,
    pub recorded_at_ms: UnixMillis,
    pub quantity: u128,
}

impl V1StoredEvent {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(bytes).map_err(|_| DecodeError::Malformed(0))
    }

    /// The entry it becomes: its digest keeps the v1 layout (flagged), so a replay of it is still recognised.
    pub fn into_stored(self) -> StoredEvent {
        StoredEvent {
            digest: ContentDigest::V1(self.digest[..16].try_into().expect("16 bytes")),
            late: self.late,
            product: self.product,
            event_time_ms: self.event_time_ms,
            hour_ms: self.hour_ms,
            recorded_at_ms: self.recorded_at_ms,
            quantity: Micros(self.quantity),
        }
    }
}

fn zigzag(v: i64) -> u128 {
    ((v << 1) ^ (v >> 63)) as u64 as u128
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(DecodeError::Malformed(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// At most 19 bytes (a u128); anything longer is corrupt, not a reason to loop.
    fn varint(&mut self) -> Result<u128, DecodeError> {
        let mut v: u128 = 0;
        for i in 0..19 {
            let b = self.take(1)?[0];
            v |= u128::from(b & 0x7f).checked_shl(7 * i).ok_or(DecodeError::Malformed(self.pos))?;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Malformed(self.pos))
    }

    fn signed(&mut self) -> Result<i64, DecodeError> {
        let at = self.pos;
        let z = u64::try_from(self.varint()?).map_err(|_| DecodeError::Malformed(at))?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEG: i64 = 1_764_460_800_000; // 2025-11-30T00:00:00Z

    fn sample() -> StoredEvent {
        StoredEvent {
            digest: ContentDigest::V2(*b"0123456789abcdef"),
            late: true,
            product: "app".into(),
            event_time_ms: SEG + 1_000,
            hour_ms: SEG + HOUR_MS,
            recorded_at_ms: SEG + 61_000,
            quantity: Micros(1_500_000),
        }
    }

    #[test]
    fn entry_layout_is_pinned_byte_for_byte() {
        let bytes = encode_entry(&sample(), SEG);
        let mut want = vec![1u8, 0b01];
        want.extend_from_slice(b"0123456789abcdef");
        want.extend_from_slice(&[0x90, 0xb9, 0x07]); // zigzag(61_000) = 122_000
        want.extend_from_slice(&[0xc0, 0xa9, 0x07]); // zigzag(60_000) = 120_000
        want.push(0x02); // zigzag(1 hour)
        want.extend_from_slice(&[0xe0, 0xc6, 0x5b]); // 1_500_000
        want.extend_from_slice(&[3, b'a', b'p', b'p']);
        let crc = crc32fast::hash(&want);
        want.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(bytes, want);
        assert_eq!(bytes.len(), 36, "a typical entry stays small");
        assert_eq!(&bytes[32..], &[0x8f, 0x23, 0x6f, 0x13], "the checksum is CRC32 (IEEE)");
        assert_eq!(decode_entry(&bytes, SEG).unwrap(), sample());
    }

    #[test]
    fn migrated_entries_keep_their_digest_kind() {
        let v1 = StoredEvent { digest: ContentDigest::V1([9; 16]), late: false, ..sample() };
        let bytes = encode_entry(&v1, SEG);
        assert_eq!(bytes[1], 0b10);
        assert_eq!(decode_entry(&bytes, SEG).unwrap(), v1);
    }

    #[test]
    fn damage_is_reported_not_misread() {
        let good = encode_entry(&sample(), SEG);
        let mut flipped = good.clone();
        flipped[5] ^= 1;
        assert_eq!(decode_entry(&flipped, SEG), Err(DecodeError::Checksum));
        let mut newer = good.clone();
        newer[0] = 2;
        assert_eq!(decode_entry(&newer, SEG), Err(DecodeError::Version(2)));
        assert!(decode_entry(&good[..good.len() - 1], SEG).is_err());
        assert!(decode_entry(&[], SEG).is_err());
    }

    fn stored() -> impl Strategy<Value = StoredEvent> {
        (any::<bool>(), any::<[u8; 16]>(), any::<bool>(), "\\PC{0,40}", -(1i64 << 44)..(1i64 << 44), -1000i64..1000)
            .prop_flat_map(|(v1, d, late, product, t, hours)| {
                (0i64..(1 << 40), any::<u128>()).prop_map(move |(delay, q)| StoredEvent {
                    digest: if v1 { ContentDigest::V1(d) } else { ContentDigest::V2(d) },
                    late,
                    product: product.clone(),
                    event_time_ms: t,
                    hour_ms: hour_start(t) + hours * HOUR_MS,
                    recorded_at_ms: t + delay,
                    quantity: Micros(q),
                })
            })
    }

    proptest! {
        #[test]
        fn entries_round_trip(e in stored(), seg in -(1i64 << 44)..(1i64 << 44)) {
            prop_assert_eq!(decode_entry(&encode_entry(&e, seg), seg).unwrap(), e);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = decode_entry(&bytes, SEG);
            let mut with_crc = bytes.clone();
            with_crc.extend_from_slice(&crc32fast::hash(&bytes).to_be_bytes());
            let _ = decode_entry(&with_crc, SEG);
        }
    }
}
