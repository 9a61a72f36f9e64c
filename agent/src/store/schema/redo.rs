//! The redo log's on-disk layout, version 2 (`redo/<first seq>.log`, see [`crate::store::redo`]). Never reorder
//! these fields; a change is a new version.
//!
//! **File header** (24 bytes):
//!
//! | bytes  | field     | encoding                                              |
//! |--------|-----------|-------------------------------------------------------|
//! | 0–7    | magic     | `MTRDREDO`                                            |
//! | 8      | version   | `u8` = 2 (1 still reads: its records have no outbox field) |
//! | 9–11   | reserved  | zero                                                  |
//! | 12–19  | first seq | `u64` big-endian: the number of the file's first record |
//! | 20–23  | checksum  | `u32` big-endian: CRC32 of bytes 0–19                 |
//!
//! **Record** (one per write to the default tree), then the next record:
//!
//! | field    | encoding                                                                                 |
//! |----------|------------------------------------------------------------------------------------------|
//! | length   | `u32` big-endian: bytes of the body                                                      |
//! | checksum | `u32` big-endian: CRC32 of the body                                                      |
//! | body     | `seq` `u64` big-endian · dedupe: `u8` 0 (none) or 1, then the segment start `i64` big-endian, the byte offset `u64` big-endian and the dedupe journal record (varint length + its bytes, framed as in [`super::journal`]) · outbox (version 2 only): `u8` 0 (none) or 1, then the outbox file (its first sequence) `u64` big-endian, the byte offset `u64` big-endian and the group's framed blocks (varint length + bytes, as in [`super::outbox_file`]) · ops: varint count, then each a `u8` kind (1 insert, 0 remove), the key (varint length + bytes) and, for an insert, the value (varint length + bytes) |
//!
//! The ops are the write exactly as sled applies it, in order (a later op on a key wins).

use super::DecodeError;
use super::codec::{Reader, put_varint};
use crate::clock::UnixMillis;

pub const MAGIC: &[u8; 8] = b"MTRDREDO";
pub const REDO_VERSION: u8 = 2;
pub const HEADER_LEN: usize = super::codec::FILE_HEADER_LEN;
/// Length and checksum before each record's body.
pub const FRAME_LEN: usize = 8;
/// A body longer than this is damage, not a reason to allocate (a group is at most 16,384 events; a seal chunk
/// a few thousand buckets).
pub const MAX_BODY: usize = 256 << 20;

/// A dedupe journal record written with a redo record: where it goes and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupeWrite {
    pub start: UnixMillis,
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// A spool group's outbox blocks written with a redo record: to which outbox file, where, and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxWrite {
    pub file: u64,
    pub at: u64,
    pub bytes: Vec<u8>,
}

/// One write to the default tree: a key and its new value, or `None` for a removal.
pub type Op = (Vec<u8>, Option<Vec<u8>>);

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedoRecord {
    pub seq: u64,
    pub dedupe: Option<DedupeWrite>,
    pub outbox: Option<OutboxWrite>,
    pub ops: Vec<Op>,
}

pub fn encode_header(first_seq: u64) -> [u8; HEADER_LEN] {
    super::codec::encode_file_header(MAGIC, REDO_VERSION, first_seq)
}

/// The first record number a header names, and the file's version (1 or 2: how its records read).
pub fn decode_header(h: &[u8]) -> Result<(u64, u8), DecodeError> {
    super::codec::decode_file_header(h, MAGIC, 1..=REDO_VERSION)
}

/// A framed record. `ops` yields each op's key and value (`None`: a removal).
pub fn encode_record<'a>(
    seq: u64,
    dedupe: Option<(UnixMillis, u64, &[u8])>,
    outbox: Option<(u64, u64, &[u8])>,
    ops: impl ExactSizeIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Vec<u8> {
    // The frame is filled in at the end: the body is built in place after it, never copied (a spool's group
    // record is a few hundred KiB).
    let mut body = Vec::with_capacity(
        FRAME_LEN + 96 + dedupe.map_or(0, |d| d.2.len()) + outbox.map_or(0, |o| o.2.len()) + 64 * ops.len(),
    );
    body.extend_from_slice(&[0u8; FRAME_LEN]);
    body.extend_from_slice(&seq.to_be_bytes());
    match dedupe {
        None => body.push(0),
        Some((start, at, bytes)) => {
            body.push(1);
            body.extend_from_slice(&start.to_be_bytes());
            body.extend_from_slice(&at.to_be_bytes());
            put_varint(&mut body, bytes.len() as u128);
            body.extend_from_slice(bytes);
        }
    }
    match outbox {
        None => body.push(0),
        Some((file, at, bytes)) => {
            body.push(1);
            body.extend_from_slice(&file.to_be_bytes());
            body.extend_from_slice(&at.to_be_bytes());
            put_varint(&mut body, bytes.len() as u128);
            body.extend_from_slice(bytes);
        }
    }
    put_varint(&mut body, ops.len() as u128);
    for (key, value) in ops {
        body.push(u8::from(value.is_some()));
        put_varint(&mut body, key.len() as u128);
        body.extend_from_slice(key);
        if let Some(v) = value {
            put_varint(&mut body, v.len() as u128);
            body.extend_from_slice(v);
        }
    }
    let len = (body.len() - FRAME_LEN) as u32;
    let crc = crc32fast::hash(&body[FRAME_LEN..]);
    body[..4].copy_from_slice(&len.to_be_bytes());
    body[4..FRAME_LEN].copy_from_slice(&crc.to_be_bytes());
    body
}

/// The body length a frame announces, if it is a possible one.
pub fn frame_len(frame: &[u8; FRAME_LEN]) -> Option<usize> {
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    (9..=MAX_BODY).contains(&len).then_some(len)
}

