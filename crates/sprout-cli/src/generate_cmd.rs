//! `sprout generate PROMPT [-n N] [--seed S] [--steps K] [--guidance G] [--size WxH | --aspect RATIO] -o OUT.png`

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::RgbImage;
use sprout_models::flux::files::Variant;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::denoise::Hooks;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::flux::FluxModel;
use sprout_pipeline::flux_cond::{canny_map, CANNY_THRESHOLDS};
use sprout_pipeline::model::{check_t5_len, flux_profile, Model};
use sprout_pipeline::request::{InitImage, Profile, Request};
use sprout_pipeline::PipelineError;
use sprout_world::canvas::parse_size;
use sprout_world::AspectRatio;

use crate::inputs::open_image;
use crate::progress::bar;
use sprout_pipeline::image_io::resized;

#[derive(Args)]
pub struct GenerateArgs {
    /// What to draw.
    pub prompt: String,
    /// Number of images (image i uses seed + i).
    #[arg(short = 'n', long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling steps (model default if omitted).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (model default if omitted; 1 disables it).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Canvas WxH (multiples of 32).
    #[arg(long, conflicts_with = "aspect")]
    pub size: Option<String>,
    /// Aspect ratio (1:1, 4:3, 3:4, 3:2, 2:3, 16:9, 9:16, 2:1, 1:2) at about 256² pixels.
    #[arg(long)]
    pub aspect: Option<String>,
    /// euler or heun (model default if omitted).
    #[arg(long)]
    pub sampler: Option<String>,
    /// `default` (embedded), a model bundle directory, or flux-schnell | flux-dev |
    /// flux-kontext | flux-fill | flux-canny | flux-depth | flux2-klein | flux2-klein-base |
    /// flux2-dev (with --weights).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// FLUX weights: a Black Forest Labs file or folder, or a diffusers snapshot folder
    /// (FLUX.2: a diffusers snapshot folder, or the transformer's own file).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub parts: crate::flux_parts::FluxPartsArgs,
    /// Where the model computes: cpu, cuda or cuda:N (CUDA needs a build with `--features
    /// cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start from these initial latents (a safetensors file holding one tensor, packed
    /// (n, tokens, 64) as diffusers' `latents=` argument or unpacked (n, 16, H/8, W/8))
    /// instead of seeded noise, to compare with another implementation.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// FLUX: text tokens per prompt (FLUX.1's T5: schnell at most 256, dev and Kontext 512;
    /// FLUX.2's Qwen3 and Mistral: at most 512).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// FLUX.2: the text encoder's layers whose states condition the transformer (diffusers'
    /// `text_encoder_out_layers`; klein: 9,18,27, dev: 10,20,30).
    #[arg(long, value_delimiter = ',')]
    pub text_layers: Option<Vec<usize>>,
    /// FLUX.2: the text encoder from this file (a llama.cpp GGUF of Qwen3 or Mistral, e.g.
    /// Q8_0, or safetensors) instead of the snapshot's text_encoder/.
    #[arg(long)]
    pub text_encoder: Option<PathBuf>,
    /// FLUX.2: the transformer from this file (a GGUF written by `sprout quantize --model
    /// flux2-klein|flux2-dev` or a conversion with Black Forest Labs' names, or safetensors)
    /// instead of the snapshot's transformer/.
    #[arg(long)]
    pub transformer: Option<PathBuf>,
    /// img2img: start from this image (resized to the canvas, which defaults to the image's
    /// size rounded down to the model's multiple: 32 native, 16 FLUX); with FLUX, --latents
    /// then gives the noise.
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img strength in (0, 1], default 0.6: the share of the schedule that runs (1
    /// ignores the image).
    #[arg(long, requires = "init_image")]
    pub strength: Option<f64>,
    /// Inpainting: redraw only this mask's area of --init-image (transparent pixels of a
    /// mask with alpha, else white ones); the rest keeps the image's pixels. --strength then
    /// defaults to 1 (the area is drawn anew).
    #[arg(long, requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// FLUX.1 Canny / Depth: the edge map or depth map that lays out the image (resized to
    /// the canvas, which defaults to its size rounded down to 16).
    #[arg(long)]
    pub control_image: Option<PathBuf>,
    /// FLUX: true classifier-free guidance scale (above 1 runs the negative prompt beside the
    /// prompt each step, at twice the cost: v_neg + S·(v − v_neg)); 1 (default) disables it.
    #[arg(long)]
    pub true_cfg: Option<f64>,
    /// What guidance steers away from: with FLUX the negative prompt of --true-cfg (the empty
    /// prompt when omitted), with Sprout's models the unconditional prompt of --guidance.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// FLUX.1 Canny: --control-image is a picture; make its edge map first (Canny edge
    /// detection, thresholds 50 and 200).
    #[arg(long, requires = "control_image")]
    pub canny: bool,
    /// Output PNG (with several images: OUT_0.png, OUT_1.png, …).
    #[arg(short = 'o', long)]
    pub out: PathBuf,
}

/// img2img keeps 40 % of the image by default; inpainting draws its area anew.
pub fn default_strength(a: &GenerateArgs) -> f64 {
    if a.mask.is_some() {
        1.0
    } else {
        0.6
    }
}

/// `--mask` as (1, 1, height, width), 1 where the image is redrawn (a mask that marks
/// nothing is refused by the pipeline's check).
pub fn read_mask(a: &GenerateArgs, width: u32, height: u32) -> Result<Option<Tensor>> {
    let Some(p) = &a.mask else { return Ok(None) };
    let img = crate::inputs::open_any(p, "--mask")?;
    Ok(Some(sprout_pipeline::image_io::mask_from_image(
        &img, width, height,
    )?))
}

/// Load `default` (embedded) or a bundle directory onto the CPU.
pub fn load_model(name: &str) -> Result<Bundle> {
    load_model_on(name, &Device::Cpu)
}

/// Load `default` (embedded) or a bundle directory onto `dev`.
pub fn load_model_on(name: &str, dev: &Device) -> Result<Bundle> {
    if name == "default" {
        return Ok(sprout_pipeline::embedded::load(dev)?);
    }
    let dir = Path::new(name);
    if !dir.is_dir() {
        bail!("unknown model {name:?}: expected `default` or a model bundle directory");
    }
    Ok(Bundle::load_dir(dir, dev)?)
}

/// The model `--model` names: Sprout's own (`default` or a bundle directory), or a FLUX.1
/// variant from `--weights`, encoding `prompts` while loading (so that T5 can be dropped
/// before the DiT loads when memory is tight) with `t5_len` T5 tokens.
pub fn load(
    model: &str,
    weights: Option<&Path>,
    parts: &crate::flux_parts::FluxPartsArgs,
    prompts: &[&str],
    t5_len: Option<usize>,
    text: Flux2Flags<'_>,
    device: &str,
) -> Result<Model> {
    let device = sprout_pipeline::device::parse(device).map_err(cli_error)?;
    if model.starts_with("flux2-") {
        if parts.clip.is_some() || parts.t5.is_some() || !parts.loras.is_empty() {
            bail!("--clip, --t5 and --lora apply to the FLUX.1 models; FLUX.2 takes --vae, --text-encoder, --transformer and --tokenizers");
        }
        return load_flux2(model, weights, text, parts, &device);
    }
    if text.layers.is_some() || text.encoder.is_some() || text.transformer.is_some() {
        bail!("--text-layers, --text-encoder and --transformer apply to the FLUX.2 models (--model flux2-klein|flux2-klein-base|flux2-dev)");
    }
    if model.starts_with("flux-") {
        let variant = Variant::parse(model)?;
        let Some(weights) = weights else {
            bail!("--model {model} needs --weights PATH (a Black Forest Labs file or folder, or a diffusers snapshot)");
        };
        let (m, _) = FluxModel::load_with_prompts(
            weights,
            &parts.components(),
            variant,
            &device,
            prompts,
            t5_len,
        )?;
        if !m.text.t5.is_resident() {
            eprintln!(
                "memory is tight: T5 is dropped after encoding each prompt, before the DiT runs"
            );
        }
        return Ok(Model::Flux(Box::new(m)));
    }
    if weights.is_some() {
        bail!("--weights is for the FLUX.1 models (--model flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth); Sprout's models are bundle directories given to --model");
    }
    parts.refuse_for(model)?;
    Ok(Model::Native(Box::new(load_model_on(model, &device)?)))
}

/// FLUX.2's flags: `--text-layers`, `--text-encoder`, `--transformer`.
#[derive(Clone, Copy, Default)]
pub struct Flux2Flags<'a> {
    pub layers: Option<&'a [usize]>,
    pub encoder: Option<&'a Path>,
    pub transformer: Option<&'a Path>,
}

