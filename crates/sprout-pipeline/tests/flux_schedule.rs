//! The FLUX sampling schedule and Euler step against diffusers' FlowMatchEulerDiscreteScheduler
//! (fixture made by `tools/flux-parity/make_fixtures.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use sprout_pipeline::flow::{euler_step, schedule, ShiftConfig};

fn fixture() -> HashMap<String, Tensor> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sprout-models/tests/fixtures/flux/scheduler.safetensors");
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn schedules_match_diffusers_for_schnell_and_dev() {
    let f = fixture();
    let shift = ShiftConfig::default();
    // (fixture name, steps, dynamic shift, image tokens)
    for (name, steps, dynamic, tokens) in [
        ("schnell", 4, false, 4096),
        ("dev", 28, true, 4096),
        ("dev_512", 28, true, 1024),
    ] {
        let mu = if dynamic { shift.mu(tokens) } else { 0.0 };
        let want_mu = values(&f[&format!("{name}_mu")])[0];
        assert!(
            (mu as f32 - want_mu).abs() < 1e-6,
            "{name}: mu {mu} vs {want_mu}"
        );
        let got = schedule(steps, mu);
        let want = values(&f[&format!("{name}_sigmas")]);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((*g as f32 - w).abs() < 1e-6, "{name} sigma {i}: {g} vs {w}");
        }
    }
}

#[test]
fn one_euler_step_matches_diffusers() {
    let f = fixture();
    let (t, t_next) = (
        values(&f["step_sigma"])[0],
        values(&f["step_sigma_next"])[0],
    );
    let out = euler_step(&f["step_x"], &f["step_v"], t as f64, t_next as f64).unwrap();
    let d = sprout_models::ops::max_abs_diff(&out, &f["step_out"]).unwrap();
    assert!(d <= 1e-6, "{d}");
}
