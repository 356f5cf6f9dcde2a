//! `sprout generate --model flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth
//! --weights PATH …`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sprout_models::dit::embed::patchify;
use sprout_models::flux::files::Variant;
use sprout_pipeline::flux::{
    reference_size, sampling_defaults, size_multiple, FluxModel, Img2Img, Inpaint,
};
use sprout_world::canvas::parse_size;
use sprout_world::AspectRatio;

use crate::generate_cmd::{default_strength, output_paths, read_mask, write_png, GenerateArgs};
use crate::inputs::open_image;
use crate::progress::bar;
use sprout_pipeline::flux_cond::{canny_map, CANNY_THRESHOLDS};
use sprout_pipeline::generate::resized;

/// Initial latents from a file: one tensor, packed (n, L, 4C) or unpacked (n, C, h, w).
fn read_latents(path: &Path, channels: usize) -> Result<Tensor> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("--latents {}", path.display()))?;
    if t.len() != 1 {
        bail!(
            "--latents {}: expected one tensor, found {}",
            path.display(),
            t.len()
        );
    }
    let x = t
        .into_values()
        .next()
        .expect("one tensor")
        .to_dtype(DType::F32)?;
    match x.rank() {
        3 => Ok(x),
        4 if x.dim(1)? == channels => Ok(patchify(&x, 2)?),
        _ => bail!(
            "--latents {}: shape {:?} is neither packed (n, tokens, {}) nor (n, {channels}, h, w)",
            path.display(),
            x.dims(),
            4 * channels
        ),
    }
}

/// `sprout edit --model flux-kontext --weights PATH -i IN.png [-i REF.png …] INSTRUCTION -o OUT.png`
#[derive(clap::Args)]
pub struct EditArgs {
    /// Input image, and further reference images (repeatable; up to 4).
    #[arg(short = 'i', long = "image", required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub gen: GenerateArgs,
}

/// Largest number of input images of one edit.
const MAX_REFERENCES: usize = 4;

/// An input image resized to Kontext's nearest preferred resolution (rounded down to
/// `multiple`), as (1, 3, H, W) in [-1, 1].
fn read_reference(path: &Path, multiple: usize) -> Result<Tensor> {
    let img = open_image(path, "--image")?;
    let (w, h) = reference_size(
        img.width() as usize,
        img.height() as usize,
        1024 * 1024,
        multiple,
    );
    Ok(resized(&img, w, h)?)
}

pub fn edit(e: EditArgs) -> Result<()> {
    if e.gen.model != "flux-kontext" {
        bail!(
            "model {} cannot edit images; editing needs --model flux-kontext (with --weights)",
            e.gen.model
        );
    }
    if e.images.len() > MAX_REFERENCES {
        bail!("{} input images; at most {MAX_REFERENCES}", e.images.len());
    }
    run(e.gen, &e.images)
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    run(a, &[])
}