/// FLUX.2 ([klein] or [dev]) from a diffusers snapshot folder (`--weights DIR`, its parts
/// replaceable by `--transformer`, `--text-encoder`, `--vae` and `--tokenizers`), or from
/// single files (`--weights` the transformer's file, with those flags for the other parts).
fn load_flux2(
    model: &str,
    weights: Option<&Path>,
    text: Flux2Flags<'_>,
    parts: &crate::flux_parts::FluxPartsArgs,
    device: &Device,
) -> Result<Model> {
    use sprout_pipeline::flux2::Flux2Variant;
    let wanted = match model {
        "flux2-klein" => Flux2Variant::Klein,
        "flux2-klein-base" => Flux2Variant::KleinBase,
        "flux2-dev" => Flux2Variant::Dev,
        other => bail!("unknown model {other:?}: the FLUX.2 models are flux2-klein (4B or 9B, read from the files), flux2-klein-base and flux2-dev"),
    };
    let Some(weights) = weights else {
        let example = if wanted == Flux2Variant::Dev {
            "black-forest-labs/FLUX.2-dev"
        } else {
            "black-forest-labs/FLUX.2-klein-4B"
        };
        bail!("--model {model} needs --weights PATH (a diffusers snapshot folder, e.g. {example}, or the transformer's file with --vae, --text-encoder and --tokenizers)");
    };
    if !weights.exists() {
        bail!("--weights {}: no such file or directory", weights.display());
    }
    let single = weights.is_file();
    let transformer = if single {
        if text.transformer.is_some() {
            bail!("--transformer and a --weights file both name the transformer; give one");
        }
        part_file("--weights", Some(weights), &["safetensors", "gguf"])?;
        let name = weights
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if model == "flux2-klein" && name.contains("base") {
            bail!(
                "--weights {}: the file's name says it is a base model (50 steps, guidance); run it with --model flux2-klein-base",
                weights.display()
            );
        }
        Some(weights)
    } else {
        part_file("--transformer", text.transformer, &["safetensors", "gguf"])?;
        text.transformer
    };
    part_file("--text-encoder", text.encoder, &["safetensors", "gguf"])?;
    part_file("--vae", parts.vae.as_deref(), &["safetensors"])?;
    if let Some(t) = &parts.tokenizers {
        if !t.is_dir() {
            bail!(
                "--tokenizers {}: expected a folder holding the text encoder's tokenizer.json (or its tokenizer/)",
                t.display()
            );
        }
    }
    // `flux2-klein` runs either [klein] a snapshot holds; the others only their own.
    if !single {
        let held = sprout_pipeline::flux2::snapshot_variant(weights).map_err(cli_error)?;
        let fits =
            held == wanted || (wanted == Flux2Variant::Klein && held == Flux2Variant::KleinBase);
        if !fits {
            let says = match held {
                Flux2Variant::Klein => "a step-distilled FLUX.2 [klein]",
                Flux2Variant::KleinBase => "a FLUX.2 [klein] base model",
                Flux2Variant::Dev => "FLUX.2 [dev] (Flux2Pipeline)",
            };
            bail!(
                "--weights {}: model_index.json says the model is {says}; run it with --model {}",
                weights.display(),
                held.name()
            );
        }
    }
    let m = sprout_pipeline::flux2::Flux2Model::load_with(
        (!single).then_some(weights),
        text.layers,
        sprout_pipeline::flux2::Flux2Files {
            transformer,
            text_encoder: text.encoder,
            vae: parts.vae.as_deref(),
            tokenizer: parts.tokenizers.as_deref(),
            variant: single.then_some(wanted),
            tight_memory: false,
        },
        candle_core::DType::F32,
        device,
    )
    .map_err(cli_error)?;
    if m.tight_memory() {
        eprintln!(
            "memory is tight: each request's prompt is encoded with the transformer dropped (the text encoder loaded, run and dropped, then the transformer loaded again)"
        );
    }
    Ok(Model::Flux2(Box::new(m)))
}

