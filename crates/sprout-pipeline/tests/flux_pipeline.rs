//! Whole FLUX pipelines against diffusers' FluxPipeline over the same tiny seeded parts and
//! the same initial latents (fixtures from `tools/flux-parity/make_fixtures.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::t5::{Config as T5Config, T5EncoderModel};
use sprout_models::dit::Dit;
use sprout_models::flux::configs::{clip_config, vae_config};
use sprout_models::flux::convert::DiffusersTransformerConfig;
use sprout_models::flux::files::Variant;
use sprout_models::flux::tokenize::{clip_tokenizer, t5_tokenizer};
use sprout_models::flux::vae::FluxVae;
use sprout_pipeline::flux::{FluxModel, Img2Img, Inpaint, T5Slot, TextParts};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sprout-models/tests/fixtures/flux")
        .join(name)
}

fn load(
    name: &str,
) -> (
    VarBuilder<'static>,
    HashMap<String, Tensor>,
    serde_json::Value,
) {
    let bytes = std::fs::read(fixture(name)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let cfg = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .map(|c| serde_json::from_str(c).unwrap())
        .unwrap_or(serde_json::Value::Null);
    let t: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect();
    (
        VarBuilder::from_tensors(t.clone(), DType::F32, &Device::Cpu),
        t,
        cfg,
    )
}

fn model(variant: Variant, file: &str) -> FluxModel {
    let (vb, _, cfg) = load(&format!("transformer_{file}_bfl.safetensors"));
    let dcfg: DiffusersTransformerConfig = serde_json::from_value(cfg).unwrap();
    let dit = Dit::new(&dcfg.to_dit().unwrap(), vb).unwrap();
    let (vb, _, c) = load("vae_bfl.safetensors");
    let vae = FluxVae::new(&vae_config(&c).unwrap(), vb).unwrap();
    let (vb, _, c) = load("clip.safetensors");
    let clip = ClipTextTransformer::new(vb.pp("text_model"), &clip_config(&c).unwrap()).unwrap();
    let (vb, _, c) = load("t5.safetensors");
    let t5cfg: T5Config = serde_json::from_value(c).unwrap();
    FluxModel {
        variant,
        dit,
        vae,
        text: TextParts {
            clip,
            t5: T5Slot::Resident(T5EncoderModel::load(vb, &t5cfg).unwrap().into()),
            clip_tokenizer: clip_tokenizer(&fixture("tokenizer")).unwrap(),
            t5_tokenizer: t5_tokenizer(&fixture("tokenizer_2")).unwrap(),
            t5_len: 16,
            dtype: DType::F32,
            device: Device::Cpu,
        },
        parts_dtype: DType::F32,
        encoded: Vec::new(),
        shift: sprout_pipeline::flux::default_shift(variant),
    }
}

#[test]
fn text_to_image_matches_diffusers_from_the_same_latents() {
    let (_, io, _) = load("pipeline_io.safetensors");
    for (variant, name, steps, guidance) in [
        (Variant::Schnell, "schnell", 2, 0.0),
        (Variant::Dev, "dev", 3, 3.5),
    ] {
        let mut m = model(variant, name);
        let text = m.encode_text("a photo of a red circle").unwrap();
        let mut seen = 0;
        let img = m
            .sample(
                &text,
                &io[&format!("{name}_latents")],
                &[],
                None,
                48,
                32,
                steps,
                guidance,
                |d, _| seen = d,
            )
            .unwrap();
        assert_eq!(seen, steps);
        let want = &io[&format!("{name}_image")];
        let d = sprout_models::ops::max_abs_diff(&img, want).unwrap();
        eprintln!("{name}: max abs error {d:.2e} on a [0, 1] image");
        assert!(d <= 1e-4, "{name}: {d}");
    }
}

#[test]
fn latents_of_the_wrong_shape_are_refused() {
    let mut m = model(Variant::Schnell, "schnell");
    let text = m.encode_text("a red circle").unwrap();
    let bad = Tensor::zeros((1, 7, 16), DType::F32, &Device::Cpu).unwrap();
    let e = m
        .sample(&text, &bad, &[], None, 48, 32, 2, 0.0, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("(1, 96, 16)"), "{e}");
}

/// An 8-bit (H, W, 3) image → (1, 3, H, W) in [-1, 1].
fn model_image(pixels: &Tensor) -> Tensor {
    ((pixels.permute((2, 0, 1)).unwrap().unsqueeze(0).unwrap() / 127.5).unwrap() - 1.0).unwrap()
}

#[test]
fn kontext_editing_matches_diffusers_from_the_same_latents() {
    let (_, io, _) = load("pipeline_io.safetensors");
    let mut m = model(Variant::Kontext, "dev");
    let text = m.encode_text("make the circle blue").unwrap();
    // The input image, 8-bit (32, 48, 3) → (1, 3, 32, 48) in [-1, 1].
    let image = model_image(&io["kontext_input"]);
    let r = m.encode_reference(&image).unwrap();
    assert_eq!((r.rows, r.cols), (8, 12));
    let img = m
        .sample(
            &text,
            &io["kontext_latents"],
            &[r],
            None,
            48,
            32,
            3,
            2.5,
            |_, _| {},
        )
        .unwrap();
    let d = sprout_models::ops::max_abs_diff(&img, &io["kontext_image"]).unwrap();
    eprintln!("kontext: max abs error {d:.2e} on a [0, 1] image");
    assert!(d <= 1e-4, "kontext: {d}");
}

#[test]
fn img2img_matches_diffusers_from_the_same_image_and_noise() {
    let (_, io, _) = load("pipeline_io.safetensors");
    let mut m = model(Variant::Dev, "dev");
    let text = m.encode_text("a photo of a red circle").unwrap();
    let image = model_image(&io["img2img_input"]);
    let init = Img2Img {
        image: m.encode_reference(&image).unwrap().tokens,
        strength: 0.6,
        inpaint: None,
    };
    // diffusers: int(5 − min(5·0.6, 5)) = 2, so the last 3 of 5 steps run.
    assert_eq!(init.first_step(5).unwrap(), 2);
    let noise = sprout_models::dit::embed::patchify(&io["img2img_noise"], 2).unwrap();
    let mut ran = (0, 0);
    let img = m
        .sample(&text, &noise, &[], Some(&init), 48, 32, 5, 3.5, |d, t| {
            ran = (d, t)
        })
        .unwrap();
    assert_eq!(ran, (3, 3));
    let d = sprout_models::ops::max_abs_diff(&img, &io["img2img_image"]).unwrap();
    eprintln!("img2img: max abs error {d:.2e} on a [0, 1] image");
    assert!(d <= 1e-4, "img2img: {d}");
    // A tiny strength still runs the last step; strengths out of range are refused.
    let at = |strength| Img2Img {
        image: init.image.clone(),
        strength,
        inpaint: None,
    };
    assert_eq!(at(0.01).first_step(5).unwrap(), 4);
    assert_eq!(at(1.0).first_step(5).unwrap(), 0);
    for strength in [0.0, -1.0, 1.5, f64::NAN] {
        let e = at(strength).first_step(5).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{strength}: {e}");
    }
}

#[test]
fn kontext_sizes_follow_the_reference_list() {
    use sprout_pipeline::flux::kontext_size;
    assert_eq!(kontext_size(512, 512), (1024, 1024));
    assert_eq!(kontext_size(1920, 1080), (1392, 752));
    assert_eq!(kontext_size(600, 1400), (672, 1568));
}

/// Inpainting against diffusers' FluxInpaintPipeline (dev, strength 0.85) and
/// FluxKontextInpaintPipeline (strength 1; the image is also Kontext's reference, or a
/// reference image of its own is given), from the same
/// image, mask and noise: inside the mask Sprout draws the reference's pixels; outside it
/// keeps the input's own pixels (diffusers returns them as decoded, Sprout pastes them back).
#[test]
fn inpainting_matches_diffusers_inside_the_mask_and_keeps_the_image_outside() {
    let (_, io, _) = load("inpaint_io.safetensors");
    let image = model_image(&io["input"]);
    let input = (image.clone() + 1.0).unwrap() / 2.0;
    let input = input.unwrap();
    let mask = io["mask"].reshape((1, 1, 32, 48)).unwrap();
    let kept = (1.0 - &mask).unwrap();
    let noise = sprout_models::dit::embed::patchify(&io["noise"], 2).unwrap();
    for (variant, prompt, steps, guidance, strength, key) in [
        (
            Variant::Dev,
            "a photo of a red circle",
            4,
            3.5,
            0.85,
            "inpaint_image",
        ),
        (
            Variant::Kontext,
            "make the circle blue",
            3,
            2.5,
            1.0,
            "kontext_inpaint_image",
        ),
        // With a reference image of its own (diffusers' `image_reference`).
        (
            Variant::Kontext,
            "make the circle blue",
            3,
            2.5,
            1.0,
            "kontext_inpaint_reference_image",
        ),
    ] {
        let mut m = model(variant, "dev");
        let text = m.encode_text(prompt).unwrap();
        let r = m.encode_reference(&image).unwrap();
        let init = Img2Img {
            image: r.tokens.clone(),
            strength,
            inpaint: Some(Inpaint {
                mask: mask.clone(),
                image: image.clone(),
            }),
        };
        let refs = match key {
            "kontext_inpaint_reference_image" => {
                let reference = model_image(&io["kontext_reference"]);
                vec![m.encode_reference(&reference).unwrap()]
            }
            _ if variant == Variant::Kontext => vec![r],
            _ => vec![],
        };
        let img = m
            .sample(
                &text,
                &noise,
                &refs,
                Some(&init),
                48,
                32,
                steps,
                guidance,
                |_, _| {},
            )
            .unwrap();
        let want = &io[key];
        let inside =
            sprout_models::ops::max_abs(&(&img - want).unwrap().broadcast_mul(&mask).unwrap())
                .unwrap();
        let outside =
            sprout_models::ops::max_abs(&(&img - &input).unwrap().broadcast_mul(&kept).unwrap())
                .unwrap();
        eprintln!("{key}: max abs error {inside:.2e} inside the mask; {outside:.1e} from the input outside it");
        assert!(inside <= 1e-4, "{key}: {inside}");
        assert!(outside <= 1e-6, "{key}: {outside}");
        // The masked area is drawn anew: it is not the input there.
        let changed =
            sprout_models::ops::max_abs(&(&img - &input).unwrap().broadcast_mul(&mask).unwrap())
                .unwrap();
        assert!(changed > 0.1, "{key}: {changed}");
    }
}

/// FLUX.1 Fill against diffusers' FluxFillPipeline (strength 1, guidance 30) from the same
/// image, mask and noise: the masked image's latents and the pixel-level mask enter as extra
/// channels, nothing is blended; inside the mask Sprout draws the reference's pixels, outside
/// it keeps the input's. The mask's edges cut through the autoencoder's cells.
#[test]
fn fill_matches_diffusers_inside_the_mask() {
    let (_, io, _) = load("conditioned_io.safetensors");
    let mut m = model(Variant::Fill, "fill");
    assert_eq!(m.dit.config().cond_channels, 32);
    let text = m.encode_text("a photo of a red circle").unwrap();
    let image = model_image(&io["fill_input"]);
    let mask = io["fill_mask"].reshape((1, 1, 32, 48)).unwrap();
    let init = Img2Img {
        image: m.encode_reference(&image).unwrap().tokens,
        strength: 1.0,
        inpaint: Some(Inpaint {
            mask: mask.clone(),
            image: image.clone(),
        }),
    };
    let noise = sprout_models::dit::embed::patchify(&io["fill_noise"], 2).unwrap();
    let img = m
        .sample(&text, &noise, &[], Some(&init), 48, 32, 3, 30.0, |_, _| {})
        .unwrap();
    let abs = |t: Tensor| sprout_models::ops::max_abs(&t).unwrap();
    let inside = abs((&img - &io["fill_image"])
        .unwrap()
        .broadcast_mul(&mask)
        .unwrap());
    let input = ((image + 1.0).unwrap() / 2.0).unwrap();
    let kept = (1.0 - &mask).unwrap();
    let outside = abs((&img - &input).unwrap().broadcast_mul(&kept).unwrap());
    eprintln!(
        "fill: max abs error {inside:.2e} inside the mask; {outside:.1e} from the input outside it"
    );
    assert!(inside <= 1e-4, "fill: {inside}");
    assert!(outside <= 1e-6, "fill: {outside}");
    // Without its mask, Fill is refused by name.
    let plain = Img2Img {
        image: init.image.clone(),
        strength: 1.0,
        inpaint: None,
    };
    let e = m
        .sample(&text, &noise, &[], Some(&plain), 48, 32, 3, 30.0, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("flux-fill") && e.contains("mask"), "{e}");
}

/// FLUX.1 Canny / Depth against diffusers' FluxControlPipeline (guidance 10) from the same
/// latents: the control image's latents enter as extra channels.
#[test]
fn control_matches_diffusers() {
    let (_, io, _) = load("conditioned_io.safetensors");
    for variant in [Variant::Canny, Variant::Depth] {
        let mut m = model(variant, "control");
        assert_eq!(m.dit.config().cond_channels, 16);
        let text = m.encode_text("a photo of a red circle").unwrap();
        let control = m
            .encode_reference(&model_image(&io["control_input"]))
            .unwrap();
        let img = m
            .sample(
                &text,
                &io["control_latents"],
                std::slice::from_ref(&control),
                None,
                48,
                32,
                3,
                10.0,
                |_, _| {},
            )
            .unwrap();
        let d = sprout_models::ops::max_abs_diff(&img, &io["control_image"]).unwrap();
        eprintln!(
            "{}: max abs error {d:.2e} on a [0, 1] image",
            variant.name()
        );
        assert!(d <= 1e-4, "{}: {d}", variant.name());
        // No control image, or one of another size: refused by name.
        let refused = |refs: &[sprout_pipeline::flux::Reference]| {
            m.sample(
                &text,
                &io["control_latents"],
                refs,
                None,
                48,
                32,
                3,
                10.0,
                |_, _| {},
            )
            .unwrap_err()
            .to_string()
        };
        let e = refused(&[]);
        assert!(e.contains("needs one control image"), "{e}");
        let small = m
            .encode_reference(&model_image(&io["control_input"].narrow(0, 0, 16).unwrap()))
            .unwrap();
        let e = refused(&[small]);
        assert!(e.contains("canvas size"), "{e}");
    }
}

/// True classifier-free guidance against diffusers (`negative_prompt` with `true_cfg_scale`):
/// FluxPipeline (dev, scale 2) and FluxKontextPipeline (scale 1.5) from the same latents.
#[test]
fn true_cfg_with_a_negative_prompt_matches_diffusers() {
    let (_, io, _) = load("pipeline_io.safetensors");
    let (_, want, _) = load("true_cfg_io.safetensors");
    let mut m = model(Variant::Dev, "dev");
    let negative = m.encode_text("a blue square").unwrap();
    let text = m
        .encode_text("a photo of a red circle")
        .unwrap()
        .with_negative(negative, 2.0);
    let img = m
        .sample(
            &text,
            &io["dev_latents"],
            &[],
            None,
            48,
            32,
            3,
            3.5,
            |_, _| {},
        )
        .unwrap();
    let d = sprout_models::ops::max_abs_diff(&img, &want["dev_image"]).unwrap();
    eprintln!("dev with true CFG: max abs error {d:.2e} on a [0, 1] image");
    assert!(d <= 1e-4, "dev: {d}");
    // It is not the plain image.
    assert!(sprout_models::ops::max_abs_diff(&img, &io["dev_image"]).unwrap() > 0.05);

    let mut m = model(Variant::Kontext, "dev");
    let negative = m.encode_text("blurry").unwrap();
    let text = m
        .encode_text("make the circle blue")
        .unwrap()
        .with_negative(negative, 1.5);
    let r = m
        .encode_reference(&model_image(&io["kontext_input"]))
        .unwrap();
    let img = m
        .sample(
            &text,
            &io["kontext_latents"],
            &[r],
            None,
            48,
            32,
            3,
            2.5,
            |_, _| {},
        )
        .unwrap();
    let d = sprout_models::ops::max_abs_diff(&img, &want["kontext_image"]).unwrap();
    eprintln!("kontext with true CFG: max abs error {d:.2e} on a [0, 1] image");
    assert!(d <= 1e-4, "kontext: {d}");
}
