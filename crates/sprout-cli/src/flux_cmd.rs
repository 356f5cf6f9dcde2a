//! `sprout generate --model flux-schnell|flux-dev|flux-kontext --weights PATH …`

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sprout_models::dit::embed::patchify;
use sprout_models::flux::files::Variant;
use sprout_pipeline::flux::{size_multiple, FluxModel};
use sprout_world::canvas::parse_size;
use sprout_world::AspectRatio;

use crate::generate_cmd::{output_paths, write_png, GenerateArgs};
use crate::progress::bar;

/// Sampling defaults of each variant (steps, guidance), as their reference pipelines use.
fn defaults(v: Variant) -> (usize, f64) {
    match v {
        Variant::Schnell => (4, 0.0),
        Variant::Dev => (28, 3.5),
        Variant::Kontext => (28, 2.5),
    }
}

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

pub fn generate(a: GenerateArgs) -> Result<()> {
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
    let (width, height) = match (&a.size, &a.aspect) {
        (Some(s), _) => parse_size(s)?,
        (None, Some(r)) => AspectRatio::parse(r)?.canvas(1024),
        (None, None) => (1024, 1024),
    };
    let (default_steps, default_guidance) = defaults(variant);
    let steps = a.steps.unwrap_or(default_steps);
    let guidance = a.guidance.unwrap_or(default_guidance);
    if steps == 0 || steps > sprout_pipeline::generate::MAX_STEPS {
        bail!(
            "--steps {steps} is out of range (1..={})",
            sprout_pipeline::generate::MAX_STEPS
        );
    }
    let mut model = FluxModel::load(weights, variant, &Device::Cpu)?;
    let max_len = if variant == Variant::Schnell {
        256
    } else {
        512
    };
    if let Some(l) = a.max_sequence_length {
        if l == 0 || l > max_len {
            bail!(
                "--max-sequence-length {l} is out of range for {} (1..={max_len})",
                a.model
            );
        }
        model.t5_len = l;
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
    let text = model.encode_text(&a.prompt)?;
    let paths = output_paths(&a.out, a.n);
    let pb = bar((steps * a.n) as u64, "generate");
    for (i, path) in paths.iter().enumerate() {
        let latents = match &given {
            Some(l) => l.narrow(0, i, 1)?,
            None => model.initial_latents(a.seed + i as u64, width as usize, height as usize)?,
        };
        let img = model.sample(
            &text,
            &latents,
            width as usize,
            height as usize,
            steps,
            guidance,
            |d, _| pb.set_position((i * steps + d) as u64),
        )?;
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
        meta.push(match &a.latents {
            Some(p) => ("latents", format!("{} [{i}]", p.display())),
            None => ("seed", (a.seed + i as u64).to_string()),
        });
        write_png(path, &img, &meta)?;
        pb.println(format!("wrote {}", path.display()));
    }
    pb.finish_and_clear();
    eprintln!(
        "model load {load_s:.3} s, total {:.3} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
