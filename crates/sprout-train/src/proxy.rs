//! The training proxy: cheap, deterministic numbers that move long before a model's samples
//! score on WorldEval, for comparing recipes after a short run.
//!
//! A fixed probe set: the first prompts of the object categories of WorldEval (256² canvases),
//! each with its ground-truth scene rendered and encoded, and fixed noise. For each probe and
//! time t the model predicts the velocity at `x_t`; the proxy reports
//! - the velocity error on object tokens (the tokens an object's box touches; latent channels
//!   only) at t = 0.5, 0.7, 0.9;
//! - the caption gain at t = 0.7, 0.9: the same error with each probe given another probe's
//!   prompt, minus the error with its own. A model that ignores its prompt gains 0.

use candle_core::{Device, Tensor};
use serde::Serialize;
use sprout_eval::prompts::{Category, PromptSet};
use sprout_eval::truth::ground_truth;
use sprout_models::dit::embed::{grid_ids, patchify, text_ids};
use sprout_models::dit::DitInput;
use sprout_models::text::TextEncoder;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::image_io::from_image;
use sprout_pipeline::noise::noise_batch;
use sprout_world::render::Renderer;

use crate::dit_task::object_tokens;
use crate::TrainError;

/// The categories the probe set draws from.
pub const PROBE_CATEGORIES: [Category; 6] = [
    Category::SingleObject,
    Category::TwoObject,
    Category::Counting,
    Category::Colors,
    Category::Position,
    Category::ColorAttr,
];

/// Times of the velocity error and of the caption gain.
pub const ERROR_TIMES: [f64; 3] = [0.5, 0.7, 0.9];
pub const GAIN_TIMES: [f64; 2] = [0.7, 0.9];

#[derive(Debug, Clone, Serialize)]
pub struct ProxyReport {
    pub probes: usize,
    /// (t, mean squared velocity error on object tokens)
    pub velocity_error: Vec<(f64, f64)>,
    /// (t, error with shuffled prompts − error with the true ones)
    pub caption_gain: Vec<(f64, f64)>,
}

/// A fixed probe set: per category, the first `per_category` prompts.
struct Probes {
    prompts: Vec<String>,
    /// Normalised latents (plus semantic channels for a model that has them), (N, C, 8, 8).
    x0: Tensor,
    /// Object-token masks, (N, tokens, 1).
    mask: Tensor,
}

fn probes(bundle: &Bundle, per_category: usize, dev: &Device) -> Result<Probes, TrainError> {
    let set = PromptSet::builtin();
    let mut prompts = Vec::new();
    let mut latents = Vec::new();
    let mut masks = Vec::new();
    let renderer = Renderer::new();
    for cat in PROBE_CATEGORIES {
        for p in set
            .prompts
            .iter()
            .filter(|p| p.category == cat && (p.width, p.height) == (256, 256))
            .take(per_category)
        {
            let scene = ground_truth(p, 0, 0);
            let img = renderer
                .render(&scene)
                .map_err(|e| TrainError::Config(format!("probe {}: {e}", p.id)))?;
            let x = from_image(&img, dev)?;
            let z = bundle.ae.encode(&x)?;
            let (_, _, h, w) = z.dims4()?;
            let z = if bundle.meta.semantic_channels > 0 {
                let rgb: Vec<f32> = x.flatten_all()?.to_vec1()?;
                let map = bundle
                    .meta
                    .semantic_map
                    .map(&scene, &rgb, 256 / h)
                    .map_err(|e| TrainError::Config(format!("probe {}: {e}", p.id)))?;
                let sem = Tensor::from_vec(map, (1, bundle.meta.semantic_channels, h, w), dev)?;
                Tensor::cat(&[&z, &sem], 1)?
            } else {
                z
            };
            latents.push(z);
            masks.push(Tensor::from_vec(
                object_tokens(&scene, h, w),
                (1, h * w, 1),
                dev,
            )?);
            prompts.push(p.text.clone());
        }
    }
    Ok(Probes {
        prompts,
        x0: Tensor::cat(&latents, 0)?,
        mask: Tensor::cat(&masks, 0)?,
    })
}

/// Mean squared velocity error on object tokens (latent channels) at time `t`, each probe
/// conditioned on `prompts`.
fn error_at(
    bundle: &Bundle,
    pr: &Probes,
    eps: &Tensor,
    prompts: &[String],
    t: f64,
    dev: &Device,
) -> Result<f64, TrainError> {
    let (n, _, h, w) = pr.x0.dims4()?;
    let xt = ((&pr.x0 * (1.0 - t))? + (eps * t)?)?;
    let v = (eps - &pr.x0)?;
    let emb = bundle.text.encode(prompts, dev)?;
    let img_ids = grid_ids(0, h, w, dev)?;
    let txt_ids = text_ids(emb.states.dim(1)?, dev)?;
    let tt = Tensor::full(t as f32, n, dev)?;
    let tokens = patchify(&xt, 1)?;
    let pred = bundle.dit.forward(&DitInput {
        txt_mask: Some(&emb.mask),
        ..DitInput::new(&tokens, &img_ids, &emb.states, &txt_ids, &tt, &emb.pooled)
    })?;
    let target = patchify(&v, 1)?;
    let c = bundle.meta.ae.latent_channels;
    let sq = (pred.narrow(2, 0, c)? - target.narrow(2, 0, c)?)?.sqr()?;
    let num = sq.broadcast_mul(&pr.mask)?.sum_all()?.to_scalar::<f32>()? as f64;
    let den = pr.mask.sum_all()?.to_scalar::<f32>()? as f64 * c as f64;
    Ok(num / den.max(1.0))
}

/// The proxy numbers of a model bundle over `per_category` probes of each category.
pub fn velocity_proxy(bundle: &Bundle, per_category: usize) -> Result<ProxyReport, TrainError> {
    let dev = Device::Cpu;
    if bundle.dit.config().patch_size != 1 {
        return Err(TrainError::Config(
            "the proxy needs a native model (patch size 1)".into(),
        ));
    }
    let pr = probes(bundle, per_category, &dev)?;
    let (n, c, h, w) = pr.x0.dims4()?;
    let seeds: Vec<u64> = (0..n as u64).map(|i| 0x9A0B_E000 + i).collect();
    let eps = noise_batch(&seeds, &[c, h, w], &dev)?;
    let mut velocity_error = Vec::new();
    for t in ERROR_TIMES {
        velocity_error.push((t, error_at(bundle, &pr, &eps, &pr.prompts, t, &dev)?));
    }
    // Each probe gets the prompt of the probe half the set away (another category).
    let shuffled: Vec<String> = (0..n)
        .map(|i| pr.prompts[(i + n / 2) % n].clone())
        .collect();
    let mut caption_gain = Vec::new();
    for t in GAIN_TIMES {
        let own = velocity_error
            .iter()
            .find(|(s, _)| *s == t)
            .map(|(_, e)| *e)
            .map_or_else(|| error_at(bundle, &pr, &eps, &pr.prompts, t, &dev), Ok)?;
        let other = error_at(bundle, &pr, &eps, &shuffled, t, &dev)?;
        caption_gain.push((t, other - own));
    }
    Ok(ProxyReport {
        probes: n,
        velocity_error,
        caption_gain,
    })
}
