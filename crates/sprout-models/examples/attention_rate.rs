//! Rate of the fused attention kernel (`flash::attention`) at FLUX.1's shape on this CPU:
//! `cargo run --release -p sprout-models --example attention_rate [TOKENS] [REPEAT]`.
//! Prints the median seconds and GFLOP/s of one joint attention (24 heads of 128) in f32
//! and, where the CPU has bf16 products, in bf16.
use std::time::Instant;

use candle_core::{Device, Tensor};
use sprout_models::flash::{self, Precision};

fn main() -> candle_core::Result<()> {
    let mut args = std::env::args().skip(1);
    let tokens: usize = args.next().map_or(4352, |s| s.parse().expect("TOKENS"));
    let repeat: usize = args.next().map_or(3, |s| s.parse().expect("REPEAT"));
    let (heads, d) = (24, 128);
    let dev = Device::Cpu;
    let q = Tensor::randn(0f32, 1.0, (1, heads, tokens, d), &dev)?;
    let k = Tensor::randn(0f32, 1.0, (1, heads, tokens, d), &dev)?;
    let v = Tensor::randn(0f32, 1.0, (1, heads, tokens, d), &dev)?;
    let flop = 4.0 * (heads * tokens * tokens * d) as f64;
    for precision in [Precision::F32, Precision::Bf16] {
        if precision == Precision::Bf16 && precision.effective() != Precision::Bf16 {
            eprintln!("this CPU has no bf16 products: f32 only");
            continue;
        }
        let run = || -> candle_core::Result<()> {
            flash::attention(&q, &k, &v, None, precision).expect("f32 CPU tensors")?;
            Ok(())
        };
        run()?;
        let mut t = Vec::new();
        for _ in 0..repeat {
            let t0 = Instant::now();
            run()?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        let s = t[t.len() / 2];
        println!(
            "{precision:?} attention, {heads} heads x {tokens} tokens x {d}: {:.1} ms, {:.1} GFLOP/s",
            s * 1e3,
            flop / s / 1e9
        );
    }
    Ok(())
}
