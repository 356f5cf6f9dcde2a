//! `sprout generate|edit --model flux2-klein|flux2-dev` end to end on the tiny FLUX.2
//! snapshots of the parity fixtures: the images equal diffusers' Flux2KleinPipeline and
//! Flux2Pipeline output from the same latents within one 8-bit level, and bad requests get
//! clear errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};

mod common;
use common::{pixel_diffs, save_one, sprout, stderr};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sprout-models/tests/fixtures/flux2")
}

fn snapshot() -> String {
    fixtures().join("snapshot").to_str().unwrap().to_string()
}

/// The largest difference in 8-bit levels between a written PNG and a reference image
/// (1, 3, H, W) in [0, 1].
fn worst_level(png: &Path, reference: &Tensor) -> f32 {
    pixel_diffs(png, reference).into_iter().fold(0.0, f32::max)
}

/// A reference image of the fixtures (H, W, 3) as a PNG.
fn write_reference(path: &Path, t: &Tensor) {
    let (h, w, _) = t.dims3().unwrap();
    let px: Vec<u8> = t
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as u8)
        .collect();
    image::RgbImage::from_raw(w as u32, h as u32, px)
        .unwrap()
        .save(path)
        .unwrap();
}

/// `sprout quantize --model MODEL --weights WEIGHTS --type KIND -o OUT`.
fn quantize(model: &str, weights: &str, kind: &str, out: &str) -> Output {
    sprout(&[
        "quantize",
        "--model",
        model,
        "--weights",
        weights,
        "--type",
        kind,
        "-o",
        out,
    ])
}

/// The fixtures' tiny encoder: 40 tokens per prompt, states of layers 2, 4 and 6.
const TINY: [&str; 6] = [
    "--text-layers",
    "2,4,6",
    "--max-sequence-length",
    "40",
    "--size",
    "48x32",
];

/// `sprout generate` of the fixtures' distilled text-to-image case (2 steps from the
/// `latents` file) from `weights` with `extra` arguments, written to `out`.
fn generate_distilled(weights: &Path, latents: &Path, extra: &[&str], out: &Path) -> Output {
    let mut args = vec![
        "generate",
        "a photo of a red circle",
        "--model",
        "flux2-klein",
        "--weights",
        weights.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "--steps",
        "2",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    args.extend(extra);
    sprout(&args)
}

/// [`generate_distilled`] on the fixture snapshot, written to `dir/NAME.png`; the worst
/// difference from diffusers' image in 8-bit levels.
fn distilled_t2i(dir: &Path, io: &HashMap<String, Tensor>, extra: &[&str], name: &str) -> f32 {
    let latents = dir.join("latents.safetensors");
    save_one(&latents, &io["distilled_latents"]);
    let out = dir.join(format!("{name}.png"));
    let r = generate_distilled(&fixtures().join("snapshot"), &latents, extra, &out);
    assert!(r.status.success(), "{}", stderr(&r));
    worst_level(&out, &io["distilled_image"])
}

#[test]
fn generate_and_a_two_reference_edit_match_the_reference_images() {
    let dir = tempfile::tempdir().unwrap();
    let io =
        candle_core::safetensors::load(fixtures().join("pipeline_io.safetensors"), &Device::Cpu)
            .unwrap();
    let snap = snapshot();
    // Text to image, 2 steps, distilled (no guidance).
    let d = distilled_t2i(dir.path(), &io, &[], "t2i");
    eprintln!("text to image: worst {d} levels");
    assert!(d <= 1.0, "text to image differs by {d} levels");
    let latents = dir.path().join("latents.safetensors");

    // An edit with the two references of the fixture.
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    write_reference(&a, &io["edit_ref0"]);
    write_reference(&b, &io["edit_ref1"]);
    save_one(&latents, &io["edit_latents"]);
    let out = dir.path().join("edit.png");
    let mut args = vec![
        "edit",
        "-i",
        a.to_str().unwrap(),
        "-i",
        b.to_str().unwrap(),
        "make the circle blue and the star red, please",
        "--model",
        "flux2-klein",
        "--weights",
        &snap,
        "--latents",
        latents.to_str().unwrap(),
        "--steps",
        "2",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    let r = sprout(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    let d = worst_level(&out, &io["edit_image"]);
    eprintln!("edit with two references: worst {d} levels");
    assert!(d <= 1.0, "the edit differs by {d} levels");
}

/// `sprout ARGS…` on the [dev] fixture snapshot: its tiny encoder's layers and 96-token
/// prompts, at 48×32.
fn dev_run(args: &[&str]) -> Output {
    let dev = fixtures().join("dev_snapshot");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--model",
        "flux2-dev",
        "--weights",
        dev.to_str().unwrap(),
        "--text-layers",
        "2,4,6",
        "--max-sequence-length",
        "96",
        "--size",
        "48x32",
    ]);
    sprout(&all)
}

/// The [dev] fixture's text-to-image case (3 steps at guidance 4 from its latents) with
/// `extra` arguments, written to `dir/NAME.png`; the worst difference from diffusers' image
/// in 8-bit levels.
fn dev_t2i(dir: &Path, io: &HashMap<String, Tensor>, extra: &[&str], name: &str) -> f32 {
    let latents = dir.join("latents.safetensors");
    save_one(&latents, &io["t2i_latents"]);
    let out = dir.join(format!("{name}.png"));
    let mut args = vec![
        "generate",
        "a photo of a red circle",
        "--latents",
        latents.to_str().unwrap(),
        "--steps",
        "3",
        "--guidance",
        "4",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let r = dev_run(&args);
    assert!(r.status.success(), "{}", stderr(&r));
    worst_level(&out, &io["t2i_image"])
}

fn dev_io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("dev_pipeline_io.safetensors"), &Device::Cpu)
        .unwrap()
}

