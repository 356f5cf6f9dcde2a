//! Helpers of this crate's unit tests.

use candle_core::{Device, Tensor};

/// Deterministic values in (−2, 2) from a counter hash of `seed` and the index, so that
/// tests need no RNG state.
pub(crate) fn hashed(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let x =
                (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape")
}
