//! Small seeded random model bundles for tests of everything downstream of the pipeline
//! (generation, the CLI, the server), where trained weights would be too large or slow.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::init::seeded_varbuilder;
use sprout_models::text::{build_tokenizer, SmallTextEncoder, TextConfig};

use crate::bundle::{BundleMeta, BundleParts};
use crate::flow::{Sampler, ShiftConfig};
use crate::PipelineError;

fn tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// The tiny bundle that checks of `sprout serve` run: a few words, canvases up to 512².
pub fn tiny_serving_bundle() -> Result<BundleParts, PipelineError> {
    let mut parts = tiny_bundle(&["a", "red", "circle", "blue"], 1)?;
    parts.meta.max_side = 512;
    Ok(parts)
}

/// A tiny bundle (`DitConfig::tiny`, `AeConfig::tiny`, `TextConfig::tiny`) over `words`,
/// seeded by `seed`. The DiT's weights get seeded noise on top of their initialisation
/// (whose zero adaLN gates would make every output ignore the prompt), so images depend
/// on prompt and seed as a trained model's do.
pub fn tiny_bundle(words: &[&str], seed: u64) -> Result<BundleParts, PipelineError> {
    let dev = Device::Cpu;
    let tokenizer = build_tokenizer(words.iter().copied())?;
    let text = TextConfig::tiny(tokenizer.get_vocab_size(true));
    let dit = DitConfig {
        context_in_dim: text.dim,
        vec_in_dim: text.dim,
        ..DitConfig::tiny()
    };
    let ae = AeConfig::tiny();
    let (va, vd, vt) = (VarMap::new(), VarMap::new(), VarMap::new());
    Autoencoder::new(&ae, seeded_varbuilder(&va, seed, DType::F32, &dev))?;
    Dit::new(&dit, seeded_varbuilder(&vd, seed + 1, DType::F32, &dev))?;
    SmallTextEncoder::new(
        &text,
        tokenizer.clone(),
        seeded_varbuilder(&vt, seed + 2, DType::F32, &dev),
    )?;
    let mut dit_w = tensors(&vd);
    let mut names: Vec<String> = dit_w.keys().cloned().collect();
    names.sort();
    for (i, k) in names.iter().enumerate() {
        let w = &dit_w[k];
        let noise = crate::noise::noise(seed ^ 0xD17 ^ ((i as u64) << 20), w.dims(), &dev)?;
        let perturbed = (w + (noise * 0.05)?)?;
        dit_w.insert(k.clone(), perturbed);
    }
    Ok(BundleParts {
        meta: BundleMeta {
            name: "tiny".into(),
            ae,
            dit,
            text,
            shift: ShiftConfig::default(),
            default_steps: 2,
            default_guidance: 2.0,
            sampler: Sampler::Heun,
            max_side: 512,
            trained: serde_json::Value::Null,
        },
        ae: tensors(&va),
        dit: dit_w,
        text: tensors(&vt),
        tokenizer,
    })
}