#[test]
fn flux2_dev_generates_and_edits_as_diffusers_and_refuses_what_it_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let io = dev_io();
    let d = dev_t2i(dir.path(), &io, &[], "t2i");
    eprintln!("dev text to image: worst {d} levels");
    assert!(d <= 1.0, "dev text to image differs by {d} levels");
    let latents = dir.path().join("latents.safetensors");
    let l = latents.to_str().unwrap();

    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    write_reference(&a, &io["edit_ref0"]);
    write_reference(&b, &io["edit_ref1"]);
    save_one(&latents, &io["edit_latents"]);
    let out = dir.path().join("edit.png");
    let o = out.to_str().unwrap();
    let (ra, rb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = dev_run(&[
        "edit",
        "-i",
        ra,
        "-i",
        rb,
        "make the circle blue and put the star from the second image on it",
        "--latents",
        l,
        "--steps",
        "2",
        "--guidance",
        "2.5",
        "-o",
        o,
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let d = worst_level(&out, &io["edit_image"]);
    eprintln!("dev edit with two references: worst {d} levels");
    assert!(d <= 1.0, "the dev edit differs by {d} levels");

    let refuse = |r: Output, needle: &str| {
        assert!(!r.status.success(), "accepted; wanted {needle}");
        let e = stderr(&r);
        assert!(e.contains(needle), "wanted {needle:?} in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    // Eleven references (dev takes ten); a negative prompt, which [dev] has no use for.
    let mut eleven = vec!["edit"];
    for _ in 0..11 {
        eleven.extend(["-i", ra]);
    }
    eleven.extend(["make it blue", "--steps", "1", "-o", o]);
    refuse(dev_run(&eleven), "takes 0..=10");
    refuse(
        dev_run(&[
            "generate",
            "x",
            "--negative-prompt",
            "blurry",
            "--steps",
            "1",
            "-o",
            o,
        ]),
        "--negative-prompt",
    );
}

#[test]
fn flux2_dev_runs_from_gguf_parts_written_by_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let io = dev_io();
    let dev = fixtures().join("dev_snapshot");
    let te = dev.join("text_encoder");
    // Mistral as llama.cpp's `llama` layout (`--model mistral`), the transformer as
    // `--model flux2-dev`; worst levels measured for q8_0: text encoder 1, transformer 3
    // (bounds as for klein's q8_0 parts).
    let parts = [
        ("mistral", te.to_str().unwrap(), "--text-encoder", 4.0),
        ("flux2-dev", dev.to_str().unwrap(), "--transformer", 12.0),
    ];
    for (model, weights, flag, bound) in parts {
        let gguf = dir.path().join(format!("{model}.gguf"));
        let g = gguf.to_str().unwrap();
        let r = quantize(model, weights, "q8_0", g);
        assert!(r.status.success(), "{}", stderr(&r));
        let d = dev_t2i(dir.path(), &io, &[flag, g], model);
        eprintln!("dev {flag} from a q8_0 GGUF: worst {d} levels");
        assert!(d <= bound, "{flag}: {d} levels");
    }
    // The other text encoder's name is refused, naming the right one.
    let wrong = dir.path().join("wrong.gguf");
    let r = quantize(
        "qwen3",
        te.to_str().unwrap(),
        "q8_0",
        wrong.to_str().unwrap(),
    );
    assert!(
        !r.status.success() && stderr(&r).contains("--model mistral"),
        "{}",
        stderr(&r)
    );
    // [dev]'s own layers (10, 20, 30) on the 6-layer test encoder: refused naming the layer.
    let r = sprout(&[
        "generate",
        "x",
        "--model",
        "flux2-dev",
        "--weights",
        dev.to_str().unwrap(),
        "-o",
        dir.path().join("x.png").to_str().unwrap(),
    ]);
    assert!(
        !r.status.success() && stderr(&r).contains("after layer 10"),
        "{}",
        stderr(&r)
    );
}

#[test]
fn bad_flux2_requests_are_refused_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot();
    let out = dir.path().join("x.png");
    let o = out.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "a red circle",
            "--model",
            "flux2-klein",
            "-o",
            o,
        ];
        args.extend(extra);
        sprout(&args)
    };
    let refuse = |r: Output, needle: &str| {
        assert!(
            !r.status.success(),
            "accepted; wanted a refusal naming {needle}"
        );
        let e = stderr(&r);
        assert!(e.contains(needle), "wanted {needle:?} in: {e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    refuse(run(&[]), "--weights");
    // klein's own layers on the 6-layer test encoder; a width the transformer cannot take.
    refuse(
        run(&["--weights", &snap, "--steps", "1", "--size", "32x32"]),
        "6 layers",
    );
    refuse(
        run(&[
            "--weights",
            &snap,
            "--text-layers",
            "2,4",
            "--size",
            "32x32",
        ]),
        "tapped states",
    );
    // Guidance and negative prompts do not apply to a step-distilled model.
    let mut guided = vec!["--weights", snap.as_str(), "--guidance", "4"];
    guided.extend(TINY);
    refuse(run(&guided), "--guidance");
    let mut long = vec![
        "--weights",
        snap.as_str(),
        "--text-layers",
        "2,4,6",
        "--max-sequence-length",
        "513",
    ];
    long.extend(["--size", "48x32"]);
    refuse(run(&long), "--max-sequence-length");
    // A FLUX.1 snapshot, FLUX.2 [dev], FLUX.1-only flags.
    let flux1 = dir.path().join("flux1");
    sprout_pipeline::testing::flux_snapshot(&flux1, "FluxPipeline").unwrap();
    refuse(run(&["--weights", flux1.to_str().unwrap()]), "FluxPipeline");
    let r = sprout(&[
        "generate",
        "x",
        "--model",
        "flux2-dev",
        "--weights",
        &snap,
        "-o",
        o,
    ]);
    refuse(r, "run it with --model flux2-klein");
    let dev = fixtures().join("dev_snapshot");
    refuse(
        run(&["--weights", dev.to_str().unwrap()]),
        "run it with --model flux2-dev",
    );
    refuse(run(&["--weights", &snap, "--true-cfg", "2"]), "--true-cfg");

    // Edits: five references (klein takes four), a reference that is not an image, one
    // smaller than 64 pixels.
    let img = dir.path().join("ref.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([200, 30, 30]))
        .save(&img)
        .unwrap();
    let small = dir.path().join("small.png");
    image::RgbImage::new(40, 80).save(&small).unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let edit = |images: &[&Path]| {
        let mut args: Vec<String> = vec!["edit".into()];
        for p in images {
            args.extend(["-i".into(), p.to_str().unwrap().into()]);
        }
        args.extend(
            [
                "make it blue",
                "--model",
                "flux2-klein",
                "--weights",
                &snap,
                "-o",
                o,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(TINY.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        sprout(&refs)
    };
    refuse(edit(&[img.as_path(); 5]), "--image");
    refuse(edit(&[&img, &text]), "notes.png");
    refuse(edit(&[&img, &small]), "at least 64");
}

#[test]
fn gguf_parts_written_by_quantize_replace_the_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let io =
        candle_core::safetensors::load(fixtures().join("pipeline_io.safetensors"), &Device::Cpu)
            .unwrap();
    let snap = snapshot();
    let te = fixtures().join("snapshot/text_encoder");
    // The text encoder (`--model qwen3`, given as --text-encoder) and the transformer
    // (`--model flux2-klein` of the snapshot, given as --transformer), f16 and q8_0; worst
    // levels measured: text encoder 0 / 1, transformer 1 / 4 (q8_0 rounds the weights and
    // runs attention in bf16, as FLUX.1's Q8_0 file, which is within 3 levels of its image).
    let parts = [
        ("qwen3", te.to_str().unwrap(), "--text-encoder", [1.0, 4.0]),
        ("flux2-klein", snap.as_str(), "--transformer", [2.0, 12.0]),
    ];
    for (model, weights, flag, bounds) in parts {
        for (kind, bound) in ["f16", "q8_0"].into_iter().zip(bounds) {
            let gguf = dir.path().join(format!("{model}-{kind}.gguf"));
            let g = gguf.to_str().unwrap();
            let r = quantize(model, weights, kind, g);
            assert!(r.status.success(), "{}", stderr(&r));
            let d = distilled_t2i(dir.path(), &io, &[flag, g], &format!("{model}-{kind}"));
            eprintln!("{flag} from a {kind} GGUF: worst {d} levels");
            assert!(d <= bound, "{flag} {kind}: {d} levels");
        }
    }
    // Parts that are not GGUF files (the snapshot's own safetensors), and a FLUX.2 part
    // given to a model that is not FLUX.2: refused, naming the flag.
    let o = dir.path().join("x.png");
    let refused = |model: &str, flag: &str, part: &Path, needle: &str| {
        let r = sprout(&[
            "generate",
            "x",
            "--model",
            model,
            "--weights",
            &snap,
            flag,
            part.to_str().unwrap(),
            "-o",
            o.to_str().unwrap(),
        ]);
        let e = stderr(&r);
        assert!(
            !r.status.success() && e.contains(flag) && e.contains(needle),
            "{e}"
        );
    };
    let not_weights = "expected a .safetensors or .gguf file";
    refused(
        "flux2-klein",
        "--text-encoder",
        &te.join("config.json"),
        not_weights,
    );
    refused(
        "flux2-klein",
        "--transformer",
        &fixtures().join("snapshot/transformer"),
        not_weights,
    );
    let gguf = dir.path().join("flux2-klein-q8_0.gguf");
    refused(
        "flux-dev",
        "--transformer",
        &gguf,
        "apply to the FLUX.2 models",
    );
}

/// `sprout bench --model flux2-klein --weights SNAPSHOT`: load, text encoding, one DiT step
/// per canvas and a whole image through the generation entry point, as rows and in the
/// last-line JSON with the run's peak memory; FLUX.2's flags are refused for other models.
#[test]
fn bench_times_flux2_rows_on_the_fixture_snapshot() {
    let snap = snapshot();
    let o = sprout(&[
        "bench",
        "--repeat",
        "1",
        "--model",
        "flux2-klein",
        "--weights",
        &snap,
        "--text-layers",
        "2,4,6",
        "--flux-size",
        "64x64,32x48",
        "--e2e-steps",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last}"));
    for key in [
        "flux2-klein_load",
        "flux2-klein_text_encoding",
        "flux2-klein_dit_step_64x64",
        "flux2-klein_dit_step_32x48",
        "flux2-klein_generate_64x64_e2e",
    ] {
        let s = v[key]["seconds"].as_f64();
        assert!(s.is_some_and(|s| s > 0.0), "{key}: {v}");
    }
    // The fixture's autoencoder halves each side once and packs 2×2 cells to a token: a
    // 64² canvas is 16² = 256 tokens, and tokens/s is 256 over the step's seconds.
    let step = &v["flux2-klein_dit_step_64x64"];
    let rate = step["tokens_per_s"].as_f64().unwrap();
    assert!(
        (rate * step["seconds"].as_f64().unwrap() - 256.0).abs() < 1e-6,
        "{step}"
    );
    assert!(step["mfu"].as_f64().is_some_and(|m| m > 0.0), "{step}");
    assert!(v["peak_rss_bytes"].as_u64().is_some_and(|b| b > 0));

    // [dev]'s rows: its transformer's step takes the guidance scale.
    let dev = fixtures().join("dev_snapshot");
    let o = sprout(&[
        "bench",
        "--repeat",
        "1",
        "--model",
        "flux2-dev",
        "--weights",
        dev.to_str().unwrap(),
        "--text-layers",
        "2,4,6",
        "--flux-size",
        "32x48",
        "--e2e-steps",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in ["flux2-dev_dit_step_32x48", "flux2-dev_generate_32x48_e2e"] {
        assert!(
            v[key]["seconds"].as_f64().is_some_and(|s| s > 0.0),
            "{key}: {v}"
        );
    }

    for (args, want) in [
        (
            vec!["--model", "flux2-klein", "--flux-size", "64x64"],
            "needs --weights",
        ),
        (
            vec![
                "--model",
                "flux2-klein",
                "--weights",
                &snap,
                "--text-layers",
                "2,4,6",
                "--flux-size",
                "62x64",
            ],
            "62x64: this model needs sides that are multiples of 4",
        ),
        (vec!["--text-layers", "2,4"], "apply to the FLUX.2 models"),
        (vec!["--e2e-steps", "2"], "--e2e-steps applies"),
    ] {
        let mut all = vec!["bench", "--repeat", "1"];
        all.extend(args);
        let o = sprout(&all);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(want) && !e.contains("panicked"), "{all:?}: {e}");
    }
}

/// FLUX.2 [klein] from single files, as other tools lay them out, with no snapshot folder:
/// the transformer under Black Forest Labs' names inside ComfyUI's `model.diffusion_model.`
/// (`--weights FILE`, its config.json beside it), the text encoder as a bare Qwen3 body
/// without config (`--text-encoder`, sizes read from its shapes), the autoencoder without
/// config (`--vae`, likewise) and `--tokenizers`: the image is the snapshot's own, pixel for
/// pixel, and within a level of diffusers'. Missing parts are refused naming their flag.
#[test]
fn single_files_without_a_snapshot_draw_the_snapshots_image() {
    use candle_nn::VarBuilder;
    let dir = tempfile::tempdir().unwrap();
    let io =
        candle_core::safetensors::load(fixtures().join("pipeline_io.safetensors"), &Device::Cpu)
            .unwrap();
    let snap = fixtures().join("snapshot");
    // The transformer: every tensor the DiT asks for, under its own (BFL) name, prefixed.
    let tf = vec![snap.join("transformer/diffusion_pytorch_model.safetensors")];
    let (cfg, backend) = sprout_pipeline::flux2::flux2_transformer(&tf).unwrap();
    let names = sprout_models::recorder::record(|vb| {
        sprout_models::dit::Dit::new(&cfg, vb)
            .map(|_| ())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    })
    .unwrap();
    let vb = VarBuilder::from_backend(backend, candle_core::DType::F32, Device::Cpu);
    let bfl: HashMap<String, Tensor> = names
        .iter()
        .map(|(n, shape)| {
            let t = vb.get(shape.as_slice(), n).unwrap();
            (format!("model.diffusion_model.{n}"), t)
        })
        .collect();
    std::fs::create_dir_all(dir.path().join("t")).unwrap();
    let transformer = dir.path().join("t/flux-2-klein-tiny.safetensors");
    candle_core::safetensors::save(&bfl, &transformer).unwrap();
    std::fs::copy(
        snap.join("transformer/config.json"),
        dir.path().join("t/config.json"),
    )
    .unwrap();
    // The text encoder without `model.` and without config; the autoencoder without config.
    let te =
        candle_core::safetensors::load(snap.join("text_encoder/model.safetensors"), &Device::Cpu)
            .unwrap();
    let bare: HashMap<String, Tensor> = te
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("model.").unwrap_or(&k).to_string(), v))
        .collect();
    let qwen = dir.path().join("qwen3-tiny.safetensors");
    candle_core::safetensors::save(&bare, &qwen).unwrap();
    let vae = dir.path().join("flux2-ae.safetensors");
    std::fs::copy(snap.join("vae/diffusion_pytorch_model.safetensors"), &vae).unwrap();

    let latents = dir.path().join("latents.safetensors");
    save_one(&latents, &io["distilled_latents"]);
    let run = |weights: &Path, extra: &[&str], out: &Path| {
        generate_distilled(weights, &latents, extra, out)
    };
    let (q, v, tk) = (
        qwen.to_str().unwrap().to_string(),
        vae.to_str().unwrap().to_string(),
        snap.to_str().unwrap().to_string(),
    );
    let files = ["--text-encoder", &q, "--vae", &v, "--tokenizers", &tk];
    let single = dir.path().join("single.png");
    let r = run(&transformer, &files, &single);
    assert!(r.status.success(), "{}", stderr(&r));
    let whole = dir.path().join("snapshot.png");
    let r = run(&snap, &[], &whole);
    assert!(r.status.success(), "{}", stderr(&r));
    let (a, b) = (
        image::open(&single).unwrap().to_rgb8(),
        image::open(&whole).unwrap().to_rgb8(),
    );
    assert_eq!(a, b, "single files and the snapshot draw the same image");
    let d = worst_level(&single, &io["distilled_image"]);
    assert!(d <= 1.0, "{d} levels from diffusers' image");

    // Each missing part is refused naming its flag; a base model's file needs its model.
    let x = dir.path().join("x.png");
    for (skip, flag) in [(0, "--text-encoder"), (2, "--vae"), (4, "--tokenizers")] {
        let mut some: Vec<&str> = files.to_vec();
        some.drain(skip..skip + 2);
        let r = run(&transformer, &some, &x);
        let e = stderr(&r);
        assert!(!r.status.success() && e.contains(flag), "{flag}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    let base = dir.path().join("t/flux-2-klein-base-tiny.safetensors");
    std::fs::copy(&transformer, &base).unwrap();
    let e = stderr(&run(&base, &files, &x));
    assert!(e.contains("flux2-klein-base"), "{e}");
    // A FLUX.1 transformer file: refused by name.
    let flux1 = dir.path().join("flux1-dev.safetensors");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../sprout-models/tests/fixtures/flux/transformer_dev_bfl.safetensors"),
        &flux1,
    )
    .unwrap();
    let e = stderr(&run(&flux1, &files, &x));
    assert!(
        e.contains("not a FLUX.2 transformer") && !e.contains("panicked"),
        "{e}"
    );
}
