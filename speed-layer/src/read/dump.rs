//! A hash read whole with `DUMP`: one bulk string per key instead of two per field.
//!
//! Why: the accuracy ledger reads every settled cell's quantile-sketch hash (tens of fields
//! per minute cell, ~90k hashes for a 10M-event day). For such a hash `HGETALL` costs Redis
//! about three times the CPU of `DUMP` (`redis-benchmark`, 40-field listpack: 164k against
//! 510k replies/s) and makes the client parse two bulk strings per field.
//!
//! `DUMP`'s payload is the value in Redis's RDB encoding: `type (1 B) | object | RDB version
//! (2 B LE) | CRC64 (8 B LE)`. Redis calls it opaque; it is the RDB file's own encoding,
//! which every Redis and Valkey release still reads back, so a type byte never changes
//! meaning. This module reads the two encodings a hash of ours can have: a listpack (type
//! 16, Redis 7 and Valkey, up to `hash-max-listpack-entries` fields) and a hash table (type
//! 4). Anything else (a ziplist from Redis 6, a hash with field expiries, a future type) or
//! any inconsistency is `None`, and the caller reads that key with `HGETALL`: never a wrong
//! value, at worst the old cost.
//!
//! Hand-written because no maintained crate decodes one `DUMP` value (the `rdb` crate reads
//! whole RDB files); LZF, which RDB strings may be compressed with, is the `lzf` crate.

/// A listpack's or an RDB string's entry: bytes, or an integer it was stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    Str(&'a [u8]),
    Int(i64),
}

impl Entry<'_> {
    /// The entry as an unsigned integer (what `HINCRBY` counters are), when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Entry::Int(i) => u64::try_from(i).ok(),
            Entry::Str(s) => std::str::from_utf8(s).ok()?.parse().ok(),
        }
    }

    /// The entry's bytes when it is a string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Entry::Str(s) => Some(s),
            Entry::Int(_) => None,
        }
    }
}

const TYPE_HASH: u8 = 4;
const TYPE_HASH_LISTPACK: u8 = 16;
/// The version and the checksum after the object.
const FOOTER: usize = 10;

/// Calls `each` with every (field, value) of a hash's `DUMP` payload and collects what it
/// keeps (`None` from `each`: skipped). `None` when the payload is not a hash this module
/// reads, or is inconsistent; nothing of it is then returned.
pub fn hash_pairs<T>(
    payload: &[u8],
    mut each: impl FnMut(Entry<'_>, Entry<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let body_len = payload.len().checked_sub(FOOTER)?;
    let (&kind, body) = payload[..body_len].split_first()?;
    let mut rdb = Cursor { buf: body, at: 0 };
    let mut out = Vec::new();
    match kind {
        TYPE_HASH_LISTPACK => {
            let blob = rdb.string()?;
            let mut lp = Listpack::new(blob.bytes()?)?;
            // Two entries per pair (each at least two bytes, so a corrupt header reserves
            // no more than the blob could hold).
            out.reserve((lp.announced as usize / 2).min(lp.cur.buf.len() / 4));
            while let Some(field) = lp.entry()? {
                let value = lp.entry()??;
                out.extend(each(field, value));
            }
        }
        TYPE_HASH => {
            let n = rdb.length()?;
            for _ in 0..n {
                let field = rdb.string()?;
                let value = rdb.string()?;
                out.extend(each(field.entry(), value.entry()));
            }
        }
        _ => return None,
    }
    // The object must end exactly where the footer begins.
    (rdb.at == body.len()).then_some(out)
}

/// An RDB string: its bytes (borrowed, or inflated from LZF) or an integer encoding.
enum RdbString<'a> {
    Borrowed(&'a [u8]),
    Inflated(Vec<u8>),
    Int(i64),
}

impl RdbString<'_> {
    fn entry(&self) -> Entry<'_> {
        match self {
            RdbString::Borrowed(b) => Entry::Str(b),
            RdbString::Inflated(v) => Entry::Str(v),
            RdbString::Int(i) => Entry::Int(*i),
        }
    }

    /// The bytes of a string that holds a blob (a listpack); an integer is not one.
    fn bytes(&self) -> Option<&[u8]> {
        match self {
            RdbString::Borrowed(b) => Some(b),
            RdbString::Inflated(v) => Some(v),
            RdbString::Int(_) => None,
        }
    }
}

/// A cursor over bytes, every read bounds-checked; RDB's encodings read with it here, a
/// listpack's in [`Listpack`].
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

/// What an RDB length byte announces.
enum Len {
    Plain(usize),
    /// The special encodings: 0-2 an integer of 1, 2 or 4 bytes, 3 LZF.
    Special(u8),
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.buf.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn len_or_special(&mut self) -> Option<Len> {
        let first = self.byte()?;
        let n = match first >> 6 {
            0 => u64::from(first & 0x3f),
            1 => u64::from(first & 0x3f) << 8 | u64::from(self.byte()?),
            2 if first == 0x80 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            2 if first == 0x81 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            2 => return None,
            _ => return Some(Len::Special(first & 0x3f)),
        };
        // Never used to size an allocation unchecked: bytes are taken within the payload,
        // elements are read one by one until the payload runs out.
        usize::try_from(n).ok().map(Len::Plain)
    }

