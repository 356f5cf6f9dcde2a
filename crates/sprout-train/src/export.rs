//! Export a run's EMA weights as model files (bf16 safetensors + JSON configs).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::json;
use sprout_data::{make_batch, StreamConfig, StreamPos};
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::DitConfig;
use sprout_models::text::TextConfig;
use sprout_pipeline::bundle::BundleMeta;
use sprout_pipeline::flow::Sampler;
use sprout_world::sampler::{CanvasChoice, SamplerConfig};

use crate::ckpt;
use crate::config::{Kind, TrainConfig};
use crate::TrainError;

fn strip(
    t: &HashMap<String, Tensor>,
    prefix: &str,
    dtype: DType,
) -> Result<HashMap<String, Tensor>, TrainError> {
    let p = format!("{prefix}.");
    let mut out = HashMap::new();
    for (k, v) in t {
        if let Some(rest) = k.strip_prefix(&p) {
            out.insert(rest.to_string(), v.to_dtype(dtype)?);
        } else if prefix.is_empty() {
            out.insert(k.clone(), v.to_dtype(dtype)?);
        }
    }
    Ok(out)
}

/// Per-channel mean and standard deviation of the autoencoder's raw latents over `n` world
/// images at 256².
pub fn latent_stats(ae: &Autoencoder, n: usize) -> Result<(Vec<f64>, Vec<f64>), TrainError> {
    let cfg = StreamConfig {
        seed: 0x57A7,
        batch_size: 16,
        sampler: SamplerConfig {
            canvas: CanvasChoice::Fixed {
                width: 256,
                height: 256,
            },
            ..SamplerConfig::default()
        },
        ..StreamConfig::default()
    };
    let c = ae.cfg.latent_channels;
    let (mut sum, mut sq, mut count) = (vec![0f64; c], vec![0f64; c], 0f64);
    let mut pos = StreamPos::default();
    let mut images = 0;
    while images < n {
        let batch = make_batch(&cfg, pos)?;
        pos = cfg.advance(pos);
        images += batch.images.dim(0)?;
        let z = ae.encoder.forward(&batch.images)?.to_dtype(DType::F64)?;
        let per = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
            t.sum_keepdim(0)?
                .sum_keepdim(2)?
                .sum_keepdim(3)?
                .flatten_all()?
                .to_vec1()
        };
        for (acc, v) in sum.iter_mut().zip(per(&z)?) {
            *acc += v;
        }
        for (acc, v) in sq.iter_mut().zip(per(&z.sqr()?)?) {
            *acc += v;
        }
        count += (z.elem_count() / c) as f64;
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / count - m * m).max(1e-12).sqrt())
        .collect();
    Ok((mean, std))
}

/// Write the run's export to `to`: for an autoencoder run `ae.json` + `ae.safetensors` (with
/// its per-channel latent statistics measured), for a DiT run a whole model bundle.
pub fn export(cfg: &TrainConfig, to: &Path) -> Result<serde_json::Value, TrainError> {
    let dir = ckpt::find(&cfg.out)
        .ok_or_else(|| TrainError::Checkpoint(format!("no checkpoint in {}", cfg.out.display())))?;
    let state = ckpt::load_state(&dir)?;
    let ema = ckpt::load_tensors(&dir, "ema")?;
    std::fs::create_dir_all(to)?;
    let summary = json!({"steps": state["step"], "samples": state["samples"], "train_seconds": state["elapsed_s"], "config": cfg});
    match cfg.kind {
        Kind::Ae => {
            let ae_cfg: AeConfig =
                serde_json::from_str(&std::fs::read_to_string(dir.join("ae.json"))?)
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            let weights = strip(&ema, "", DType::BF16)?;
            let f32w: HashMap<String, Tensor> = weights
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.to_dtype(DType::F32)?)))
                .collect::<Result<_, candle_core::Error>>()?;
            let ae = Autoencoder::new(
                &ae_cfg,
                VarBuilder::from_tensors(f32w, DType::F32, &Device::Cpu),
            )?;
            // A run whose encoder stayed keeps its source's latent statistics, which the
            // DiTs trained on those latents were trained with.
            let ae_cfg = if cfg.ae.train_encoder || ae_cfg.channel_shift.is_empty() {
                let (mean, std) = latent_stats(&ae, 256)?;
                AeConfig {
                    scale: 1.0,
                    shift: 0.0,
                    channel_shift: mean,
                    channel_scale: std.iter().map(|s| 1.0 / s).collect(),
                    ..ae_cfg
                }
            } else {
                ae_cfg
            };
            candle_core::safetensors::save(&weights, to.join("ae.safetensors"))?;
            std::fs::write(
                to.join("ae.json"),
                serde_json::to_string_pretty(&ae_cfg).expect("json"),
            )?;
            std::fs::write(
                to.join("trained.json"),
                serde_json::to_string_pretty(&summary).expect("json"),
            )?;
        }
        Kind::Dit => {
            let read = |name: &str| std::fs::read_to_string(dir.join(name));
            let dit_cfg: DitConfig = serde_json::from_str(&read("dit.json")?)
                .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            let text_cfg: TextConfig = serde_json::from_str(&read("text.json")?)
                .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            let ae_cfg: AeConfig =
                serde_json::from_str(&std::fs::read_to_string(cfg.dit.ae.join("ae.json"))?)
                    .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
            std::fs::copy(cfg.dit.ae.join("ae.safetensors"), to.join("ae.safetensors"))?;
            candle_core::safetensors::save(
                &strip(&ema, "dit", DType::BF16)?,
                to.join("dit.safetensors"),
            )?;
            candle_core::safetensors::save(
                &strip(&ema, "text", DType::BF16)?,
                to.join("text.safetensors"),
            )?;
            std::fs::write(to.join("tokenizer.json"), read("tokenizer.json")?)?;
            let meta = BundleMeta {
                name: "sprout-native".into(),
                ae: ae_cfg,
                dit: dit_cfg,
                text: text_cfg,
                shift: crate::dit_task::shift_config(cfg.dit.shift),
                semantic_channels: cfg.dit.semantic_channels(),
                semantic_map: cfg.dit.semantic_map,
                default_steps: 20,
                default_guidance: 4.0,
                sampler: Sampler::Heun,
                max_side: 1024,
                trained: summary.clone(),
            };
            std::fs::write(
                to.join("model.json"),
                serde_json::to_string_pretty(&meta).expect("json"),
            )?;
        }
    }
    Ok(summary)
}
