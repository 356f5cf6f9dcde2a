//! Generation with a tiny random bundle: shapes, seeds, batch independence, bad requests.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::generate::{generate, generate_many};
use sprout_pipeline::request::{img2img_first_step, InitImage, Request};
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
        init: None,
        negative_prompt: None,
        true_cfg: None,
        images: Vec::new(),
        latents: None,
        max_sequence_length: None,
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

/// A (1, 3, 64, 96) test image in [-1, 1]: a horizontal ramp, or its negation.
fn init_image(flip: bool) -> Tensor {
    let dev = Device::Cpu;
    let ramp = ((Tensor::arange(0f32, 96., &dev).unwrap() / 47.5).unwrap() - 1.0).unwrap();
    let ramp = if flip { ramp.neg().unwrap() } else { ramp };
    ramp.reshape((1, 1, 1, 96))
        .unwrap()
        .broadcast_as((1, 3, 64, 96))
        .unwrap()
        .contiguous()
        .unwrap()
}

fn img2img(n: usize, seed: u64, strength: f64, flip: bool) -> Request {
    Request {
        init: Some(InitImage {
            image: init_image(flip),
            strength,
            mask: None,
        }),
        ..req(n, seed)
    }
}

#[test]
fn img2img_runs_the_last_steps_from_the_noised_image() {
    // diffusers' rule: steps − floor(steps·strength) steps are skipped.
    assert_eq!(img2img_first_step(10, 0.6).unwrap(), 4);
    assert_eq!(img2img_first_step(4, 1.0).unwrap(), 0);
    assert_eq!(img2img_first_step(3, 0.01).unwrap(), 2);
    for bad in [0.0, -0.5, 1.5, f64::NAN] {
        let e = img2img_first_step(3, bad).unwrap_err().to_string();
        assert!(e.contains("strength"), "{e}");
    }
    let b = tiny_bundle();
    // Strength 1 starts at t = 1, where the image has no weight: plain generation.
    let plain = generate(&b, &req(2, 10), |_, _| {}).unwrap();
    let full = generate(&b, &img2img(2, 10, 1.0, false), |_, _| {}).unwrap();
    assert_eq!(plain, full);
    // Strength 0.5 of 3 Heun steps runs the last 2: 3 evaluations instead of 5.
    let mut total = 0;
    let half = generate(&b, &img2img(2, 10, 0.5, false), |_, t| total = t).unwrap();
    assert_eq!(total, 3);
    let mut total = 0;
    generate(&b, &req(1, 10), |_, t| total = t).unwrap();
    assert_eq!(total, 5);
    // The image matters, and batching keeps every result.
    let flipped = generate(&b, &img2img(1, 10, 0.5, true), |_, _| {}).unwrap();
    assert!(max_diff(&half[0], &flipped[0]) > 1);
    let both = generate_many(
        &b,
        &[img2img(2, 10, 0.5, false), img2img(1, 10, 0.5, true)],
        |_, _| {},
    )
    .unwrap();
    assert!(max_diff(&both[0][0], &half[0]) <= 1 && max_diff(&both[0][1], &half[1]) <= 1);
    assert!(max_diff(&both[1][0], &flipped[0]) <= 1);
    // Different strengths cannot share a batch; a wrong-size image and a bad strength are
    // refused, naming what is wrong.
    let e = generate_many(
        &b,
        &[img2img(1, 10, 0.5, false), img2img(1, 10, 0.7, false)],
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("strength"), "{e}");
    let wrong = Request {
        width: 64,
        ..img2img(1, 10, 0.5, false)
    };
    let e = generate(&b, &wrong, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("init image has shape [1, 3, 64, 96]"), "{e}");
    let e = generate(&b, &img2img(1, 10, 0.0, false), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("strength 0 is out of range"), "{e}");
}

#[test]
fn a_set_cancel_flag_stops_sampling_within_one_evaluation() {
    use sprout_pipeline::denoise::Hooks;
    use sprout_pipeline::generate::generate_many_with;
    use std::sync::atomic::{AtomicBool, Ordering};
    let b = tiny_bundle();
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let e = generate_many_with(
        &b,
        &[req(1, 3)],
        Hooks {
            cancel: &cancel,
            on_step: &mut |d, _| {
                seen.push(d);
                if d == 2 {
                    cancel.store(true, Ordering::Relaxed);
                }
            },
            previews: 0,
            on_preview: &mut |_, _| {},
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, sprout_pipeline::PipelineError::Cancelled),
        "{e}"
    );
    assert_eq!(seen, vec![1, 2]);
}

#[test]
fn previews_come_between_steps_and_leave_the_result_unchanged() {
    use sprout_pipeline::denoise::{preview_steps, Hooks};
    use sprout_pipeline::generate::generate_many_with;
    assert_eq!(preview_steps(3, 2), vec![0, 1]);
    assert_eq!(preview_steps(20, 3), vec![4, 9, 14]);
    assert_eq!(preview_steps(1, 3), Vec::<usize>::new());
    assert_eq!(preview_steps(2, 3), vec![0]);
    let b = tiny_bundle();
    let plain = generate(&b, &req(2, 3), |_, _| {}).unwrap();
    let mut previews = Vec::new();
    let with = generate_many_with(
        &b,
        &[req(2, 3)],
        Hooks {
            cancel: &std::sync::atomic::AtomicBool::new(false),
            on_step: &mut |_, _| {},
            previews: 2,
            on_preview: &mut |k, imgs| previews.push((k, imgs)),
        },
    )
    .unwrap();
    assert_eq!(with[0], plain);
    assert_eq!(previews.len(), 2);
    for (i, (k, imgs)) in previews.iter().enumerate() {
        assert_eq!(*k, i);
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].dimensions(), (96, 64));
    }
}

/// The negative prompt is the unconditional prompt of classifier-free guidance: empty, it is
/// the plain image; another text, another image; in one batch each request keeps its own
/// (as when run alone). It is refused where guidance is off, and FLUX's true_cfg is refused.
#[test]
fn the_negative_prompt_is_the_unconditional_prompt() {
    let b = tiny_bundle();
    let with = |neg: Option<&str>, seed: u64| Request {
        negative_prompt: neg.map(str::to_string),
        ..req(1, seed)
    };
    let plain = generate(&b, &req(1, 3), |_, _| {}).unwrap();
    let empty = generate(&b, &with(Some(""), 3), |_, _| {}).unwrap();
    assert_eq!(plain[0].as_raw(), empty[0].as_raw());
    let neg = generate(&b, &with(Some("two blue squares"), 3), |_, _| {}).unwrap();
    assert!(max_diff(&neg[0], &plain[0]) > 1);
    let (a, c) = (
        with(Some("two blue squares"), 3),
        with(Some("a green star"), 4),
    );
    let both = generate_many(&b, &[a.clone(), c.clone()], |_, _| {}).unwrap();
    for (batched, r) in both.iter().zip([&a, &c]) {
        let alone = generate(&b, r, |_, _| {}).unwrap();
        assert!(max_diff(&batched[0], &alone[0]) <= 1);
    }
    let e = generate(
        &b,
        &Request {
            guidance: 1.0,
            ..with(Some("x"), 3)
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("negative_prompt has no effect"), "{e}");
    let e = generate(
        &b,
        &Request {
            true_cfg: Some(2.0),
            images: Vec::new(),
            latents: None,
            max_sequence_length: None,
            ..req(1, 3)
        },
        |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("true_cfg_scale applies to the FLUX models"),
        "{e}"
    );
}
