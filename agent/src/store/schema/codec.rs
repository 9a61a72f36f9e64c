//! The primitives every stored layout is written with (see the rules in [`super`]): a leading version byte,
//! varints, length-prefixed strings, and a trailing CRC32 checked before any field is read.

use super::DecodeError;

/// Builds one stored value: the version byte first, the checksum last ([`Writer::finish`]).
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub fn new(version: u8) -> Self {
        Writer(vec![version])
    }

    /// A writer whose buffer holds `capacity` bytes before it grows.
    pub fn with_capacity(version: u8, capacity: usize) -> Self {
        let mut b = Vec::with_capacity(capacity.max(1));
        b.push(version);
        Writer(b)
    }

    pub fn varint(&mut self, v: u128) {
        put_varint(&mut self.0, v);
    }

    pub fn u64(&mut self, v: u64) {
        self.varint(u128::from(v));
    }

    /// Zigzag, so small negative numbers stay small.
    pub fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u128);
        self.0.extend_from_slice(b);
    }

    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.0.push(0),
            Some(v) => {
                self.0.push(1);
                put(self, v);
            }
        }
    }

    /// The value's bytes, with the CRC32 of all of them appended.
    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.0);
        self.0.extend_from_slice(&crc.to_be_bytes());
        self.0
    }
}

/// Appends `v` as a LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u128) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends `v` zigzag-encoded, so small negative numbers stay small.
pub(crate) fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64 as u128);
}

/// Reads one stored value's fields in order; every error names the field it was reading.
pub(crate) struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    /// Set when a read ran past the end of the bytes (more bytes may complete it: see [`Self::ran_out`]).
    short: bool,
}

impl<'a> Reader<'a> {
    /// Checks the version byte and the checksum, and positions after the version.
    pub fn open(bytes: &'a [u8], version: u8) -> Result<Self, DecodeError> {
        let found = *bytes.first().ok_or(DecodeError::Field { field: "version", at: 0 })?;
        if found != version {
            return Err(DecodeError::Version(found));
        }
        let body_len = bytes
            .len()
            .checked_sub(4)
            .filter(|n| *n >= 1)
            .ok_or(DecodeError::Field { field: "checksum", at: bytes.len() })?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32fast::hash(body).to_be_bytes() != crc {
            return Err(DecodeError::Checksum);
        }
        Ok(Reader { body, pos: 1, short: false })
    }

    /// Reads bytes with no version byte or checksum of their own (part of something already checked, or read
    /// to find where it ends).
    pub fn raw(bytes: &'a [u8]) -> Self {
        Reader { body: bytes, pos: 0, short: false }
    }

    /// Whether a read failed because the bytes ended (rather than because they are malformed).
    pub fn ran_out(&self) -> bool {
        self.short
    }

    /// Where the next field starts (for errors).
    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let Some(end) = at.checked_add(n).filter(|e| *e <= self.body.len()) else {
            self.short = true;
            return Err(DecodeError::Field { field, at });
        };
        self.pos = end;
        Ok(&self.body[at..end])
    }

    /// At most 19 bytes (a u128); anything longer is corrupt, not a reason to loop.
    pub fn varint(&mut self, field: &'static str) -> Result<u128, DecodeError> {
        let at = self.pos;
        let mut v: u128 = 0;
        for i in 0..19u32 {
            let b = self.take(1, field)?[0];
            let bits = u128::from(b & 0x7f);
            // The 19th byte may only hold the top 2 bits of a u128.
            if i == 18 && bits > 0b11 {
                return Err(DecodeError::Field { field, at });
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Field { field, at })
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let at = self.pos;
        u64::try_from(self.varint(field)?).map_err(|_| DecodeError::Field { field, at })
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let at = self.pos;
        u32::try_from(self.varint(field)?).map_err(|_| DecodeError::Field { field, at })
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let z = self.u64(field)?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let at = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Field { field, at }),
        }
    }

    /// A count of items that follow; bounded by the bytes left, so a damaged count cannot ask for a huge
    /// allocation (every item takes at least one byte).
    pub fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = usize::try_from(self.varint(field)?).map_err(|_| DecodeError::Field { field, at })?;
        if n > self.body.len() - self.pos {
            self.short = true;
            return Err(DecodeError::Field { field, at });
        }
        Ok(n)
    }

    pub fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let n = self.count(field)?;
        Ok(self.take(n, field)?.to_vec())
    }

    pub fn str(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let at = self.pos;
        String::from_utf8(self.bytes(field)?).map_err(|_| DecodeError::Field { field, at })
    }

    pub fn opt<T>(
        &mut self,
        field: &'static str,
        get: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        let at = self.pos;
        match self.u8(field)? {
            0 => Ok(None),
            1 => get(self).map(Some),
            _ => Err(DecodeError::Field { field, at }),
        }
    }

    /// An enum tag that is not one of the layout's.
    pub fn bad_tag(&self, field: &'static str) -> DecodeError {
        DecodeError::Field { field, at: self.pos - 1 }
    }

    /// Every byte before the checksum must have been read: trailing bytes are damage, not padding.
    pub fn end(self) -> Result<(), DecodeError> {
        if self.pos != self.body.len() {
            return Err(DecodeError::Field { field: "end of value", at: self.pos });
        }
        Ok(())
    }
}

