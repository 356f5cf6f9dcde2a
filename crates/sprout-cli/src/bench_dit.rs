//! `sprout bench --dit PRESET [--blocks D,S] [--size WxH] [--dtype f32|bf16|q8_0|q4_0]
//! [--threads N]`: one DiT forward of a preset's full width with random weights built in
//! memory (no file), timed next to the peak product rate of the same dtype measured in the
//! same run; seconds, GFLOP/s, MFU and the forward's peak resident memory, then one JSON
//! line.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::quantized_var_builder::VarBuilder as QVarBuilder;
use serde_json::json;
use sprout_models::dit::embed::{image_ids, prompt_ids};
use sprout_models::dit::{Dit, DitConfig, DitInput};
use sprout_models::flash::Precision;
use sprout_models::init::seeded_varbuilder;
use sprout_models::weights::Weights;

/// What `--dit` measures.
pub struct DitBench {
    pub preset: String,
    pub blocks: Option<String>,
    pub size: String,
    pub dtype: String,
    pub threads: Option<usize>,
    pub txt: Option<usize>,
    pub repeat: usize,
    /// `fused` (the kernel of `sprout_models::flash`) or `composed` (candle's ops), as set
    /// by the caller (`flash::set_fused`); reported with the figures.
    pub attention: String,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    F32,
    Bf16,
    Quant(GgmlDType),
}

fn parse_kind(s: &str) -> Result<Kind> {
    Ok(match s {
        "f32" => Kind::F32,
        "bf16" => Kind::Bf16,
        "q8_0" => Kind::Quant(GgmlDType::Q8_0),
        "q4_0" => Kind::Quant(GgmlDType::Q4_0),
        other => bail!("--dtype {other:?} is not one of f32, bf16, q8_0, q4_0"),
    })
}

/// `D,S`: double- and single-stream blocks.
fn parse_blocks(s: &str) -> Result<(usize, usize)> {
    let parsed = s
        .split_once(',')
        .and_then(|(d, s)| Some((d.trim().parse().ok()?, s.trim().parse().ok()?)));
    match parsed {
        Some((d, s)) if d + s > 0 => Ok((d, s)),
        _ => bail!("--blocks {s:?}: expected D,S (double- and single-stream blocks, not both 0)"),
    }
}

/// Resets this process's peak resident memory (`VmHWM`) to its current size, so that the
/// peak read afterwards is that of what runs next (Linux: `clear_refs` 5).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn rss(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Median seconds of `n` runs of `f` (no warm-up: a full-width forward takes long enough).
fn median_secs(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64());
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// The product rate of `kind` on this machine: a 1024-row activation times a 4096×4096
/// weight held as the DiT holds it (f32, bf16, or quantized blocks through `QMatMul`).
fn peak(kind: Kind, dev: &Device) -> Result<f64> {
    let (m, k, n) = (1024usize, 4096usize, 4096usize);
    let x = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let w = Tensor::randn(0f32, 0.02, (n, k), dev)?;
    let secs = match kind {
        Kind::F32 => {
            let wt = w.t()?;
            x.matmul(&wt)?;
            median_secs(3, || {
                x.matmul(&wt)?;
                Ok(())
            })?
        }
        Kind::Bf16 => {
            // As the DiT's bf16 linear layers hold it: packed for the CPU's bf16 kernel, or
            // widened per product where there is none.
            let lw = Weights::Bf16Linear(VarBuilder::from_tensors(
                HashMap::from([("w".to_string(), w.to_dtype(DType::BF16)?)]),
                DType::F32,
                dev,
            ))
            .linear_weight(n, k, "w", candle_nn::Init::Const(0.0))?;
            lw.matmul_t(&x)?;
            median_secs(3, || {
                lw.matmul_t(&x)?;
                Ok(())
            })?
        }
        Kind::Quant(q) => {
            let mm = QMatMul::from_qtensor(QTensor::quantize(&w, q)?)?;
            mm.forward(&x)?;
            median_secs(3, || {
                mm.forward(&x)?;
                Ok(())
            })?
        }
    };
    Ok(2.0 * (m * k * n) as f64 / secs)
}

