//! From prompt to pixels: rectified-flow sampling over the MMDiT and the autoencoder.

pub mod bundle;
pub mod denoise;
pub mod device;
pub mod embedded;
pub mod flow;
pub mod flux;
pub mod flux2;
pub mod flux_cond;
pub mod flux_load;
pub mod flux_quantize;
pub mod generate;
pub mod image_io;
pub mod model;
pub mod noise;
pub mod request;
pub mod testing;

use thiserror::Error;

impl PipelineError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> PipelineError {
        PipelineError::Invalid {
            param,
            message: message.into(),
        }
    }
}

/// Errors of the pipeline, each naming what is wrong.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("{0}")]
    Weights(String),
    #[error("invalid request: {0}")]
    Request(String),
    /// A field of the request is out of range or does not fit the model; `param` is its
    /// name as the HTTP API spells it (`steps`, `size`, `true_cfg_scale`, `image`, …).
    #[error("invalid request: {message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    /// The caller's cancel flag was set; sampling stopped between two evaluations.
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] sprout_models::ModelError),
}
