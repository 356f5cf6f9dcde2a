//! `sprout generate --model flux-*` end to end on a diffusers snapshot assembled from the
//! tiny parity fixtures: the image equals diffusers' FluxPipeline output from the same
//! latents, and bad requests get clear errors.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};

mod common;
use common::{pixel_diffs, save_one, sprout, stderr};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sprout-models/tests/fixtures/flux")
        .join(name)
}

/// A diffusers FLUX.1 dev snapshot folder made of the fixture files.
fn snapshot(root: &Path) {
    sprout_pipeline::testing::flux_snapshot(root, "FluxPipeline").unwrap();
}

/// A Black Forest Labs folder: the snapshot's parts without its diffusers transformer, for a
/// transformer file to be put at the root (the tiny autoencoder stays in vae/ with its config,
/// as a full-size ae.safetensors needs none).
fn bfl_folder(root: &Path) {
    snapshot(root);
    std::fs::remove_dir_all(root.join("transformer")).unwrap();
    std::fs::remove_file(root.join("model_index.json")).unwrap();
}

/// `sprout generate "a photo of a red circle" --model flux-dev` with the fixtures' guidance
/// and T5 length, the given weights and output, and `extra` arguments.
fn generate_dev(weights: &Path, out: &Path, extra: &[&str]) -> Output {
    let (w, o) = (weights.to_str().unwrap(), out.to_str().unwrap());
    let mut args = vec![
        "generate",
        "a photo of a red circle",
        "--model",
        "flux-dev",
        "--weights",
        w,
        "--guidance",
        "3.5",
        "--max-sequence-length",
        "16",
        "-o",
        o,
    ];
    args.extend(extra);
    sprout(&args)
}

fn worst(diffs: &[f32]) -> f32 {
    diffs.iter().cloned().fold(0f32, f32::max)
}

