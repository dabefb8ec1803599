//! HyperLogLog in Redis's own dense encoding, so a sketch built outside Redis (the batch
//! layer's, or a speed flush's) can be `SET` into Redis and unioned there with `PFMERGE` /
//! multi-key `PFCOUNT`, and a Redis key read with `GET` can be merged here.
//!
//! Same hash (MurmurHash64A, seed 0xadc83b19), same 16384 six-bit registers, same estimator
//! as Redis 7 (`hyperloglog.c`), so counts agree exactly with `PFCOUNT`.

/// Registers: 2^14.
pub const REGISTERS: usize = 1 << P;
const P: u32 = 14;
const Q: u32 = 64 - P;
const HEADER: usize = 16;
/// Size of a dense Redis HLL value.
pub const DENSE_SIZE: usize = HEADER + (REGISTERS * 6).div_ceil(8);
const SEED: u64 = 0xadc8_3b19;
const ALPHA_INF: f64 = 0.721_347_520_444_481_7;

/// A HyperLogLog with one byte per register in memory (fast to update and merge).
#[derive(Clone, PartialEq, Eq)]
pub struct Hll {
    registers: Box<[u8; REGISTERS]>,
}

impl Default for Hll {
    fn default() -> Self {
        Hll {
            registers: Box::new([0; REGISTERS]),
        }
    }
}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hll(~{})", self.count())
    }
}

/// Redis's MurmurHash64A.
pub fn murmur64a(data: &[u8], seed: u64) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = seed ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut k = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= (*b as u64) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register an element lands in and the rank it offers there, as Redis computes them:
/// the low 14 hash bits pick the register; the run of zeros after them, plus one, is the rank
/// (a sentinel bit bounds it at 51).
pub fn register_of(element: &[u8]) -> (usize, u8) {
    register_of_hash(element_hash(element))
}

/// The 64-bit hash Redis computes for an element (also usable as a hash-table key).
pub fn element_hash(element: &[u8]) -> u64 {
    murmur64a(element, SEED)
}

/// [`register_of`] given the element's [`element_hash`].
pub fn register_of_hash(hash: u64) -> (usize, u8) {
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    let rest = (hash >> P) | (1u64 << Q);
    (index, (rest.trailing_zeros() + 1) as u8)
}

impl Hll {
    pub fn new() -> Self {
        Self::default()
    }

    /// Back to the empty set (the registers kept, for another union).
    pub fn clear(&mut self) {
        self.registers.fill(0);
    }

    /// Adds an element (what `PFADD key element` adds).
    pub fn add(&mut self, element: &[u8]) {
        let (index, rank) = register_of(element);
        self.observe(index, rank);
    }

    /// Raises register `index` to `rank` (an element already hashed by [`register_of`]).
    pub fn observe(&mut self, index: usize, rank: u8) {
        if let Some(r) = self.registers.get_mut(index)
            && rank > *r
        {
            *r = rank;
        }
    }

    /// The registers, one byte each (a compact in-process form; Redis's is [`Hll::to_redis`]).
    pub fn registers(&self) -> &[u8; REGISTERS] {
        &self.registers
    }

    /// Union with registers given as [`Hll::registers`] returns them; `None` if `bytes` is
    /// not 16384 registers.
    pub fn merge_registers(&mut self, bytes: &[u8]) -> Option<()> {
        self.max_registers(bytes.try_into().ok()?);
        Some(())
    }

    /// Union with another sketch.
    pub fn merge(&mut self, other: &Hll) {
        self.max_registers(&other.registers);
    }

    fn max_registers(&mut self, other: &[u8; REGISTERS]) {
        for (a, b) in self.registers.iter_mut().zip(other.iter()) {
            if *b > *a {
                *a = *b;
            }
        }
    }

    /// The estimate `PFCOUNT` gives for the same registers.
    pub fn count(&self) -> u64 {
        let mut histo = [0u32; 64];
        for r in self.registers.iter() {
            histo[*r as usize] += 1;
        }
        estimate(&histo)
    }

    /// The count `PFCOUNT` gives for a key whose value (from `GET`) is `bytes`, read in
    /// place: a sparse value's runs are counted without building the registers, so reading
    /// many small keys with `GET` costs about what `PFCOUNT` on each would. `None` if `bytes`
    /// is not a valid Redis HyperLogLog.
    pub fn count_redis(bytes: &[u8]) -> Option<u64> {
        let mut histo = [0u32; 64];
        match encoding(bytes)? {
            Encoding::Dense(regs) => {
                for i in 0..REGISTERS {
                    histo[dense_register(regs, i) as usize] += 1;
                }
            }
            Encoding::Sparse(ops) => {
                sparse_runs(ops, |_, len, value| histo[value as usize] += len as u32)?;
            }
        }
        Some(estimate(&histo))
    }

