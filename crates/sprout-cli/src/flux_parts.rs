//! `--vae`, `--clip`, `--t5`, `--tokenizers`: FLUX parts kept apart from the transformer,
//! shared by `generate`, `edit`, `serve` and `bench`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use sprout_models::flux::components::Components;

#[derive(clap::Args, Debug, Clone, Default)]
pub struct FluxPartsArgs {
    /// FLUX: the autoencoder's safetensors file (e.g. ae.safetensors), when it is not beside
    /// the transformer (FLUX.1) or in the snapshot (FLUX.2).
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// FLUX: CLIP-L's text encoder (e.g. clip_l.safetensors, or a text_encoder/ folder).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// FLUX: T5-XXL's encoder (e.g. t5xxl_fp16.safetensors or the fp8_e4m3fn file, a
    /// text_encoder_2/ folder, or a GGUF file such as t5-v1_1-xxl-encoder-Q8_0.gguf).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// FLUX: a folder with tokenizer/ (CLIP) and tokenizer_2/ (T5), as in a diffusers
    /// snapshot; for FLUX.2, a folder with the text encoder's tokenizer.json (Qwen's or
    /// Mistral's, beside its tokenizer_config.json; or the snapshot with its tokenizer/).
    #[arg(long)]
    pub tokenizers: Option<PathBuf>,
    /// FLUX: a LoRA adapter for the transformer, FILE or FILE:STRENGTH (default 1), merged into
    /// its weights as they load (repeatable; BFL, diffusers/PEFT and kohya names).
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]", value_parser = sprout_models::flux::lora::parse_spec)]
    pub loras: Vec<(PathBuf, f64)>,
}

impl FluxPartsArgs {
    pub fn components(&self) -> Components {
        Components {
            vae: self.vae.clone(),
            clip: self.clip.clone(),
            t5: self.t5.clone(),
            tokenizers: self.tokenizers.clone(),
            loras: self.loras.clone(),
        }
    }

    /// Refuse the flags where the model is not a FLUX one.
    pub fn refuse_for(&self, model: &str) -> Result<()> {
        if !self.components().is_empty() {
            bail!("--vae, --clip, --t5, --tokenizers and --lora apply to the FLUX models (--model flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth), not {model:?}");
        }
        Ok(())
    }
}
