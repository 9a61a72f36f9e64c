//! The dedupe journal's on-disk layout, version 1: one append-only file per dedupe segment
//! (`dedupe/<start>.seg`, see [`crate::store::journal`]). Never reorder these fields; a change is a new version.
//!
//! **File header** (24 bytes):
//!
//! | bytes  | field    | encoding                                     |
//! |--------|----------|----------------------------------------------|
//! | 0–7    | magic    | `MTRDDDUP`                                   |
//! | 8      | version  | `u8` = 1                                     |
//! | 9–11   | reserved | zero                                         |
//! | 12–19  | start    | `i64` big-endian: the segment's start (ms)   |
//! | 20–23  | checksum | `u32` big-endian: CRC32 of bytes 0–19        |
//!
//! **Record** (one per ingest group that stored new events), then the next record:
//!
//! | field    | encoding                                                                                 |
//! |----------|------------------------------------------------------------------------------------------|
//! | length   | `u32` big-endian: bytes of the body                                                      |
//! | checksum | `u32` big-endian: CRC32 of the body                                                      |
//! | body     | `seq` `u64` big-endian (the group's number, see the store's journal mark) · `base` zigzag varint: the record's base time − segment start · new products: varint count, then each a varint length + UTF-8 (they take the file's next product numbers, from 0) · entries: varint count, then each entry |
//!
//! **Entry** (an idempotency key and what it stored; readable on its own given the segment's start, its record's
//! base and the file's products, so a lookup reads only the entry):
//!
//! | field       | encoding                                                            |
//! |-------------|---------------------------------------------------------------------|
//! | key         | varint length + the caller's idempotency key (exact: no hash)       |
//! | flags       | `u8`: bit 0 late, bit 1 digest is of the v1 layout (migrated)       |
//! | digest      | 16 bytes: the first 16 bytes of the content's SHA-256               |
//! | recorded_at | zigzag varint: `recorded_at_ms − base`                              |
//! | event time  | zigzag varint: `recorded_at_ms − event_time_ms`                     |
//! | hour        | zigzag varint: `(hour_ms − hour_start(event_time_ms)) / 1 h`        |
//! | quantity    | varint: micro-units                                                 |
//! | product     | varint: the file's product number                                   |

use super::DecodeError;
use super::codec::{Reader, put_varint, put_zigzag};
use crate::clock::{HOUR_MS, UnixMillis, hour_start};
use crate::domain::event::{ContentDigest, StoredEvent};
use crate::domain::quantity::Micros;

pub const MAGIC: &[u8; 8] = b"MTRDDDUP";
pub const JOURNAL_VERSION: u8 = 1;
pub const HEADER_LEN: usize = super::codec::FILE_HEADER_LEN;
/// Length and checksum before each record's body.
pub const FRAME_LEN: usize = 8;
/// A record's body is at most this long (a group is at most 16,384 events of at most a few hundred bytes): a
/// larger length is damage, not a reason to allocate.
pub const MAX_BODY: usize = 64 << 20;

const FLAG_LATE: u8 = 1;
const FLAG_V1_DIGEST: u8 = 2;

pub fn encode_header(start_ms: UnixMillis) -> [u8; HEADER_LEN] {
    // The start's two's-complement bytes, as an i64's `to_be_bytes`.
    super::codec::encode_file_header(MAGIC, JOURNAL_VERSION, start_ms as u64)
}

/// The segment start a header names.
pub fn decode_header(h: &[u8]) -> Result<UnixMillis, DecodeError> {
    let (start, _) = super::codec::decode_file_header(h, MAGIC, JOURNAL_VERSION..=JOURNAL_VERSION)?;
    Ok(start as i64)
}

/// Builds one record: [`Self::entry`] per event, then [`Self::finish`].
pub struct RecordBuilder {
    body: Vec<u8>,
    entries: Vec<u8>,
    count: u64,
    new_products: Vec<u8>,
    n_products: u64,
    base: UnixMillis,
    /// Offset of each entry within `entries`.
    pub entry_offsets: Vec<usize>,
}

impl RecordBuilder {
    pub fn new(seq: u64, base: UnixMillis, segment_start: UnixMillis) -> Self {
        let mut body = Vec::with_capacity(16);
        body.extend_from_slice(&seq.to_be_bytes());
        put_zigzag(&mut body, base.wrapping_sub(segment_start));
        RecordBuilder {
            body,
            entries: Vec::new(),
            count: 0,
            new_products: Vec::new(),
            n_products: 0,
            base,
            entry_offsets: Vec::new(),
        }
    }

    /// Declares a product new to the file (it takes the file's next product number).
    pub fn new_product(&mut self, product: &str) {
        put_varint(&mut self.new_products, product.len() as u128);
        self.new_products.extend_from_slice(product.as_bytes());
        self.n_products += 1;
    }

    pub fn entry(&mut self, key: &str, e: &StoredEvent, product_id: u32) {
        self.entry_offsets.push(self.entries.len());
        encode_entry(&mut self.entries, key, e, self.base, product_id);
        self.count += 1;
    }

