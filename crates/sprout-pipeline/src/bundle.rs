//! A model bundle: the autoencoder, DiT and text encoder of one model, each a safetensors
//! file whose keys are module paths, with a JSON config per component and `model.json`.
//!
//! ```text
//! model.json          name, component configs, sampling defaults, training summary
//! ae.safetensors      autoencoder (encoder.*, decoder.*)
//! dit.safetensors     MMDiT (FLUX module paths)
//! text.safetensors    text encoder
//! tokenizer.json      word-piece tokenizer
//! ```

use sprout_world::semantic::MapKind;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::text::{SmallTextEncoder, TextConfig};
use tokenizers::Tokenizer;

use crate::flow::{Sampler, ShiftConfig};
use crate::PipelineError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleMeta {
    pub name: String,
    pub ae: AeConfig,
    pub dit: DitConfig,
    pub text: TextConfig,
    #[serde(default)]
    pub shift: ShiftConfig,
    pub default_steps: usize,
    pub default_guidance: f64,
    pub sampler: Sampler,
    /// Largest canvas side the model accepts.
    pub max_side: u32,
    /// Semantic channels the DiT denoises beside the autoencoder's latents (the scene's
    /// layout, `sprout_world::semantic`); the DiT's latent channels are the autoencoder's plus
    /// these, and they are dropped before decoding.
    #[serde(default)]
    pub semantic_channels: usize,
    /// Which semantic map those channels are (default `occupancy`).
    #[serde(default)]
    pub semantic_map: MapKind,
    /// Free-form training summary (steps, samples, data).
    #[serde(default)]
    pub trained: serde_json::Value,
}

pub struct Bundle {
    pub meta: BundleMeta,
    pub ae: Autoencoder,
    pub dit: Dit,
    pub text: SmallTextEncoder,
    /// Where the weights live and the model computes.
    pub device: Device,
}

/// Reject NaN or infinite weights, naming the tensor.
pub fn check_finite(
    file: &str,
    tensors: &std::collections::HashMap<String, Tensor>,
) -> Result<(), PipelineError> {
    for (name, t) in tensors {
        let s = t
            .to_dtype(DType::F32)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        if !s.is_finite() {
            return Err(PipelineError::Weights(format!(
                "{file}: tensor {name} holds NaN or infinite values"
            )));
        }
    }
    Ok(())
}

/// Read a safetensors file into F32 tensors, with a clear error naming the file.
pub fn read_tensors(
    path: &Path,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>, PipelineError> {
    if !path.is_file() {
        return Err(PipelineError::Weights(format!(
            "missing weight file {}",
            path.display()
        )));
    }
    let t = candle_core::safetensors::load(path, device).map_err(|e| {
        PipelineError::Weights(format!(
            "{}: not a readable safetensors file ({e})",
            path.display()
        ))
    })?;
    let t = t
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    check_finite(&path.display().to_string(), &t)?;
    Ok(t)
}

/// Parse tensors from an in-memory safetensors image (the embedded default).
pub fn parse_tensors(
    name: &str,
    bytes: &[u8],
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>, PipelineError> {
    let t = candle_core::safetensors::load_buffer(bytes, device).map_err(|e| {
        PipelineError::Weights(format!("{name}: not a readable safetensors image ({e})"))
    })?;
    let t = t
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
        .collect::<Result<_, candle_core::Error>>()?;
    check_finite(name, &t)?;
    Ok(t)
}

fn vb(t: std::collections::HashMap<String, Tensor>, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_tensors(t, DType::F32, device)
}

/// The autoencoder of an autoencoder export (`ae.json` + `ae.safetensors`) or of a model
/// bundle (`model.json` + `ae.safetensors`).
pub fn load_ae(dir: &Path, device: &Device) -> Result<Autoencoder, PipelineError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", p.display())))
    };
    let cfg: AeConfig = if dir.join("ae.json").is_file() {
        let p = dir.join("ae.json");
        serde_json::from_str(&read(&p)?)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", p.display())))?
    } else {
        let p = dir.join("model.json");
        let meta: BundleMeta = serde_json::from_str(&read(&p)?)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", p.display())))?;
        meta.ae
    };
    let t = read_tensors(&dir.join("ae.safetensors"), device)?;
    Autoencoder::new(&cfg, vb(t, device))
        .map_err(|e| PipelineError::Weights(format!("ae.safetensors: {e}")))
}

