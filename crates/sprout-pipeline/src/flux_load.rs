//! Loading a FLUX.1 model from the user's files (see `sprout_models::flux::files`): headers
//! are inspected first (variant, naming, size), memory is checked against what the machine
//! has, then every component is memory-mapped and built with its shapes checked.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::t5::{Config as T5Config, T5EncoderModel};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::flux::configs::{clip_config, vae_config};
use sprout_models::flux::convert::{DiffusersTransformerConfig, Renamed};
use sprout_models::flux::files::{locate, FluxFiles, Layout, Variant};
use sprout_models::flux::inspect::{
    available_memory, check_memory, inspect_transformer, resolve_variant,
};
use sprout_models::flux::tokenize::{clip_tokenizer, t5_tokenizer};
use sprout_models::flux::vae::{FluxVae, FluxVaeConfig};

use crate::flux::FluxModel;
use crate::PipelineError;

fn weights_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Weights(e.to_string())
}

fn read_json(p: &Path) -> Result<serde_json::Value, PipelineError> {
    let text =
        std::fs::read_to_string(p).map_err(|e| weights_err(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| weights_err(format!("{}: {e}", p.display())))
}

fn mmap(files: &[std::path::PathBuf]) -> Result<MmapedSafetensors, PipelineError> {
    // SAFETY: the files are opened read-only and must not be modified while the model runs,
    // as with every memory-mapped weight loader.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
        weights_err(format!(
            "{}: not a readable safetensors file ({e})",
            files
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })
}

/// A diffusers `config.json` next to a component's weights, if there is one.
fn component_config(weights: &[std::path::PathBuf]) -> Option<serde_json::Value> {
    let p = weights.first()?.parent()?.join("config.json");
    read_json(&p).ok()
}

/// Name what the folder lacks, and where it is looked for.
fn require<'a, T>(
    part: &'a Option<T>,
    what: &str,
    files: &FluxFiles,
) -> Result<&'a T, PipelineError> {
    part.as_ref().ok_or_else(|| {
        weights_err(format!(
            "{}: no {what} found (expected next to the transformer, as in a diffusers snapshot: \
             text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, vae/ or ae.safetensors)",
            files.transformer[0].display()
        ))
    })
}

/// Bytes the weights take when loaded as `dtype`, estimated from the stored sizes of `files`
/// (stored as 2-byte floats in FLUX releases).
fn loaded_bytes(stored: u64, dtype: DType) -> u64 {
    stored / 2 * dtype.size_in_bytes() as u64
}

fn stored_bytes(files: &[std::path::PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

impl FluxModel {
    /// Load `asked` from the user's `weights` (a file or folder). Small models (the tests'
    /// tiny ones) compute in f32; full-size ones in bf16 as stored.
    pub fn load(
        weights: &Path,
        asked: Variant,
        device: &Device,
    ) -> Result<FluxModel, PipelineError> {
        let files = locate(weights)?;
        let inspection = inspect_transformer(&files)?;
        let variant = resolve_variant(asked, &files, &inspection)?;
        if files.layout == Layout::Gguf {
            return Err(weights_err(format!(
                "{}: GGUF transformers are not supported yet; use the safetensors release",
                files.transformer[0].display()
            )));
        }
        let dtype = if inspection.bytes < 1 << 30 {
            DType::F32
        } else {
            DType::BF16
        };
        let clip_files = require(&files.clip, "CLIP text encoder (text_encoder/)", &files)?;
        let t5_files = require(&files.t5, "T5 text encoder (text_encoder_2/)", &files)?;
        let (vae_files, vae_diffusers) = require(&files.vae, "autoencoder", &files)?;
        let clip_tok = require(&files.clip_tokenizer, "CLIP tokenizer (tokenizer/)", &files)?;
        let t5_tok = require(&files.t5_tokenizer, "T5 tokenizer (tokenizer_2/)", &files)?;
        let needed = loaded_bytes(inspection.bytes, dtype)
            + loaded_bytes(
                stored_bytes(t5_files) + stored_bytes(clip_files) + stored_bytes(vae_files),
                dtype,
            );
        check_memory(variant.name(), needed, available_memory())?;

        let dit_cfg = match (&files.transformer_config, files.layout) {
            (Some(p), Layout::Diffusers) => {
                let c: DiffusersTransformerConfig = serde_json::from_value(read_json(p)?)
                    .map_err(|e| weights_err(format!("{}: {e}", p.display())))?;
                c.to_dit()?
            }
            _ if variant.guidance_embed() => DitConfig::flux_dev(),
            _ => DitConfig::flux_schnell(),
        };
        let st = mmap(&files.transformer)?;
        let vb = if inspection.diffusers_names {
            VarBuilder::from_backend(Box::new(Renamed::transformer(st)), dtype, device.clone())
        } else {
            VarBuilder::from_backend(Box::new(st), dtype, device.clone())
        };
        let dit = Dit::new(&dit_cfg, vb)
            .map_err(|e| weights_err(format!("{}: {e}", files.transformer[0].display())))?;

        let vcfg = match component_config(vae_files) {
            Some(v) => vae_config(&v)?,
            None => FluxVaeConfig::flux(),
        };
        let st = mmap(vae_files)?;
        let vb = if *vae_diffusers {
            VarBuilder::from_backend(
                Box::new(Renamed::vae(st, vcfg.ch_mult.len())),
                dtype,
                device.clone(),
            )
        } else {
            VarBuilder::from_backend(Box::new(st), dtype, device.clone())
        };
        let vae = FluxVae::new(&vcfg, vb)
            .map_err(|e| weights_err(format!("{}: {e}", vae_files[0].display())))?;

        let ccfg = clip_config(
            &component_config(clip_files)
                .ok_or_else(|| weights_err("text_encoder/config.json is missing"))?,
        )?;
        let vb = VarBuilder::from_backend(Box::new(mmap(clip_files)?), dtype, device.clone());
        let clip = ClipTextTransformer::new(vb.pp("text_model"), &ccfg)
            .map_err(|e| weights_err(format!("{}: {e}", clip_files[0].display())))?;

        let tcfg: T5Config = serde_json::from_value(
            component_config(t5_files)
                .ok_or_else(|| weights_err("text_encoder_2/config.json is missing"))?,
        )
        .map_err(|e| weights_err(format!("text_encoder_2/config.json: {e}")))?;
        let vb = VarBuilder::from_backend(Box::new(mmap(t5_files)?), dtype, device.clone());
        let t5 = T5EncoderModel::load(vb, &tcfg)
            .map_err(|e| weights_err(format!("{}: {e}", t5_files[0].display())))?;

        Ok(FluxModel {
            variant,
            dit,
            vae,
            clip,
            t5,
            clip_tokenizer: clip_tokenizer(clip_tok)?,
            t5_tokenizer: t5_tokenizer(t5_tok)?,
            t5_len: if variant == Variant::Schnell {
                256
            } else {
                512
            },
            dtype,
            device: device.clone(),
        })
    }
}