    /// The framed record, and where its entries start within it (add [`Self::entry_offsets`]).
    pub fn finish(mut self) -> (Vec<u8>, usize, Vec<usize>) {
        put_varint(&mut self.body, u128::from(self.n_products));
        self.body.extend_from_slice(&self.new_products);
        put_varint(&mut self.body, u128::from(self.count));
        let entries_at = FRAME_LEN + self.body.len();
        self.body.extend_from_slice(&self.entries);
        let mut out = Vec::with_capacity(FRAME_LEN + self.body.len());
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&self.body).to_be_bytes());
        out.extend_from_slice(&self.body);
        (out, entries_at, self.entry_offsets)
    }
}

fn encode_entry(out: &mut Vec<u8>, key: &str, e: &StoredEvent, base: UnixMillis, product_id: u32) {
    put_varint(out, key.len() as u128);
    out.extend_from_slice(key.as_bytes());
    let (digest, legacy) = match e.digest {
        ContentDigest::V2(d) => (d, false),
        ContentDigest::V1(d) => (d, true),
    };
    out.push(if e.late { FLAG_LATE } else { 0 } | if legacy { FLAG_V1_DIGEST } else { 0 });
    out.extend_from_slice(&digest);
    put_zigzag(out, e.recorded_at_ms.wrapping_sub(base));
    put_zigzag(out, e.recorded_at_ms.wrapping_sub(e.event_time_ms));
    put_zigzag(out, e.hour_ms.wrapping_sub(hour_start(e.event_time_ms)) / HOUR_MS);
    put_varint(out, e.quantity.0);
    put_varint(out, u128::from(product_id));
}

/// One record's body as read back (its checksum already checked by [`split_record`]).
pub struct RecordBody<'a> {
    pub seq: u64,
    pub base: UnixMillis,
    pub new_products: Vec<String>,
    /// Each entry's key and its offset within the body.
    pub entries: Vec<(&'a [u8], usize)>,
}

/// Splits the record at the start of `buf`: `Ok(Some((body, framed length)))`, `Ok(None)` when `buf` holds no
/// whole record (a torn tail), `Err` when the checksum or length is wrong.
pub fn split_record(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    if buf.len() < FRAME_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(9..=MAX_BODY).contains(&len) {
        return Err(DecodeError::Field { field: "length", at: 0 });
    }
    let Some(body) = buf.get(FRAME_LEN..FRAME_LEN + len) else { return Ok(None) };
    if crc32fast::hash(body).to_be_bytes() != buf[4..8] {
        return Err(DecodeError::Checksum);
    }
    Ok(Some((body, FRAME_LEN + len)))
}

/// Reads a record's body: its number, base, new products and where each entry starts.
pub fn read_body(body: &[u8], segment_start: UnixMillis) -> Result<RecordBody<'_>, DecodeError> {
    let mut r = Reader::raw(body);
    let seq = u64::from_be_bytes(r.take(8, "seq")?.try_into().expect("8 bytes"));
    let base = segment_start.wrapping_add(r.i64("base")?);
    let n = r.count("products")?;
    let mut new_products = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = r.count("product")?;
        let at = r.pos();
        let bytes = r.take(len, "product")?;
        new_products.push(String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Field { field: "product", at })?);
    }
    let n = r.count("entries")?;
    let mut entries = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let at = r.pos();
        let key = skip_entry(&mut r)?;
        entries.push((key, at));
    }
    if r.pos() != body.len() {
        return Err(DecodeError::Field { field: "entries", at: r.pos() });
    }
    Ok(RecordBody { seq, base, new_products, entries })
}

fn skip_entry<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = r.count("key")?;
    let key = r.take(len, "key")?;
    r.take(17, "digest")?;
    for f in ["recorded_at", "event time", "hour", "quantity", "product number"] {
        r.varint(f)?;
    }
    Ok(key)
}

/// Decodes the entry at the start of `buf` (which may run on past it). Returns its key and what it stored;
/// `Ok(None)` when `buf` ends before the entry does (read more).
pub fn decode_entry(
    buf: &[u8],
    base: UnixMillis,
    product: impl Fn(u64) -> Option<String>,
) -> Result<Option<(&[u8], StoredEvent)>, DecodeError> {
    let mut r = Reader::raw(buf);
    match decode_entry_at(&mut r, base, product) {
        Err(_) if r.ran_out() => Ok(None),
        other => other.map(Some),
    }
}

