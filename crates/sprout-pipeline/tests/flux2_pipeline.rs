//! The FLUX.2 pipelines against diffusers' `Flux2KleinPipeline` and `Flux2Pipeline` ([dev])
//! over the same tiny seeded parts (the fixture snapshots, loaded as users' snapshots are)
//! and the same initial latents: text to image distilled, with guidance and with [dev]'s
//! embedded guidance, and edits with two references (fixtures from
//! `tools/flux-parity/make_flux2_fixtures.py` and `make_flux2_dev_fixtures.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use sprout_pipeline::denoise::Hooks;
use sprout_pipeline::flux2::{prepare_reference, Flux2Model};
use sprout_pipeline::image_io::from_image;
use sprout_pipeline::PipelineError;

const TOL: f32 = 1e-4;
const PROMPTS: [&str; 2] = [
    "a photo of a red circle",
    "make the circle blue and the star red, please",
];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sprout-models/tests/fixtures/flux2")
}

fn io() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("pipeline_io.safetensors"), &Device::Cpu).unwrap()
}

/// The fixture snapshot `name`, its tiny encoder's layers 2, 4, 6 tapped and prompts of
/// `max_len` tokens, as the fixture tool ran it.
fn fixture_model(name: &str, max_len: usize) -> Flux2Model {
    let mut m = Flux2Model::load_with_taps(&dir().join(name), &[2, 4, 6], DType::F32, &Device::Cpu)
        .unwrap();
    m.text.max_len = max_len;
    m
}

fn model() -> Flux2Model {
    fixture_model("snapshot", 40)
}

/// (1, C, h, w) latents of the reference → Sprout's (1, h·w, C) tokens.
fn tokens(z: &Tensor) -> Tensor {
    let (b, c, h, w) = z.dims4().unwrap();
    z.reshape((b, c, h * w))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
}

fn check(what: &str, img: &Tensor, want: &Tensor) {
    let got = ((img + 1.0).unwrap() / 2.0).unwrap();
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let d = sprout_models::ops::max_abs_diff(&got, want).unwrap();
    eprintln!("{what}: max abs error {d:.2e}");
    assert!(d <= TOL, "{what}: max abs error {d:e} > {TOL:e}");
}

fn run(
    m: &Flux2Model,
    text: &Tensor,
    negative: Option<&Tensor>,
    latents: &Tensor,
    refs: &[sprout_pipeline::flux2::Flux2Reference],
    steps: usize,
    guidance: f64,
) -> Tensor {
    let mut on_step = |_: usize, _: usize| {};
    Hooks::progress(&mut on_step, |hooks| {
        m.sample_with(
            text,
            negative,
            latents,
            refs,
            (48, 32),
            steps,
            guidance,
            hooks,
        )
    })
    .unwrap()
}

/// The fixture's distilled text-to-image case through `m`: the first prompt, 2 steps without
/// guidance from its latents.
fn distilled_t2i(m: &Flux2Model, io: &HashMap<String, Tensor>) -> Tensor {
    let text = m.text.encode(PROMPTS[0]).unwrap();
    run(
        m,
        &text,
        None,
        &tokens(&io["distilled_latents"]),
        &[],
        2,
        1.0,
    )
}

#[test]
fn text_to_image_matches_diffusers_distilled_and_guided() {
    let io = io();
    let mut m = model();
    assert!(
        m.variant.distilled(),
        "the snapshot's model_index.json says is_distilled"
    );
    let text = m.text.encode(PROMPTS[0]).unwrap();
    let img = distilled_t2i(&m, &io);
    check("distilled, 2 steps", &img, &io["distilled_image"]);
    m.variant = sprout_pipeline::flux2::Flux2Variant::KleinBase;
    let negative = m.text.encode("").unwrap();
    let img = run(
        &m,
        &text,
        Some(&negative),
        &tokens(&io["base_latents"]),
        &[],
        3,
        4.0,
    );
    check("base, 3 steps, guidance 4", &img, &io["base_image"]);
}