/// The length of the header the store's own files start with (dedupe segments, redo log, outbox files).
pub const FILE_HEADER_LEN: usize = 24;

/// A file header: the file kind's magic (8 bytes), its version, three zero bytes, the file's number (a segment's
/// start or a first record's sequence, big-endian) and a CRC32 of the 20 bytes before it.
pub fn encode_file_header(magic: &[u8; 8], version: u8, number: u64) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8] = version;
    h[12..20].copy_from_slice(&number.to_be_bytes());
    let crc = crc32fast::hash(&h[..20]);
    h[20..].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The number and version a header of this `magic` names, when its version is one of `versions` and its
/// checksum holds.
pub fn decode_file_header(
    h: &[u8],
    magic: &[u8; 8],
    versions: std::ops::RangeInclusive<u8>,
) -> Result<(u64, u8), DecodeError> {
    if h.len() < FILE_HEADER_LEN || &h[..8] != magic {
        return Err(DecodeError::Field { field: "magic", at: 0 });
    }
    if !versions.contains(&h[8]) {
        return Err(DecodeError::Version(h[8]));
    }
    if crc32fast::hash(&h[..20]).to_be_bytes() != h[20..24] {
        return Err(DecodeError::Checksum);
    }
    Ok((u64::from_be_bytes(h[12..20].try_into().expect("8 bytes")), h[8]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varints_are_leb128_and_signed_ones_zigzag() {
        let mut w = Writer::new(7);
        w.varint(300);
        w.i64(-1);
        w.i64(1);
        w.opt(Some("é"), |w, s| w.str(s));
        w.opt(None::<u64>, |w, v| w.u64(v));
        let bytes = w.finish();
        assert_eq!(&bytes[..bytes.len() - 4], &[7, 0xac, 0x02, 0x01, 0x02, 1, 2, 0xc3, 0xa9, 0]);
        let mut r = Reader::open(&bytes, 7).unwrap();
        assert_eq!(r.varint("a").unwrap(), 300);
        assert_eq!(r.i64("b").unwrap(), -1);
        assert_eq!(r.i64("c").unwrap(), 1);
        assert_eq!(r.opt("d", |r| r.str("d")).unwrap().as_deref(), Some("é"));
        assert_eq!(r.opt("e", |r| r.u64("e")).unwrap(), None);
        r.end().unwrap();
    }

    #[test]
    fn overlong_varints_and_counts_are_refused() {
        let mut w = Writer::new(1);
        for _ in 0..19 {
            w.u8(0xff);
        }
        let bytes = w.finish();
        assert_eq!(Reader::open(&bytes, 1).unwrap().varint("q"), Err(DecodeError::Field { field: "q", at: 1 }));
        let mut w = Writer::new(1);
        w.varint(1 << 40);
        let bytes = w.finish();
        assert_eq!(Reader::open(&bytes, 1).unwrap().count("n"), Err(DecodeError::Field { field: "n", at: 1 }));
    }

    proptest! {
        #[test]
        fn integers_round_trip(a in any::<u128>(), b in any::<i64>(), c in any::<u64>()) {
            let mut w = Writer::new(1);
            w.varint(a);
            w.i64(b);
            w.u64(c);
            let bytes = w.finish();
            let mut r = Reader::open(&bytes, 1).unwrap();
            prop_assert_eq!(r.varint("a").unwrap(), a);
            prop_assert_eq!(r.i64("b").unwrap(), b);
            prop_assert_eq!(r.u64("c").unwrap(), c);
            r.end().unwrap();
        }
    }
}
