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
            semantic_channels: 0,
            semantic_map: Default::default(),
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

/// The tiny FLUX.1 parity fixtures (`tools/flux-parity/make_fixtures.py`).
pub fn flux_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sprout-models/tests/fixtures/flux")
        .join(name)
}

/// The `config` metadata of a fixture file.
pub fn flux_fixture_config(name: &str) -> Result<serde_json::Value, PipelineError> {
    let bad = |e: String| PipelineError::Weights(format!("fixture {name}: {e}"));
    let bytes = std::fs::read(flux_fixture(name)).map_err(|e| bad(e.to_string()))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let cfg = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(|| bad("no config metadata".into()))?;
    serde_json::from_str(cfg).map_err(|e| bad(e.to_string()))
}

/// A diffusers FLUX.1 snapshot folder at `root` made of the tiny fixtures (the dev
/// transformer, with guidance embedding), whose `model_index.json` names `pipeline_class`
/// (`FluxPipeline`, or `FluxKontextPipeline` for Kontext).
pub fn flux_snapshot(root: &std::path::Path, pipeline_class: &str) -> Result<(), PipelineError> {
    flux_snapshot_with(
        root,
        pipeline_class,
        "transformer_dev_diffusers.safetensors",
    )
}

/// [`flux_snapshot`] with the transformer of fixture file `transformer` (diffusers names),
/// e.g. `transformer_fill_diffusers.safetensors` under `FluxFillPipeline`.
pub fn flux_snapshot_with(
    root: &std::path::Path,
    pipeline_class: &str,
    transformer: &str,
) -> Result<(), PipelineError> {
    let io = |e: std::io::Error| PipelineError::Weights(format!("{}: {e}", root.display()));
    std::fs::create_dir_all(root).map_err(io)?;
    std::fs::write(
        root.join("model_index.json"),
        serde_json::json!({ "_class_name": pipeline_class }).to_string(),
    )
    .map_err(io)?;
    let parts: [(&str, &str, &str, bool); 7] = [
        (
            "transformer",
            "diffusion_pytorch_model.safetensors",
            transformer,
            true,
        ),
        (
            "vae",
            "diffusion_pytorch_model.safetensors",
            "vae_diffusers.safetensors",
            true,
        ),
        (
            "text_encoder",
            "model.safetensors",
            "clip.safetensors",
            true,
        ),
        (
            "text_encoder_2",
            "model.safetensors",
            "t5.safetensors",
            true,
        ),
        ("tokenizer", "vocab.json", "tokenizer/vocab.json", false),
        ("tokenizer", "merges.txt", "tokenizer/merges.txt", false),
        (
            "tokenizer_2",
            "tokenizer.json",
            "tokenizer_2/tokenizer.json",
            false,
        ),
    ];
    for (dir, file, from, config) in parts {
        std::fs::create_dir_all(root.join(dir)).map_err(io)?;
        std::fs::copy(flux_fixture(from), root.join(dir).join(file)).map_err(io)?;
        if config {
            std::fs::write(
                root.join(dir).join("config.json"),
                flux_fixture_config(from)?.to_string(),
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// Whether `out` equals `base` pixel for pixel right of column `split` (the kept area of an
/// inpainting whose mask is the left part) and left of it: (kept equal, redrawn equal).
pub fn halves_equal(out: &image::RgbImage, base: &image::RgbImage, split: u32) -> (bool, bool) {
    let (mut kept, mut drawn) = (true, true);
    for (x, y, p) in out.enumerate_pixels() {
        let same = p == base.get_pixel(x, y);
        if x >= split {
            kept &= same;
        } else {
            drawn &= same;
        }
    }
    (kept, drawn)
}

/// The FLUX.1 dev model at `root` (a snapshot of the tiny fixtures) loaded with `parts`, run
/// as the parity fixtures were made: 16 T5 tokens, the fixture prompt and initial latents,
/// 48×32, 3 steps, guidance 3.5. Returns (T5 states, image in [0, 1]).
pub fn flux_dev_run(
    root: &std::path::Path,
    parts: &sprout_models::flux::components::Components,
) -> Result<(Tensor, Tensor), PipelineError> {
    use sprout_models::flux::files::Variant;
    let io = candle_core::safetensors::load(flux_fixture("pipeline_io.safetensors"), &Device::Cpu)?;
    let mut m = crate::flux::FluxModel::load(root, parts, Variant::Dev, &Device::Cpu)?;
    m.text.t5_len = 16;
    let text = m.encode_text("a photo of a red circle")?;
    let img = m.sample(
        &text,
        &io["dev_latents"],
        &[],
        None,
        48,
        32,
        3,
        3.5,
        |_, _| {},
    )?;
    Ok((text.states, img))
}