/// The fixture's two reference images (`edit_ref0`, `edit_ref1` of `io`) prepared and
/// encoded by `m`.
fn references(
    m: &Flux2Model,
    io: &HashMap<String, Tensor>,
) -> Vec<sprout_pipeline::flux2::Flux2Reference> {
    ["edit_ref0", "edit_ref1"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let t = &io[*name];
            let (h, w, _) = t.dims3().unwrap();
            let px: Vec<u8> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as u8)
                .collect();
            let img = RgbImage::from_raw(w as u32, h as u32, px).unwrap();
            let img = prepare_reference(&img, m.size_multiple(), k).unwrap();
            m.encode_reference(&from_image(&img, &Device::Cpu).unwrap())
                .unwrap()
        })
        .collect()
}

#[test]
fn an_edit_with_two_references_matches_diffusers() {
    let io = io();
    let m = model();
    let refs = references(&m, &io);
    let text = m.text.encode(PROMPTS[1]).unwrap();
    let img = run(&m, &text, None, &tokens(&io["edit_latents"]), &refs, 2, 1.0);
    check("edit with two references", &img, &io["edit_image"]);
}

/// The FLUX.2 [dev] fixture snapshot (`Flux2Pipeline`: Mistral3 text encoder, a transformer
/// with a guidance input, the klein fixture's autoencoder), prompts of 96 tokens.
fn dev_model() -> Flux2Model {
    fixture_model("dev_snapshot", 96)
}

#[test]
fn flux2_dev_matches_diffusers_text_to_image_and_with_two_references() {
    let io =
        candle_core::safetensors::load(dir().join("dev_pipeline_io.safetensors"), &Device::Cpu)
            .unwrap();
    let m = dev_model();
    assert_eq!(m.variant, sprout_pipeline::flux2::Flux2Variant::Dev);
    assert!(m.text.mistral && m.text.pad_left);
    let text = m.text.encode("a photo of a red circle").unwrap();
    let img = run(&m, &text, None, &tokens(&io["t2i_latents"]), &[], 3, 4.0);
    check("dev, 3 steps, embedded guidance 4", &img, &io["t2i_image"]);
    let refs = references(&m, &io);
    let text = m
        .text
        .encode("make the circle blue and put the star from the second image on it")
        .unwrap();
    let img = run(&m, &text, None, &tokens(&io["edit_latents"]), &refs, 2, 2.5);
    check(
        "dev edit with two references, guidance 2.5",
        &img,
        &io["edit_image"],
    );
    // The guidance scale is an input: another scale draws another image.
    let other = run(&m, &text, None, &tokens(&io["edit_latents"]), &refs, 2, 5.0);
    let d = sprout_models::ops::max_abs_diff(&other, &img).unwrap();
    assert!(
        d > 1e-3,
        "guidance 5 drew the image of guidance 2.5 ({d:e})"
    );
}