    /// Union with a key's value from `GET` (either encoding), read in place; `None` (and
    /// nothing merged) if `bytes` is not a valid Redis HyperLogLog. What a multi-key
    /// `PFCOUNT` does in Redis, done here: [`Hll::count`] of the union equals it.
    pub fn merge_redis(&mut self, bytes: &[u8]) -> Option<()> {
        match encoding(bytes)? {
            Encoding::Dense(regs) => {
                for (i, r) in self.registers.iter_mut().enumerate() {
                    *r = (*r).max(dense_register(regs, i));
                }
            }
            Encoding::Sparse(ops) => {
                // Checked whole first, so an invalid value merges nothing.
                sparse_runs(ops, |_, _, _| ())?;
                sparse_runs(ops, |start, len, value| {
                    if value > 0 {
                        for r in &mut self.registers[start..start + len] {
                            *r = (*r).max(value);
                        }
                    }
                })?;
            }
        }
        Some(())
    }

    /// Redis's dense encoding (`HYLL`, encoding 0, cached cardinality marked stale).
    pub fn to_redis_dense(&self) -> Vec<u8> {
        let mut out = vec![0u8; DENSE_SIZE];
        out[..4].copy_from_slice(b"HYLL");
        // Cached cardinality invalid: Redis recomputes on the first PFCOUNT.
        out[15] = 0x80;
        let regs = &mut out[HEADER..];
        for (i, r) in self.registers.iter().enumerate() {
            let bit = i * 6;
            let (byte, shift) = (bit / 8, bit % 8);
            regs[byte] |= r << shift;
            if shift > 2 {
                regs[byte + 1] |= r >> (8 - shift);
            }
        }
        out
    }

    /// Reads Redis's dense encoding (from `GET` on a key Redis made dense); `None` otherwise.
    pub fn from_redis_dense(bytes: &[u8]) -> Option<Hll> {
        let Some(Encoding::Dense(regs)) = encoding(bytes) else {
            return None;
        };
        let mut h = Hll::new();
        for (i, r) in h.registers.iter_mut().enumerate() {
            *r = dense_register(regs, i);
        }
        Some(h)
    }

    /// Redis's sparse encoding (encoding 1): runs of zero registers and short runs of equal
    /// small values. A few hundred bytes for a small set instead of 12 KiB; Redis reads it as
    /// it reads its own. Falls back to dense when a register exceeds what sparse can hold (32).
    pub fn to_redis(&self) -> Vec<u8> {
        let mut obs: Vec<(u16, u8)> = self
            .registers
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 0)
            .map(|(i, r)| (i as u16, *r))
            .collect();
        Self::redis_from_observations(&mut obs)
    }

    /// [`Hll::to_redis`] of the sketch holding exactly these `(register, rank)` observations,
    /// without building the 16384 registers: for the many small sketches of a batch view.
    /// The observations are sorted in place.
    pub fn redis_from_observations(obs: &mut [(u16, u8)]) -> Vec<u8> {
        obs.sort_unstable();
        // Keep the highest rank per register (the last of each run after sorting).
        let mut regs: Vec<(usize, u8)> = Vec::with_capacity(obs.len());
        for (i, r) in obs.iter() {
            match regs.last_mut() {
                Some((last, rank)) if *last == *i as usize => *rank = (*rank).max(*r),
                _ => regs.push((*i as usize, *r)),
            }
        }
        if regs.iter().any(|(_, r)| *r > SPARSE_VAL_MAX) {
            let mut h = Hll::new();
            for (i, r) in regs {
                h.observe(i, r);
            }
            return h.to_redis_dense();
        }
        let mut out = Vec::with_capacity(HEADER + regs.len() * 3 + 2);
        out.extend_from_slice(b"HYLL");
        out.push(1);
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
        let zeros = |out: &mut Vec<u8>, mut n: usize| {
            while n > 0 {
                let k = n.min(REGISTERS);
                if k > 64 {
                    let len = k - 1;
                    out.push(0x40 | ((len >> 8) as u8 & 0x3f));
                    out.push((len & 0xff) as u8);
                } else {
                    out.push((k - 1) as u8);
                }
                n -= k;
            }
        };
        let mut next = 0usize;
        let mut k = 0;
        while k < regs.len() {
            let (i, v) = regs[k];
            zeros(&mut out, i - next);
            // A run of equal values in consecutive registers, at most 4 per opcode.
            let mut run = 1;
            while k + run < regs.len() && run < 4 && regs[k + run] == (i + run, v) {
                run += 1;
            }
            out.push(0x80 | ((v - 1) << 2) | (run as u8 - 1));
            next = i + run;
            k += run;
        }
        zeros(&mut out, REGISTERS - next);
        out
    }

    /// The non-zero registers of a sparse Redis encoding, without building the registers;
    /// `None` for a dense or invalid one.
    pub fn sparse_observations(bytes: &[u8]) -> Option<Vec<(u16, u8)>> {
        let Some(Encoding::Sparse(ops)) = encoding(bytes) else {
            return None;
        };
        let mut out = Vec::new();
        sparse_runs(ops, |start, len, value| {
            if value > 0 {
                out.extend((start..start + len).map(|i| (i as u16, value)));
            }
        })?;
        Some(out)
    }

    /// Reads either Redis encoding (what `GET` returns for a HyperLogLog key).
    pub fn from_redis(bytes: &[u8]) -> Option<Hll> {
        let mut h = Hll::new();
        h.merge_redis(bytes)?;
        Some(h)
    }
}

