//! `sprout bench [--train]` (and `--dit PRESET`, [`crate::bench_dit`]): step latency, throughput and MFU on this machine, measured in
//! one run next to this machine's f32 matmul peak. Prints a table, then one JSON line.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use clap::Args;
use serde_json::{json, Map, Value};
use sprout_models::ae::{AeConfig, Autoencoder};
use sprout_models::dit::embed::{grid_ids, text_ids};
use sprout_models::dit::{Dit, DitConfig, DitInput};
use sprout_models::init::seeded_varbuilder;
use sprout_models::probe::{Probe, ProbeConfig};
use sprout_train::optim::{AdamW, OptimConfig};

#[derive(Args)]
pub struct BenchArgs {
    /// Also measure training steps (the probe shape and the native DiT).
    #[arg(long)]
    train: bool,
    /// Timed repetitions per row, the median reported (default 3; 1 with --dit, whose
    /// full-width forward takes long).
    #[arg(long)]
    repeat: Option<usize>,
    /// Model for the end-to-end generate row: `default` or a bundle directory (skipped if
    /// absent); or flux-schnell | flux-dev | flux-kontext with --weights for FLUX.1 rows;
    /// or flux2-klein | flux2-klein-base | flux2-dev with --weights for FLUX.2 rows.
    #[arg(long, default_value = "default")]
    model: String,
    /// FLUX weights (file or folder, as for `generate`): adds load time, text encoding, peak
    /// memory and one DiT step at each --flux-size (timed once: a full-size step takes
    /// minutes on a CPU).
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    #[command(flatten)]
    parts: crate::flux_parts::FluxPartsArgs,
    /// Canvases of the FLUX step rows, comma-separated (e.g. 512x512,1024x1024).
    #[arg(long, default_value = "1024x1024")]
    flux_size: String,
    /// FLUX.2: the text encoder's tapped layers (as for `generate`).
    #[arg(long, value_delimiter = ',')]
    text_layers: Option<Vec<usize>>,
    /// FLUX.2: the text encoder from this GGUF file (as for `generate`).
    #[arg(long)]
    text_encoder: Option<std::path::PathBuf>,
    /// FLUX.2: the transformer from this GGUF file (as for `generate`).
    #[arg(long)]
    transformer: Option<std::path::PathBuf>,
    /// FLUX.2: also one whole image at the first --flux-size in this many steps, through the
    /// same entry point as `generate` (text encoding, sampling, decoding), timed once.
    #[arg(long)]
    e2e_steps: Option<usize>,
    /// Instead of the rows above: one forward of this DiT preset (flux-schnell, flux-dev,
    /// flux2-klein-4b, flux2-klein-9b, flux2-dev, native-small) at its full width with random
    /// weights built in memory.
    #[arg(long, value_name = "PRESET")]
    dit: Option<String>,
    /// With --dit: double- and single-stream blocks, D,S (default: the preset's own).
    #[arg(long, requires = "dit")]
    blocks: Option<String>,
    /// With --dit: the canvas.
    #[arg(long, requires = "dit", default_value = "1024x1024")]
    size: String,
    /// With --dit: the weights' form, f32, bf16, q8_0 or q4_0 (MFU is against the peak of
    /// the same form, measured in the same run).
    #[arg(long, requires = "dit", default_value = "f32")]
    dtype: String,
    /// With --dit: threads for the products (default: all cores).
    #[arg(long, requires = "dit")]
    threads: Option<usize>,
    /// With --dit: text tokens (default 256 for FLUX.1 presets, 512 for FLUX.2's, 32 for the
    /// native one).
    #[arg(long, requires = "dit")]
    txt: Option<usize>,
    /// Attention as one fused kernel (`fused`, the default: no score matrix) or composed
    /// from candle's ops (`composed`), to compare the two on the same rows.
    #[arg(long, default_value = "fused", value_parser = ["fused", "composed"])]
    attention: String,
}

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// The prompt of the FLUX rows.
const PROMPT: &str = "a red circle to the left of a blue star";