/// A FLUX.2 part given as a file (`flag`): one that exists, of one of the `kinds` of file,
/// or a refusal naming the flag.
fn part_file(flag: &str, path: Option<&Path>, kinds: &[&str]) -> Result<()> {
    let Some(p) = path else { return Ok(()) };
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if !kinds.contains(&ext.as_str()) {
        bail!(
            "{flag} {}: expected a .{} file",
            p.display(),
            kinds.join(" or .")
        );
    }
    if !p.is_file() {
        bail!("{flag} {}: no such file", p.display());
    }
    Ok(())
}

/// A refusal of the pipeline's one check, in the command line's terms: the field becomes
/// the flag that sets it.
pub fn cli_error(e: PipelineError) -> anyhow::Error {
    cli_error_for(e, "--image")
}

/// [`cli_error`], with `image_flag` the flag that gives the request's input images
/// (`--image` for an edit, `--control-image` for a control model, `--init-image` for
/// img2img).
pub fn cli_error_for(e: PipelineError, image_flag: &str) -> anyhow::Error {
    let PipelineError::Invalid { param, message } = e else {
        return e.into();
    };
    let flag = |p: &str| match p {
        "prompt" => "the prompt".to_string(),
        "n" => "-n".to_string(),
        "true_cfg_scale" => "--true-cfg".to_string(),
        "image" => image_flag.to_string(),
        other => format!("--{}", other.replace('_', "-")),
    };
    // Other fields the message names are flags here too.
    let mut text = message.clone();
    for api in ["true_cfg_scale", "negative_prompt", "max_sequence_length"] {
        if api != param {
            text = text.replace(api, &flag(api));
        }
    }
    match text.strip_prefix(param) {
        Some(rest) => anyhow::anyhow!("{}{}", flag(param), rest.strip_prefix(" =").unwrap_or(rest)),
        None => anyhow::anyhow!("{}: {text}", flag(param)),
    }
}

