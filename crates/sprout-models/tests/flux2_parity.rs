//! FLUX.2 transformer parity with the reference implementation (diffusers'
//! `Flux2Transformer2DModel`, see `tools/flux-parity/make_flux2_fixtures.py`): tiny random
//! models of klein's layout (no guidance input) and dev's (with it), in both weight layouts,
//! run by Sprout's one DiT on the reference's inputs, must reproduce the reference's outputs,
//! with and without two reference images.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sprout_models::dit::embed::{grid_ids_4d, patchify, text_ids_4d};
use sprout_models::dit::{Dit, DitConfig, DitInput, References};
use sprout_models::flux::convert::{DiffusersFlux2Config, Renamed};
use sprout_models::ops::{max_abs, max_abs_diff};

/// f32 parity bound (issue: ≤ 1e-4 max abs error).
const TOL: f32 = 1e-4;

mod common;

/// A FLUX.2 fixture's tensors and stored config.
fn load(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    common::load("flux2", name)
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = max_abs_diff(got, want).unwrap();
    let scale = max_abs(want).unwrap();
    eprintln!("{what}: max abs error {d:.2e} (reference max |x| {scale:.2})");
    assert!(d <= tol, "{what}: max abs error {d:e} > {tol:e}");
}

fn config(variant: &str) -> DitConfig {
    let (_, cfg) = load(&format!("transformer_{variant}_bfl.safetensors"));
    let cfg: DiffusersFlux2Config = serde_json::from_value(cfg).unwrap();
    cfg.to_dit().unwrap()
}

fn transformer(variant: &str, layout: &str, dtype: DType) -> Dit {
    let (w, _) = load(&format!("transformer_{variant}_{layout}.safetensors"));
    let vb = if layout == "diffusers" {
        VarBuilder::from_backend(Box::new(Renamed::flux2_transformer(w)), dtype, Device::Cpu)
    } else {
        VarBuilder::from_tensors(w, dtype, &Device::Cpu)
    };
    Dit::new(&config(variant), vb).unwrap()
}

/// The reference's reference images as Sprout's reference tokens and FLUX.2 ids.
fn references(io: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let (mut tokens, mut ids) = (vec![], vec![]);
    for k in 0..2 {
        let r = &io[&format!("ref{k}")];
        let (_, _, h, w) = r.dims4().unwrap();
        let id = grid_ids_4d(10 * (k + 1), h / 2, w / 2, &Device::Cpu).unwrap();
        assert_close(
            "reference ids",
            &id.squeeze(0).unwrap(),
            &io[&format!("ref{k}_ids")],
            0.0,
        );
        tokens.push(patchify(r, 2).unwrap());
        ids.push(id);
    }
    (
        Tensor::cat(&tokens, 1).unwrap(),
        Tensor::cat(&ids, 1).unwrap(),
    )
}

#[test]
fn flux2_transformer_matches_the_reference_in_both_layouts_with_and_without_references() {
    let dev = Device::Cpu;
    for variant in ["klein", "dev"] {
        let (io, _) = load(&format!("transformer_{variant}_io.safetensors"));
        assert_close(
            "packed latents",
            &patchify(&io["latents"], 2).unwrap(),
            &io["img"],
            0.0,
        );
        let img_ids = grid_ids_4d(0, 4, 3, &dev).unwrap();
        let txt_ids = text_ids_4d(5, &dev).unwrap();
        assert_close(
            "image ids",
            &img_ids.squeeze(0).unwrap(),
            &io["img_ids"],
            0.0,
        );
        assert_close(
            "text ids",
            &txt_ids.squeeze(0).unwrap(),
            &io["txt_ids"],
            0.0,
        );
        // No pooled vector: an empty one, which the model must not read.
        let y = Tensor::zeros((2, 0), DType::F32, &dev).unwrap();
        let (ref_tokens, ref_ids) = references(&io);
        for layout in ["bfl", "diffusers"] {
            let dit = transformer(variant, layout, DType::F32);
            let base = DitInput {
                guidance: io.get("guidance"),
                ..DitInput::new(
                    &io["img"],
                    &img_ids,
                    &io["txt"],
                    &txt_ids,
                    &io["timesteps"],
                    &y,
                )
            };
            let out = dit.forward(&base).unwrap();
            assert_close(&format!("{variant}/{layout}"), &out, &io["out"], TOL);
            let with_refs = dit
                .forward(&DitInput {
                    references: Some(References {
                        tokens: &ref_tokens,
                        ids: &ref_ids,
                    }),
                    ..base
                })
                .unwrap();
            assert_close(
                &format!("{variant}/{layout} with two references"),
                &with_refs,
                &io["refs_out"],
                TOL,
            );
        }
    }
}