/// A DiT of `cfg` with random weights in `dtype`, and those weights by name. The weights are
/// plain tensors, as a loaded file gives them: trainable variables would make the forward
/// record its graph and keep every intermediate alive.
fn dense(cfg: &DitConfig, dtype: DType, dev: &Device) -> Result<(Dit, HashMap<String, Tensor>)> {
    let vm = VarMap::new();
    // Built once to learn every weight's name and shape.
    drop(Dit::new(cfg, seeded_varbuilder(&vm, 0, dtype, dev))?);
    // Every weight random, the zero-initialised gates and final layer too, so that the
    // forward computes something (timing does not depend on the values).
    let mut weights = HashMap::new();
    for (name, v) in vm.data().lock().expect("varmap").drain() {
        let r = Tensor::randn(0f32, 0.05, v.shape(), dev)?.to_dtype(v.dtype())?;
        weights.insert(name, r);
    }
    let dit = Dit::new(cfg, VarBuilder::from_tensors(weights.clone(), dtype, dev))?;
    Ok((dit, weights))
}

/// The same weights quantized to `q` as a GGUF file holds them (written in memory, read back
/// by the loader a file would go through).
fn quantized(
    cfg: &DitConfig,
    weights: HashMap<String, Tensor>,
    q: GgmlDType,
    dev: &Device,
) -> Result<Dit> {
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in names {
        let qt = sprout_models::gguf::quantize(name, &weights[name], q)
            .with_context(|| format!("quantizing {name}"))?;
        tensors.push((name.clone(), qt));
    }
    drop(weights);
    let mut buf = std::io::Cursor::new(Vec::new());
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let meta: [(&str, &gguf_file::Value); 0] = [];
    gguf_file::write(&mut buf, &meta, &ts).context("writing the quantized weights in memory")?;
    drop(tensors);
    let vb = QVarBuilder::from_gguf_buffer(buf.get_ref(), dev)?;
    Ok(Dit::new(
        cfg,
        Weights::Quantized {
            vb,
            dtype: DType::F32,
        },
    )?)
}

/// The DiT of `weights` with its linear weights in bf16 and everything else in f32, as
/// `generate` loads a bf16 file on the CPU.
fn bf16_linear(cfg: &DitConfig, weights: HashMap<String, Tensor>, dev: &Device) -> Result<Dit> {
    let weights = weights
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::BF16)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(Dit::new(
        cfg,
        Weights::Bf16Linear(VarBuilder::from_tensors(weights, DType::F32, dev)),
    )?)
}

fn build(cfg: &DitConfig, kind: Kind, dev: &Device) -> Result<Dit> {
    match kind {
        Kind::F32 => Ok(dense(cfg, DType::F32, dev)?.0),
        Kind::Bf16 => {
            let (dit, weights) = dense(cfg, DType::BF16, dev)?;
            drop(dit);
            bf16_linear(cfg, weights, dev)
        }
        Kind::Quant(q) => {
            let (dit, vm) = dense(cfg, DType::F32, dev)?;
            drop(dit);
            quantized(cfg, vm, q, dev)
        }
    }
}

