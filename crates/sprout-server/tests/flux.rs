//! `sprout serve` with FLUX.1 over real HTTP, on diffusers snapshots made of the tiny parity
//! fixtures: generations and Kontext edits through the API equal the pipeline's own output
//! for the same seeds and inputs (the pipeline is checked against diffusers elsewhere), and
//! requests a FLUX model cannot serve get a 400 naming the parameter.

use std::path::Path;

use candle_core::Device;
use serde_json::{json, Value};
use sprout_models::flux::files::Variant;
use sprout_pipeline::flux::{reference_size, size_multiple, FluxModel};
use sprout_pipeline::image_io::{resized, to_images};
use sprout_server::{Engine, ServerConfig};

mod common;
use common::{decode, png_bytes, Server};

const PROMPT: &str = "a photo of a red circle";

fn load(root: &Path, variant: Variant) -> FluxModel {
    FluxModel::load(root, &Default::default(), variant, &Device::Cpu).unwrap()
}

/// A serving config without the start-up run (FLUX's default canvas, 1024², is far too
/// large for the tiny fixtures).
fn no_warmup() -> ServerConfig {
    ServerConfig {
        warmup: false,
        ..ServerConfig::default()
    }
}

/// The image the pipeline draws from seeded noise (`seed`) at `(w, h)` with `text`, the
/// encoded references and the img2img / inpainting start, as an 8-bit image.
#[allow(clippy::too_many_arguments)]
fn drawn(
    m: &FluxModel,
    text: &sprout_pipeline::flux::FluxText,
    seed: u64,
    (w, h): (usize, usize),
    refs: &[sprout_pipeline::flux::Reference],
    init: Option<&sprout_pipeline::flux::Img2Img>,
    steps: usize,
    guidance: f64,
) -> image::RgbImage {
    let latents = m.initial_latents(seed, w, h).unwrap();
    let img = m
        .sample(text, &latents, refs, init, w, h, steps, guidance, |_, _| {})
        .unwrap();
    to_images(&((img * 2.0).unwrap() - 1.0).unwrap())
        .unwrap()
        .pop()
        .unwrap()
}

/// Image `i` of a request as the pipeline draws it: seed `seed + i`, the given references.
fn expected(
    m: &mut FluxModel,
    seed: u64,
    (w, h): (usize, usize),
    refs: &[image::RgbImage],
    steps: usize,
    guidance: f64,
) -> image::RgbImage {
    let text = m.encode_text(PROMPT).unwrap();
    let multiple = size_multiple(&m.vae);
    let refs: Vec<_> = refs
        .iter()
        .map(|r| {
            let (rw, rh) = reference_size(r.width() as usize, r.height() as usize, w * h, multiple);
            m.encode_reference(&resized(r, rw, rh).unwrap()).unwrap()
        })
        .collect();
    drawn(m, &text, seed, (w, h), &refs, None, steps, guidance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_dev_serves_the_pipelines_images_and_refuses_edits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev");
    sprout_pipeline::testing::flux_snapshot(&root, "FluxPipeline").unwrap();
    let engine = Engine::Flux(Box::new(load(&root, Variant::Dev)));
    let p = engine.profile();
    assert_eq!(
        (p.multiple, p.default_steps, p.default_guidance),
        (4, 28, 3.5)
    );
    assert!(!p.edits);
    let s = Server::start(engine, "flux-dev", no_warmup()).await;

    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "model": "flux-dev", "n": 2, "size": "32x24", "seed": 5,
                   "steps": 2})
            .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"], "flux-dev");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut m = load(&root, Variant::Dev);
    for (i, item) in data.iter().enumerate() {
        let want = expected(&mut m, 5 + i as u64, (32, 24), &[], 2, 3.5);
        assert_eq!(decode(item), want, "image {i}");
    }

    // Streamed: a preview of the first image (its x0 prediction), then the images.
    let body = reqwest::Client::new()
        .post(format!("{}/v1/images/generations", s.base))
        .header("content-type", "application/json")
        .body(
            json!({"prompt": PROMPT, "size": "32x24", "seed": 5, "steps": 3, "stream": true,
                   "partial_images": 1})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let partial = body.find("event: image_generation.partial_image");
    let completed = body.find("event: image_generation.completed");
    assert!(
        partial.is_some() && completed.is_some() && partial < completed,
        "{body}"
    );

    let (_, models) = s.get("/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "flux-dev");
    let p = &models["data"][0]["sprout"];
    assert_eq!(
        (
            p["default_size"].as_str(),
            p["size_multiple"].as_u64(),
            p["edits"].as_bool()
        ),
        (Some("1024x1024"), Some(4), Some(false))
    );
    assert!(
        p["sizes"].as_array().unwrap().contains(&json!("2048x2048")),
        "{p}"
    );
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "size": "30x30"}).to_string(),
        )
        .await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("size")), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("not a positive multiple of 4"), "{msg}");
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "size": "4096x1024"}).to_string(),
        )
        .await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("size")), "{v}");

    let img = image::DynamicImage::ImageRgb8(image::RgbImage::new(32, 32));
    let form = reqwest::multipart::Form::new()
        .text("prompt", "make it blue")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png_bytes(&img)).file_name("a.png"),
        );
    let (st, v) = s.post_form("/v1/images/edits", form).await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("model")), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("flux-dev cannot edit"), "{msg}");
    s.stop().await;
}