fn run(a: GenerateArgs, inputs: &[PathBuf]) -> Result<()> {
    let t0 = Instant::now();
    let variant = Variant::parse(&a.model)?;
    let Some(weights) = &a.weights else {
        bail!("--model {} needs --weights PATH (a Black Forest Labs file or folder, or a diffusers snapshot)", a.model);
    };
    if a.prompt.trim().is_empty() {
        bail!("the prompt is empty");
    }
    if a.n == 0 || a.n > sprout_pipeline::generate::MAX_IMAGES {
        bail!(
            "-n {} is out of range (1..={})",
            a.n,
            sprout_pipeline::generate::MAX_IMAGES
        );
    }
    if a.sampler.as_deref().is_some_and(|s| s != "euler") {
        bail!("FLUX models sample with euler (their schedules are distilled for it)");
    }
    if let Some(s) = a.strength {
        if !(s > 0.0 && s <= 1.0) {
            bail!("--strength {s} is out of range (0, 1]");
        }
    }
    match (variant.control_map(), &a.control_image) {
        (Some(map), None) => bail!(
            "--model {} draws from an {map} map: give it with --control-image",
            a.model
        ),
        (None, Some(_)) => bail!(
            "--control-image is for --model flux-canny or flux-depth, not {}",
            a.model
        ),
        _ => {}
    }
    if a.canny && variant != Variant::Canny {
        bail!(
            "--canny makes an edge map for --model flux-canny, not {}",
            a.model
        );
    }
    if variant == Variant::Fill && a.mask.is_none() {
        bail!(
            "--model flux-fill redraws the masked area of an image: give --init-image and --mask"
        );
    }
    let init_image = match &a.init_image {
        Some(p) => Some(open_image(p, "--init-image")?),
        None => None,
    };
    let control_image = match &a.control_image {
        Some(p) => {
            let img = open_image(p, "--control-image")?;
            Some(if a.canny {
                canny_map(&img, CANNY_THRESHOLDS)
            } else {
                img
            })
        }
        None => None,
    };
    let sized = init_image
        .as_ref()
        .map(|i| ("--init-image", i))
        .or(control_image.as_ref().map(|i| ("--control-image", i)));
    let (width, height) = match (&a.size, &a.aspect, inputs.first()) {
        (Some(s), _, _) => parse_size(s)?,
        (None, Some(r), _) => AspectRatio::parse(r)?.canvas(1024),
        // img2img and control keep their image's size (rounded down to FLUX's multiple of 16).
        (None, None, _) if sized.is_some() => {
            let (flag, img) = sized.expect("checked");
            let (w, h) = img.dimensions();
            if w < 16 || h < 16 {
                bail!("{flag} is {w}x{h}; FLUX needs at least 16x16");
            }
            (w / 16 * 16, h / 16 * 16)
        }
        // An edit keeps its input's aspect ratio at about 1024² pixels.
        (None, None, Some(p)) => {
            let (w, h) = image::image_dimensions(p)
                .with_context(|| format!("--image {}: not a readable image", p.display()))?;
            let a = w as f64 / h as f64;
            (
                ((1024.0 * 1024.0 * a).sqrt() as u32) / 16 * 16,
                ((1024.0 * 1024.0 / a).sqrt() as u32) / 16 * 16,
            )
        }
        (None, None, None) => (1024, 1024),
    };
    let (default_steps, default_guidance) = sampling_defaults(variant);
    let steps = a.steps.unwrap_or(default_steps);
    let guidance = a.guidance.unwrap_or(default_guidance);
    if steps == 0 || steps > sprout_pipeline::generate::MAX_STEPS {
        bail!(
            "--steps {steps} is out of range (1..={})",
            sprout_pipeline::generate::MAX_STEPS
        );
    }
    let max_len = variant.t5_len();
    if let Some(l) = a.max_sequence_length {
        if l == 0 || l > max_len {
            bail!(
                "--max-sequence-length {l} is out of range for {} (1..={max_len})",
                a.model
            );
        }
    }
    let true_cfg = match a.true_cfg {
        Some(s) if !(s.is_finite() && s >= 1.0) => {
            bail!("--true-cfg {s} is out of range (at least 1; 1 disables it)")
        }
        Some(s) if s > 1.0 => Some(s),
        _ => None,
    };
    if a.negative_prompt.is_some() && true_cfg.is_none() {
        bail!("--negative-prompt has no effect at --true-cfg 1; give a scale above 1");
    }
    let mut prompts = vec![a.prompt.as_str()];
    if true_cfg.is_some() {
        prompts.push(a.negative_prompt.as_deref().unwrap_or(""));
    }
    // The prompts are encoded while loading: T5 can then be dropped before the DiT loads.
    let (model, mut texts) = FluxModel::load_with_prompts(
        weights,
        &a.parts.components(),
        variant,
        &Device::Cpu,
        &prompts,
        a.max_sequence_length,
    )?;
    let text = match true_cfg {
        Some(s) => {
            let negative = texts.pop().expect("the negative prompt encoded");
            texts
                .pop()
                .expect("the prompt encoded")
                .with_negative(negative, s)
        }
        None => texts.pop().expect("one prompt encoded"),
    };
    if !model.text.t5.is_resident() {
        eprintln!(
            "memory is tight: T5 was dropped after encoding the prompt, before the DiT loaded"
        );
    }
    let m = size_multiple(&model.vae);
    if !(width as usize).is_multiple_of(m) || !(height as usize).is_multiple_of(m) {
        bail!("size {width}x{height}: FLUX needs sides that are multiples of {m}");
    }
    let load_s = t0.elapsed().as_secs_f64();
    let given = match &a.latents {
        Some(p) => Some(read_latents(p, model.dit.config().latent_channels)?),
        None => None,
    };
    if let Some(l) = &given {
        if l.dim(0)? < a.n {
            bail!("--latents holds {} samples, -n asks for {}", l.dim(0)?, a.n);
        }
    }
    let mut refs = inputs
        .iter()
        .map(|p| {
            model
                .encode_reference(&read_reference(p, m)?)
                .map_err(anyhow::Error::from)
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(img) = &control_image {
        let image = resized(img, width as usize, height as usize)?;
        refs.push(model.encode_reference(&image)?);
    }
    let init = match &init_image {
        Some(img) => {
            let image = resized(img, width as usize, height as usize)?;
            Some(Img2Img {
                image: model.encode_reference(&image)?.tokens,
                strength: a.strength.unwrap_or(default_strength(&a)),
                inpaint: read_mask(&a, width, height)?.map(|mask| Inpaint { mask, image }),
            })
        }
        None => None,
    };
    if let Some(init) = &init {
        init.first_step(steps)?;
    }
    let paths = output_paths(&a.out, a.n);
    let pb = bar((steps * a.n) as u64, "generate");
    for (i, path) in paths.iter().enumerate() {
        let latents = match &given {
            Some(l) => l.narrow(0, i, 1)?,
            None => model.initial_latents(a.seed + i as u64, width as usize, height as usize)?,
        };
        let started = std::time::Instant::now();
        let denoised = std::cell::Cell::new(started);
        let img = model.sample(
            &text,
            &latents,
            &refs,
            init.as_ref(),
            width as usize,
            height as usize,
            steps,
            guidance,
            |d, _| {
                pb.set_position((i * steps + d) as u64);
                denoised.set(std::time::Instant::now());
            },
        )?;
        let denoise_s = (denoised.get() - started).as_secs_f64();
        // Above the bar on a terminal, and still printed when stderr is not one.
        pb.suspend(|| {
            eprintln!(
                "denoised in {denoise_s:.1} s ({:.1} s/step), decoded in {:.1} s",
                denoise_s / steps as f64,
                denoised.get().elapsed().as_secs_f64()
            )
        });
        let img = sprout_pipeline::generate::to_images(&((img * 2.0)? - 1.0)?)?
            .pop()
            .expect("one image");
        let mut meta = vec![
            ("prompt", a.prompt.clone()),
            ("steps", steps.to_string()),
            ("guidance", guidance.to_string()),
            ("sampler", "euler".to_string()),
            ("size", format!("{width}x{height}")),
            ("model", format!("{} ({})", a.model, weights.display())),
            ("software", format!("sprout {}", env!("CARGO_PKG_VERSION"))),
        ];
        for (k, p) in inputs.iter().enumerate() {
            meta.push(("image", format!("{k}: {}", p.display())));
        }
        if let (Some(p), Some(init)) = (&a.init_image, &init) {
            meta.push(("init_image", p.display().to_string()));
            meta.push(("strength", init.strength.to_string()));
            if let Some(m) = &a.mask {
                meta.push(("mask", m.display().to_string()));
            }
        }
        if let Some(s) = true_cfg {
            meta.push(("true_cfg", s.to_string()));
            meta.push((
                "negative_prompt",
                a.negative_prompt.clone().unwrap_or_default(),
            ));
        }
        if let Some(p) = &a.control_image {
            let how = if a.canny { " (its Canny edges)" } else { "" };
            meta.push(("control_image", format!("{}{how}", p.display())));
        }
        meta.push(match &a.latents {
            Some(p) => ("latents", format!("{} [{i}]", p.display())),
            None => ("seed", (a.seed + i as u64).to_string()),
        });
        write_png(path, &img, &meta)?;
        pb.suspend(|| eprintln!("wrote {}", path.display()));
    }
    pb.finish_and_clear();
    eprintln!(
        "model load {load_s:.3} s, total {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
