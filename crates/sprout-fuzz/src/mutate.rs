//! A small deterministic mutator for the test suite's fuzz budget. AFL++ does the long,
//! coverage-guided runs (`tools/fuzz/run.sh`); this one only has to reach the same code
//! from the seeds in CI, on stable Rust, without an external tool, and give the same inputs
//! on every machine so that a failure reproduces. Written here because the mutators of the
//! fuzzing crates come with their drivers.

/// SplitMix64: a seeded, portable stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values that sit on the edges of integer ranges, where parsers break.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Text that steers the JSON, TOML and multipart parsers into their less common branches.
const TOKENS: &[&[u8]] = &[
    b"-1",
    b"1e999",
    b"NaN",
    b"null",
    b"[]",
    b"{}",
    b"\"\"",
    b"18446744073709551615",
    b"99999999999",
    b"0.0",
    b"\\u0000",
    b"\r\n",
    b"--sproutfuzz",
    b"=",
    b"[[stage]]",
];

/// One to four random edits of `input`, sometimes spliced with `other`.
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        edit(&mut v, other, rng);
    }
    v
}

fn edit(v: &mut Vec<u8>, other: &[u8], rng: &mut Rng) {
    if v.is_empty() {
        v.push(rng.next_u64() as u8);
        return;
    }
    let at = rng.below(v.len());
    match rng.below(8) {
        0 => v[at] ^= 1 << rng.below(8),
        1 => v[at] = rng.next_u64() as u8,
        2 => {
            // An interesting integer, little-endian, over up to 8 bytes.
            let x = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
            let n = [1, 2, 4, 8][rng.below(4)].min(v.len() - at);
            v[at..at + n].copy_from_slice(&x[..n]);
        }
        3 => {
            let n = 1 + rng.below((v.len() - at).min(64));
            v.drain(at..at + n);
        }
        4 => {
            // Repeat a chunk (lengths, nesting, many fields).
            let n = 1 + rng.below((v.len() - at).min(64));
            let chunk = v[at..at + n].to_vec();
            for _ in 0..1 + rng.below(8) {
                v.splice(at..at, chunk.iter().copied());
            }
        }
        5 => {
            let t = TOKENS[rng.below(TOKENS.len())];
            v.splice(at..at, t.iter().copied());
        }
        6 if !other.is_empty() => {
            // Splice: this input's head with the other's tail.
            let from = rng.below(other.len());
            v.truncate(at);
            v.extend_from_slice(&other[from..]);
        }
        _ => v.truncate(at.max(1)),
    }
}