/// A bundle's files in memory: what `write_dir` writes and `Bundle::from_parts` builds from.
pub struct BundleParts {
    pub meta: BundleMeta,
    pub ae: HashMap<String, Tensor>,
    pub dit: HashMap<String, Tensor>,
    pub text: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

impl BundleParts {
    /// Write the bundle to `dir` (created if missing), weights as bf16 safetensors.
    pub fn write_dir(&self, dir: &Path) -> Result<(), PipelineError> {
        let io = |what: &str, e: &dyn std::fmt::Display| {
            PipelineError::Weights(format!("writing {}: {e}", dir.join(what).display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("", &e))?;
        for (file, t) in [
            ("ae.safetensors", &self.ae),
            ("dit.safetensors", &self.dit),
            ("text.safetensors", &self.text),
        ] {
            let bf16 = t
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::BF16)?)))
                .collect::<candle_core::Result<HashMap<_, _>>>()?;
            candle_core::safetensors::save(&bf16, dir.join(file)).map_err(|e| io(file, &e))?;
        }
        let tok = self
            .tokenizer
            .to_string(false)
            .map_err(|e| io("tokenizer.json", &e))?;
        std::fs::write(dir.join("tokenizer.json"), tok).map_err(|e| io("tokenizer.json", &e))?;
        let meta = serde_json::to_string_pretty(&self.meta).expect("BundleMeta serialises");
        std::fs::write(dir.join("model.json"), meta).map_err(|e| io("model.json", &e))
    }

    pub fn into_bundle(self, device: &Device) -> Result<Bundle, PipelineError> {
        Bundle::from_parts(
            self.meta,
            self.ae,
            self.dit,
            self.text,
            self.tokenizer,
            device,
        )
    }
}

impl Bundle {
    pub fn from_parts(
        meta: BundleMeta,
        ae: std::collections::HashMap<String, Tensor>,
        dit: std::collections::HashMap<String, Tensor>,
        text: std::collections::HashMap<String, Tensor>,
        tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Bundle, PipelineError> {
        let w = |f: &str, e: sprout_models::ModelError| PipelineError::Weights(format!("{f}: {e}"));
        if meta.semantic_channels != 0 && meta.semantic_channels != meta.semantic_map.channels() {
            return Err(PipelineError::Weights(format!(
                "model.json: semantic_channels {} is not the world's {} map ({} channels)",
                meta.semantic_channels,
                meta.semantic_map.name(),
                meta.semantic_map.channels()
            )));
        }
        if meta.dit.latent_channels != meta.ae.latent_channels + meta.semantic_channels {
            return Err(PipelineError::Weights(format!(
                "model.json: the DiT takes {} latent channels, but the autoencoder gives {} and semantic_channels is {}",
                meta.dit.latent_channels, meta.ae.latent_channels, meta.semantic_channels
            )));
        }
        if meta.ae.semantic_channels != 0 {
            let decoder_map = map_kind(meta.ae.semantic_map.as_deref())
                .map_err(|e| PipelineError::Weights(format!("model.json: ae: {e}")))?;
            if decoder_map != meta.semantic_map {
                return Err(PipelineError::Weights(format!(
                    "model.json: the autoencoder's decoder reads the {} map, but the DiT denoises the {} map (semantic_map)",
                    decoder_map.name(),
                    meta.semantic_map.name()
                )));
            }
        }
        if meta.ae.semantic_channels != 0 && meta.ae.semantic_channels != meta.semantic_channels {
            return Err(PipelineError::Weights(format!(
                "model.json: the autoencoder's decoder reads {} semantic channels, but the DiT gives {} (semantic_channels)",
                meta.ae.semantic_channels, meta.semantic_channels
            )));
        }
        Ok(Bundle {
            ae: Autoencoder::new(&meta.ae, vb(ae, device)).map_err(|e| w("ae.safetensors", e))?,
            dit: Dit::new(&meta.dit, vb(dit, device)).map_err(|e| w("dit.safetensors", e))?,
            text: SmallTextEncoder::new(&meta.text, tokenizer, vb(text, device))
                .map_err(|e| w("text.safetensors", e))?,
            meta,
            device: device.clone(),
        })
    }

    pub fn load_dir(dir: &Path, device: &Device) -> Result<Bundle, PipelineError> {
        let meta_path = dir.join("model.json");
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", meta_path.display())))?;
        let meta: BundleMeta = serde_json::from_str(&text)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", meta_path.display())))?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| PipelineError::Weights(format!("{}: {e}", tok_path.display())))?;
        Bundle::from_parts(
            meta,
            read_tensors(&dir.join("ae.safetensors"), device)?,
            read_tensors(&dir.join("dit.safetensors"), device)?,
            read_tensors(&dir.join("text.safetensors"), device)?,
            tokenizer,
            device,
        )
    }
}

/// The semantic map kind an `ae.json`'s `semantic_map` names (absent: `occupancy`).
pub fn map_kind(name: Option<&str>) -> Result<MapKind, String> {
    match name {
        None => Ok(MapKind::Occupancy),
        Some(n) => serde_json::from_value(serde_json::Value::String(n.to_string()))
            .map_err(|_| format!("semantic_map {n:?} is not one of \"occupancy\", \"centres\"")),
    }
}