/// A test picture whose content depends on `k`, so that references differ.
fn picture(w: u32, h: u32, k: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 7 + k * 40) as u8,
            (y * 11) as u8,
            ((x + y) * 5 + k * 90) as u8,
        ])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_kontext_edits_with_two_references_as_the_pipeline_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-kontext");
    sprout_pipeline::testing::flux_snapshot(&root, "FluxKontextPipeline").unwrap();
    let engine = Engine::Flux(Box::new(load(&root, Variant::Kontext)));
    assert!(engine.profile().edits);
    let s = Server::start(engine, "flux-kontext", no_warmup()).await;
    let refs = [picture(40, 24, 0), picture(24, 24, 1)];
    let part = |img: &image::RgbImage| {
        reqwest::multipart::Part::bytes(png_bytes(&image::DynamicImage::ImageRgb8(img.clone())))
            .file_name("in.png")
    };
    let form = |extra: &[(&str, &str)]| {
        let mut f = reqwest::multipart::Form::new()
            .text("prompt", PROMPT)
            .part("image[]", part(&refs[0]))
            .part("image[]", part(&refs[1]));
        for (k, v) in extra {
            f = f.text(k.to_string(), v.to_string());
        }
        f
    };
    let (st, v) = s
        .post_form(
            "/v1/images/edits",
            form(&[("size", "32x32"), ("seed", "3"), ("steps", "2"), ("n", "2")]),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["seed"].as_u64(), v["size"].as_str()),
        (Some(3), Some("32x32"))
    );
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut m = load(&root, Variant::Kontext);
    for (i, item) in data.iter().enumerate() {
        let want = expected(&mut m, 3 + i as u64, (32, 32), &refs, 2, 2.5);
        assert_eq!(decode(item), want, "image {i}");
    }
    // The references matter: one reference alone gives another image.
    let alone = expected(&mut m, 3, (32, 32), &refs[..1], 2, 2.5);
    assert_ne!(decode(&data[0]), alone);

    // Multipart fields are checked by the generation rules and named.
    let (st, v) = s.post_form("/v1/images/edits", form(&[("n", "two")])).await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("n")), "{v}");
    let (st, v) = s
        .post_form("/v1/images/edits", form(&[("size", "33x32")]))
        .await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("size")), "{v}");
    // With a mask, the edit is also limited to the mask's area: the kept half is the
    // input's own pixels, the redrawn half is not.
    let base = picture(32, 32, 0);
    let mask = image::RgbaImage::from_fn(32, 32, |x, _| {
        image::Rgba([0, 0, 0, if x < 16 { 0 } else { 255 }])
    });
    let f = reqwest::multipart::Form::new()
        .text("prompt", PROMPT)
        .text("size", "32x32")
        .text("seed", "3")
        .text("steps", "2")
        .part("image", part(&base))
        .part(
            "mask",
            reqwest::multipart::Part::bytes(png_bytes(&image::DynamicImage::ImageRgba8(mask)))
                .file_name("mask.png"),
        );
    let (st, v) = s.post_form("/v1/images/edits", f).await;
    assert_eq!(st, 200, "{v}");
    let out = decode(&v["data"][0]);
    assert_eq!(out.dimensions(), (32, 32));
    let (kept_same, drawn_same) = sprout_pipeline::testing::halves_equal(&out, &base, 16);
    assert!(kept_same && !drawn_same);
    s.stop().await;
}

