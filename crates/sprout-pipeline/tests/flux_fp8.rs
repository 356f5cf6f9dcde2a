//! FLUX.1 weights in the other forms users keep them: plain FP8 (e4m3fn, as in
//! `t5xxl_fp8_e4m3fn.safetensors`, `flux1-dev-fp8.safetensors`) computes exactly as the same
//! values stored in f32; a GGUF T5 encoder (llama.cpp names) as the safetensors one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sprout_models::flux::components::Components;
use sprout_pipeline::testing::{flux_dev_run, flux_snapshot};

/// Write `from`'s tensors to `fp8` as F8E4M3 and to `rounded` as the f32 values FP8 holds.
fn to_fp8(from: &Path, fp8: &Path, rounded: &Path) {
    let t = candle_core::safetensors::load(from, &Device::Cpu).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    for (k, v) in t {
        let q = v.to_dtype(DType::F8E4M3).unwrap();
        b.insert(k.clone(), q.to_dtype(DType::F32).unwrap());
        a.insert(k, q);
    }
    candle_core::safetensors::save(&a, fp8).unwrap();
    candle_core::safetensors::save(&b, rounded).unwrap();
}

#[test]
fn fp8_text_encoder_and_transformer_equal_their_f32_values() {
    let dir = tempfile::tempdir().unwrap();
    let (fp8, rounded) = (dir.path().join("fp8"), dir.path().join("rounded"));
    for root in [&fp8, &rounded] {
        flux_snapshot(root, "FluxPipeline").unwrap();
    }
    for part in [
        "text_encoder_2/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
    ] {
        to_fp8(&fp8.join(part), &fp8.join(part), &rounded.join(part));
    }
    let header = sprout_models::flux::inspect::safetensors_header(
        &fp8.join("text_encoder_2/model.safetensors"),
    )
    .unwrap();
    // One byte per element: the file really is FP8.
    let elems: u64 = header
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(header.iter().map(|t| t.bytes).sum::<u64>(), elems);

    let run = |root: &Path| flux_dev_run(root, &Components::default()).unwrap();
    let (s8, i8) = run(&fp8);
    let (s32, i32) = run(&rounded);
    let d = |a: &Tensor, b: &Tensor| sprout_models::ops::max_abs_diff(a, b).unwrap();
    assert_eq!(d(&s8, &s32), 0.0);
    assert_eq!(d(&i8, &i32), 0.0);
    // And FP8 rounding did change the model (the comparison is not of identical files).
    let original = dir.path().join("original");
    flux_snapshot(&original, "FluxPipeline").unwrap();
    let (s, i) = run(&original);
    assert!(d(&s, &s32) > 0.0 && d(&i, &i32) > 0.0);
}

/// `--t5 FILE.gguf`: a GGUF T5 encoder with llama.cpp's names, stored as f32, gives the same
/// text states as the safetensors one; stored as Q8_0, states within 3 % of their scale.
#[test]
fn gguf_t5_encoder_gives_the_text_states_of_the_safetensors_one() {
    use candle_core::quantized::GgmlDType;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snap");
    flux_snapshot(&root, "FluxPipeline").unwrap();
    let t5 = root.join("text_encoder_2");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(t5.join("config.json")).unwrap()).unwrap();
    let cfg: sprout_models::t5::T5EncoderConfig = serde_json::from_value(cfg).unwrap();
    let w = candle_core::safetensors::load(t5.join("model.safetensors"), &Device::Cpu).unwrap();
    let encode = |parts: &Components| flux_dev_run(&root, parts).unwrap().0;
    let want = encode(&Components::default());
    let scale = sprout_models::ops::max_abs(&want).unwrap();
    for (q, tol) in [(GgmlDType::F32, 1e-5), (GgmlDType::Q8_0, 0.03 * scale)] {
        let p = dir.path().join(format!("t5-{q:?}.gguf"));
        sprout_models::t5::write_gguf(&p, &w, q, Some(&cfg)).unwrap();
        let got = encode(&Components {
            t5: Some(p),
            ..Default::default()
        });
        let d = sprout_models::ops::max_abs_diff(&got, &want).unwrap();
        eprintln!("{q:?}: max abs difference {d:.2e} (scale {scale:.2})");
        assert!(d <= tol, "{q:?}: {d} > {tol}");
    }
}

/// A CLIP text encoder saved by current transformers without the `text_model.` prefix loads
/// and encodes exactly as the prefixed one.
#[test]
fn a_clip_encoder_without_the_text_model_prefix_encodes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for root in [&a, &b] {
        flux_snapshot(root, "FluxPipeline").unwrap();
    }
    let p = b.join("text_encoder/model.safetensors");
    let t = candle_core::safetensors::load(&p, &Device::Cpu).unwrap();
    let bare: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), v))
        .collect();
    assert!(bare.contains_key("embeddings.token_embedding.weight"));
    candle_core::safetensors::save(&bare, &p).unwrap();
    let (sa, ia) = flux_dev_run(&a, &Components::default()).unwrap();
    let (sb, ib) = flux_dev_run(&b, &Components::default()).unwrap();
    let d = |x: &Tensor, y: &Tensor| sprout_models::ops::max_abs_diff(x, y).unwrap();
    assert_eq!((d(&sa, &sb), d(&ia, &ib)), (0.0, 0.0));
}
