//! Write a full-size FLUX.2 [klein] snapshot with random weights, to measure memory and speed
//! of the real shapes without the real weights (never committed; about 16 GB for 4B):
//!
//! ```text
//! cargo run --release -p sprout-models --example flux2_random -- --out DIR [--size 4b|9b]
//! ```
//!
//! `DIR` becomes a diffusers-style snapshot that `sprout generate --model flux2-klein
//! --weights DIR` loads: the transformer (Black Forest Labs' names) and the autoencoder in
//! bf16, Qwen3-4B / Qwen3-8B in bf16 (transformers' names), their config.json files, and the
//! tiny test tokenizer (its ids are valid for Qwen's full vocabulary). Parameter names and
//! shapes come from building each model over a recording backend, so the files hold what
//! the loaders ask for.

use std::path::{Path, PathBuf};

use candle_core::Result;
use candle_nn::VarBuilder;
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::flux::vae2::{Flux2Vae, Flux2VaeConfig};
use sprout_models::qwen3::{Qwen3Config, Qwen3Encoder, Qwen3Names};
use sprout_models::weights::Weights;

fn record(build: impl FnOnce(VarBuilder) -> Result<()>) -> Vec<(String, Vec<usize>)> {
    sprout_models::recorder::record(build).expect("model builds over the recorder")
}

/// The recorded parameters written with random values in bf16 (see
/// `sprout_models::recorder::random_param`).
fn save_bf16(params: &[(String, Vec<usize>)], path: &Path) -> anyhow::Result<()> {
    let n = sprout_models::recorder::save_random_bf16(params, path)?;
    eprintln!(
        "wrote {} ({:.2} B parameters)",
        path.display(),
        n as f64 / 1e9
    );
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().expect("parent"))?;
    std::fs::write(path, serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let out =
        PathBuf::from(value("--out").ok_or_else(|| anyhow::anyhow!("--out DIR is required"))?);
    let (dit, qwen) = match value("--size").as_deref().unwrap_or("4b") {
        "4b" => (DitConfig::flux2_klein_4b(), Qwen3Config::qwen3_4b()),
        "9b" => (DitConfig::flux2_klein_9b(), Qwen3Config::qwen3_8b()),
        s => anyhow::bail!("--size {s}: 4b or 9b"),
    };
    std::fs::create_dir_all(&out)?;
    write_json(
        &out.join("model_index.json"),
        &serde_json::json!({"_class_name": "Flux2KleinPipeline", "is_distilled": true}),
    )?;

    let params = record(|vb| {
        Dit::new(&dit, vb)
            .map(|_| ())
            .map_err(candle_core::Error::wrap)
    });
    save_bf16(
        &params,
        &out.join("transformer/diffusion_pytorch_model.safetensors"),
    )?;
    write_json(
        &out.join("transformer/config.json"),
        &serde_json::json!({
            "_class_name": "Flux2Transformer2DModel", "patch_size": 1, "in_channels": 128,
            "num_layers": dit.depth, "num_single_layers": dit.depth_single_blocks,
            "attention_head_dim": dit.hidden_size / dit.num_heads,
            "num_attention_heads": dit.num_heads, "joint_attention_dim": dit.context_in_dim,
            "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32],
            "rope_theta": 2000, "eps": 1e-6, "guidance_embeds": false
        }),
    )?;

    let vcfg = Flux2VaeConfig::flux2();
    let params = record(|vb| Flux2Vae::new(&vcfg, vb).map(|_| ()));
    save_bf16(
        &params,
        &out.join("vae/diffusion_pytorch_model.safetensors"),
    )?;
    write_json(
        &out.join("vae/config.json"),
        &serde_json::json!({
            "_class_name": "AutoencoderKLFlux2", "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "latent_channels": 32, "batch_norm_eps": 1e-4,
            "patch_size": [2, 2], "use_quant_conv": true, "use_post_quant_conv": true
        }),
    )?;

    // Every layer and the final norm, as the published files hold them.
    let all = [qwen.num_hidden_layers];
    let params = record(|vb| {
        Qwen3Encoder::new(&qwen, Qwen3Names::Transformers, &all, &Weights::Dense(vb))
            .map(|_| ())
            .map_err(candle_core::Error::wrap)
    });
    save_bf16(&params, &out.join("text_encoder/model.safetensors"))?;
    write_json(
        &out.join("text_encoder/config.json"),
        &serde_json::json!({
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "vocab_size": qwen.vocab_size, "hidden_size": qwen.hidden_size,
            "intermediate_size": qwen.intermediate_size,
            "num_hidden_layers": qwen.num_hidden_layers,
            "num_attention_heads": qwen.num_attention_heads,
            "num_key_value_heads": qwen.num_key_value_heads, "head_dim": qwen.head_dim,
            "rope_theta": qwen.rope_theta, "rms_norm_eps": qwen.rms_norm_eps,
            "attention_bias": false, "hidden_act": "silu", "tie_word_embeddings": true,
            "use_sliding_window": false
        }),
    )?;

    let tok =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux2/snapshot/tokenizer");
    std::fs::create_dir_all(out.join("tokenizer"))?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), out.join("tokenizer").join(f))?;
    }
    eprintln!("wrote the snapshot to {}", out.display());
    Ok(())
}
