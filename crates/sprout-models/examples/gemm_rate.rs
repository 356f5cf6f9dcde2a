//! Rates of the bf16 linear product (`PackedBf16::matmul_t`) at FLUX.1's shapes on this CPU:
//! `cargo run --release -p sprout-models --example gemm_rate [ROWS] [REPEAT]`. Prints one
//! line per (k, n) shape with the median seconds and TFLOP/s.
use std::time::Instant;

use candle_core::{Device, Tensor};
use sprout_models::bf16_gemm::{available, PackedBf16};

fn main() -> candle_core::Result<()> {
    if !available() {
        eprintln!("this CPU has no AVX-512 BF16");
        return Ok(());
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
        let w: Vec<f32> = Tensor::randn(0f32, 0.02, (n, k), &dev)?
            .flatten_all()?
            .to_vec1()?;
        let p = PackedBf16::from_f32_rows(&w, n, k);
        p.matmul_t(&x)?;
        let mut t = Vec::new();
        for _ in 0..repeat {
            let t0 = Instant::now();
            p.matmul_t(&x)?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        let s = t[t.len() / 2];
        println!(
            "{rows} x {k} x {n}: {:.1} ms, {:.2} TFLOP/s",
            s * 1e3,
            2.0 * (rows * k * n) as f64 / s / 1e12
        );
    }
    Ok(())
}
