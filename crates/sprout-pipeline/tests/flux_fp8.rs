//! FLUX.1 weights stored as plain FP8 (e4m3fn, as in `t5xxl_fp8_e4m3fn.safetensors` and
//! `flux1-dev-fp8.safetensors`) load and compute exactly as the same values stored in f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sprout_models::flux::components::Components;
use sprout_models::flux::files::Variant;
use sprout_pipeline::flux::FluxModel;
use sprout_pipeline::testing::{flux_fixture, flux_snapshot};

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

    let io = candle_core::safetensors::load(flux_fixture("pipeline_io.safetensors"), &Device::Cpu)
        .unwrap();
    let run = |root: &Path| {
        let mut m =
            FluxModel::load(root, &Components::default(), Variant::Dev, &Device::Cpu).unwrap();
        m.text.t5_len = 16;
        let text = m.encode_text("a photo of a red circle").unwrap();
        let img = m
            .sample(
                &text,
                &io["dev_latents"],
                &[],
                None,
                48,
                32,
                3,
                3.5,
                |_, _| {},
            )
            .unwrap();
        (text.states, img)
    };
    let (s8, i8) = run(&fp8);
    let (s32, i32) = run(&rounded);
    let d = |a: &Tensor, b: &Tensor| sprout_models::ops::max_abs_diff(a, b).unwrap();
    assert_eq!(d(&s8, &s32), 0.0);
    assert_eq!(d(&i8, &i32), 0.0);
    // And FP8 rounding did change the model (the comparison is not of identical files).
    let original = FluxModel::load(
        &{
            let r = dir.path().join("original");
            flux_snapshot(&r, "FluxPipeline").unwrap();
            r
        },
        &Components::default(),
        Variant::Dev,
        &Device::Cpu,
    )
    .unwrap();
    let mut original = original;
    original.text.t5_len = 16;
    let s = original
        .encode_text("a photo of a red circle")
        .unwrap()
        .states;
    assert!(d(&s, &s32) > 0.0);
}
