//! Sprout's networks on candle.
//!
//! - [`dit`]: one MMDiT implementation (double-stream then single-stream blocks, adaLN-Zero,
//!   RMS QK-norm, 3-axis rotary positions) whose config presets describe both Sprout's small
//!   native model and FLUX.1; weight keys equal FLUX's module paths.
//! - [`ae`]: the deep-compression autoencoder (f32: 256² → 8×8 latents).
//! - [`text`]: the text-encoder trait, Sprout's word-piece tokenizer and small encoder.
//! - [`ops`]: the differentiable building blocks the hot path uses.

pub mod ae;
pub mod amx;
pub mod bf16_gemm;
pub mod dit;
mod error;
pub mod flash;
mod flash_bf16;
pub mod flux;
pub mod fused;
pub mod gguf;
pub mod init;
pub mod ops;
pub mod probe;
pub mod qwen3;
pub mod recorder;
pub mod t5;
#[cfg(test)]
mod test_util;
pub mod text;
pub mod tiling;
pub mod vmath;
pub mod weights;

pub use error::ModelError;
