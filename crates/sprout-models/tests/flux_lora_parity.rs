//! LoRA adapters against the reference (`tools/flux-parity/make_fixtures.py lora`): adapter
//! files as diffusers writes and reads them, merged by Sprout into the tiny dev transformer in
//! either base layout, must reproduce the outputs diffusers computes with them loaded.
//! - `lora_peft.safetensors`: a PEFT adapter on every linear layer written by diffusers'
//!   `save_lora_weights`, whose alphas live only in the file's metadata (alpha 8 over rank 4,
//!   per-layer rank and alpha patterns);
//! - `lora_kohya.safetensors`: kohya names over Black Forest Labs modules (fused qkv and
//!   linear1 split by diffusers' converter), an alpha per layer, and CLIP parts.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sprout_models::dit::embed::grid_ids;
use sprout_models::dit::{Dit, DitInput};
use sprout_models::flux::convert::{DiffusersTransformerConfig, Renamed};
use sprout_models::flux::lora::{Lora, LoraUsage, WithLora};
use sprout_models::ops::{max_abs, max_abs_diff};

/// f32 parity bound, as for the plain transformer.
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/flux")
        .join(name)
}

mod common;

fn load(name: &str) -> HashMap<String, Tensor> {
    common::load("flux", name).0
}

fn dev_config() -> sprout_models::dit::DitConfig {
    let bytes = std::fs::read(fixture("transformer_dev_bfl.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cfg = &meta.metadata().as_ref().unwrap()["config"];
    let cfg: DiffusersTransformerConfig = serde_json::from_str(cfg).unwrap();
    cfg.to_dit().unwrap()
}

/// The dev transformer in `layout` with the adapter in `file` merged at `strength`.
fn adapted(layout: &str, file: &str, strength: f64) -> (Dit, LoraUsage) {
    let mut lora = Lora::default();
    lora.add_file(&fixture(file), strength).unwrap();
    let base = load(&format!("transformer_dev_{layout}.safetensors"));
    let (vb, usage) = if layout == "diffusers" {
        let (b, u) = WithLora::new(Renamed::transformer(base), lora);
        (
            VarBuilder::from_backend(Box::new(b), DType::F32, Device::Cpu),
            u,
        )
    } else {
        let (b, u) = WithLora::new(base, lora);
        (
            VarBuilder::from_backend(Box::new(b), DType::F32, Device::Cpu),
            u,
        )
    };
    (Dit::new(&dev_config(), vb).unwrap(), usage)
}

fn forward(dit: &Dit) -> Tensor {
    let io = load("transformer_dev_io.safetensors");
    let img_ids = grid_ids(0, 4, 3, &Device::Cpu).unwrap();
    let txt_ids = io["txt_ids"].unsqueeze(0).unwrap();
    let input = DitInput {
        guidance: Some(&io["guidance"]),
        ..DitInput::new(
            &io["img"],
            &img_ids,
            &io["txt"],
            &txt_ids,
            &io["timesteps"],
            &io["y"],
        )
    };
    dit.forward(&input).unwrap()
}

#[test]
fn adapters_as_diffusers_loads_them_give_the_reference_output_in_both_layouts() {
    let want = load("lora_io.safetensors");
    let plain = &load("transformer_dev_io.safetensors")["out"];
    for (file, strength, key) in [
        ("lora_peft.safetensors", 1.0, "peft_out"),
        ("lora_peft.safetensors", 0.6, "peft_out_strength_0_6"),
        ("lora_kohya.safetensors", 1.0, "kohya_out"),
    ] {
        // The adapter changes the output: a no-op merge cannot pass.
        assert!(max_abs_diff(&want[key], plain).unwrap() > 0.5, "{key}");
        for layout in ["bfl", "diffusers"] {
            let (dit, usage) = adapted(layout, file, strength);
            let got = forward(&dit);
            let d = max_abs_diff(&got, &want[key]).unwrap();
            eprintln!(
                "{key} over the {layout} layout: max abs error {d:.2e} (reference max |x| {:.2})",
                max_abs(&want[key]).unwrap()
            );
            assert!(d <= TOL, "{key} over the {layout} layout: {d:e} > {TOL:e}");
            if file == "lora_peft.safetensors" {
                // Every layer of the PEFT file is a transformer layer.
                usage.check_all_used().unwrap();
            }
        }
    }
}

/// One adapter layer (`transformer.x_embedder`, rank 4) with `metadata` as its PEFT config.
fn peft_file(path: &std::path::Path, metadata: &str) -> (Tensor, Tensor) {
    let (out, inp) = load("transformer_dev_bfl.safetensors")["img_in.weight"]
        .dims2()
        .unwrap();
    let down: Vec<f32> = (0..4 * inp)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0)
        .collect();
    let up: Vec<f32> = (0..out * 4)
        .map(|i| ((i * 5 % 11) as f32 - 5.0) / 10.0)
        .collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (db, ub) = (bytes(&down), bytes(&up));
    let views = vec![
        (
            "transformer.x_embedder.lora_A.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4, inp], &db)
                .unwrap(),
        ),
        (
            "transformer.x_embedder.lora_B.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![out, 4], &ub)
                .unwrap(),
        ),
    ];
    let meta = HashMap::from([("lora_adapter_metadata".to_string(), metadata.to_string())]);
    safetensors::tensor::serialize_to_file(views, Some(meta), path).unwrap();
    (
        Tensor::from_vec(down, (4, inp), &Device::Cpu).unwrap(),
        Tensor::from_vec(up, (out, 4), &Device::Cpu).unwrap(),
    )
}

/// The merged `img_in.weight` with the adapter in `path`.
fn merged_img_in(path: &std::path::Path) -> Result<Tensor, sprout_models::ModelError> {
    let mut lora = Lora::default();
    lora.add_file(path, 1.0)?;
    let base = load("transformer_dev_bfl.safetensors");
    let (b, _) = WithLora::new(base, lora);
    let vb = VarBuilder::from_backend(Box::new(b), DType::F32, Device::Cpu);
    Ok(vb.get_unchecked("img_in.weight").unwrap())
}

#[test]
fn the_peft_config_in_the_metadata_sets_the_factor() {
    let dir = tempfile::tempdir().unwrap();
    let base = &load("transformer_dev_bfl.safetensors")["img_in.weight"];
    let f = dir.path().join("a.safetensors");
    // (metadata, factor): alpha / rank; a pattern wins over lora_alpha; rsLoRA's alpha / √rank;
    // a pattern for another layer changes nothing; no alpha at all means 1.
    for (meta, factor) in [
        (r#"{"transformer.r": 4, "transformer.lora_alpha": 8}"#, 2.0),
        (
            r#"{"transformer.lora_alpha": 8, "transformer.alpha_pattern": {"x_emb.*": 1}}"#,
            0.25,
        ),
        (
            r#"{"transformer.lora_alpha": 8, "transformer.use_rslora": true}"#,
            4.0,
        ),
        (
            r#"{"transformer.lora_alpha": 2, "transformer.alpha_pattern": {"embedder": 16}}"#,
            0.5,
        ),
        (r#"{"text_encoder.lora_alpha": 8}"#, 1.0),
    ] {
        let (down, up) = peft_file(&f, meta);
        let want = (base + (up.matmul(&down).unwrap() * factor).unwrap()).unwrap();
        let d = max_abs_diff(&merged_img_in(&f).unwrap(), &want).unwrap();
        assert!(d <= 1e-5, "{meta}: {d}");
    }
    // What Sprout cannot apply as plain LoRA is an error naming it.
    for (meta, says) in [
        (r#"{"transformer.use_dora": true}"#, "DoRA"),
        (r#"{"transformer.lora_alpha": -1}"#, "lora_alpha"),
        (
            r#"{"transformer.alpha_pattern": {"x_embedder(": 2}}"#,
            "x_embedder(",
        ),
        ("not json", "lora_adapter_metadata"),
    ] {
        peft_file(&f, meta);
        let e = merged_img_in(&f).unwrap_err().to_string();
        assert!(
            e.contains(says) && e.contains("a.safetensors"),
            "{meta}: {e}"
        );
    }
}