/// Write a PNG with text chunks describing how it was made.
pub fn write_png(path: &Path, img: &RgbImage, meta: &[(&str, String)]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut enc = png::Encoder::new(BufWriter::new(file), img.width(), img.height());
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    for (k, v) in meta {
        enc.add_itxt_chunk(k.to_string(), v.clone())?;
    }
    let mut w = enc.write_header()?;
    w.write_image_data(img.as_raw())?;
    w.finish()?;
    Ok(())
}

pub fn output_paths(out: &Path, n: usize) -> Vec<PathBuf> {
    if n == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..n)
        .map(|i| out.with_file_name(format!("{stem}_{i}.{ext}")))
        .collect()
}

pub fn run(a: GenerateArgs) -> Result<()> {
    run_with(a, &[])
}

/// The request the arguments make for a model of `profile` (its canvas and given latents
/// are set by the caller): `init` is the img2img image and its mask, as tensors.
fn request(
    a: &GenerateArgs,
    profile: &Profile,
    images: Vec<RgbImage>,
    init: Option<(Tensor, Option<Tensor>)>,
) -> Result<Request> {
    Ok(Request {
        n: a.n,
        seed: a.seed,
        steps: a.steps.unwrap_or(profile.default_steps),
        guidance: a.guidance.unwrap_or(profile.default_guidance),
        sampler: match &a.sampler {
            Some(s) => Sampler::parse(s).map_err(anyhow::Error::msg)?,
            None => profile.sampler,
        },
        init: init.map(|(image, mask)| InitImage {
            image,
            strength: a.strength.unwrap_or(default_strength(a)),
            mask,
        }),
        negative_prompt: a.negative_prompt.clone(),
        true_cfg: a.true_cfg,
        images,
        max_sequence_length: a.max_sequence_length,
        ..Request::new(&a.prompt, profile)
    })
}