pub fn run(b: DitBench) -> Result<()> {
    let kind = parse_kind(&b.dtype)?;
    let mut cfg = DitConfig::by_name(&b.preset)?;
    if let Some(s) = &b.blocks {
        (cfg.depth, cfg.depth_single_blocks) = parse_blocks(s)?;
    }
    let (w, h) = sprout_world::canvas::parse_size(&b.size)?;
    // Pixels per token: FLUX.1's and FLUX.2's autoencoders downscale 8× and pack 2×2; the
    // native one 32×.
    let flux = b.preset.starts_with("flux");
    let per_token = if flux {
        8 * cfg.patch_size
    } else {
        sprout_models::ae::DOWNSCALE * cfg.patch_size
    };
    if !(w as usize).is_multiple_of(per_token) || !(h as usize).is_multiple_of(per_token) {
        bail!(
            "--size {w}x{h}: {} needs sides that are multiples of {per_token}",
            b.preset
        );
    }
    let (rows, cols) = (h as usize / per_token, w as usize / per_token);
    let li = rows * cols;
    // Text tokens: FLUX.1's default T5 length for schnell, FLUX.2's pipelines' 512, the
    // native encoder's 32.
    let lt = b.txt.unwrap_or(match (flux, cfg.axes_dim.len()) {
        (true, 4) => 512,
        (true, _) => 256,
        (false, _) => 32,
    });
    if let Some(n) = b.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle's CPU products read this at every product.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let threads = b
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let dev = Device::Cpu;
    // A bf16 model's attention multiplies in bf16 too where the CPU can (as generate runs
    // bf16 weights, and as PyTorch's bf16 attention does).
    // Quantized weights multiply in bf16 too where the CPU has bf16 products (dequantized
    // per product): their attention as well.
    let precision = if kind == Kind::F32 {
        Precision::F32
    } else {
        Precision::Bf16
    };
    let attention = if precision.effective() == Precision::Bf16 && b.attention == "fused" {
        "fused bf16".to_string()
    } else {
        b.attention.clone()
    };
    let b = DitBench { attention, ..b };
    eprintln!(
        "{} with {}+{} blocks ({:.2} B parameters), {:?} weights, {li}+{lt} tokens, {threads} threads, {} attention",
        b.preset,
        cfg.depth,
        cfg.depth_single_blocks,
        cfg.num_params() as f64 / 1e9,
        kind,
        b.attention
    );
    // The random weights are made dense first (f32, or bf16 then packed: about 4 bytes a
    // parameter either way) and quantized from there; refuse before, not by running out.
    let build_bytes = cfg.num_params() as u64 * 4;
    sprout_models::flux::inspect::check_memory(
        &format!(
            "building {}+{} blocks of random weights in memory (use fewer --blocks; a full-size quantized model runs from its file with `sprout bench --model {} --weights FILE.gguf`)",
            cfg.depth, cfg.depth_single_blocks, b.preset
        ),
        build_bytes,
        sprout_models::flux::inspect::available_memory(),
    )?;
    let peak = peak(kind, &dev)?;
    let t0 = Instant::now();
    let dit = build(&cfg, kind, &dev)?.with_attention(precision);
    let build_s = t0.elapsed().as_secs_f64();
    // The random f32 weights the build made and dropped stay in the heap (the allocator is
    // set never to unmap); handed back so that the resident memory measured is the model's.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let act = DType::F32;
    let img = Tensor::randn(0f32, 1.0, (1, li, cfg.embed_channels()), &dev)?.to_dtype(act)?;
    let txt = Tensor::randn(0f32, 1.0, (1, lt, cfg.context_in_dim), &dev)?.to_dtype(act)?;
    let vec = Tensor::randn(0f32, 1.0, (1, cfg.vec_in_dim), &dev)?.to_dtype(act)?;
    let img_ids = image_ids(cfg.axes_dim.len(), rows, cols, &dev)?;
    let txt_ids = prompt_ids(cfg.axes_dim.len(), lt, &dev)?;
    let t = Tensor::new(&[0.5f32], &dev)?;
    let g = Tensor::new(&[3.5f32], &dev)?;
    let base = rss("VmRSS:");
    let exact_peak = reset_peak_rss();
    let secs = median_secs(b.repeat, || {
        let out = dit.forward(&DitInput {
            guidance: cfg.guidance_embed.then_some(&g),
            ..DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &vec)
        })?;
        if !out
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?
            .is_finite()
        {
            bail!("the forward gave non-finite values");
        }
        Ok(())
    })?;
    let peak_rss = rss("VmHWM:");
    let flops = cfg.forward_flops(1, li, lt);
    let rate = flops / secs;
    println!(
        "| bench | seconds | GFLOP | GFLOP/s | peak GFLOP/s ({}) | MFU |",
        b.dtype
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| {} {}+{} blocks {w}x{h} ({li}+{lt} tok), {}, {} attention | {secs:.3} | {:.1} | {:.1} | {:.1} | {:.1}% |",
        b.preset,
        cfg.depth,
        cfg.depth_single_blocks,
        b.dtype,
        b.attention,
        flops / 1e9,
        rate / 1e9,
        peak / 1e9,
        100.0 * rate / peak
    );
    if let Some(p) = peak_rss {
        println!(
            "\npeak resident memory{}: {:.2} GB (weights and inputs {:.2} GB before it); weights built in {build_s:.1} s",
            if exact_peak { " of the forward" } else { " of the run" },
            p as f64 / 1e9,
            base.unwrap_or(0) as f64 / 1e9
        );
    }
    println!(
        "{}",
        json!({
            "preset": b.preset,
            "blocks": [cfg.depth, cfg.depth_single_blocks],
            "size": format!("{w}x{h}"),
            "tokens": {"image": li, "text": lt},
            "dtype": b.dtype,
            "attention": b.attention,
            "threads": threads,
            "params": cfg.num_params(),
            "seconds": secs,
            "gflop": flops / 1e9,
            "gflops_per_s": rate / 1e9,
            "peak_gflops_per_s": peak / 1e9,
            "mfu": rate / peak,
            "peak_rss_bytes": peak_rss,
            "rss_before_bytes": base,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_dtypes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_blocks("2,4").unwrap(), (2, 4));
        assert_eq!(parse_blocks(" 1 , 0 ").unwrap(), (1, 0));
        for bad in ["0,0", "2", "a,b", "1,2,3"] {
            assert!(
                parse_blocks(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("--blocks"),
                "{bad}"
            );
        }
        assert_eq!(parse_kind("q8_0").unwrap(), Kind::Quant(GgmlDType::Q8_0));
        assert!(parse_kind("fp8")
            .unwrap_err()
            .to_string()
            .contains("--dtype"));
    }

    #[test]
    fn quantized_and_bf16_weights_built_in_memory_run_the_forward_near_the_dense_one() {
        // The tiny preset's dense forward and its Q8_0 copy built through the in-memory GGUF
        // agree to Q8_0's rounding.
        let dev = Device::Cpu;
        let cfg = DitConfig::tiny();
        let (dense, vm) = dense(&cfg, DType::F32, &dev).unwrap();
        let bf16 = bf16_linear(&cfg, vm.clone(), &dev).unwrap();
        let q8 = quantized(&cfg, vm, GgmlDType::Q8_0, &dev).unwrap();
        let img = Tensor::randn(0f32, 1.0, (1, 4, cfg.embed_channels()), &dev).unwrap();
        let txt = Tensor::randn(0f32, 1.0, (1, 3, cfg.context_in_dim), &dev).unwrap();
        let vec = Tensor::randn(0f32, 1.0, (1, cfg.vec_in_dim), &dev).unwrap();
        let (ii, ti) = (
            image_ids(3, 2, 2, &dev).unwrap(),
            prompt_ids(3, 3, &dev).unwrap(),
        );
        let t = Tensor::new(&[0.5f32], &dev).unwrap();
        let input = DitInput::new(&img, &ii, &txt, &ti, &t, &vec);
        let a = dense.forward(&input).unwrap();
        let b = q8.forward(&input).unwrap();
        // bf16 linear weights (the kernel's or widened) with f32 everything else: within
        // bf16's rounding of the dense forward.
        let c = bf16.forward(&input).unwrap();
        assert_eq!(c.dtype(), DType::F32);
        let dc = sprout_models::ops::max_abs_diff(&a, &c).unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = sprout_models::ops::max_abs_diff(&a, &b).unwrap();
        assert!(scale > 0.0 && d < 0.05 * scale.max(1e-3), "{d} vs {scale}");
        assert!(dc < 0.05 * scale.max(1e-3), "bf16: {dc} vs {scale}");
    }
}
