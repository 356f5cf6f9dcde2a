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

/// A snapshot's `scheduler/scheduler_config.json` is read: dev's own values sample as
/// without the file, other shifts sample on other times, and a field that would need
/// another sampler is refused by name.
#[test]
fn a_snapshots_scheduler_config_sets_the_shift() {
    use sprout_models::flux::components::Components;
    use sprout_pipeline::testing::{flux_dev_run, flux_snapshot};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("snap");
    flux_snapshot(&root, "FluxPipeline").unwrap();
    let run = || flux_dev_run(&root, &Components::default()).map(|r| r.1);
    let plain = run().unwrap();
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    let write = |v: serde_json::Value| {
        std::fs::write(
            root.join("scheduler/scheduler_config.json"),
            serde_json::to_string(&v).unwrap(),
        )
        .unwrap()
    };
    let mut dev = serde_json::json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true,
        "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
        "max_shift": 1.15, "shift": 3.0, "time_shift_type": "exponential",
    });
    write(dev.clone());
    let d = |a: &Tensor, b: &Tensor| sprout_models::ops::max_abs_diff(a, b).unwrap();
    assert_eq!(d(&run().unwrap(), &plain), 0.0);
    dev["base_shift"] = serde_json::json!(2.0);
    write(dev.clone());
    assert!(d(&run().unwrap(), &plain) > 1e-3);
    dev["time_shift_type"] = serde_json::json!("linear");
    write(dev);
    let e = run().unwrap_err().to_string();
    assert!(
        e.contains("time_shift_type") && e.contains("scheduler_config.json"),
        "{e}"
    );
}