    fn length(&mut self) -> Option<usize> {
        match self.len_or_special()? {
            Len::Plain(n) => Some(n),
            Len::Special(_) => None,
        }
    }

    fn string(&mut self) -> Option<RdbString<'a>> {
        match self.len_or_special()? {
            Len::Plain(n) => self.take(n).map(RdbString::Borrowed),
            Len::Special(0) => Some(RdbString::Int(i64::from(self.byte()? as i8))),
            Len::Special(1) => Some(RdbString::Int(i64::from(i16::from_le_bytes(
                self.take(2)?.try_into().ok()?,
            )))),
            Len::Special(2) => Some(RdbString::Int(i64::from(i32::from_le_bytes(
                self.take(4)?.try_into().ok()?,
            )))),
            Len::Special(3) => {
                let compressed = self.length()?;
                let len = self.length().filter(|n| *n <= MAX_INFLATED)?;
                let bytes = lzf::decompress(self.take(compressed)?, len).ok()?;
                (bytes.len() == len).then_some(RdbString::Inflated(bytes))
            }
            Len::Special(_) => None,
        }
    }
}

/// The largest string inflated from LZF (a listpack is at most 4 GiB; a hash of ours is a
/// few kilobytes): a corrupt length must not allocate beyond it.
const MAX_INFLATED: usize = 64 << 20;

/// A listpack: `total bytes (u32 LE) | elements (u16 LE) | entries | 0xFF`, each entry its
/// encoding, its data and its length backwards (1-5 bytes).
struct Listpack<'a> {
    cur: Cursor<'a>,
    /// Elements announced by the header (65535: too many to say, counted instead).
    announced: u16,
    seen: u32,
}

impl<'a> Listpack<'a> {
    fn new(buf: &'a [u8]) -> Option<Listpack<'a>> {
        let total = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
        if usize::try_from(total).ok()? != buf.len() || buf.last() != Some(&0xff) {
            return None;
        }
        let announced = u16::from_le_bytes(buf.get(4..6)?.try_into().ok()?);
        Some(Listpack {
            cur: Cursor { buf, at: 6 },
            announced,
            seen: 0,
        })
    }

    /// The next entry; `Some(None)` at the end (which must match the header's count).
    fn entry(&mut self) -> Option<Option<Entry<'a>>> {
        let cur = &mut self.cur;
        let start = cur.at;
        let first = cur.byte()?;
        if first == 0xff {
            let complete = cur.at == cur.buf.len()
                && (self.announced == u16::MAX || u32::from(self.announced) == self.seen);
            return complete.then_some(None);
        }
        let entry = match first {
            0x00..=0x7f => Entry::Int(i64::from(first)),
            0x80..=0xbf => Entry::Str(cur.take(usize::from(first & 0x3f))?),
            0xc0..=0xdf => {
                let raw = i64::from(first & 0x1f) << 8 | i64::from(cur.byte()?);
                Entry::Int(sign_extend(raw, 13))
            }
            0xe0..=0xef => {
                let len = usize::from(first & 0x0f) << 8 | usize::from(cur.byte()?);
                Entry::Str(cur.take(len)?)
            }
            0xf0 => {
                let len = u32::from_le_bytes(cur.take(4)?.try_into().ok()?);
                Entry::Str(cur.take(usize::try_from(len).ok()?)?)
            }
            0xf1 => Entry::Int(sign_extend(le(cur.take(2)?), 16)),
            0xf2 => Entry::Int(sign_extend(le(cur.take(3)?), 24)),
            0xf3 => Entry::Int(sign_extend(le(cur.take(4)?), 32)),
            0xf4 => Entry::Int(le(cur.take(8)?)),
            _ => return None,
        };
        // The length backwards: as many bytes as the entry's length needs in 7-bit groups.
        let entry_len = cur.at - start;
        let backlen = match entry_len {
            0..=127 => 1,
            128..=16_382 => 2,
            16_383..=2_097_150 => 3,
            2_097_151..=268_435_454 => 4,
            _ => 5,
        };
        cur.take(backlen)?;
        self.seen += 1;
        Some(Some(entry))
    }
}

/// A little-endian integer of up to 8 bytes.
fn le(bytes: &[u8]) -> i64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, b| acc << 8 | u64::from(*b)) as i64
}

/// `raw`'s low `bits` bits as a two's complement number.
fn sign_extend(raw: i64, bits: u32) -> i64 {
    let shift = 64 - bits;
    (raw << shift) >> shift
}

#[cfg(test)]
mod tests;
