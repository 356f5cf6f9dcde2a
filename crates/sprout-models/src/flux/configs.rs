//! Component configs from the `config.json` files of a diffusers snapshot (transformers'
//! CLIPTextConfig for `text_encoder/`, diffusers' AutoencoderKL and AutoencoderKLFlux2
//! configs for `vae/`).

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};

use crate::error::{ModelError, Result};
use crate::flux::vae::FluxVaeConfig;
use crate::flux::vae2::Flux2VaeConfig;

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
    // candle-transformers' CLIP normalises with eps 1e-5 and pools at the highest token id
    // (transformers' legacy rule for `eos_token_id = 2`, which equals the first end token
    // when that token is the vocabulary's last, as in CLIP-L's 49407): other values would
    // encode differently, so they are refused by name.
    if let Some(eps) = v["layer_norm_eps"].as_f64() {
        if (eps - 1e-5).abs() > 1e-12 {
            return Err(bad(format!(
                "CLIP config.json: layer_norm_eps = {eps} is not supported (FLUX's CLIP-L uses 1e-5)"
            )));
        }
    }
    let vocab = n("vocab_size")?;
    if let Some(eos) = v["eos_token_id"].as_u64() {
        if eos != 2 && eos + 1 != vocab as u64 {
            return Err(bad(format!(
                "CLIP config.json: eos_token_id = {eos} is not supported (pooling reads the \
                 vocabulary's last token, {})",
                vocab.saturating_sub(1)
            )));
        }
    }
    Ok(ClipTextConfig {
        vocab_size: vocab,
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
    refuse_other_values(
        v,
        "FLUX.1's autoencoder",
        &[
            ("use_quant_conv", false.into()),
            ("use_post_quant_conv", false.into()),
        ],
    )?;
    let (ch, blocks) = levels(v)?;
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

/// Fields of diffusers' autoencoder configs that Sprout's autoencoders (candle-transformers'
/// encoder and decoder) have in one value only, plus `extra`: any other value is refused by
/// name rather than decoded wrongly.
fn refuse_other_values(
    v: &serde_json::Value,
    model: &str,
    extra: &[(&str, serde_json::Value)],
) -> Result<()> {
    let fixed: [(&str, serde_json::Value); 5] = [
        ("norm_num_groups", 32.into()),
        ("in_channels", 3.into()),
        ("out_channels", 3.into()),
        ("act_fn", "silu".into()),
        ("mid_block_add_attention", true.into()),
    ];
    for (field, takes) in fixed.iter().chain(extra) {
        if let Some(value) = v.get(*field).filter(|x| !x.is_null() && *x != takes) {
            return Err(bad(format!(
                "vae/config.json: {field} = {value} is not supported ({model} takes {takes})"
            )));
        }
    }
    for (field, block) in [
        ("down_block_types", "DownEncoderBlock2D"),
        ("up_block_types", "UpDecoderBlock2D"),
    ] {
        if let Some(a) = v[field].as_array() {
            if let Some(other) = a.iter().find(|b| b.as_str() != Some(block)) {
                return Err(bad(format!(
                    "vae/config.json: {field} holds {other} ({model} has {block} only)"
                )));
            }
        }
    }
    Ok(())
}

/// `block_out_channels` as (first level's channels, all levels').
fn levels(v: &serde_json::Value) -> Result<(usize, Vec<usize>)> {
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
    if blocks.iter().any(|b| b % ch != 0) {
        return Err(bad(format!(
            "vae/config.json: block_out_channels {blocks:?} are not multiples of the first"
        )));
    }
    if let Some(d) = v.get("decoder_block_out_channels").filter(|d| !d.is_null()) {
        if d != &v["block_out_channels"] {
            return Err(bad(format!(
                "vae/config.json: decoder_block_out_channels = {d} differs from block_out_channels (not supported)"
            )));
        }
    }
    Ok((ch, blocks))
}

/// The FLUX.2 autoencoder's config from diffusers' AutoencoderKLFlux2 `config.json` (FLUX.2's
/// values where a field is absent). `batch_norm_momentum` (training only) and `sample_size`
/// (diffusers' tile size) do not change what it computes.
pub fn flux2_vae_config(v: &serde_json::Value) -> Result<Flux2VaeConfig> {
    refuse_other_values(
        v,
        "FLUX.2's autoencoder",
        &[("patch_size", serde_json::json!([2, 2]))],
    )?;
    let (ch, blocks) = levels(v)?;
    let f = Flux2VaeConfig::flux2();
    let flag = |k: &str, d: bool| v[k].as_bool().unwrap_or(d);
    Ok(Flux2VaeConfig {
        ch,
        ch_mult: blocks.iter().map(|b| b / ch).collect(),
        num_res_blocks: v["layers_per_block"]
            .as_u64()
            .map_or(f.num_res_blocks, |x| x as usize),
        z_channels: v["latent_channels"]
            .as_u64()
            .map_or(f.z_channels, |x| x as usize),
        quant_conv: flag("use_quant_conv", f.quant_conv),
        post_quant_conv: flag("use_post_quant_conv", f.post_quant_conv),
        bn_eps: v["batch_norm_eps"].as_f64().unwrap_or(f.bn_eps),
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
    fn clip_fields_it_cannot_take_are_refused_by_name() {
        let base = serde_json::json!({
            "vocab_size": 1000, "hidden_size": 32, "intermediate_size": 37,
            "max_position_embeddings": 77, "num_hidden_layers": 2, "num_attention_heads": 4,
            "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 2,
        });
        let c = clip_config(&base).unwrap();
        assert_eq!(
            (c.vocab_size, c.embed_dim, c.num_hidden_layers),
            (1000, 32, 2)
        );
        // The vocabulary's last id pools as the legacy rule does: accepted.
        let mut last = base.clone();
        last["eos_token_id"] = serde_json::json!(999);
        clip_config(&last).unwrap();
        for (field, value) in [
            ("layer_norm_eps", serde_json::json!(1e-6)),
            ("eos_token_id", serde_json::json!(500)),
            ("hidden_act", serde_json::json!("gelu")),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let e = clip_config(&v).unwrap_err().to_string();
            assert!(
                e.contains(field) || e.contains("activation"),
                "{field}: {e}"
            );
        }
    }

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
    fn flux2_autoencoder_config_reads_its_fields_and_refuses_others_by_name() {
        let base = serde_json::json!({
            "block_out_channels": [32, 64],
            "layers_per_block": 1,
            "latent_channels": 4,
            "use_quant_conv": true,
            "use_post_quant_conv": false,
            "batch_norm_eps": 1e-3,
            "patch_size": [2, 2],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        });
        let c = flux2_vae_config(&base).unwrap();
        assert_eq!((c.ch, &c.ch_mult, c.z_channels), (32, &vec![1, 2], 4));
        assert!(c.quant_conv && !c.post_quant_conv);
        assert_eq!((c.bn_eps, c.downscale(), c.token_channels()), (1e-3, 4, 16));
        assert_eq!(
            flux2_vae_config(&serde_json::json!({"block_out_channels": [128, 256, 512, 512]}))
                .unwrap(),
            Flux2VaeConfig::flux2()
        );
        for (field, value) in [
            ("patch_size", serde_json::json!([1, 1])),
            ("norm_num_groups", serde_json::json!(16)),
            ("decoder_block_out_channels", serde_json::json!([32, 32])),
            (
                "down_block_types",
                serde_json::json!(["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
            ),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let e = flux2_vae_config(&v).unwrap_err().to_string();
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