/// `generate`, and `edit` with its input images: the arguments become one [`Request`] for
/// the pipeline's entry point; the images are written with how they were made.
pub fn run_with(a: GenerateArgs, inputs: &[PathBuf]) -> Result<()> {
    let t0 = Instant::now();
    let flux2 = a.model.starts_with("flux2-");
    let flux = a.model.starts_with("flux-");
    if flux2 {
        if a.weights.is_none() {
            bail!(
                "--model {} needs --weights PATH (a diffusers snapshot folder of FLUX.2 [klein], or the transformer's file)",
                a.model
            );
        }
        for (given, flag) in [
            (a.control_image.is_some(), "--control-image"),
            (a.true_cfg.is_some(), "--true-cfg"),
            (a.init_image.is_some(), "--init-image"),
            (a.canny, "--canny"),
        ] {
            if given {
                bail!("{flag} does not apply to --model {} (FLUX.2 [klein] draws from text and reference images)", a.model);
            }
        }
    }
    if !flux
        && !flux2
        && (a.weights.is_some()
            || a.latents.is_some()
            || a.max_sequence_length.is_some()
            || a.control_image.is_some()
            || a.true_cfg.is_some())
    {
        bail!("--weights, --latents, --max-sequence-length, --control-image and --true-cfg apply to the FLUX models (--model flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth)");
    }
    let variant = flux.then(|| Variant::parse(&a.model)).transpose()?;
    if let Some(variant) = variant {
        if a.weights.is_none() {
            bail!("--model {} needs --weights PATH (a Black Forest Labs file or folder, or a diffusers snapshot)", a.model);
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
            bail!("--model flux-fill redraws the masked area of an image: give --init-image and --mask");
        }
    }
    if a.prompt.trim().is_empty() {
        bail!("the prompt is empty");
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
    let images = inputs
        .iter()
        .map(|p| open_image(p, "--image"))
        .collect::<Result<Vec<_>>>()?;
    // The image flag a refusal of the input images names.
    let image_flag = match (&a.control_image, inputs.is_empty()) {
        (Some(_), _) => "--control-image",
        (None, false) => "--image",
        (None, true) => "--init-image",
    };
    let cli = |e: PipelineError| cli_error_for(e, image_flag);
    if let Some(variant) = variant {
        // What can be checked before FLUX's weights load (gigabytes): every field but the
        // canvas, against the variant's profile, with stand-ins for the input tensors.
        check_t5_len(variant, a.max_sequence_length).map_err(cli)?;
        let pre = flux_profile(variant, 16);
        let stand_in = || Tensor::zeros((1, 1, 1, 1), candle_core::DType::F32, &Device::Cpu);
        let init = match &init_image {
            Some(_) => Some((
                stand_in()?,
                a.mask.as_ref().map(|_| stand_in()).transpose()?,
            )),
            None => None,
        };
        let count = images.len() + control_image.iter().count();
        let probe = request(&a, &pre, vec![RgbImage::new(1, 1); count], init)?;
        sprout_pipeline::request::check_fields(&probe, &pre).map_err(cli)?;
    }
    // With true CFG the negative prompt is encoded too, while loading.
    let true_cfg = a.true_cfg.filter(|s| *s > 1.0);
    let mut prompts = vec![a.prompt.as_str()];
    if true_cfg.is_some() {
        prompts.push(a.negative_prompt.as_deref().unwrap_or(""));
    }
    let mut model = load(
        &a.model,
        a.weights.as_deref(),
        &a.parts,
        &prompts,
        a.max_sequence_length,
        Flux2Flags {
            layers: a.text_layers.as_deref(),
            encoder: a.text_encoder.as_deref(),
            transformer: a.transformer.as_deref(),
        },
        &a.device,
    )?;
    let load_s = t0.elapsed().as_secs_f64();
    let profile = model.profile();
    let m = profile.multiple;
    let sized = init_image
        .as_ref()
        .map(|i| ("--init-image", i))
        .or(control_image.as_ref().map(|i| ("--control-image", i)));
    let (width, height) = match (&a.size, &a.aspect, images.first()) {
        (Some(s), _, _) => parse_size(s)?,
        (None, Some(r), _) => AspectRatio::parse(r)?.canvas(profile.default_size.0),
        // img2img and control keep their image's size, rounded down to the model's multiple
        // (and scaled down, keeping its shape, to the model's largest side).
        (None, None, _) if sized.is_some() => {
            let (flag, img) = sized.expect("checked");
            let (w, h) = img.dimensions();
            if w < m || h < m {
                bail!("{flag} is {w}x{h}; this model needs at least {m}x{m}");
            }
            let scale = (profile.max_side as f64 / w.max(h) as f64).min(1.0);
            let canvas = profile.fit((w as f64 * scale) as u32, (h as f64 * scale) as u32);
            if scale < 1.0 {
                eprintln!(
                    "{flag} is {w}x{h}; drawing at {}x{} (this model's largest side is {})",
                    canvas.0, canvas.1, profile.max_side
                );
            }
            canvas
        }
        // An edit keeps its first image's aspect ratio at the default canvas's area.
        (None, None, Some(img)) => profile.edit_canvas(img.dimensions()),
        (None, None, None) => profile.default_size,
    };
    let latents = match &a.latents {
        Some(p) => Some(match &model {
            Model::Flux(m) => crate::flux_cmd::read_latents(p, m.dit.config().latent_channels)?,
            Model::Native(b) => crate::flux_cmd::read_latents(p, b.meta.dit.latent_channels)?,
            Model::Flux2(m) => crate::flux_cmd::read_tokens(p, m.vae.cfg.token_channels())?,
        }),
        None => None,
    };
    let mut images = images;
    images.extend(control_image);
    let init = match &init_image {
        Some(img) => Some((
            resized(img, width as usize, height as usize)?,
            read_mask(&a, width, height)?,
        )),
        None => None,
    };
    let req = Request {
        width,
        height,
        latents,
        ..request(&a, &profile, images, init)?
    };
    let pb = bar(0, "generate");
    let started = Instant::now();
    let out = Hooks::progress(
        &mut |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        },
        |hooks| model.generate(&req, hooks),
    )
    .map_err(cli)?;
    pb.finish_and_clear();
    let run_s = started.elapsed().as_secs_f64();
    eprintln!(
        "drew {} image{} in {run_s:.1} s ({:.2} s per step and image)",
        out.len(),
        if out.len() == 1 { "" } else { "s" },
        run_s / (req.steps * out.len()).max(1) as f64
    );
    let name = match &a.weights {
        Some(w) => format!("{} ({})", a.model, w.display()),
        None => format!("{} ({})", a.model, model.name()),
    };
    let paths = output_paths(&a.out, out.len());
    for (i, (img, path)) in out.iter().zip(&paths).enumerate() {
        let mut meta = vec![
            ("prompt", req.prompt.clone()),
            ("steps", req.steps.to_string()),
            ("guidance", req.guidance.to_string()),
            ("sampler", format!("{:?}", req.sampler).to_lowercase()),
            ("size", format!("{width}x{height}")),
            ("model", name.clone()),
            ("software", format!("sprout {}", env!("CARGO_PKG_VERSION"))),
        ];
        for (k, p) in inputs.iter().enumerate() {
            meta.push(("image", format!("{k}: {}", p.display())));
        }
        if let (Some(p), Some(init)) = (&a.init_image, &req.init) {
            meta.push(("init_image", p.display().to_string()));
            meta.push(("strength", init.strength.to_string()));
            if let Some(m) = &a.mask {
                meta.push(("mask", m.display().to_string()));
            }
        }
        if let Some(s) = true_cfg {
            meta.push(("true_cfg", s.to_string()));
        }
        if let Some(n) = &req.negative_prompt {
            meta.push(("negative_prompt", n.clone()));
        }
        if let Some(p) = &a.control_image {
            let how = if a.canny { " (its Canny edges)" } else { "" };
            meta.push(("control_image", format!("{}{how}", p.display())));
        }
        meta.push(match &a.latents {
            Some(p) => ("latents", format!("{} [{i}]", p.display())),
            None => ("seed", (req.seed + i as u64).to_string()),
        });
        write_png(path, img, &meta)?;
        println!("wrote {}", path.display());
    }
    eprintln!(
        "model load {:.3} s, total {:.3} s",
        load_s,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
