//! `sprout generate` end to end with a tiny model bundle written to disk.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

mod common;
use common::{sprout, stderr};

fn write_tiny_bundle(dir: &Path) {
    sprout_pipeline::testing::tiny_bundle(&["a", "red", "circle"], 1)
        .unwrap()
        .write_dir(dir)
        .unwrap();
}

#[test]
fn generate_writes_pngs_with_their_parameters() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let m = model.path().to_str().unwrap();
    let o = sprout(&[
        "generate",
        "a red circle",
        "--model",
        m,
        "-n",
        "2",
        "--seed",
        "5",
        "--aspect",
        "16:9",
        "-o",
        png.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (i, name) in ["x_0.png", "x_1.png"].iter().enumerate() {
        let file = std::fs::File::open(out.path().join(name)).unwrap();
        let reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        let info = reader.info();
        assert_eq!((info.width, info.height), (352, 192));
        let text: HashMap<String, String> = info
            .utf8_text
            .iter()
            .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
            .collect();
        assert_eq!(text["prompt"], "a red circle");
        assert_eq!(text["seed"], (5 + i).to_string());
        assert_eq!(text["steps"], "2");
        assert_eq!(text["guidance"], "2");
        assert_eq!(text["size"], "352x192");
        assert!(text["model"].contains("tiny"));
    }
    // Image 1 of seed 5 is image 0 of seed 6.
    let single = out.path().join("y.png");
    let o = sprout(&[
        "generate",
        "a red circle",
        "--model",
        m,
        "--seed",
        "6",
        "--aspect",
        "16:9",
        "-o",
        single.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = image::open(out.path().join("x_1.png")).unwrap().to_rgb8();
    let b = image::open(&single).unwrap().to_rgb8();
    assert!(a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .all(|(p, q)| p.abs_diff(*q) <= 1));
    // A negative prompt (guidance's unconditional prompt) changes the image and is recorded;
    // FLUX's --true-cfg is refused for Sprout's models.
    let neg = out.path().join("n.png");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            m,
            "--seed",
            "6",
            "--aspect",
            "16:9",
            "-o",
            neg.to_str().unwrap(),
        ];
        args.extend(extra);
        sprout(&args)
    };
    let o = run(&["--negative-prompt", "blue squares"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c = image::open(&neg).unwrap().to_rgb8();
    assert!(c
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .any(|(p, q)| p.abs_diff(*q) > 1));
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&neg).unwrap()))
        .read_info()
        .unwrap();
    let text: HashMap<String, String> = reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    assert_eq!(text["negative_prompt"], "blue squares");
    let o = run(&["--true-cfg", "2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--true-cfg apply to the FLUX models"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn generate_rejects_bad_input_clearly() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let m = model.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let p = png.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "", "--model", m, "-o", p],
            "prompt is empty",
        ),
        (
            vec![
                "generate", "a circle", "--model", m, "--size", "100x96", "-o", p,
            ],
            "width 100 is not a positive multiple of 32",
        ),
        (
            vec![
                "generate",
                "a circle",
                "--model",
                m,
                "--size",
                "1024x1024",
                "-o",
                p,
            ],
            "exceeds this model's maximum of 512",
        ),
        (
            vec!["generate", "a circle", "--model", "no-such-model", "-o", p],
            "unknown model \"no-such-model\"",
        ),
        (
            vec![
                "generate",
                "a circle",
                "--model",
                m,
                "--sampler",
                "ddim",
                "-o",
                p,
            ],
            "unknown sampler",
        ),
    ];
    for (args, want) in cases {
        let o = sprout(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
    }
    assert!(!png.exists());
    // Missing and corrupted weight files name the file.
    std::fs::write(model.path().join("dit.safetensors"), b"not safetensors").unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(
        stderr(&o).contains("dit.safetensors") && stderr(&o).contains("not a readable safetensors"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(model.path().join("dit.safetensors")).unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(stderr(&o).contains("missing weight file"), "{}", stderr(&o));
    // A tensor of the wrong shape is named.
    write_tiny_bundle(model.path());
    let mut t =
        candle_core::safetensors::load(model.path().join("dit.safetensors"), &Device::Cpu).unwrap();
    t.insert(
        "img_in.weight".into(),
        Tensor::zeros((3, 3), DType::BF16, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&t, model.path().join("dit.safetensors")).unwrap();
    let o = sprout(&["generate", "a circle", "--model", m, "-o", p]);
    assert!(stderr(&o).contains("img_in.weight"), "{}", stderr(&o));
}

#[test]
fn native_img2img_keeps_the_image_size_and_records_its_input() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let m = model.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    // A 100x70 input: the canvas is its size rounded down to multiples of 32.
    let input = out.path().join("in.png");
    image::RgbImage::from_fn(100, 70, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 3) as u8, 90])
    })
    .save(&input)
    .unwrap();
    let png = out.path().join("x.png");
    let args = |strength: &'static str| {
        vec![
            "generate".to_string(),
            "a red circle".into(),
            "--model".into(),
            m.into(),
            "--init-image".into(),
            input.to_str().unwrap().into(),
            "--strength".into(),
            strength.into(),
            "-o".into(),
            png.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| sprout(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(args("0.5"));
    assert!(o.status.success(), "{}", stderr(&o));
    let reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()))
        .read_info()
        .unwrap();
    let info = reader.info();
    assert_eq!((info.width, info.height), (96, 64));
    let text: HashMap<String, String> = info
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    assert_eq!(text["strength"], "0.5");
    assert!(text["init_image"].ends_with("in.png"));
    std::fs::remove_file(&png).unwrap();
    let o = run(args("1.5"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--strength 1.5 is out of range"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&input, b"not an image").unwrap();
    let o = run(args("0.5"));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a readable image"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked") && !png.exists());
}

