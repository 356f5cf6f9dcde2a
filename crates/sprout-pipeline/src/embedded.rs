//! The default model, compiled into the binary so `sprout generate` works on a fresh clone
//! with no download.

use candle_core::Device;

use crate::bundle::Bundle;
use crate::PipelineError;

#[cfg(sprout_embedded)]
mod files {
    macro_rules! model_file {
        ($f:literal) => {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default/", $f)
        };
    }
    pub static MODEL: &str = include_str!(model_file!("model.json"));
    pub static TOKENIZER: &[u8] = include_bytes!(model_file!("tokenizer.json"));
    pub static AE: &[u8] = include_bytes!(model_file!("ae.safetensors"));
    pub static DIT: &[u8] = include_bytes!(model_file!("dit.safetensors"));
    pub static TEXT: &[u8] = include_bytes!(model_file!("text.safetensors"));
}

/// Whether this build carries the default model.
pub fn available() -> bool {
    cfg!(sprout_embedded)
}

#[cfg(sprout_embedded)]
pub fn load(device: &Device) -> Result<Bundle, PipelineError> {
    use crate::bundle::parse_tensors;
    let meta = serde_json::from_str(files::MODEL)
        .map_err(|e| PipelineError::Weights(format!("embedded model.json: {e}")))?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(files::TOKENIZER)
        .map_err(|e| PipelineError::Weights(format!("embedded tokenizer.json: {e}")))?;
    Bundle::from_parts(
        meta,
        parse_tensors("embedded ae.safetensors", files::AE, device)?,
        parse_tensors("embedded dit.safetensors", files::DIT, device)?,
        parse_tensors("embedded text.safetensors", files::TEXT, device)?,
        tokenizer,
        device,
    )
}

#[cfg(not(sprout_embedded))]
pub fn load(_device: &Device) -> Result<Bundle, PipelineError> {
    Err(PipelineError::Weights(
        "this build has no embedded default model (models/default was empty when it was built); pass --model DIR".into(),
    ))
}