/// FLUX.1 Fill over HTTP: an edit with a mask is an inpainting by the model's conditioning
/// (the kept half is the input's own pixels, the redrawn half is what the pipeline draws for
/// the same seed); a generation, or an edit without a mask, is a 400 saying Fill needs both;
/// the start-up run's request (a grey canvas redrawn whole) runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_fill_inpaints_masked_edits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-fill");
    sprout_pipeline::testing::flux_snapshot_with(
        &root,
        "FluxFillPipeline",
        "transformer_fill_diffusers.safetensors",
    )
    .unwrap();
    let mut engine = Engine::Flux(Box::new(load(&root, Variant::Fill)));
    let never = std::sync::atomic::AtomicBool::new(false);
    let warm = engine.warmup_request((32, 24)).unwrap();
    let out = engine
        .generate(
            &warm,
            sprout_pipeline::denoise::Hooks {
                cancel: &never,
                on_step: &mut |_, _| {},
                previews: 0,
                on_preview: &mut |_, _| {},
            },
        )
        .unwrap();
    assert_eq!(out[0].dimensions(), (32, 24));
    assert_eq!(
        (
            engine.profile().default_steps,
            engine.profile().default_guidance
        ),
        (50, 30.0)
    );
    let s = Server::start(engine, "flux-fill", no_warmup()).await;
    let base = picture(32, 32, 0);
    let mask = image::RgbaImage::from_fn(32, 32, |x, _| {
        image::Rgba([0, 0, 0, if x < 16 { 0 } else { 255 }])
    });
    let png = |img: image::DynamicImage| reqwest::multipart::Part::bytes(png_bytes(&img));
    let form = |with_mask: bool| {
        let f = reqwest::multipart::Form::new()
            .text("prompt", PROMPT)
            .text("size", "32x32")
            .text("seed", "3")
            .text("steps", "2")
            .part(
                "image",
                png(image::DynamicImage::ImageRgb8(base.clone())).file_name("in.png"),
            );
        if with_mask {
            f.part(
                "mask",
                png(image::DynamicImage::ImageRgba8(mask.clone())).file_name("mask.png"),
            )
        } else {
            f
        }
    };
    let (st, v) = s.post_form("/v1/images/edits", form(true)).await;
    assert_eq!(st, 200, "{v}");
    let out = decode(&v["data"][0]);
    let (kept_same, drawn_same) = sprout_pipeline::testing::halves_equal(&out, &base, 16);
    assert!(kept_same && !drawn_same);
    // The pipeline's own inpainting for the same seed.
    let mut m = load(&root, Variant::Fill);
    let text = m.encode_text(PROMPT).unwrap();
    let image = resized(&base, 32, 32).unwrap();
    let mask_t = sprout_pipeline::image_io::mask_from_image(
        &image::DynamicImage::ImageRgba8(mask.clone()),
        32,
        32,
    )
    .unwrap();
    let init = sprout_pipeline::flux::Img2Img {
        image: m.encode_reference(&image).unwrap().tokens,
        strength: 1.0,
        inpaint: Some(sprout_pipeline::flux::Inpaint {
            mask: mask_t,
            image,
        }),
    };
    let want = drawn(&m, &text, 3, (32, 32), &[], Some(&init), 2, 30.0);
    assert_eq!(out, want);
    for (st, v) in [
        s.post_form("/v1/images/edits", form(false)).await,
        s.post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "size": "32x32"}).to_string(),
        )
        .await,
    ] {
        assert_eq!(st, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("mask"), "{msg}");
    }
    s.stop().await;
}

