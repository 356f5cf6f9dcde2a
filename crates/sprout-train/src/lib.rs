//! Training Sprout's models: `sprout train --config FILE.toml [--resume]`.
//!
//! One loop serves both the autoencoder and the DiT: staged canvases, bucketed and packed
//! batches from the world stream, AdamW with warm-up + cosine and clipping, EMA, atomic
//! checkpoints of everything that determines the rest of the run (weights, moments, EMA,
//! stream position, step), so `--resume` continues bit-exactly.

pub mod ae_eval;
pub mod ae_task;
pub mod ckpt;
pub mod config;
pub mod dit_task;
pub mod export;
pub mod latent_cache;
pub mod optim;
pub mod proxy;
pub mod run;
pub mod semantic_maps;
pub mod vocab;

use thiserror::Error;

pub use config::TrainConfig;
pub use run::{train, LogLine, Options, Summary};

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Data(#[from] sprout_data::DataError),
    #[error(transparent)]
    Model(#[from] sprout_models::ModelError),
    #[error(transparent)]
    Pipeline(#[from] sprout_pipeline::PipelineError),
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: u64, loss: f64 },
}