#[test]
fn flux_dev_from_a_diffusers_snapshot_matches_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev");
    snapshot(&root);
    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["dev_latents"]);
    let out = dir.path().join("out.png");
    let (w, l, o) = (
        root.to_str().unwrap(),
        latents.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let base = [
        "generate",
        "a photo of a red circle",
        "--weights",
        w,
        "--latents",
        l,
        "--steps",
        "3",
        "--guidance",
        "3.5",
        "--max-sequence-length",
        "16",
        "--size",
        "48x32",
        "-o",
        o,
    ];
    let run = |model: &str, extra: &[&str]| {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--model", model]);
        args.extend(extra);
        sprout(&args)
    };
    let r = run("flux-dev", &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    // The reference image (1, 3, 32, 48) in [0, 1], as 8-bit pixels: equal up to rounding.
    let w = worst(&pixel_diffs(&out, &io["dev_image"]));
    assert!(w <= 1.0, "pixels differ by up to {w}");

    // Bad requests: a variant that does not match the weights, a size FLUX cannot do, no
    // weights, latents of the wrong shape.
    let r = run("flux-schnell", &[]);
    assert!(!r.status.success());
    assert!(stderr(&r).contains("guidance embedding"), "{}", stderr(&r));
    let r = sprout(&["generate", "x", "--model", "flux-dev", "-o", o]);
    assert!(stderr(&r).contains("needs --weights"), "{}", stderr(&r));
    let mut bad_size = base.to_vec();
    bad_size[13] = "50x32";
    bad_size.extend(["--model", "flux-dev"]);
    let r = sprout(&bad_size);
    assert!(stderr(&r).contains("multiples of 4"), "{}", stderr(&r));
    save_one(
        &latents,
        &Tensor::zeros((1, 5, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let r = run("flux-dev", &[]);
    assert!(stderr(&r).contains("packed latents"), "{}", stderr(&r));
    for r in [run("flux-dev", &[]), run("flux-schnell", &[])] {
        assert!(!stderr(&r).contains("panicked"));
    }
    // Editing needs Kontext; other models are refused by name.
    for model in ["default", "flux-dev"] {
        let r = sprout(&["edit", "-i", l, "make it blue", "--model", model, "-o", o]);
        assert!(!r.status.success());
        assert!(
            stderr(&r).contains(&format!("model {model} cannot edit")),
            "{}",
            stderr(&r)
        );
    }
}

/// A Black Forest Labs folder whose transformer is a Q8_0 GGUF file (written from the fixture's
/// BFL-named weights as community conversions are): the quantized path runs end to end and
/// stays near the reference image.
#[test]
fn flux_dev_from_a_gguf_file_stays_near_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev-gguf");
    bfl_folder(&root);
    let w =
        candle_core::safetensors::load(fixture("transformer_dev_bfl.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let q = sprout_models::gguf::parse_quant("q8_0").unwrap();
    let tensors: Vec<_> = names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                sprout_models::gguf::quantize(n, &w[*n], q).unwrap(),
            )
        })
        .collect();
    let gguf = root.join("flux1-dev-Q8_0.gguf");
    // Not a full-size model: the file says which config (as the random-weight writer does).
    let dcfg: sprout_models::flux::convert::DiffusersTransformerConfig = serde_json::from_value(
        sprout_pipeline::testing::flux_fixture_config("transformer_dev_bfl.safetensors").unwrap(),
    )
    .unwrap();
    let cfg = serde_json::to_string(&dcfg.to_dit().unwrap()).unwrap();
    sprout_models::gguf::write(
        &gguf,
        &tensors,
        &[
            ("general.architecture", "flux"),
            (sprout_models::flux::inspect::GGUF_CONFIG_KEY, &cfg),
        ],
    )
    .unwrap();

    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["dev_latents"]);
    let out = dir.path().join("out.png");
    for weights in [&root, &gguf] {
        let l = latents.to_str().unwrap();
        let r = generate_dev(
            weights,
            &out,
            &["--latents", l, "--steps", "3", "--size", "48x32"],
        );
        assert!(r.status.success(), "{}", stderr(&r));
        let diffs = pixel_diffs(&out, &io["dev_image"]);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let w = worst(&diffs);
        eprintln!("Q8_0 GGUF image: mean |difference| {mean:.2} levels, worst {w:.0}");
        // Measured: 0.4 levels on average, 3 at worst.
        assert!(mean <= 2.0 && w <= 12.0, "mean {mean}, worst {w}");
    }
    // A LoRA file that is not there is named before anything loads.
    let r = generate_dev(&gguf, &out, &["--lora", "adapter.safetensors:0.8"]);
    assert!(!r.status.success());
    let e = stderr(&r);
    assert!(
        e.contains("adapter.safetensors") && !e.contains("panicked"),
        "{e}"
    );
}

/// `--init-image` with `--strength` (img2img) reproduces diffusers' FluxImg2ImgPipeline from
/// the same image and noise (`--latents` gives the noise in this mode).
#[test]
fn flux_img2img_from_the_cli_matches_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev");
    snapshot(&root);
    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let input = dir.path().join("in.png");
    save_rgb(&input, &io["img2img_input"]);
    let noise = dir.path().join("noise.safetensors");
    save_one(&noise, &io["img2img_noise"]);
    let out = dir.path().join("out.png");
    let (i, n) = (input.to_str().unwrap(), noise.to_str().unwrap());
    let r = generate_dev(
        &root,
        &out,
        &[
            "--init-image",
            i,
            "--strength",
            "0.6",
            "--latents",
            n,
            "--steps",
            "5",
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let w = worst(&pixel_diffs(&out, &io["img2img_image"]));
    assert!(w <= 1.0, "pixels differ by up to {w}");
    // Bad strengths are refused by name.
    let r = generate_dev(&root, &out, &["--init-image", i, "--strength", "1.5"]);
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("strength 1.5 is out of range"),
        "{}",
        stderr(&r)
    );
}

/// `sprout serve` with a FLUX model refuses a missing or wrong `--weights` before it
/// listens, and `--weights` is refused for Sprout's own models.
#[test]
fn serve_checks_flux_weights_before_listening() {
    for (args, want) in [
        (vec!["serve", "--model", "flux-dev"], "needs --weights PATH"),
        (
            vec![
                "serve",
                "--model",
                "flux-schnell",
                "--weights",
                "/nonexistent/flux1-schnell.safetensors",
            ],
            "/nonexistent/flux1-schnell.safetensors",
        ),
        (
            vec!["serve", "--model", "flux-pro", "--weights", "/tmp"],
            "unknown FLUX model",
        ),
        (
            vec!["serve", "--model", "default", "--weights", "/tmp"],
            "--weights is for the FLUX.1 models",
        ),
    ] {
        let o = sprout(&args);
        assert!(!o.status.success(), "{args:?} started");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

/// Parts kept apart from the transformer, as other tools lay them out (`models/vae/ae.safetensors`
/// with Black Forest Labs names, `models/clip/…`, `models/t5/…`, tokenizers elsewhere), given
/// with --vae, --clip, --t5 and --tokenizers: the same reference image as the snapshot; a
/// missing part names the flag that supplies it, a wrong one names the file.
#[test]
fn flux_dev_from_parts_kept_apart_matches_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let (root, models) = (dir.path().join("flux-dev"), dir.path().join("models"));
    snapshot(&root);
    for (from, to) in [
        ("text_encoder", "clip"),
        ("text_encoder_2", "t5"),
        ("tokenizer", "tokenizers/tokenizer"),
        ("tokenizer_2", "tokenizers/tokenizer_2"),
    ] {
        std::fs::create_dir_all(models.join(to).parent().unwrap()).unwrap();
        std::fs::rename(root.join(from), models.join(to)).unwrap();
    }
    std::fs::rename(
        models.join("clip/model.safetensors"),
        models.join("clip/clip_l.safetensors"),
    )
    .unwrap();
    std::fs::rename(
        models.join("t5/model.safetensors"),
        models.join("t5/t5xxl_fp16.safetensors"),
    )
    .unwrap();
    // The autoencoder as Black Forest Labs ships it (ae.safetensors), beside its config.
    std::fs::create_dir_all(models.join("vae")).unwrap();
    std::fs::copy(
        fixture("vae_bfl.safetensors"),
        models.join("vae/ae.safetensors"),
    )
    .unwrap();
    std::fs::rename(root.join("vae/config.json"), models.join("vae/config.json")).unwrap();
    std::fs::remove_dir_all(root.join("vae")).unwrap();

    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["dev_latents"]);
    let out = dir.path().join("out.png");
    let p = |s: &str| models.join(s).to_str().unwrap().to_string();
    let (vae, clip, t5, tok) = (
        p("vae/ae.safetensors"),
        p("clip/clip_l.safetensors"),
        p("t5/t5xxl_fp16.safetensors"),
        p("tokenizers"),
    );
    let l = latents.to_str().unwrap();
    let common = ["--latents", l, "--steps", "3", "--size", "48x32"];
    let mut all: Vec<&str> = common.to_vec();
    all.extend([
        "--vae",
        &vae,
        "--clip",
        &clip,
        "--t5",
        &t5,
        "--tokenizers",
        &tok,
    ]);
    let r = generate_dev(&root, &out, &all);
    assert!(r.status.success(), "{}", stderr(&r));
    let w = worst(&pixel_diffs(&out, &io["dev_image"]));
    assert!(w <= 1.0, "pixels differ by up to {w}");

    // Without --vae the folder has no autoencoder: the error says which flag gives one.
    let mut no_vae: Vec<&str> = common.to_vec();
    no_vae.extend(["--clip", &clip, "--t5", &t5, "--tokenizers", &tok]);
    let r = generate_dev(&root, &out, &no_vae);
    assert!(!r.status.success());
    let e = stderr(&r);
    assert!(
        e.contains("no autoencoder found") && e.contains("--vae FILE"),
        "{e}"
    );
    // The CLIP file given as T5: its tensors are named as they fail to load.
    let mut swapped: Vec<&str> = common.to_vec();
    swapped.extend([
        "--vae",
        &vae,
        "--clip",
        &clip,
        "--t5",
        &clip,
        "--tokenizers",
        &tok,
    ]);
    let r = generate_dev(&root, &out, &swapped);
    assert!(!r.status.success());
    let e = stderr(&r);
    assert!(
        e.contains("clip_l.safetensors") && !e.contains("panicked"),
        "{e}"
    );
    // The flags belong to FLUX models.
    let r = sprout(&["generate", "x", "--vae", &vae, "-o", out.to_str().unwrap()]);
    assert!(
        stderr(&r).contains("apply to the FLUX models"),
        "{}",
        stderr(&r)
    );
}

/// `sprout quantize`: the snapshot's transformer written as Q8_0 GGUF runs in a Black Forest
/// Labs folder near the reference image; with an adapter merged (as f16) it draws what the
/// snapshot draws with the adapter; the T5 encoder as GGUF serves `--t5`; an existing output,
/// an unknown format and a GGUF input are refused.
#[test]
fn quantize_writes_gguf_files_the_loader_runs() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    snapshot(&snap);
    let bfl = dir.path().join("bfl");
    bfl_folder(&bfl);
    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["dev_latents"]);
    let l = latents.to_str().unwrap();
    let common = ["--latents", l, "--steps", "3", "--size", "48x32"];
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (snap_s, out) = (s(&snap), dir.path().join("out.png"));

    let q8 = bfl.join("flux1-dev-Q8_0.gguf");
    let q8_s = s(&q8);
    let r = sprout(&[
        "quantize",
        "--model",
        "flux-dev",
        "--weights",
        &snap_s,
        "-o",
        &q8_s,
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(stderr(&r).contains("tensors"), "{}", stderr(&r));
    let r = generate_dev(&q8, &out, &common);
    assert!(r.status.success(), "{}", stderr(&r));
    let diffs = pixel_diffs(&out, &io["dev_image"]);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    assert!(mean <= 2.0 && worst(&diffs) <= 12.0, "mean {mean}");

    // An adapter merged before quantizing (f16) against the adapter over the dense snapshot.
    let lora = dir.path().join("lora.safetensors");
    let t = |r: usize, c: usize, s: f32| {
        Tensor::arange(0f32, (r * c) as f32, &Device::Cpu)
            .unwrap()
            .reshape((r, c))
            .unwrap()
            .affine(0.001 * s as f64, -0.05)
            .unwrap()
            .cos()
            .unwrap()
    };
    candle_core::safetensors::save(
        &[
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight".to_string(),
                t(4, 32, 1.0),
            ),
            (
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight".to_string(),
                t(96, 4, 3.0),
            ),
        ]
        .into_iter()
        .collect(),
        &lora,
    )
    .unwrap();
    let lora_s = s(&lora);
    std::fs::remove_file(&q8).unwrap();
    let f16 = bfl.join("flux1-dev-F16.gguf");
    let f16_s = s(&f16);
    let r = sprout(&[
        "quantize",
        "--model",
        "flux-dev",
        "--weights",
        &snap_s,
        "--type",
        "f16",
        "--lora",
        &lora_s,
        "-o",
        &f16_s,
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let dense_out = dir.path().join("dense.png");
    let mut with_lora: Vec<&str> = common.to_vec();
    with_lora.extend(["--lora", &lora_s]);
    let r = generate_dev(&snap, &dense_out, &with_lora);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = generate_dev(&f16, &out, &common);
    assert!(r.status.success(), "{}", stderr(&r));
    let (a, b) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(&dense_out).unwrap().to_rgb8(),
    );
    let d = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap();
    eprintln!("merged-then-f16 vs adapter over dense weights: worst {d} levels");
    assert!(d <= 2, "{d}");
    let plain = pixel_diffs(&out, &io["dev_image"]);
    assert!(worst(&plain) > 2.0, "the adapter changed nothing");

    // The T5 encoder as GGUF, given with --t5.
    let t5 = dir.path().join("t5-Q8_0.gguf");
    let t5_s = s(&t5);
    let r = sprout(&[
        "quantize",
        "--model",
        "t5",
        "--weights",
        &s(&snap.join("text_encoder_2")),
        "-o",
        &t5_s,
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let mut with_t5: Vec<&str> = common.to_vec();
    with_t5.extend(["--t5", &t5_s]);
    let r = generate_dev(&snap, &out, &with_t5);
    assert!(r.status.success(), "{}", stderr(&r));
    let diffs = pixel_diffs(&out, &io["dev_image"]);
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    eprintln!("Q8_0 T5: mean |difference| {mean:.2} levels");
    assert!(mean <= 2.0, "mean {mean}");

    // Refusals: an existing output, an unknown format, a GGUF input.
    for (args, want) in [
        (vec!["--weights", &snap_s, "-o", &t5_s], "exists"),
        (
            vec!["--weights", &snap_s, "--type", "q3_x", "-o", "x.gguf"],
            "unknown quantization",
        ),
        (
            vec!["--weights", &f16_s, "-o", "y.gguf"],
            "already a GGUF file",
        ),
    ] {
        let mut a = vec!["quantize", "--model", "flux-dev"];
        a.extend(args);
        let r = sprout(&a);
        assert!(!r.status.success());
        assert!(stderr(&r).contains(want), "{want}: {}", stderr(&r));
    }
}

/// An 8-bit (H, W, 3) fixture image as a PNG.
fn save_rgb(path: &Path, pixels: &Tensor) {
    let (h, w, _) = pixels.dims3().unwrap();
    let v: Vec<u8> = pixels
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| *v as u8)
        .collect();
    image::RgbImage::from_raw(w as u32, h as u32, v)
        .unwrap()
        .save(path)
        .unwrap();
}

/// FLUX.1 Fill and Canny from the CLI on snapshots of the tiny fixtures: Fill with
/// `--init-image` and `--mask` draws diffusers' FluxFillPipeline image inside the mask and
/// keeps the input outside it; Canny with `--control-image` draws FluxControlPipeline's image;
/// a missing mask or control image, or weights of another kind, are refused by name.
#[test]
fn flux_fill_and_canny_from_the_cli_match_the_reference_images() {
    let dir = tempfile::tempdir().unwrap();
    let io = candle_core::safetensors::load(fixture("conditioned_io.safetensors"), &Device::Cpu)
        .unwrap();
    let (fill, canny) = (dir.path().join("fill"), dir.path().join("canny"));
    sprout_pipeline::testing::flux_snapshot_with(
        &fill,
        "FluxFillPipeline",
        "transformer_fill_diffusers.safetensors",
    )
    .unwrap();
    sprout_pipeline::testing::flux_snapshot_with(
        &canny,
        "FluxControlPipeline",
        "transformer_control_diffusers.safetensors",
    )
    .unwrap();
    let (input, mask, control) = (
        dir.path().join("in.png"),
        dir.path().join("mask.png"),
        dir.path().join("edges.png"),
    );
    save_rgb(&input, &io["fill_input"]);
    save_rgb(&control, &io["control_input"]);
    let m = (&io["fill_mask"] * 255.0).unwrap().unsqueeze(2).unwrap();
    save_rgb(&mask, &Tensor::cat(&[&m, &m, &m], 2).unwrap());
    let (noise, latents) = (
        dir.path().join("noise.safetensors"),
        dir.path().join("latents.safetensors"),
    );
    save_one(&noise, &io["fill_noise"]);
    save_one(&latents, &io["control_latents"]);
    let out = dir.path().join("out.png");
    let run = |model: &str, weights: &Path, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "a photo of a red circle",
            "--model",
            model,
            "--weights",
            weights.to_str().unwrap(),
            "--steps",
            "3",
            "--max-sequence-length",
            "16",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        sprout(&args)
    };
    let (i, k, c) = (
        input.to_str().unwrap(),
        mask.to_str().unwrap(),
        control.to_str().unwrap(),
    );
    let r = run(
        "flux-fill",
        &fill,
        &[
            "--init-image",
            i,
            "--mask",
            k,
            "--latents",
            noise.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let diffs = pixel_diffs(&out, &io["fill_image"]);
    let kept = pixel_diffs(
        &out,
        &((&io["fill_input"] / 255.0)
            .unwrap()
            .permute((2, 0, 1))
            .unwrap()
            .unsqueeze(0)
            .unwrap()),
    );
    let masked: Vec<bool> = io["fill_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|m| [*m > 0.5; 3])
        .collect();
    let inside = diffs
        .iter()
        .zip(&masked)
        .filter(|(_, m)| **m)
        .map(|(d, _)| *d);
    let outside = kept
        .iter()
        .zip(&masked)
        .filter(|(_, m)| !**m)
        .map(|(d, _)| *d);
    let (inside, outside): (Vec<f32>, Vec<f32>) = (inside.collect(), outside.collect());
    assert!(
        worst(&inside) <= 1.0,
        "fill: inside the mask up to {}",
        worst(&inside)
    );
    assert_eq!(
        worst(&outside),
        0.0,
        "fill: the input changed outside the mask"
    );
    // Quantized to GGUF (f16), which holds no diffusers config: the header's input channels
    // make it Fill again, and it draws near the same image.
    let bfl = dir.path().join("bfl");
    bfl_folder(&bfl);
    let gguf = bfl.join("flux1-fill-dev-F16.gguf");
    let r = sprout(&[
        "quantize",
        "--model",
        "flux-fill",
        "--weights",
        fill.to_str().unwrap(),
        "--type",
        "f16",
        "-o",
        gguf.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let dense = image::open(&out).unwrap().to_rgb8();
    let r = run(
        "flux-fill",
        &gguf,
        &[
            "--init-image",
            i,
            "--mask",
            k,
            "--latents",
            noise.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let q = image::open(&out).unwrap().to_rgb8();
    let far = q
        .as_raw()
        .iter()
        .zip(dense.as_raw())
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(far <= 3, "f16 GGUF Fill differs by up to {far} levels");
    let r = run("flux-dev", &gguf, &[]);
    assert!(stderr(&r).contains("FLUX.1 Fill weights"), "{}", stderr(&r));
    let r = run(
        "flux-canny",
        &canny,
        &[
            "--control-image",
            c,
            "--guidance",
            "10",
            "--latents",
            latents.to_str().unwrap(),
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let w = worst(&pixel_diffs(&out, &io["control_image"]));
    assert!(w <= 1.0, "canny: pixels differ by up to {w}");
    // --canny makes the edge map from a picture first: from the same latents, the picture
    // and its edge map as controls draw different images.
    let l = latents.to_str().unwrap();
    let with = |extra: &[&str]| {
        let mut args = vec!["--control-image", i, "--latents", l];
        args.extend(extra);
        let r = run("flux-canny", &canny, &args);
        assert!(r.status.success(), "{}", stderr(&r));
        image::open(&out).unwrap().to_rgb8()
    };
    assert_ne!(with(&[]), with(&["--canny"]));
    // Refusals, each naming what is wrong.
    for (model, weights, extra, says) in [
        (
            "flux-fill",
            &fill,
            vec!["--init-image", i],
            "give --init-image and --mask",
        ),
        ("flux-canny", &canny, vec![], "--control-image"),
        ("flux-dev", &fill, vec![], "FLUX.1 Fill weights"),
        (
            "flux-depth",
            &fill,
            vec!["--control-image", c],
            "FLUX.1 Fill weights",
        ),
        (
            "flux-fill",
            &canny,
            vec!["--init-image", i, "--mask", k],
            "Canny or Depth",
        ),
        (
            "flux-dev",
            &canny,
            vec!["--control-image", c],
            "--control-image is for",
        ),
        (
            "flux-depth",
            &canny,
            vec!["--control-image", c, "--canny"],
            "--canny makes",
        ),
    ] {
        let r = run(model, weights, &extra);
        assert!(!r.status.success(), "{model}: {extra:?}");
        assert!(
            stderr(&r).contains(says),
            "{model} {extra:?}: {}",
            stderr(&r)
        );
    }
}

/// `--true-cfg 2 --negative-prompt …` draws diffusers' image with `true_cfg_scale=2` and the
/// same negative prompt (within 1 level); a scale below 1, or a negative prompt it would
/// ignore, is refused.
#[test]
fn true_cfg_from_the_cli_matches_the_reference_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev");
    snapshot(&root);
    let io =
        candle_core::safetensors::load(fixture("pipeline_io.safetensors"), &Device::Cpu).unwrap();
    let want =
        candle_core::safetensors::load(fixture("true_cfg_io.safetensors"), &Device::Cpu).unwrap();
    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["dev_latents"]);
    let out = dir.path().join("out.png");
    let l = latents.to_str().unwrap();
    let r = generate_dev(
        &root,
        &out,
        &[
            "--latents",
            l,
            "--steps",
            "3",
            "--size",
            "48x32",
            "--true-cfg",
            "2",
            "--negative-prompt",
            "a blue square",
        ],
    );
    assert!(r.status.success(), "{}", stderr(&r));
    let w = worst(&pixel_diffs(&out, &want["dev_image"]));
    assert!(w <= 1.0, "pixels differ by up to {w}");
    for (extra, says) in [
        (vec!["--true-cfg", "0.5"], "--true-cfg 0.5 is out of range"),
        (
            vec!["--true-cfg", "1", "--negative-prompt", "x"],
            "has no effect",
        ),
    ] {
        let r = generate_dev(&root, &out, &extra);
        assert!(!r.status.success());
        assert!(stderr(&r).contains(says), "{}", stderr(&r));
    }
}