#[test]
fn parts_of_the_other_flux2_are_refused_by_name() {
    use sprout_pipeline::flux2::Flux2Files;
    let file = |part: &str| dir().join(part);
    let (qwen, mistral) = (
        file("snapshot/text_encoder/model.safetensors"),
        file("dev_snapshot/text_encoder/model.safetensors"),
    );
    let (klein_dit, dev_dit) = (
        file("snapshot/transformer/diffusion_pytorch_model.safetensors"),
        file("dev_snapshot/transformer/diffusion_pytorch_model.safetensors"),
    );
    // (snapshot, its text encoder or transformer replaced by the other FLUX.2's, the words
    // the refusal must hold).
    let cases: [(&str, Flux2Files<'_>, &[&str]); 4] = [
        (
            "dev_snapshot",
            Flux2Files {
                text_encoder: Some(&qwen),
                ..Flux2Files::default()
            },
            &["FLUX.2 [dev] reads Mistral"],
        ),
        (
            "snapshot",
            Flux2Files {
                text_encoder: Some(&mistral),
                ..Flux2Files::default()
            },
            &["FLUX.2 [klein] reads Qwen3"],
        ),
        (
            "dev_snapshot",
            Flux2Files {
                transformer: Some(&klein_dit),
                ..Flux2Files::default()
            },
            &["no guidance input", "flux2-klein"],
        ),
        (
            "snapshot",
            Flux2Files {
                transformer: Some(&dev_dit),
                ..Flux2Files::default()
            },
            &["takes a guidance scale", "flux2-dev"],
        ),
    ];
    for (snap, files, needles) in cases {
        let e = Flux2Model::load_with(
            Some(&dir().join(snap)),
            Some(&[2, 4, 6]),
            files,
            DType::F32,
            &Device::Cpu,
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(needles.iter().all(|n| e.contains(n)), "{snap}: {e}");
    }
}

#[test]
fn references_too_small_or_too_narrow_are_refused_naming_the_image() {
    for (w, h, what) in [(63, 200, "at least 64"), (64, 600, "8:1")] {
        let e = prepare_reference(&RgbImage::new(w, h), 16, 2).unwrap_err();
        match e {
            PipelineError::Invalid { param, message } => {
                assert_eq!(param, "image");
                assert!(
                    message.contains("reference image 2") && message.contains(what),
                    "{message}"
                );
            }
            e => panic!("{e}"),
        }
    }
    // Above 1024² pixels: scaled to about 1024², then cropped to multiples of 16.
    let big = prepare_reference(&RgbImage::new(2000, 1000), 16, 0).unwrap();
    assert_eq!(big.dimensions(), (1440, 720));
    let odd = prepare_reference(&RgbImage::new(100, 70), 16, 0).unwrap();
    assert_eq!(odd.dimensions(), (96, 64));
}

#[test]
fn a_flux1_folder_or_a_mismatched_encoder_is_refused_by_name() {
    let e = Flux2Model::load(&dir().join("snapshot"), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    // klein reads the states after layers 9, 18 and 27; the tiny encoder has 6.
    assert!(e.contains("6 layers") && e.contains("layer 9"), "{e}");
    let e = Flux2Model::load(&dir(), DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model_index.json"), "{e}");
    // A FLUX.1 snapshot's index names its pipeline.
    let flux1 = std::env::temp_dir().join(format!("sprout-flux1-index-{}", std::process::id()));
    std::fs::create_dir_all(&flux1).unwrap();
    std::fs::write(
        flux1.join("model_index.json"),
        r#"{"_class_name": "FluxPipeline"}"#,
    )
    .unwrap();
    let e = Flux2Model::load(&flux1, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    std::fs::remove_dir_all(&flux1).unwrap();
    assert!(
        e.contains("FluxPipeline") && e.contains("Flux2KleinPipeline"),
        "{e}"
    );
}

/// The snapshot's transformer written as GGUF by `sprout quantize --model flux2-klein` (q8_0
/// blocks) gives back its config and loads in place of transformer/ (the CLI's test draws
/// with it); a FLUX.1 transformer file is refused by name.
#[test]
fn a_gguf_transformer_keeps_its_config_and_a_flux1_one_is_refused() {
    use candle_core::quantized::GgmlDType;
    use sprout_pipeline::flux2::{flux2_gguf_config, Flux2Files};
    use sprout_pipeline::flux_quantize::quantize_flux2_transformer;

    let tmp = std::env::temp_dir().join(format!("sprout-flux2-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let dense = model().dit_config().clone();
    let path = tmp.join("transformer-q8_0.gguf");
    let written =
        quantize_flux2_transformer(&dir().join("snapshot"), GgmlDType::Q8_0, &path, |_, _| {})
            .unwrap();
    assert!(written.quantized > 0, "{written:?}");
    let header = |p: &std::path::Path| sprout_models::flux::inspect::gguf_header(p).unwrap();
    assert_eq!(flux2_gguf_config(&path, &header(&path)).unwrap(), dense);
    let m = Flux2Model::load_with(
        Some(&dir().join("snapshot")),
        Some(&[2, 4, 6]),
        Flux2Files {
            transformer: Some(&path),
            ..Flux2Files::default()
        },
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.dit_config(), &dense);
    // A FLUX.1 transformer file is refused by name.
    let flux1 = tmp.join("flux1.gguf");
    let c: sprout_models::flux::convert::DiffusersTransformerConfig = serde_json::from_value(
        sprout_pipeline::testing::flux_fixture_config("transformer_dev_bfl.safetensors").unwrap(),
    )
    .unwrap();
    let json = serde_json::to_string(&c.to_dit().unwrap()).unwrap();
    sprout_models::gguf::write(
        &flux1,
        &[],
        &[
            ("general.architecture", "flux"),
            (sprout_models::flux::inspect::GGUF_CONFIG_KEY, &json),
        ],
    )
    .unwrap();
    let e = flux2_gguf_config(&flux1, &header(&flux1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("FLUX.1"), "{e}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn the_snapshots_scheduler_config_is_read_or_refused_by_name() {
    // The klein snapshot's parts beside a scheduler config of our own.
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    std::fs::create_dir_all(snap.join("scheduler")).unwrap();
    for part in [
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "model_index.json",
    ] {
        std::os::unix::fs::symlink(dir().join("snapshot").join(part), snap.join(part)).unwrap();
    }
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("snapshot/scheduler/scheduler_config.json")).unwrap(),
    )
    .unwrap();
    let load = |v: &serde_json::Value| {
        std::fs::write(snap.join("scheduler/scheduler_config.json"), v.to_string()).unwrap();
        Flux2Model::load_with_taps(&snap, &[2, 4, 6], DType::F32, &Device::Cpu).map(|mut m| {
            m.text.max_len = 40;
            m
        })
    };
    // The released layout: dynamic shifting, the pipeline's empirical μ.
    assert_eq!(load(&base).unwrap().fixed_shift, None);
    // A fixed shift is read, and it moves the image off the dynamic one diffusers drew.
    let mut fixed = base.clone();
    fixed["use_dynamic_shifting"] = serde_json::json!(false);
    fixed["shift"] = serde_json::json!(3.0);
    let m = load(&fixed).unwrap();
    assert_eq!(m.fixed_shift, Some(3.0));
    let io = io();
    let img = distilled_t2i(&m, &io);
    let got = ((img + 1.0).unwrap() / 2.0).unwrap();
    let d = sprout_models::ops::max_abs_diff(&got, &io["distilled_image"]).unwrap();
    assert!(
        d > 1e-3,
        "a fixed shift of 3 drew the dynamic shift's image ({d:e})"
    );
    // Fields that would sample on other times: refused, naming the field.
    for (field, value) in [
        ("time_shift_type", serde_json::json!("linear")),
        ("use_karras_sigmas", serde_json::json!(true)),
        ("shift_terminal", serde_json::json!(0.1)),
        ("_class_name", serde_json::json!("EulerDiscreteScheduler")),
    ] {
        let mut v = base.clone();
        v[field] = value;
        let e = load(&v).err().expect("refused").to_string();
        let named = if field == "_class_name" {
            "EulerDiscreteScheduler"
        } else {
            field
        };
        assert!(e.contains(named), "{field}: {e}");
    }
}

#[test]
fn the_tight_memory_plan_drops_the_transformer_while_prompts_are_encoded() {
    use sprout_pipeline::flux2::Flux2Files;
    use sprout_pipeline::model::Family;
    let tight = |tight_memory: bool| {
        let mut m = Flux2Model::load_with(
            Some(&dir().join("snapshot")),
            Some(&[2, 4, 6]),
            Flux2Files {
                tight_memory,
                ..Flux2Files::default()
            },
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        m.text.max_len = 40;
        m
    };
    let (mut resident, mut dropped) = (tight(false), tight(true));
    assert!(!resident.tight_memory() && dropped.tight_memory());
    assert!(resident.text.encoder.is_resident() && !dropped.text.encoder.is_resident());
    let req = sprout_pipeline::request::Request {
        width: 48,
        height: 32,
        steps: 2,
        ..sprout_pipeline::request::Request::new(PROMPTS[0], &resident.profile())
    };
    let draw = |m: &mut Flux2Model| {
        let mut on_step = |_: usize, _: usize| {};
        Hooks::progress(&mut on_step, |hooks| m.run(&req, hooks)).unwrap()
    };
    // Two requests each: the transformer comes back after every encoding, and the images
    // are those of the model that holds everything.
    for _ in 0..2 {
        let (a, b) = (draw(&mut resident), draw(&mut dropped));
        assert_eq!(a[0].as_raw(), b[0].as_raw());
        assert!(dropped.dit().is_ok());
    }
}