/// FLUX.1 Canny over HTTP: an edit's one image is the control image (resized to the canvas),
/// and the result is the pipeline's for the same seed; a generation, a mask or a second image
/// is a 400 naming the control image; the start-up run (a grey control image) runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_canny_draws_from_the_edit_image_as_control() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-canny");
    sprout_pipeline::testing::flux_snapshot_with(
        &root,
        "FluxControlPipeline",
        "transformer_control_diffusers.safetensors",
    )
    .unwrap();
    let mut engine = Engine::Flux(Box::new(load(&root, Variant::Canny)));
    assert!(engine.profile().edits);
    let never = std::sync::atomic::AtomicBool::new(false);
    let warm = engine.warmup_request((32, 24)).unwrap();
    assert_eq!(warm.images.len(), 1);
    let hooks = sprout_pipeline::denoise::Hooks {
        cancel: &never,
        on_step: &mut |_, _| {},
        previews: 0,
        on_preview: &mut |_, _| {},
    };
    assert_eq!(
        engine.generate(&warm, hooks).unwrap()[0].dimensions(),
        (32, 24)
    );
    let s = Server::start(engine, "flux-canny", no_warmup()).await;
    let edges = picture(48, 40, 2);
    let part = |img: &image::RgbImage| {
        reqwest::multipart::Part::bytes(png_bytes(&image::DynamicImage::ImageRgb8(img.clone())))
            .file_name("edges.png")
    };
    let form = || {
        reqwest::multipart::Form::new()
            .text("prompt", PROMPT)
            .text("size", "32x32")
            .text("seed", "4")
            .text("steps", "2")
            .part("image", part(&edges))
    };
    let (st, v) = s.post_form("/v1/images/edits", form()).await;
    assert_eq!(st, 200, "{v}");
    let mut m = load(&root, Variant::Canny);
    let text = m.encode_text(PROMPT).unwrap();
    let control = m
        .encode_reference(&resized(&edges, 32, 32).unwrap())
        .unwrap();
    let want = drawn(&m, &text, 4, (32, 32), &[control], None, 2, 30.0);
    assert_eq!(decode(&v["data"][0]), want);
    let mask = image::RgbaImage::from_pixel(48, 40, image::Rgba([0, 0, 0, 0]));
    for (st, v) in [
        s.post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "size": "32x32"}).to_string(),
        )
        .await,
        s.post_form("/v1/images/edits", form().part("image", part(&edges)))
            .await,
        s.post_form(
            "/v1/images/edits",
            form().part(
                "mask",
                reqwest::multipart::Part::bytes(png_bytes(&image::DynamicImage::ImageRgba8(
                    mask.clone(),
                )))
                .file_name("mask.png"),
            ),
        )
        .await,
    ] {
        assert_eq!(st, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("control image"), "{msg}");
    }
    s.stop().await;
}

/// FLUX's true classifier-free guidance over HTTP: `negative_prompt` with `true_cfg_scale`
/// draws the pipeline's image with that negative prompt; a negative prompt without a scale
/// above 1, or a scale out of range, is a 400 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_true_cfg_follows_the_negative_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flux-dev");
    sprout_pipeline::testing::flux_snapshot(&root, "FluxPipeline").unwrap();
    let s = Server::start(
        Engine::Flux(Box::new(load(&root, Variant::Dev))),
        "flux-dev",
        no_warmup(),
    )
    .await;
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": PROMPT, "size": "32x24", "seed": 6, "steps": 2,
                   "negative_prompt": "a blue square", "true_cfg_scale": 2.0})
            .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let mut m = load(&root, Variant::Dev);
    let negative = m.encode_text("a blue square").unwrap();
    let text = m.encode_text(PROMPT).unwrap().with_negative(negative, 2.0);
    let want = drawn(&m, &text, 6, (32, 24), &[], None, 2, 3.5);
    assert_eq!(decode(&v["data"][0]), want);
    assert_ne!(
        decode(&v["data"][0]),
        expected(&mut m, 6, (32, 24), &[], 2, 3.5)
    );
    for (body, says) in [
        (
            json!({"prompt": PROMPT, "size": "32x24", "negative_prompt": "x"}),
            "negative_prompt needs true_cfg_scale",
        ),
        (
            json!({"prompt": PROMPT, "size": "32x24", "true_cfg_scale": 0.5}),
            "true_cfg_scale = 0.5 is out of range",
        ),
    ] {
        let (st, v) = s.post("/v1/images/generations", body.to_string()).await;
        assert_eq!(st, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
    }
    s.stop().await;
}
