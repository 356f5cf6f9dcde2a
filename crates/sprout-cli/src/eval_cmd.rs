//! `sprout eval …`: the last line printed is the JSON summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use sprout_eval::run::{score_dir, self_check, Source};
use sprout_eval::{Category, EvalError, PromptSet, Report};

use crate::progress::bar;

#[derive(Clone, Copy, ValueEnum)]
enum Baseline {
    Blank,
    Noise,
    WrongPrompt,
}

#[derive(Args)]
#[command(group(ArgGroup::new("what").required(true).args(["self_check", "images", "list", "model", "ae"])))]
pub struct EvalArgs {
    /// Render ground truth for the prompt set and score it (proves the reader).
    #[arg(long)]
    self_check: bool,
    /// With --self-check: blur (σ 1 px), noise (σ 0.03) and JPEG (q 70) the renders first.
    #[arg(long, requires = "self_check")]
    degrade: bool,
    /// With --self-check: score a baseline that should fail instead of the ground truth.
    #[arg(long, value_enum, requires = "self_check", conflicts_with = "degrade")]
    baseline: Option<Baseline>,
    /// Score a directory of images named by prompt id (`<id>.png` or `<id>_<k>.png`).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Print the prompt set (id, category, size, text) as JSON lines.
    #[arg(long)]
    list: bool,
    /// Generate the prompt set with this model (`default` or a bundle directory) and score it.
    #[arg(long)]
    model: Option<String>,
    /// Reconstruct held-out 256² world images with the autoencoder in this directory (`ae.json`
    /// + `ae.safetensors`, or a model bundle) and report PSNR and SSIM.
    #[arg(long)]
    ae: Option<std::path::PathBuf>,
    /// With --ae: score the autoencoder's ceiling on WorldEval instead: each prompt's
    /// ground-truth render is encoded and decoded (a decoder that reads the semantic map gets
    /// the scene's exact map), and the decoded image is read.
    #[arg(long, requires = "ae")]
    roundtrip: bool,
    /// With --roundtrip: add Gaussian noise of this standard deviation to the normalised
    /// latents before decoding (how much latent error the decoder tolerates).
    #[arg(long, requires = "roundtrip", default_value_t = 0.0)]
    latent_noise: f64,
    /// With --model: sampling steps (model default if omitted).
    #[arg(long, requires = "model")]
    steps: Option<usize>,
    /// With --model: guidance scale (model default if omitted).
    #[arg(long, requires = "model")]
    guidance: Option<f64>,
    /// With --model: euler or heun (model default if omitted).
    #[arg(long, requires = "model")]
    sampler: Option<String>,
    /// With --model: print the training proxy instead of generating (velocity error on
    /// object tokens at t = 0.5 / 0.7 / 0.9 and the caption gain at t = 0.7 / 0.9, over a fixed
    /// probe set of N prompts per object category with ground-truth renders and fixed noise);
    /// last line JSON.
    #[arg(long, requires = "model", value_name = "N", num_args = 0..=1, default_missing_value = "8")]
    proxy: Option<usize>,
    /// With --model: prompts of the same canvas size generated together in one batch
    /// (results do not depend on it beyond float rounding; larger is faster).
    #[arg(long, requires = "model", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    batch: u16,
    /// Use only the first N prompts (round-robin over categories).
    #[arg(long)]
    count: Option<usize>,
    /// Restrict to these categories (repeatable).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// Only these prompt ids (repeatable).
    #[arg(long = "prompt", conflicts_with_all = ["count", "categories"])]
    prompt_ids: Vec<String>,
    /// With --self-check: keep the scored images here, named by prompt id.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write the JSON report here (and a markdown table beside it, .md).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seed of the ground-truth scenes and degradations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn write_report(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let md = path.with_extension("md");
    std::fs::write(&md, report.markdown()).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("report: {} and {}", path.display(), md.display());
    Ok(())
}

