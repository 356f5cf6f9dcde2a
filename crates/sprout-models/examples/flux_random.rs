//! Write full-size FLUX.1 files with random weights, to measure memory and speed of the real
//! shapes without the real weights (never committed; hundreds of megabytes to gigabytes):
//!
//! ```text
//! cargo run --release -p sprout-models --example flux_random -- --out DIR [--quant q4_0|q8_0]
//!     [--variant schnell|dev] [--parts]
//! ```
//!
//! `DIR/flux1-{variant}-{QUANT}.gguf` holds the transformer; with `--parts`, also the other
//! parts of a Black Forest Labs folder: `ae.safetensors`, `text_encoder/` (CLIP-L),
//! `text_encoder_2/` (T5-XXL), bf16, and the tiny test tokenizers (`tokenizer/`,
//! `tokenizer_2/`; their ids are valid for the full vocabularies).
//!
//! Each model's parameter names and shapes come from building it over a recording backend
//! (no memory is allocated for them), so the files match what the loaders ask for.

use std::path::{Path, PathBuf};

use candle_core::Result;
use candle_nn::VarBuilder;
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::flux::configs::clip_config;
use sprout_models::flux::vae::{FluxVae, FluxVaeConfig};

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

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flux")
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
    let quant = value("--quant").unwrap_or_else(|| "q4_0".into());
    let q = sprout_models::gguf::parse_quant(&quant)?;
    let variant = value("--variant").unwrap_or_else(|| "schnell".into());
    let cfg = match variant.as_str() {
        "schnell" => DitConfig::flux_schnell(),
        "dev" => DitConfig::flux_dev(),
        v => anyhow::bail!("--variant {v}: schnell or dev"),
    };
    std::fs::create_dir_all(&out)?;

    let path = out.join(format!("flux1-{variant}-{}.gguf", quant.to_uppercase()));
    if path.exists() {
        eprintln!("{} exists; kept", path.display());
    } else {
        let params = record(|vb| {
            Dit::new(&cfg, vb)
                .map(|_| ())
                .map_err(candle_core::Error::wrap)
        });
        let count: usize = params
            .iter()
            .map(|(_, d)| d.iter().product::<usize>())
            .sum();
        eprintln!(
            "transformer: {} tensors, {:.2} B parameters",
            params.len(),
            count as f64 / 1e9
        );
        let mut tensors = Vec::with_capacity(params.len());
        for (i, (name, dims)) in params.iter().enumerate() {
            tensors.push((
                name.clone(),
                sprout_models::gguf::quantize(
                    name,
                    &sprout_models::recorder::random_param(name, dims)?,
                    q,
                )?,
            ));
            if i % 100 == 0 {
                eprintln!("  quantized {i}/{}", params.len());
            }
        }
        sprout_models::gguf::write(&path, &tensors, &[("general.architecture", "flux")])?;
        drop(tensors);
        eprintln!(
            "wrote {} ({:.2} GB)",
            path.display(),
            std::fs::metadata(&path)?.len() as f64 / 1e9
        );
    }

    if args.iter().any(|a| a == "--parts") {
        let vae = record(|vb| FluxVae::new(&FluxVaeConfig::flux(), vb).map(|_| ()));
        save_bf16(&vae, &out.join("ae.safetensors"))?;

        let clip_json = serde_json::json!({
            "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
            "intermediate_size": 3072, "max_position_embeddings": 77, "num_attention_heads": 12,
            "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408
        });
        let ccfg = clip_config(&clip_json)?;
        let clip = record(|vb| {
            candle_transformers::models::clip::text_model::ClipTextTransformer::new(
                vb.pp("text_model"),
                &ccfg,
            )
            .map(|_| ())
        });
        save_bf16(&clip, &out.join("text_encoder/model.safetensors"))?;
        std::fs::write(out.join("text_encoder/config.json"), clip_json.to_string())?;

        let t5_json = serde_json::json!({
            "architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096,
            "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "is_gated_act": true,
            "layer_norm_epsilon": 1e-6, "num_heads": 64, "num_layers": 24,
            "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
            "vocab_size": 32128, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false,
            "dropout_rate": 0.1, "initializer_factor": 1.0, "is_encoder_decoder": true
        });
        let tcfg: candle_transformers::models::t5::Config =
            serde_json::from_value(t5_json.clone())?;
        let t5 = record(|vb| {
            candle_transformers::models::t5::T5EncoderModel::load(vb, &tcfg).map(|_| ())
        });
        save_bf16(&t5, &out.join("text_encoder_2/model.safetensors"))?;
        std::fs::write(out.join("text_encoder_2/config.json"), t5_json.to_string())?;

        for (dir, file) in [
            ("tokenizer", "vocab.json"),
            ("tokenizer", "merges.txt"),
            ("tokenizer_2", "tokenizer.json"),
        ] {
            std::fs::create_dir_all(out.join(dir))?;
            std::fs::copy(fixtures().join(dir).join(file), out.join(dir).join(file))?;
        }
        eprintln!("wrote the other parts to {}", out.display());
    }
    Ok(())
}