/// Decodes a framed record (frame and body) of a file of `version`; `Err` when its checksum or any field is wrong.
pub fn decode_record(framed: &[u8], version: u8) -> Result<RedoRecord, DecodeError> {
    if framed.len() < FRAME_LEN {
        return Err(DecodeError::Field { field: "length", at: 0 });
    }
    let (frame, body) = framed.split_at(FRAME_LEN);
    if u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize != body.len() {
        return Err(DecodeError::Field { field: "length", at: 0 });
    }
    if crc32fast::hash(body).to_be_bytes() != frame[4..8] {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader::raw(body);
    let be = |r: &mut Reader<'_>, field| r.take(8, field).map(|b| b.try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(be(&mut r, "seq")?);
    let dedupe = match r.u8("dedupe")? {
        0 => None,
        1 => {
            let start = i64::from_be_bytes(be(&mut r, "dedupe start")?);
            let at = u64::from_be_bytes(be(&mut r, "dedupe offset")?);
            Some(DedupeWrite { start, at, bytes: r.bytes("dedupe record")? })
        }
        _ => return Err(r.bad_tag("dedupe")),
    };
    let outbox = match version {
        1 => None,
        _ => match r.u8("outbox")? {
            0 => None,
            1 => {
                let file = u64::from_be_bytes(be(&mut r, "outbox file")?);
                let at = u64::from_be_bytes(be(&mut r, "outbox offset")?);
                Some(OutboxWrite { file, at, bytes: r.bytes("outbox blocks")? })
            }
            _ => return Err(r.bad_tag("outbox")),
        },
    };
    let n = r.count("ops")?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let insert = match r.u8("op kind")? {
            0 => false,
            1 => true,
            _ => return Err(r.bad_tag("op kind")),
        };
        let key = r.bytes("op key")?;
        let value = if insert { Some(r.bytes("op value")?) } else { None };
        ops.push((key, value));
    }
    r.end()?;
    Ok(RedoRecord { seq, dedupe, outbox, ops })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn header_bytes_are_fixed() {
        let h = encode_header(7);
        assert_eq!(hex(&h[..20]), "4d5452445245444f020000000000000000000007");
        assert_eq!(decode_header(&h), Ok((7, 2)));
        let mut bad = h;
        bad[15] ^= 1;
        assert_eq!(decode_header(&bad), Err(DecodeError::Checksum));
        // A version-1 file (written before the outbox field) still reads; a newer one is refused.
        let mut v1 = h;
        v1[8] = 1;
        let crc = crc32fast::hash(&v1[..20]).to_be_bytes();
        v1[20..].copy_from_slice(&crc);
        assert_eq!(decode_header(&v1), Ok((7, 1)));
        let mut v3 = h;
        v3[8] = 3;
        assert_eq!(decode_header(&v3), Err(DecodeError::Version(3)));
    }

    #[test]
    fn a_record_is_byte_for_byte_what_the_layout_says() {
        let ops: Vec<(&[u8], Option<&[u8]>)> = vec![(b"b/k", Some(b"v1")), (b"o/x", None)];
        let rec = encode_record(5, Some((1000, 24, &[9, 9][..])), Some((256, 40, &[7][..])), ops.into_iter());
        let (head, outbox, ops_hex) = (
            "0000000000000005\
             01\
             00000000000003e8\
             0000000000000018\
             02\
             0909",
            "01\
             0000000000000100\
             0000000000000028\
             01\
             07",
            "02\
             01\
             03622f6b\
             027631\
             00\
             036f2f78",
        );
        let unhex = |h: &str| -> Vec<u8> {
            let h: String = h.split_whitespace().collect();
            (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
        };
        assert_eq!(rec[8..], unhex(&format!("{head}{outbox}{ops_hex}")));
        assert_eq!(u32::from_be_bytes(rec[..4].try_into().unwrap()) as usize, rec.len() - 8);
        assert_eq!(rec[4..8], crc32fast::hash(&rec[8..]).to_be_bytes());
        let ops = vec![(b"b/k".to_vec(), Some(b"v1".to_vec())), (b"o/x".to_vec(), None)];
        assert_eq!(
            decode_record(&rec, REDO_VERSION),
            Ok(RedoRecord {
                seq: 5,
                dedupe: Some(DedupeWrite { start: 1000, at: 24, bytes: vec![9, 9] }),
                outbox: Some(OutboxWrite { file: 256, at: 40, bytes: vec![7] }),
                ops: ops.clone(),
            })
        );
        // A version-1 record is the same without the outbox field.
        let v1 = unhex(&format!("{head}{ops_hex}"));
        let mut framed = (v1.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&crc32fast::hash(&v1).to_be_bytes());
        framed.extend_from_slice(&v1);
        assert_eq!(
            decode_record(&framed, 1),
            Ok(RedoRecord {
                seq: 5,
                dedupe: Some(DedupeWrite { start: 1000, at: 24, bytes: vec![9, 9] }),
                outbox: None,
                ops,
            })
        );
    }

    #[test]
    fn damage_is_refused_never_misread() {
        let ops: Vec<(&[u8], Option<&[u8]>)> = vec![(b"k", Some(b"v"))];
        let rec = encode_record(1, None, None, ops.into_iter());
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(&bad, REDO_VERSION).is_err(), "byte {i} flipped was read as a record");
        }
        assert!(decode_record(&rec[..rec.len() - 1], REDO_VERSION).is_err());
        let mut frame = [0u8; FRAME_LEN];
        frame.copy_from_slice(&rec[..FRAME_LEN]);
        assert_eq!(frame_len(&frame), Some(rec.len() - FRAME_LEN));
        assert_eq!(frame_len(&[0xff; FRAME_LEN]), None);
    }
}
