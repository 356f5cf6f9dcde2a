//! Component configs from the `config.json` files of a diffusers snapshot (transformers'
//! CLIPTextConfig for `text_encoder/`, diffusers' AutoencoderKL config for `vae/`).

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};

use crate::error::{ModelError, Result};
use crate::flux::vae::FluxVaeConfig;

fn bad(e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(e.to_string())
}

/// CLIP-L's text config (a CLIPTextConfig JSON, or a CLIPConfig with `text_config`).
pub fn clip_config(v: &serde_json::Value) -> Result<ClipTextConfig> {
    let v = if v.get("text_config").is_some() {
        &v["text_config"]
    } else {
        v
    };
    let n = |k: &str| {
        v[k].as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| bad(format!("CLIP config.json lacks {k}")))
    };
    if v["hidden_act"].as_str().is_some_and(|a| a != "quick_gelu") {
        return Err(bad(format!(
            "CLIP config.json: activation {} (FLUX's CLIP-L uses quick_gelu)",
            v["hidden_act"]
        )));
    }
    Ok(ClipTextConfig {
        vocab_size: n("vocab_size")?,
        embed_dim: n("hidden_size")?,
        activation: Activation::QuickGelu,
        intermediate_size: n("intermediate_size")?,
        max_position_embeddings: n("max_position_embeddings")?,
        pad_with: None,
        num_hidden_layers: n("num_hidden_layers")?,
        num_attention_heads: n("num_attention_heads")?,
        projection_dim: v["projection_dim"].as_u64().unwrap_or(768) as usize,
    })
}

/// The autoencoder's config from diffusers' AutoencoderKL `config.json` (FLUX's values where
/// a field is absent).
pub fn vae_config(v: &serde_json::Value) -> Result<FluxVaeConfig> {
    let blocks: Vec<usize> = v["block_out_channels"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        })
        .unwrap_or_default();
    let ch = *blocks
        .first()
        .ok_or_else(|| bad("vae/config.json lacks block_out_channels"))?;
    let f = FluxVaeConfig::flux();
    Ok(FluxVaeConfig {
        ch,
        ch_mult: blocks.iter().map(|b| b / ch).collect(),
        num_res_blocks: v["layers_per_block"]
            .as_u64()
            .map_or(f.num_res_blocks, |x| x as usize),
        z_channels: v["latent_channels"]
            .as_u64()
            .map_or(f.z_channels, |x| x as usize),
        scale_factor: v["scaling_factor"].as_f64().unwrap_or(f.scale_factor),
        shift_factor: v["shift_factor"].as_f64().unwrap_or(f.shift_factor),
    })
}