/// `--mask` (inpainting): a black-and-white mask without alpha redraws its white area; the
/// rest of the output is the input's own pixels; a mask that marks nothing is refused.
#[test]
fn inpainting_keeps_the_unmasked_pixels() {
    let model = tempfile::tempdir().unwrap();
    write_tiny_bundle(model.path());
    let m = model.path().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    let base = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, 90])
    });
    base.save(&input).unwrap();
    let mask = dir.path().join("mask.png");
    let white_left = |x: u32| if x < 32 { 255u8 } else { 0 };
    image::GrayImage::from_fn(64, 64, |x, _| image::Luma([white_left(x)]))
        .save(&mask)
        .unwrap();
    let png = dir.path().join("x.png");
    let run = |mask: &std::path::Path| {
        sprout(&[
            "generate",
            "a red circle",
            "--model",
            m,
            "--init-image",
            input.to_str().unwrap(),
            "--mask",
            mask.to_str().unwrap(),
            "--steps",
            "2",
            "-o",
            png.to_str().unwrap(),
        ])
    };
    let o = run(&mask);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = image::open(&png).unwrap().to_rgb8();
    assert_eq!(out.dimensions(), (64, 64));
    let (kept_same, drawn_same) = sprout_pipeline::testing::halves_equal(&out, &base, 32);
    assert!(kept_same && !drawn_same);
    let black = dir.path().join("black.png");
    image::GrayImage::new(64, 64).save(&black).unwrap();
    let o = run(&black);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("marks nothing to redraw"),
        "{}",
        stderr(&o)
    );
}

/// A FLUX request that cannot run is refused before its weights load: the weights path here
/// does not exist, so only a check that runs first can name the bad field.
#[test]
fn flux_requests_are_checked_before_the_weights_load() {
    let out = tempfile::tempdir().unwrap();
    let png = out.path().join("x.png");
    let missing = out.path().join("no-such-weights");
    let (p, w) = (png.to_str().unwrap(), missing.to_str().unwrap());
    for (extra, says) in [
        (vec!["--steps", "0"], "--steps 0 is out of range"),
        (vec!["-n", "17"], "-n 17 is out of range"),
        (vec!["--sampler", "heun"], "--sampler"),
        (vec!["--true-cfg", "0.5"], "--true-cfg 0.5 is out of range"),
        (vec!["--negative-prompt", "x"], "needs --true-cfg above 1"),
        (
            vec!["--max-sequence-length", "600"],
            "--max-sequence-length 600 is out of range",
        ),
    ] {
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            "flux-dev",
            "--weights",
            w,
            "-o",
            p,
        ];
        args.extend(extra);
        let o = sprout(&args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(says), "{says}: {e}");
        assert!(
            !e.contains("no-such-weights") && !e.contains("panicked"),
            "{e}"
        );
    }
}