/// `--flux-size`: one canvas or several, comma-separated, each a multiple of `m` a side.
fn flux_sizes(list: &str, m: usize) -> Result<Vec<(usize, usize)>> {
    list.split(',')
        .map(|one| {
            let (w, h) = sprout_world::canvas::parse_size(one.trim())?;
            let (w, h) = (w as usize, h as usize);
            if !w.is_multiple_of(m) || !h.is_multiple_of(m) {
                anyhow::bail!(
                    "--flux-size {w}x{h}: this model needs sides that are multiples of {m}"
                );
            }
            Ok((w, h))
        })
        .collect()
}

/// One timed DiT step row (`forward` runs it).
fn step_row(
    model: &str,
    cfg: &DitConfig,
    (w, h): (usize, usize),
    (tokens, lt): (usize, usize),
    forward: impl FnOnce() -> Result<()>,
) -> Result<Row> {
    let t0 = Instant::now();
    forward()?;
    let s = t0.elapsed().as_secs_f64();
    Ok(Row {
        name: format!(
            "{model} DiT step {w}x{h} ({:.2}B, {tokens}+{lt} tok)",
            cfg.num_params() as f64 / 1e9
        ),
        seconds: s,
        per_s: Some((tokens as f64 / s, "tokens/s")),
        flops: Some(cfg.forward_flops(1, tokens, lt)),
    })
}

/// FLUX.2 rows: the model's load (the loader `generate` uses, with the same flags), the
/// prompt's encoding, one DiT step at each `--flux-size`, and with `--e2e-steps` a whole
/// image at the first size through the one generation entry point.
fn flux2_rows(a: &BenchArgs, weights: &std::path::Path, rows: &mut Vec<Row>) -> Result<()> {
    use sprout_models::dit::embed::{grid_ids_4d, text_ids_4d};
    let t0 = Instant::now();
    let mut model = crate::generate_cmd::load(
        &a.model,
        Some(weights),
        &a.parts,
        &[],
        None,
        crate::generate_cmd::Flux2Flags {
            layers: a.text_layers.as_deref(),
            encoder: a.text_encoder.as_deref(),
            transformer: a.transformer.as_deref(),
        },
        "cpu",
    )?;
    rows.push(Row {
        name: format!("{} load", a.model),
        seconds: t0.elapsed().as_secs_f64(),
        per_s: None,
        flops: None,
    });
    // [dev] takes its guidance scale as an input (the profile's default).
    let guidance = model.profile().default_guidance;
    let sprout_pipeline::model::Model::Flux2(m) = &mut model else {
        anyhow::bail!("--model {} did not load a FLUX.2 model", a.model);
    };
    let f = m.size_multiple();
    let sizes = flux_sizes(&a.flux_size, f)?;
    let t0 = Instant::now();
    let text = m.encode_prompts(&[PROMPT], m.text.max_len)?.swap_remove(0);
    let lt = text.dim(1)?;
    rows.push(Row {
        name: format!("{} text encoding ({lt} tok)", a.model),
        seconds: t0.elapsed().as_secs_f64(),
        per_s: Some((lt as f64 / t0.elapsed().as_secs_f64(), "tokens/s")),
        flops: None,
    });
    let cfg = m.dit_config().clone();
    let dev = m.device().clone();
    for &(w, h) in &sizes {
        let (rh, rw) = (h / f, w / f);
        let img =
            Tensor::randn(0f32, 1.0, (1, rh * rw, cfg.in_channels()), &dev)?.to_dtype(m.dtype())?;
        let img_ids = grid_ids_4d(0, rh, rw, &dev)?;
        let txt_ids = text_ids_4d(lt, &dev)?;
        let t = Tensor::new(&[0.5f32], &dev)?;
        let y = Tensor::zeros((1, 0), m.dtype(), &dev)?;
        let g = Tensor::new(&[guidance as f32], &dev)?.to_dtype(m.dtype())?;
        rows.push(step_row(&a.model, &cfg, (w, h), (rh * rw, lt), || {
            m.dit()?.forward(&DitInput {
                guidance: cfg.guidance_embed.then_some(&g),
                ..DitInput::new(&img, &img_ids, &text, &txt_ids, &t, &y)
            })?;
            Ok(())
        })?);
    }
    if let Some(steps) = a.e2e_steps {
        let (w, h) = sizes[0];
        let req = sprout_pipeline::request::Request {
            width: w as u32,
            height: h as u32,
            steps,
            ..sprout_pipeline::request::Request::new(PROMPT, &model.profile())
        };
        let t0 = Instant::now();
        sprout_pipeline::denoise::Hooks::progress(&mut |_, _| {}, |hooks| {
            model.generate(&req, hooks)
        })
        .map_err(crate::generate_cmd::cli_error)?;
        rows.push(Row {
            name: format!("{} generate {w}x{h} e2e ({steps} steps)", a.model),
            seconds: t0.elapsed().as_secs_f64(),
            per_s: None,
            flops: None,
        });
    }
    Ok(())
}