fn decode_entry_at<'a>(
    r: &mut Reader<'a>,
    base: UnixMillis,
    product: impl Fn(u64) -> Option<String>,
) -> Result<(&'a [u8], StoredEvent), DecodeError> {
    let len = r.count("key")?;
    let key = r.take(len, "key")?;
    let flags = r.take(1, "flags")?[0];
    if flags & !(FLAG_LATE | FLAG_V1_DIGEST) != 0 {
        return Err(DecodeError::Field { field: "flags", at: r.pos() - 1 });
    }
    let digest: [u8; 16] = r.take(16, "digest")?.try_into().expect("16 bytes");
    let recorded_at_ms = base.wrapping_add(r.i64("recorded_at")?);
    let event_time_ms = recorded_at_ms.wrapping_sub(r.i64("event time")?);
    let at = r.pos();
    let hours = r.i64("hour")?;
    let hour_ms = hours
        .checked_mul(HOUR_MS)
        .map(|d| hour_start(event_time_ms).wrapping_add(d))
        .ok_or(DecodeError::Field { field: "hour", at })?;
    let quantity = Micros(r.varint("quantity")?);
    let at = r.pos();
    let id =
        u64::try_from(r.varint("product number")?).map_err(|_| DecodeError::Field { field: "product number", at })?;
    let product = product(id).ok_or(DecodeError::Field { field: "product number", at })?;
    Ok((
        key,
        StoredEvent {
            digest: if flags & FLAG_V1_DIGEST != 0 { ContentDigest::V1(digest) } else { ContentDigest::V2(digest) },
            late: flags & FLAG_LATE != 0,
            product,
            event_time_ms,
            hour_ms,
            recorded_at_ms,
            quantity,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StoredEvent {
        StoredEvent {
            digest: ContentDigest::V2([7; 16]),
            late: true,
            product: "prod-a".into(),
            event_time_ms: 7_200_000 + 1_000,
            hour_ms: 7_200_000,
            recorded_at_ms: 7_200_000 + 1_500,
            quantity: Micros(2_000_000),
        }
    }

    #[test]
    fn a_record_is_pinned_byte_for_byte() {
        let mut b = RecordBuilder::new(5, 7_201_400, 3_600_000);
        b.new_product("prod-a");
        b.entry("k1", &event(), 0);
        let (bytes, entries_at, offsets) = b.finish();
        let body: Vec<u8> = [
            &5u64.to_be_bytes()[..],
            &[0xf0, 0xcf, 0xb7, 0x03][..], // base − start = 3,601,400 ms, zigzag
            &[1, 6][..],
            b"prod-a",
            &[1][..], // one entry
            &[2][..],
            b"k1",
            &[1][..],                // late
            &[7; 16][..],            // digest
            &[0xc8, 0x01][..],       // recorded_at − base = 100, zigzag
            &[0xe8, 0x07][..],       // recorded − event time = 500, zigzag
            &[0][..],                // hour offset
            &[0x80, 0x89, 0x7a][..], // 2,000,000 micro-units
            &[0][..],                // product 0
        ]
        .concat();
        let mut want = (body.len() as u32).to_be_bytes().to_vec();
        want.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        want.extend_from_slice(&body);
        assert_eq!(bytes, want);
        assert_eq!(offsets, vec![0]);
        let (read, n) = split_record(&bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        let rb = read_body(read, 3_600_000).unwrap();
        assert_eq!((rb.seq, rb.base, rb.new_products.clone()), (5, 7_201_400, vec!["prod-a".to_string()]));
        assert_eq!(rb.entries.len(), 1);
        assert_eq!(FRAME_LEN + rb.entries[0].1, entries_at);
        let (key, e) =
            decode_entry(&bytes[entries_at..], rb.base, |i| (i == 0).then(|| "prod-a".into())).unwrap().unwrap();
        assert_eq!((key, e), (&b"k1"[..], event()));
    }

    #[test]
    fn the_header_is_pinned_and_checked() {
        let h = encode_header(-3_600_000);
        assert_eq!(&h[..12], b"MTRDDDUP\x01\0\0\0");
        assert_eq!(&h[12..20], &(-3_600_000i64).to_be_bytes());
        assert_eq!(&h[20..], &crc32fast::hash(&h[..20]).to_be_bytes());
        assert_eq!(decode_header(&h), Ok(-3_600_000));
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(decode_header(&bad), Err(DecodeError::Checksum));
        bad = h;
        bad[8] = 2;
        assert_eq!(decode_header(&bad), Err(DecodeError::Version(2)));
    }

    #[test]
    fn a_torn_or_damaged_record_is_told_apart() {
        let mut b = RecordBuilder::new(1, 0, 0);
        b.new_product("p");
        b.entry("key", &event(), 0);
        let (bytes, _, _) = b.finish();
        for cut in 0..bytes.len() {
            assert!(split_record(&bytes[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        assert_eq!(split_record(&bad), Err(DecodeError::Checksum));
    }

    #[test]
    fn a_short_read_asks_for_more_and_never_panics() {
        let mut b = RecordBuilder::new(1, 0, 0);
        b.entry("a-longer-key", &event(), 3);
        let (bytes, at, _) = b.finish();
        for cut in at..bytes.len() {
            assert!(decode_entry(&bytes[at..cut], 0, |_| Some("p".into())).unwrap().is_none());
        }
        assert!(decode_entry(&bytes[at..], 0, |_| None).is_err(), "an unknown product number is damage");
    }
}
