//! Generation with a tiny random bundle: shapes, seeds, batch independence, bad requests.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::generate::{generate, generate_many, Request};
use sprout_pipeline::testing::tiny_bundle as tiny_bundle_parts;

fn tiny_bundle() -> Bundle {
    let mut parts = tiny_bundle_parts(&["a", "red", "circle", "blue", "star"], 1).unwrap();
    parts.meta.max_side = 256;
    parts.into_bundle(&Device::Cpu).unwrap()
}

fn req(n: usize, seed: u64) -> Request {
    Request {
        prompt: "a red circle".into(),
        n,
        seed,
        steps: 3,
        guidance: 3.0,
        width: 96,
        height: 64,
        sampler: Sampler::Heun,
    }
}

#[test]
fn images_do_not_depend_on_n_and_follow_their_seed() {
    let b = tiny_bundle();
    let three = generate(&b, &req(3, 10), |_, _| {}).unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(three[0].dimensions(), (96, 64));
    let one = generate(&b, &req(1, 11), |_, _| {}).unwrap();
    // Image 1 of seed 10 is image 0 of seed 11 (up to float reduction order: ±1 level).
    let max_diff = three[1]
        .as_raw()
        .iter()
        .zip(one[0].as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max_diff <= 1, "{max_diff}");
    assert_ne!(three[0].as_raw(), three[1].as_raw());
    let mut steps = 0;
    generate(&b, &req(1, 0), |done, total| {
        steps = done;
        assert_eq!(total, 5);
    })
    .unwrap();
    assert_eq!(steps, 5);
}

fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(p, q)| p.abs_diff(*q))
        .max()
        .unwrap()
}

#[test]
fn batched_requests_match_their_separate_results() {
    let b = tiny_bundle();
    let first = req(2, 10);
    let second = Request {
        prompt: "two blue squares on a pink background".into(),
        ..req(1, 40)
    };
    let both = generate_many(&b, &[first.clone(), second.clone()], |_, _| {}).unwrap();
    assert_eq!(both.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    let alone = [
        generate(&b, &first, |_, _| {}).unwrap(),
        generate(&b, &second, |_, _| {}).unwrap(),
    ];
    for (batched, single) in both.iter().zip(&alone) {
        for (x, y) in batched.iter().zip(single) {
            assert!(max_diff(x, y) <= 1);
        }
    }
    // The prompt matters: the same seed under another prompt gives another image.
    let other = generate(
        &b,
        &Request {
            prompt: second.prompt.clone(),
            ..req(1, 10)
        },
        |_, _| {},
    )
    .unwrap();
    assert!(max_diff(&other[0], &both[0][0]) > 1);
    // Requests that cannot share a batch are refused, naming why.
    let e = generate_many(
        &b,
        &[
            first,
            Request {
                width: 64,
                ..second
            },
        ],
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("must share size"), "{e}");
}

#[test]
fn bad_requests_name_the_field() {
    let b = tiny_bundle();
    let cases: Vec<(Request, &str)> = vec![
        (
            Request {
                prompt: "  ".into(),
                ..req(1, 0)
            },
            "prompt is empty",
        ),
        (
            Request {
                width: 100,
                ..req(1, 0)
            },
            "width 100 is not a positive multiple of 32",
        ),
        (
            Request {
                height: 512,
                ..req(1, 0)
            },
            "height 512 exceeds this model's maximum of 256",
        ),
        (Request { n: 0, ..req(1, 0) }, "n = 0"),
        (
            Request {
                steps: 0,
                ..req(1, 0)
            },
            "steps = 0",
        ),
        (
            Request {
                guidance: f64::NAN,
                ..req(1, 0)
            },
            "guidance",
        ),
    ];
    for (r, want) in cases {
        let e = generate(&b, &r, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn corrupted_and_mis_shaped_weights_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    std::fs::write(dir.path().join("dit.safetensors"), b"garbage").unwrap();
    let e = sprout_pipeline::bundle::read_tensors(&dir.path().join("dit.safetensors"), &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dit.safetensors") && e.contains("not a readable safetensors"),
        "{e}"
    );
    let e = sprout_pipeline::bundle::read_tensors(&dir.path().join("missing.safetensors"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing weight file"), "{e}");
    let nan: HashMap<String, Tensor> = [(
        "w".to_string(),
        Tensor::new(&[1f32, f32::NAN], &dev).unwrap(),
    )]
    .into();
    candle_core::safetensors::save(&nan, dir.path().join("nan.safetensors")).unwrap();
    let e = sprout_pipeline::bundle::read_tensors(&dir.path().join("nan.safetensors"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tensor w holds NaN"), "{e}");
}

#[test]
fn a_written_bundle_loads_back_with_its_config_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let parts = tiny_bundle_parts(&["a", "red", "circle"], 9).unwrap();
    parts.write_dir(dir.path()).unwrap();
    let loaded = Bundle::load_dir(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(loaded.meta, parts.meta);
    for (file, tensors) in [
        ("ae", &parts.ae),
        ("dit", &parts.dit),
        ("text", &parts.text),
    ] {
        let back = sprout_pipeline::bundle::read_tensors(
            &dir.path().join(format!("{file}.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(back.len(), tensors.len(), "{file}");
        for (k, v) in tensors {
            // Stored as bf16: 8 significant bits.
            let d = sprout_models::ops::max_abs_diff(&back[k], v).unwrap();
            let m = sprout_models::ops::max_abs(v).unwrap();
            assert!(d <= m / 128.0 + 1e-12, "{file}/{k}: {d} vs {m}");
        }
    }
    let img = generate(
        &loaded,
        &Request {
            width: 64,
            height: 64,
            ..req(1, 3)
        },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(img[0].dimensions(), (64, 64));
}