/// A union of Redis values (from `GET`) that keeps the registers it raised, so clearing it
/// and counting it cost what it holds rather than all 16384 registers: a bucket's total
/// over tens of small cells, for each of a ledger read's thousands of buckets.
#[derive(Default)]
pub struct Union {
    hll: Hll,
    /// Registers raised from zero, while `dense` is false.
    raised: Vec<u16>,
    /// A dense value was merged: every register may be set.
    dense: bool,
}

impl Union {
    /// Back to the empty set.
    pub fn clear(&mut self) {
        if self.dense {
            self.hll.clear();
        } else {
            for i in &self.raised {
                self.hll.registers[*i as usize] = 0;
            }
        }
        self.raised.clear();
        self.dense = false;
    }

    /// [`Hll::merge_redis`], keeping track of the registers raised.
    pub fn merge_redis(&mut self, bytes: &[u8]) -> Option<()> {
        let Encoding::Sparse(ops) = encoding(bytes)? else {
            self.hll.merge_redis(bytes)?;
            self.dense = true;
            return Some(());
        };
        sparse_runs(ops, |_, _, _| ())?;
        let (regs, raised) = (&mut self.hll.registers, &mut self.raised);
        sparse_runs(ops, |start, len, value| {
            if value == 0 {
                return;
            }
            for i in start..start + len {
                if regs[i] == 0 {
                    raised.push(i as u16);
                }
                regs[i] = regs[i].max(value);
            }
        })
    }

    /// The count of the union (what a multi-key `PFCOUNT` of the same keys answers).
    pub fn count(&self) -> u64 {
        if self.dense {
            return self.hll.count();
        }
        let mut histo = [0u32; 64];
        histo[0] = (REGISTERS - self.raised.len()) as u32;
        for i in &self.raised {
            histo[self.hll.registers[*i as usize] as usize] += 1;
        }
        estimate(&histo)
    }
}

/// Redis's estimator (Ertl's, as in `hllCount`) over a histogram of register values.
fn estimate(histo: &[u32; 64]) -> u64 {
    let m = REGISTERS as f64;
    let q = Q as usize;
    let mut z = m * tau((m - histo[q + 1] as f64) / m);
    for j in (1..=q).rev() {
        z += histo[j] as f64;
        z *= 0.5;
    }
    z += m * sigma(histo[0] as f64 / m);
    (ALPHA_INF * m * m / z).round() as u64
}

/// A Redis HyperLogLog value's registers, as stored.
enum Encoding<'a> {
    /// 16384 six-bit registers, packed.
    Dense(&'a [u8]),
    /// The sparse opcodes.
    Sparse(&'a [u8]),
}

fn encoding(bytes: &[u8]) -> Option<Encoding<'_>> {
    if bytes.len() < HEADER || &bytes[..4] != b"HYLL" {
        return None;
    }
    match bytes[4] {
        0 if bytes.len() == DENSE_SIZE => Some(Encoding::Dense(&bytes[HEADER..])),
        1 => Some(Encoding::Sparse(&bytes[HEADER..])),
        _ => None,
    }
}

/// Register `i` of a dense value's packed registers (`regs` is 12288 bytes).
fn dense_register(regs: &[u8], i: usize) -> u8 {
    let bit = i * 6;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = (regs[byte] as u16) >> shift;
    let hi = regs.get(byte + 1).map_or(0, |b| (*b as u16) << (8 - shift));
    ((lo | hi) & 0x3f) as u8
}

/// Calls `each(first register, run length, value)` for every run of a sparse value's opcodes
/// (zeros included); `None` if the opcodes do not cover exactly the 16384 registers.
fn sparse_runs(ops: &[u8], mut each: impl FnMut(usize, usize, u8)) -> Option<()> {
    let mut idx = 0usize;
    let mut ops = ops.iter();
    while let Some(&op) = ops.next() {
        let (len, value) = if op & 0xc0 == 0 {
            ((op & 0x3f) as usize + 1, 0)
        } else if op & 0xc0 == 0x40 {
            let lo = *ops.next()? as usize;
            (((((op & 0x3f) as usize) << 8) | lo) + 1, 0)
        } else {
            ((op & 0x3) as usize + 1, ((op >> 2) & 0x1f) + 1)
        };
        if idx + len > REGISTERS {
            return None;
        }
        each(idx, len, value);
        idx += len;
    }
    (idx == REGISTERS).then_some(())
}

/// Largest register value the sparse encoding can hold.
const SPARSE_VAL_MAX: u8 = 32;

fn sigma(mut x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let prev = z;
        z += x * y;
        y += y;
        if prev == z {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let prev = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if prev == z {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests;
