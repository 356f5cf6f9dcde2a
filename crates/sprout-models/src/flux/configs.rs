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
    // Fields of diffusers' AutoencoderKL that FLUX.1's autoencoder (candle-transformers'
    // encoder and decoder) has only in one value: any other is refused by name rather than
    // decoded wrongly.
    let fixed: [(&str, serde_json::Value); 7] = [
        ("norm_num_groups", 32.into()),
        ("in_channels", 3.into()),
        ("out_channels", 3.into()),
        ("act_fn", "silu".into()),
        ("use_quant_conv", false.into()),
        ("use_post_quant_conv", false.into()),
        ("mid_block_add_attention", true.into()),
    ];
    for (field, takes) in fixed {
        if let Some(value) = v.get(field).filter(|x| !x.is_null() && **x != takes) {
            return Err(bad(format!(
                "vae/config.json: {field} = {value} is not supported (FLUX.1's autoencoder takes {takes})"
            )));
        }
    }
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

/// The config of FLUX.1's CLIP-L text encoder (openai/clip-vit-large-patch14's text tower),
/// for a weight file given without its `config.json`.
pub fn clip_l_json() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "max_position_embeddings": 77,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
        "projection_dim": 768
    })
}

/// The config of FLUX.1's T5 encoder (google/t5-v1_1-xxl), for a weight file given without
/// its `config.json`.
pub fn t5_xxl_json() -> serde_json::Value {
    serde_json::json!({
        "vocab_size": 32128,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "initializer_factor": 1.0,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": false,
        "is_encoder_decoder": true,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0
    })
}

#[cfg(test)]
mod preset_tests {
    use super::*;

    #[test]
    fn autoencoder_fields_it_cannot_take_are_refused_by_name() {
        let base = serde_json::json!({
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 32,
            "use_quant_conv": false,
        });
        let c = vae_config(&base).unwrap();
        assert_eq!((c.ch, &c.ch_mult, c.z_channels), (32, &vec![1, 2], 4));
        for (field, value) in [
            ("norm_num_groups", serde_json::json!(16)),
            ("use_quant_conv", serde_json::json!(true)),
            ("use_post_quant_conv", serde_json::json!(true)),
            ("act_fn", serde_json::json!("gelu")),
            ("in_channels", serde_json::json!(4)),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let e = vae_config(&v).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn text_encoder_presets_parse_to_the_published_sizes() {
        let c = clip_config(&clip_l_json()).unwrap();
        assert_eq!(
            (
                c.embed_dim,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.intermediate_size
            ),
            (768, 12, 12, 3072)
        );
        let t: candle_transformers::models::t5::Config =
            serde_json::from_value(t5_xxl_json()).unwrap();
        // 4096 = 64 heads × 64; T5-v1.1's gated GELU feed-forward.
        assert_eq!(t.num_heads * t.d_kv, t.d_model);
        assert_eq!((t.d_model, t.d_ff, t.num_layers), (4096, 10240, 24));
        assert!(t.feed_forward_proj.gated);
    }
}
