//! The spool's outbox files, version 1 (`outbox/<first seq>.seg`, see [`crate::store::outbox_log`]). Never
//! reorder these fields; a change is a new version.
//!
//! **File header** (24 bytes):
//!
//! | bytes  | field     | encoding                                                 |
//! |--------|-----------|----------------------------------------------------------|
//! | 0–7    | magic     | `MTRDOUTB`                                               |
//! | 8      | version   | `u8` = 1                                                 |
//! | 9–11   | reserved  | zero                                                     |
//! | 12–19  | first seq | `u64` big-endian: the sequence of the file's first entry |
//! | 20–23  | checksum  | `u32` big-endian: CRC32 of bytes 0–19                    |
//!
//! **Block** (one per run of at most `BLOCK_ENTRIES` consecutive entries of one ingest group), then the next:
//!
//! | field    | encoding                                                                               |
//! |----------|----------------------------------------------------------------------------------------|
//! | length   | `u32` big-endian: bytes of the body                                                    |
//! | checksum | `u32` big-endian: CRC32 of the body                                                    |
//! | body     | first sequence `u64` big-endian · the entries as an outbox block, version 3 ([`super::outbox`]) |
//!
//! **Marks** in sled's default tree: `m/outbox_end` (written in every group's batch that adds blocks) is the next
//! sequence, the file the group wrote to and where its last block ends, as three big-endian `u64`s and a CRC32 of
//! them; `m/outbox_forwarded` (written by the forwarder) is a big-endian `u64`: every entry below it is in the
//! shared ledger.

use super::DecodeError;

pub const MAGIC: &[u8; 8] = b"MTRDOUTB";
pub const OUTBOX_FILE_VERSION: u8 = 1;
pub const HEADER_LEN: usize = super::codec::FILE_HEADER_LEN;
/// Length and checksum before each block's body.
pub const FRAME_LEN: usize = 8;
/// A body longer than this is damage (a block holds at most 256 entries of a few hundred bytes each, far less).
pub const MAX_BODY: usize = 16 << 20;

pub fn encode_header(first_seq: u64) -> [u8; HEADER_LEN] {
    super::codec::encode_file_header(MAGIC, OUTBOX_FILE_VERSION, first_seq)
}

/// The first sequence a header names.
pub fn decode_header(h: &[u8]) -> Result<u64, DecodeError> {
    Ok(super::codec::decode_file_header(h, MAGIC, OUTBOX_FILE_VERSION..=OUTBOX_FILE_VERSION)?.0)
}

/// Appends one framed block (`block`: a version-3 outbox block whose first entry has sequence `seq`) to `out`.
pub fn put_block(out: &mut Vec<u8>, seq: u64, block: &[u8]) {
    let body_len = 8 + block.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_be_bytes());
    crc.update(block);
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(block);
}

/// A framed block as read: its first sequence, its block bytes and the framed length.
pub type Framed<'a> = (u64, &'a [u8], usize);

/// The next framed block in `buf`. `Ok(None)`: `buf` ends before the block does (or holds zeros: nothing more
/// was written); `Err`: the bytes are damaged.
pub fn next_block(buf: &[u8]) -> Result<Option<Framed<'_>>, DecodeError> {
    let Some(frame) = buf.get(..FRAME_LEN) else { return Ok(None) };
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 && frame[4..8] == [0; 4] {
        return Ok(None);
    }
    if !(9..=MAX_BODY).contains(&len) {
        return Err(DecodeError::Field { field: "length", at: 0 });
    }
    let Some(body) = buf.get(FRAME_LEN..FRAME_LEN + len) else { return Ok(None) };
    if crc32fast::hash(body).to_be_bytes() != frame[4..8] {
        return Err(DecodeError::Checksum);
    }
    let seq = u64::from_be_bytes(body[..8].try_into().expect("8 bytes"));
    Ok(Some((seq, &body[8..], FRAME_LEN + len)))
}

/// `m/outbox_end`: what the last group that added blocks left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndMark {
    /// The sequence the next entry takes.
    pub next_seq: u64,
    /// The file (its first sequence) the group wrote to, and where its last block ends in it.
    pub file: u64,
    pub end: u64,
}

impl EndMark {
    pub fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..8].copy_from_slice(&self.next_seq.to_be_bytes());
        b[8..16].copy_from_slice(&self.file.to_be_bytes());
        b[16..24].copy_from_slice(&self.end.to_be_bytes());
        let crc = crc32fast::hash(&b[..24]);
        b[24..].copy_from_slice(&crc.to_be_bytes());
        b
    }

    pub fn decode(v: &[u8]) -> Result<Self, DecodeError> {
        if v.len() != 28 {
            return Err(DecodeError::Field { field: "length", at: 0 });
        }
        if crc32fast::hash(&v[..24]).to_be_bytes() != v[24..] {
            return Err(DecodeError::Checksum);
        }
        let n = |r: std::ops::Range<usize>| u64::from_be_bytes(v[r].try_into().expect("8 bytes"));
        Ok(EndMark { next_seq: n(0..8), file: n(8..16), end: n(16..24) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn the_header_is_pinned_and_checked() {
        let h = encode_header(256);
        assert_eq!(hex(&h[..20]), "4d5452444f555442010000000000000000000100");
        assert_eq!(decode_header(&h), Ok(256));
        let mut bad = h;
        bad[19] ^= 1;
        assert_eq!(decode_header(&bad), Err(DecodeError::Checksum));
        let mut v2 = h;
        v2[8] = 2;
        assert_eq!(decode_header(&v2), Err(DecodeError::Version(2)));
        assert!(decode_header(&h[..10]).is_err());
    }

    #[test]
    fn a_block_is_framed_byte_for_byte_as_the_layout_says() {
        let mut out = Vec::new();
        put_block(&mut out, 5, &[3, 1, 2]);
        let body = "0000000000000005030102";
        assert_eq!(hex(&out[..4]), "0000000b");
        assert_eq!(out[4..8], crc32fast::hash(&out[8..]).to_be_bytes());
        assert_eq!(hex(&out[8..]), body);
        put_block(&mut out, 9, &[7; 20]);
        let (seq, block, n) = next_block(&out).unwrap().unwrap();
        assert_eq!((seq, block, n), (5, &[3u8, 1, 2][..], 19));
        let (seq, block, m) = next_block(&out[n..]).unwrap().unwrap();
        assert_eq!((seq, block.len(), n + m), (9, 20, out.len()));
        // Zeros after the last block (a file cut there) and a torn block are the end, not damage.
        assert_eq!(next_block(&[0u8; 64]), Ok(None));
        assert_eq!(next_block(&out[..n - 1]), Ok(None));
    }

    #[test]
    fn damage_is_refused_never_misread() {
        let mut out = Vec::new();
        put_block(&mut out, 5, &[3, 1, 2, 4, 4]);
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(!matches!(next_block(&bad), Ok(Some(_))), "byte {i} flipped was read as a block");
        }
    }

    #[test]
    fn the_end_mark_is_pinned() {
        let m = EndMark { next_seq: 512, file: 256, end: 4096 };
        let b = m.encode();
        assert_eq!(hex(&b[..24]), "000000000000020000000000000001000000000000001000");
        assert_eq!(EndMark::decode(&b), Ok(m));
        let mut bad = b;
        bad[3] ^= 1;
        assert_eq!(EndMark::decode(&bad), Err(DecodeError::Checksum));
        assert!(EndMark::decode(&b[..27]).is_err());
    }
}
