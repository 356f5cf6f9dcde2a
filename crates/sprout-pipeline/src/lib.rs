//! From prompt to pixels: rectified-flow sampling over the MMDiT and the autoencoder.

pub mod bundle;
pub mod embedded;
pub mod flow;
pub mod flux;
pub mod flux_cond;
pub mod flux_load;
pub mod flux_quantize;
pub mod generate;
pub mod noise;
pub mod testing;

use thiserror::Error;

/// Errors of the pipeline, each naming what is wrong.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{0}")]
    Weights(String),
    #[error("invalid request: {0}")]
    Request(String),
    /// The caller's cancel flag was set; sampling stopped between two evaluations.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] sprout_models::ModelError),
}