#[test]
fn flux2_in_bf16_stays_within_the_references_own_bf16_deviation() {
    // Weights and activations in bf16 as the reference's own bf16 run: Sprout's bf16 result
    // deviates from the f32 truth by at most 1.25× (plus a bf16 ulp of the output scale) the
    // reference's bf16 deviation.
    let dev = Device::Cpu;
    for variant in ["klein", "dev"] {
        let (io, _) = load(&format!("transformer_{variant}_io.safetensors"));
        let dit = transformer(variant, "bfl", DType::BF16);
        let img_ids = grid_ids_4d(0, 4, 3, &dev).unwrap();
        let txt_ids = text_ids_4d(5, &dev).unwrap();
        let y = Tensor::zeros((2, 0), DType::BF16, &dev).unwrap();
        let (img, txt) = (
            io["img"].to_dtype(DType::BF16).unwrap(),
            io["txt"].to_dtype(DType::BF16).unwrap(),
        );
        let out = dit
            .forward(&DitInput {
                guidance: io.get("guidance"),
                ..DitInput::new(&img, &img_ids, &txt, &txt_ids, &io["timesteps"], &y)
            })
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ours = max_abs_diff(&out, &io["out"]).unwrap();
        let theirs = max_abs_diff(&io["out_bf16"], &io["out"]).unwrap();
        let ulp = max_abs(&io["out"]).unwrap() / 128.0;
        eprintln!("{variant} bf16: Sprout {ours:.3e}, reference {theirs:.3e}");
        assert!(
            ours <= 1.25 * theirs + ulp,
            "{variant}: bf16 deviation {ours:e} against the reference's {theirs:e}"
        );
    }
}

#[test]
fn flux2_presets_have_the_reference_parameter_counts() {
    // Counted from diffusers' Flux2Transformer2DModel built with each model's config.
    for (cfg, params) in [
        (DitConfig::flux2_klein_4b(), 3_875_544_576usize),
        (DitConfig::flux2_klein_9b(), 9_078_581_248),
        (DitConfig::flux2_dev(), 32_223_281_152),
    ] {
        cfg.validate().unwrap();
        assert_eq!(cfg.num_params(), params, "{cfg:?}");
    }
    // The tiny fixture's config, read from its config.json fields, builds exactly the
    // stored tensors.
    let (w, _) = load("transformer_dev_bfl.safetensors");
    let stored: usize = w.values().map(|t| t.elem_count()).sum();
    assert_eq!(config("dev").num_params(), stored);
}

#[test]
fn flux2_config_fields_sprout_cannot_take_are_refused_by_name() {
    let (_, cfg) = load("transformer_klein_bfl.safetensors");
    for (field, value) in [
        ("patch_size", serde_json::json!(2)),
        ("timestep_guidance_channels", serde_json::json!(128)),
        ("eps", serde_json::json!(1e-5)),
        ("out_channels", serde_json::json!(8)),
    ] {
        let mut c = cfg.clone();
        c[field] = value;
        let c: DiffusersFlux2Config = serde_json::from_value(c).unwrap();
        let e = c.to_dit().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    // A weight of the wrong shape is named at load.
    let (mut w, _) = load("transformer_klein_bfl.safetensors");
    w.insert(
        "single_blocks.1.linear2.weight".into(),
        Tensor::zeros((32, 7), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Dit::new(
        &config("klein"),
        VarBuilder::from_tensors(w, DType::F32, &Device::Cpu),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("single_blocks.1.linear2"), "{e}");
}
