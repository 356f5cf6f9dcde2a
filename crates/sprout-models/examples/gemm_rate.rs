//! Rates of the linear products at FLUX.1's shapes on this CPU: candle's f32 product
//! (`x · wᵀ`, what f32 weights use) and, where the CPU has AVX-512 BF16, the bf16 kernel
//! (`PackedBf16::matmul_t`):
//! `cargo run --release -p sprout-models --example gemm_rate [ROWS] [REPEAT]`. Prints one
//! line per product and (k, n) shape with the median seconds and TFLOP/s.
use std::time::Instant;

use candle_core::{Device, Tensor};
use sprout_models::bf16_gemm::{available, PackedBf16};

fn main() -> candle_core::Result<()> {
    if !available() {
        eprintln!("this CPU has no AVX-512 BF16: f32 products only");
    }
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(4352, |s| s.parse().expect("ROWS"));
    let repeat: usize = args.next().map_or(5, |s| s.parse().expect("REPEAT"));
    let dev = Device::Cpu;
    // (k, n): qkv, proj, fc1, fc2, single linear1, single linear2.
    for (k, n) in [
        (3072, 9216),
        (3072, 3072),
        (3072, 12288),
        (12288, 3072),
        (3072, 21504),
        (15360, 3072),
    ] {
        let x = Tensor::randn(0f32, 1.0, (rows, k), &dev)?;
        let wt = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let f32_product = || x.matmul(&wt.t()?).map(drop);
        report("f32", rows, k, n, median(repeat, f32_product)?);
        if available() {
            let w: Vec<f32> = wt.flatten_all()?.to_vec1()?;
            let p = PackedBf16::from_f32_rows(&w, n, k);
            report(
                "bf16",
                rows,
                k,
                n,
                median(repeat, || p.matmul_t(&x).map(drop))?,
            );
        }
    }
    Ok(())
}

/// The median seconds of `repeat` runs of `f`, after one run that is not timed.
fn median(repeat: usize, f: impl Fn() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::new();
    for _ in 0..repeat {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn report(kind: &str, rows: usize, k: usize, n: usize, s: f64) {
    println!(
        "{kind} {rows} x {k} x {n}: {:.1} ms, {:.1} GFLOP/s",
        s * 1e3,
        2.0 * (rows * k * n) as f64 / s / 1e9
    );
}
