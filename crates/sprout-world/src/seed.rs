//! Seeding: every random decision in the world comes from a ChaCha8 stream keyed by
//! (seed, purpose, index), so a sample never depends on what was drawn before it.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// SplitMix64 finaliser: a cheap bijective mix used to derive independent stream keys.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator for item `index` of stream `purpose` under `seed`.
pub fn rng_for(seed: u64, purpose: u64, index: u64) -> ChaCha8Rng {
    let key = mix64(mix64(seed ^ mix64(purpose)) ^ index);
    ChaCha8Rng::seed_from_u64(key)
}

/// Named purposes, so that streams for different uses never collide.
pub mod purpose {
    pub const SCENE: u64 = 1;
    pub const CAPTION: u64 = 2;
    pub const BATCH: u64 = 3;
    pub const EVAL_SCENE: u64 = 4;
    pub const DEGRADE: u64 = 5;
    pub const PROMPTS: u64 = 6;
}
