//! `sprout generate PROMPT [-n N] [--seed S] [--steps K] [--guidance G] [--size WxH | --aspect RATIO] -o OUT.png`

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use image::RgbImage;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::generate::{generate, InitImage, Request};
use sprout_world::canvas::parse_size;
use sprout_world::AspectRatio;

use crate::inputs::open_image;
use crate::progress::bar;
use sprout_pipeline::generate::resized;

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
    /// flux-kontext | flux-fill | flux-canny | flux-depth (with --weights).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// FLUX weights: a Black Forest Labs file or folder, or a diffusers snapshot folder.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub parts: crate::flux_parts::FluxPartsArgs,
    /// Start from these initial latents (a safetensors file holding one tensor, packed
    /// (n, tokens, 64) as diffusers' `latents=` argument or unpacked (n, 16, H/8, W/8))
    /// instead of seeded noise, to compare with another implementation.
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// FLUX: T5 tokens per prompt (schnell at most 256, dev and Kontext 512).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
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

/// `--mask` as (1, 1, height, width), 1 where the image is redrawn.
pub fn read_mask(a: &GenerateArgs, width: u32, height: u32) -> Result<Option<Tensor>> {
    let Some(p) = &a.mask else { return Ok(None) };
    let img = crate::inputs::open_any(p, "--mask")?;
    let m = sprout_pipeline::generate::mask_from_image(&img, width, height)?;
    if m.sum_all()?.to_scalar::<f32>()? == 0.0 {
        anyhow::bail!(
            "--mask {}: it marks nothing to redraw (transparent pixels of a mask with alpha, else white ones)",
            p.display()
        );
    }
    Ok(Some(m))
}

/// Load `default` (embedded) or a bundle directory.
pub fn load_model(name: &str) -> Result<Bundle> {
    let dev = Device::Cpu;
    if name == "default" {
        return Ok(sprout_pipeline::embedded::load(&dev)?);
    }
    let dir = Path::new(name);
    if !dir.is_dir() {
        bail!("unknown model {name:?}: expected `default` or a model bundle directory");
    }
    Ok(Bundle::load_dir(dir, &dev)?)
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
    if a.model.starts_with("flux-") {
        return crate::flux_cmd::generate(a);
    }
    if a.weights.is_some()
        || a.latents.is_some()
        || a.max_sequence_length.is_some()
        || a.control_image.is_some()
        || a.true_cfg.is_some()
    {
        bail!("--weights, --latents, --max-sequence-length, --control-image and --true-cfg apply to the FLUX models (--model flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth)");
    }
    a.parts.refuse_for(&a.model)?;
    if let Some(s) = a.strength {
        if !(s > 0.0 && s <= 1.0) {
            bail!("--strength {s} is out of range (0, 1]");
        }
    }
    let t0 = Instant::now();
    let init_image = match &a.init_image {
        Some(p) => Some(open_image(p, "--init-image")?),
        None => None,
    };
    let (width, height) = match (&a.size, &a.aspect, &init_image) {
        (Some(s), _, _) => parse_size(s)?,
        (None, Some(r), _) => AspectRatio::parse(r)?.canvas(256),
        // img2img keeps its image's size, rounded down to the autoencoder's multiple.
        (None, None, Some(img)) => {
            let m = sprout_models::ae::DOWNSCALE as u32;
            let (w, h) = img.dimensions();
            if w < m || h < m {
                bail!("--init-image is {w}x{h}; the native model needs at least {m}x{m}");
            }
            (w / m * m, h / m * m)
        }
        (None, None, None) => (256, 256),
    };
    let model = load_model(&a.model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let sampler = match &a.sampler {
        Some(s) => Sampler::parse(s).map_err(anyhow::Error::msg)?,
        None => model.meta.sampler,
    };
    let req = Request {
        prompt: a.prompt.clone(),
        n: a.n,
        seed: a.seed,
        steps: a.steps.unwrap_or(model.meta.default_steps),
        guidance: a.guidance.unwrap_or(model.meta.default_guidance),
        width,
        height,
        sampler,
        init: match &init_image {
            Some(img) => Some(InitImage {
                image: resized(img, width as usize, height as usize)?,
                strength: a.strength.unwrap_or(default_strength(&a)),
                mask: read_mask(&a, width, height)?,
            }),
            None => None,
        },
        negative_prompt: a.negative_prompt.clone(),
        true_cfg: None,
    };
    req.validate(&model)?;
    let pb = bar(0, "generate");
    let images = generate(&model, &req, |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })?;
    pb.finish_and_clear();
    let paths = output_paths(&a.out, images.len());
    for (i, (img, path)) in images.iter().zip(&paths).enumerate() {
        let mut meta = vec![
            ("prompt", req.prompt.clone()),
            ("seed", (req.seed + i as u64).to_string()),
            ("steps", req.steps.to_string()),
            ("guidance", req.guidance.to_string()),
            ("sampler", format!("{:?}", req.sampler).to_lowercase()),
            ("size", format!("{width}x{height}")),
            ("model", format!("{} ({})", a.model, model.meta.name)),
            ("software", format!("sprout {}", env!("CARGO_PKG_VERSION"))),
        ];
        if let (Some(p), Some(init)) = (&a.init_image, &req.init) {
            meta.push(("init_image", p.display().to_string()));
            meta.push(("strength", init.strength.to_string()));
            if let Some(m) = &a.mask {
                meta.push(("mask", m.display().to_string()));
            }
        }
        if let Some(n) = &req.negative_prompt {
            meta.push(("negative_prompt", n.clone()));
        }
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