/// FLUX.1 rows: model load with text encoding, one DiT step at each `--flux-size`.
fn flux_rows(a: &BenchArgs, weights: &std::path::Path, rows: &mut Vec<Row>) -> Result<()> {
    use sprout_models::flux::files::Variant;
    use sprout_pipeline::flux::FluxModel;
    let variant = Variant::parse(&a.model)?;
    let t0 = Instant::now();
    let (model, mut texts) = FluxModel::load_with_prompts(
        weights,
        &a.parts.components(),
        variant,
        &Device::Cpu,
        &[PROMPT],
        None,
    )?;
    let text = texts.pop().expect("one prompt");
    rows.push(Row {
        name: format!("{} load + text encoding", a.model),
        seconds: t0.elapsed().as_secs_f64(),
        per_s: None,
        flops: None,
    });
    let m = sprout_pipeline::flux::size_multiple(&model.vae);
    let cfg = model.dit.config().clone();
    let lt = text.states.dim(1)?;
    let txt_ids = Tensor::zeros((1, lt, 3), DType::F32, &Device::Cpu)?;
    let t = Tensor::new(&[0.5f32], &Device::Cpu)?;
    let g = Tensor::new(&[3.5f32], &Device::Cpu)?;
    for (w, h) in flux_sizes(&a.flux_size, m)? {
        let (rh, rw) = (h / m, w / m);
        let img = Tensor::randn(0f32, 1.0, (1, rh * rw, cfg.embed_channels()), &Device::Cpu)?
            .to_dtype(model.dtype())?;
        let img_ids = grid_ids(0, rh, rw, &Device::Cpu)?;
        rows.push(step_row(&a.model, &cfg, (w, h), (rh * rw, lt), || {
            model.dit.forward(&DitInput {
                guidance: cfg.guidance_embed.then_some(&g),
                ..DitInput::new(&img, &img_ids, &text.states, &txt_ids, &t, &text.pooled)
            })?;
            Ok(())
        })?);
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `f` over `n` runs after one warm-up.
fn time(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(median(v))
}

fn matmul_peak(dev: &Device) -> Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let s = time(5, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s)
}

struct Row {
    name: String,
    seconds: f64,
    per_s: Option<(f64, &'static str)>,
    flops: Option<f64>,
}

pub fn run(a: BenchArgs) -> Result<()> {
    sprout_models::flash::set_fused(a.attention == "fused");
    if let Some(preset) = &a.dit {
        return crate::bench_dit::run(crate::bench_dit::DitBench {
            preset: preset.clone(),
            blocks: a.blocks.clone(),
            size: a.size.clone(),
            dtype: a.dtype.clone(),
            threads: a.threads,
            txt: a.txt,
            repeat: a.repeat.unwrap_or(1),
            attention: a.attention.clone(),
        });
    }
    let dev = Device::Cpu;
    let repeat = a.repeat.unwrap_or(3);
    let peak = matmul_peak(&dev)?;
    let mut rows: Vec<Row> = Vec::new();
    let cfg = DitConfig::native_small();
    let vm = VarMap::new();
    let dit = Dit::new(&cfg, seeded_varbuilder(&vm, 0, DType::F32, &dev))?;
    let (li, lt) = (64usize, 32usize);
    let make = |b: usize| -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)> {
        Ok((
            Tensor::randn(0f32, 1.0, (b, li, cfg.in_channels()), &dev)?,
            grid_ids(0, 8, 8, &dev)?,
            Tensor::randn(0f32, 1.0, (b, lt, cfg.context_in_dim), &dev)?,
            text_ids(lt, &dev)?,
            Tensor::rand(0f32, 1.0, b, &dev)?,
            Tensor::randn(0f32, 1.0, (b, cfg.vec_in_dim), &dev)?,
        ))
    };
    if a.train {
        let p = ProbeConfig::standard();
        let pvm = VarMap::new();
        let probe = Probe::new(&p, seeded_varbuilder(&pvm, 0, DType::F32, &dev))?;
        let params: Vec<_> = pvm
            .data()
            .lock()
            .expect("vars")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut opt = AdamW::new(OptimConfig::default(), params)?;
        let x = Tensor::randn(0f32, 1.0, (p.batch, p.tokens, p.dim), &dev)?;
        let s = time(repeat, || {
            let loss = probe.forward(&x)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?, 1e-4)?;
            Ok(())
        })?;
        rows.push(Row {
            name: "probe train step (d256 L8, 96 tok x 32)".into(),
            seconds: s,
            per_s: Some((p.batch as f64 / s, "samples/s")),
            flops: Some(3.0 * p.forward_flops()),
        });
        let b = 32;
        let (img, img_ids, txt, txt_ids, t, y) = make(b)?;
        let params: Vec<_> = vm
            .data()
            .lock()
            .expect("vars")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut opt = AdamW::new(OptimConfig::default(), params)?;
        let s = time(repeat, || {
            let out = dit.forward(&DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y))?;
            opt.step(&out.sqr()?.mean_all()?.backward()?, 1e-4)?;
            Ok(())
        })?;
        rows.push(Row {
            name: format!(
                "native DiT train step ({:.1}M, {li}+{lt} tok x {b})",
                cfg.num_params() as f64 / 1e6
            ),
            seconds: s,
            per_s: Some((b as f64 / s, "samples/s")),
            flops: Some(3.0 * cfg.forward_flops(b, li, lt)),
        });
        // The same step as the trainer runs it on a CPU (`dit.data_parallel`): two halves of
        // the batch at once, one per core, products single-threaded, gradients summed.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
            let half = b / 2;
            let halves = [make(half)?, make(b - half)?];
            std::env::set_var("RAYON_NUM_THREADS", "1");
            let timed = time(repeat, || {
                let run = |h: &(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)| {
                    let out = dit.forward(&DitInput::new(&h.0, &h.1, &h.2, &h.3, &h.4, &h.5))?;
                    out.sqr()?.mean_all()?.backward()
                };
                let (ga, gb) = pool.install(|| rayon::join(|| run(&halves[0]), || run(&halves[1])));
                let (mut ga, gb) = (ga?, gb?);
                for (_, v) in vm.data().lock().expect("vars").iter() {
                    let t = v.as_tensor();
                    if let (Some(x), Some(y)) = (ga.get(t), gb.get(t)) {
                        let sum = (x + y)?;
                        ga.insert(t, sum);
                    }
                }
                opt.step(&ga, 1e-4)?;
                Ok(())
            });
            std::env::remove_var("RAYON_NUM_THREADS");
            let s = timed?;
            rows.push(Row {
                name: format!("native DiT train step, two halves at once ({li}+{lt} tok x {b})"),
                seconds: s,
                per_s: Some((b as f64 / s, "samples/s")),
                flops: Some(3.0 * cfg.forward_flops(b, li, lt)),
            });
        }
    }
    // Sampling: one DiT evaluation with classifier-free guidance (batch 2) at 256².
    let (img, img_ids, txt, txt_ids, t, y) = make(2)?;
    let s = time(repeat, || {
        dit.forward(&DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y))?;
        Ok(())
    })?;
    rows.push(Row {
        name: "native DiT sampling step 256² (CFG batch 2)".into(),
        seconds: s,
        per_s: Some(((2 * li) as f64 / s, "tokens/s")),
        flops: Some(cfg.forward_flops(2, li, lt)),
    });
    let avm = VarMap::new();
    let ae = Autoencoder::new(
        &AeConfig::native(),
        seeded_varbuilder(&avm, 0, DType::F32, &dev),
    )?;
    let z = Tensor::randn(0f32, 1.0, (1, 32, 8, 8), &dev)?;
    let s = time(repeat, || {
        ae.decode(&z)?;
        Ok(())
    })?;
    rows.push(Row {
        name: "autoencoder decode 256²".into(),
        seconds: s,
        per_s: None,
        flops: None,
    });
    let flux2 = a.model.starts_with("flux2-");
    if !flux2 && (a.text_layers.is_some() || a.text_encoder.is_some() || a.transformer.is_some()) {
        anyhow::bail!("--text-layers, --text-encoder and --transformer apply to the FLUX.2 models (--model flux2-klein|flux2-klein-base|flux2-dev)");
    }
    if a.e2e_steps.is_some() && !flux2 {
        anyhow::bail!(
            "--e2e-steps applies to the FLUX.2 rows (--model flux2-klein|flux2-dev --weights SNAPSHOT)"
        );
    }
    if a.e2e_steps == Some(0) {
        anyhow::bail!("--e2e-steps must be at least 1");
    }
    if let (true, Some(weights)) = (flux2, &a.weights) {
        flux2_rows(&a, weights, &mut rows)?;
    } else if let Some(weights) = &a.weights {
        flux_rows(&a, weights, &mut rows)?;
    } else if flux2 || a.model.starts_with("flux-") || !a.parts.components().is_empty() {
        anyhow::bail!(
            "--model {} needs --weights (its weights file or folder)",
            a.model
        );
    } else if a.model != "default" || sprout_pipeline::embedded::available() {
        let t0 = Instant::now();
        let mut model = sprout_pipeline::model::Model::Native(Box::new(
            crate::generate_cmd::load_model(&a.model)?,
        ));
        let load = t0.elapsed().as_secs_f64();
        let req = sprout_pipeline::request::Request::new(
            "a red circle to the left of a blue star",
            &model.profile(),
        );
        let s = time(repeat, || {
            sprout_pipeline::denoise::Hooks::progress(&mut |_, _| {}, |h| model.generate(&req, h))?;
            Ok(())
        })?;
        rows.push(Row {
            name: format!("model load ({})", a.model),
            seconds: load,
            per_s: None,
            flops: None,
        });
        rows.push(Row {
            name: format!("generate 256² e2e ({} steps, {:?})", req.steps, req.sampler)
                .to_lowercase(),
            seconds: s + load,
            per_s: None,
            flops: None,
        });
    }
    println!("| bench | seconds | throughput | GFLOP | MFU |\n|---|---:|---:|---:|---:|");
    println!(
        "| f32 matmul peak (1024³) | | {:.1} GFLOP/s | | |",
        peak / 1e9
    );
    let mut out = Map::new();
    out.insert(
        "matmul_peak_gflops".into(),
        json!((peak / 1e7).round() / 100.0),
    );
    for r in &rows {
        let mfu = r.flops.map(|f| f / r.seconds / peak);
        println!(
            "| {} | {:.4} | {} | {} | {} |",
            r.name,
            r.seconds,
            r.per_s
                .map(|(v, u)| format!("{v:.1} {u}"))
                .unwrap_or_default(),
            r.flops
                .map(|f| format!("{:.1}", f / 1e9))
                .unwrap_or_default(),
            mfu.map(|m| format!("{:.1}%", 100.0 * m))
                .unwrap_or_default()
        );
        let key: String = r
            .name
            .split(" (")
            .next()
            .unwrap_or(&r.name)
            .replace([' ', '²'], "_")
            .to_lowercase();
        let mut v = Map::new();
        v.insert("seconds".into(), json!(r.seconds));
        if let Some((x, u)) = r.per_s {
            v.insert(u.replace('/', "_per_"), json!(x));
        }
        if let Some(m) = mfu {
            v.insert("mfu".into(), json!(m));
        }
        out.insert(key, Value::Object(v));
    }
    // Peak resident memory of the whole run (the FLUX.1 rows dominate it when present).
    if let Some(rss) = peak_rss() {
        println!("\npeak resident memory: {:.2} GB", rss as f64 / 1e9);
        out.insert("peak_rss_bytes".into(), json!(rss));
    }
    println!("{}", Value::Object(out));
    Ok(())
}