pub fn run(a: EvalArgs) -> Result<()> {
    if let (Some(dir), false) = (&a.ae, a.roundtrip) {
        let ae = sprout_pipeline::bundle::load_ae(dir, &candle_core::Device::Cpu)?;
        let n = a.count.unwrap_or(64);
        let score = sprout_train::ae_eval::evaluate_ae(&ae, n)?;
        println!("{}", serde_json::to_string(&score)?);
        return Ok(());
    }
    let set = PromptSet::builtin();
    let categories = a
        .categories
        .iter()
        .map(|c| Category::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    let prompts = if a.prompt_ids.is_empty() {
        set.select(a.count, &categories)?
    } else {
        a.prompt_ids
            .iter()
            .map(|id| set.get(id))
            .collect::<Result<Vec<_>, _>>()?
    };
    if a.list {
        for p in &prompts {
            println!(
                "{}",
                serde_json::json!({"id": p.id, "category": p.category, "width": p.width, "height": p.height, "text": p.text})
            );
        }
        return Ok(());
    }
    let pb = bar(prompts.len() as u64, "eval");
    let tick = || pb.inc(1);
    if let (Some(name), Some(per)) = (&a.model, a.proxy) {
        if per == 0 {
            bail!("--proxy N: N must be at least 1");
        }
        let model = crate::generate_cmd::load_model(name)?;
        let r = sprout_train::proxy::velocity_proxy(&model, per)?;
        for (t, e) in &r.velocity_error {
            println!("velocity error on object tokens at t = {t}: {e:.4}");
        }
        for (t, g) in &r.caption_gain {
            println!("caption gain at t = {t}: {g:.4}");
        }
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let report = if let (Some(dir), true) = (&a.ae, a.roundtrip) {
        if !(a.latent_noise.is_finite() && a.latent_noise >= 0.0) {
            bail!(
                "--latent-noise {}: must be finite and at least 0",
                a.latent_noise
            );
        }
        let ae = sprout_pipeline::bundle::load_ae(dir, &candle_core::Device::Cpu)?;
        score_roundtrip(&ae, &set, &prompts, a.seed, a.latent_noise, &tick)?
    } else if let Some(name) = &a.model {
        let model = crate::generate_cmd::load_model(name)?;
        let opts = ModelEval {
            steps: a.steps,
            guidance: a.guidance,
            sampler: a.sampler.clone(),
            batch: a.batch as usize,
            seed: a.seed,
            save: a.save.clone(),
        };
        score_model(&model, name, &set, &prompts, &opts, &tick)?
    } else if let Some(dir) = &a.images {
        if !dir.is_dir() {
            bail!("--images {}: not a directory", dir.display());
        }
        score_dir(&set, &prompts, dir, &tick)?
    } else {
        let source = match a.baseline {
            Some(Baseline::Blank) => Source::Blank,
            Some(Baseline::Noise) => Source::Noise,
            Some(Baseline::WrongPrompt) => Source::WrongPrompt,
            None if a.degrade => Source::Degraded,
            None => Source::GroundTruth,
        };
        self_check(&set, &prompts, source, a.seed, a.save.as_deref(), &tick)?
    };
    pb.finish_and_clear();
    let report_path = a
        .report
        .clone()
        .or_else(|| a.images.as_ref().map(|d| d.join("worldeval.json")))
        .or_else(|| a.save.as_ref().map(|d| d.join("worldeval.json")));
    if let Some(p) = &report_path {
        write_report(&report, p)?;
    }
    print!("{}", report.markdown());
    println!("{}", report.summary());
    if !report.unreadable.is_empty() {
        bail!(
            "{} unreadable images (first: {}); the others were scored",
            report.unreadable.len(),
            report.unreadable[0]
        );
    }
    if let Some(first) = report.unknown.first() {
        bail!(
            "{} images are named after no prompt id (first: {first}); name them <id>.png or <id>_<k>.png",
            report.unknown.len()
        );
    }
    if let (Some(dir), Some(first)) = (&a.images, report.missing.first()) {
        return Err(EvalError::MissingImages {
            dir: dir.display().to_string(),
            missing: report.missing.len(),
            total: prompts.len(),
            first: first.clone(),
        }
        .into());
    }
    Ok(())
}

/// The autoencoder's WorldEval ceiling: ground truth encoded, optionally noised (σ in the
/// normalised latent space, noise seeded by the prompt's index), decoded and read.
fn score_roundtrip(
    ae: &sprout_models::ae::Autoencoder,
    set: &PromptSet,
    prompts: &[&sprout_eval::Prompt],
    seed: u64,
    sigma: f64,
    tick: &(dyn Fn() + Sync),
) -> Result<Report> {
    use sprout_models::ae::DOWNSCALE;
    let dev = candle_core::Device::Cpu;
    let source = format!("autoencoder round trip, latent noise {sigma}");
    sprout_eval::run::score_generated(
        set,
        prompts,
        &source,
        |index, p| -> Result<Vec<image::RgbImage>> {
            let scene = sprout_eval::truth::ground_truth(p, seed, index as u64);
            let img = sprout_world::render::Renderer::new().render(&scene)?;
            let x = sprout_pipeline::image_io::from_image(&img, &dev)?;
            let mut z = ae.encode(&x)?;
            if sigma > 0.0 {
                let (_, c, h, w) = z.dims4()?;
                let eps = sprout_pipeline::noise::noise(
                    seed.wrapping_add(index as u64),
                    &[1, c, h, w],
                    &dev,
                )?;
                z = (z + (eps * sigma)?)?;
            }
            let sem = match ae.cfg.semantic_channels {
                0 => None,
                n => {
                    let rgb: Vec<f32> = x.flatten_all()?.to_vec1()?;
                    let kind = sprout_pipeline::bundle::map_kind(ae.cfg.semantic_map.as_deref())
                        .map_err(|e| anyhow::anyhow!("ae.json: {e}"))?;
                    let map = kind.map(&scene, &rgb, DOWNSCALE)?;
                    let (h, w) = (p.height as usize / DOWNSCALE, p.width as usize / DOWNSCALE);
                    Some(candle_core::Tensor::from_vec(map, (1, n, h, w), &dev)?)
                }
            };
            let y = ae.decode_with(&z, sem.as_ref())?;
            Ok(sprout_pipeline::image_io::to_images(&y)?)
        },
        tick,
    )
}

/// How `sprout eval --model` samples (None: the model's defaults).
pub struct ModelEval {
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub sampler: Option<String>,
    /// Prompts of one canvas size generated together.
    pub batch: usize,
    /// Prompt `k` of the set uses seed `seed + 1000·k`.
    pub seed: u64,
    /// Keep the images here, named by prompt id.
    pub save: Option<PathBuf>,
}

/// Generate `prompts` with `model` and score them (the images of a prompt depend only on
/// its text, canvas and seed, not on the batching).
pub fn score_model(
    model: &sprout_pipeline::bundle::Bundle,
    name: &str,
    set: &PromptSet,
    prompts: &[&sprout_eval::Prompt],
    o: &ModelEval,
    tick: &(dyn Fn() + Sync),
) -> Result<Report> {
    let sampler = match &o.sampler {
        Some(s) => sprout_pipeline::flow::Sampler::parse(s).map_err(anyhow::Error::msg)?,
        None => model.meta.sampler,
    };
    let steps = o.steps.unwrap_or(model.meta.default_steps);
    let guidance = o.guidance.unwrap_or(model.meta.default_guidance);
    if let Some(dir) = &o.save {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let source =
        format!("model {name} ({steps} steps, guidance {guidance}, {sampler:?})").to_lowercase();
    let profile = sprout_pipeline::model::Family::profile(model);
    let request = |index: usize, p: &sprout_eval::Prompt| sprout_pipeline::request::Request {
        seed: o.seed.wrapping_add(1000 * index as u64),
        steps,
        guidance,
        width: p.width,
        height: p.height,
        sampler,
        ..sprout_pipeline::request::Request::new(&p.text, &profile)
    };
    // Generated lazily in batches: a prompt not yet generated is generated together
    // with the following prompts of the same canvas size.
    let mut cache: std::collections::HashMap<String, Vec<image::RgbImage>> =
        std::collections::HashMap::new();
    sprout_eval::run::score_generated(
        set,
        prompts,
        &source,
        |_, p| -> Result<Vec<image::RgbImage>> {
            if !cache.contains_key(&p.id) {
                let at = prompts.iter().position(|q| q.id == p.id).unwrap_or(0);
                let group: Vec<&sprout_eval::Prompt> = prompts[at..]
                    .iter()
                    .copied()
                    .filter(|q| {
                        (q.width, q.height) == (p.width, p.height) && !cache.contains_key(&q.id)
                    })
                    .take(o.batch.max(1))
                    .collect();
                let reqs: Vec<_> = group
                    .iter()
                    .map(|q| request(sprout_eval::run::index_of(set, q), q))
                    .collect();
                let imgs = sprout_pipeline::generate::generate_many(model, &reqs, |_, _| {})?;
                for (q, im) in group.iter().zip(imgs) {
                    if let Some(dir) = &o.save {
                        for img in &im {
                            img.save(dir.join(format!("{}.png", q.id)))?;
                        }
                    }
                    cache.insert(q.id.clone(), im);
                }
            }
            cache
                .remove(&p.id)
                .with_context(|| format!("no image was generated for prompt {}", p.id))
        },
        tick,
    )
}
