//! Generation with a tiny random bundle: shapes, seeds, batch independence, bad requests.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::init::seeded_varbuilder;
use sprout_models::text::{build_tokenizer, SmallTextEncoder, TextConfig};
use sprout_pipeline::bundle::{Bundle, BundleMeta};
use sprout_pipeline::flow::{Sampler, ShiftConfig};
use sprout_pipeline::generate::{generate, generate_many, Request};

fn tensors(vm: &VarMap) -> HashMap<String, Tensor> {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

fn tiny_bundle() -> Bundle {
    let dev = Device::Cpu;
    let tok = build_tokenizer(["a", "red", "circle", "blue", "star"]).unwrap();
    let text = TextConfig::tiny(tok.get_vocab_size(true));
    let dit = DitConfig {
        context_in_dim: text.dim,
        vec_in_dim: text.dim,
        ..DitConfig::tiny()
    };
    let ae = AeConfig::tiny();
    let (va, vd, vt) = (VarMap::new(), VarMap::new(), VarMap::new());
    Autoencoder::new(&ae, seeded_varbuilder(&va, 1, DType::F32, &dev)).unwrap();
    Dit::new(&dit, seeded_varbuilder(&vd, 2, DType::F32, &dev)).unwrap();
    SmallTextEncoder::new(
        &text,
        tok.clone(),
        seeded_varbuilder(&vt, 3, DType::F32, &dev),
    )
    .unwrap();
    // adaLN gates start at zero-free random values here, so the DiT output depends on its inputs.
    for v in vd.all_vars() {
        v.set(&(v.as_tensor() + Tensor::randn(0f32, 0.05, v.shape(), &dev).unwrap()).unwrap())
            .unwrap();
    }
    let meta = BundleMeta {
        name: "tiny".into(),
        ae,
        dit,
        text,
        shift: ShiftConfig::default(),
        default_steps: 3,
        default_guidance: 3.0,
        sampler: Sampler::Euler,
        max_side: 256,
        trained: serde_json::Value::Null,
    };
    Bundle::from_parts(meta, tensors(&va), tensors(&vd), tensors(&vt), tok, &dev).unwrap()
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
