use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sprout_models::dit::embed::{grid_ids, text_ids};
use sprout_models::dit::{Dit, DitConfig, DitInput};
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    // matmul peak
    let a = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (1024, 1024), &dev).unwrap();
    let _ = a.matmul(&b).unwrap();
    let t = Instant::now();
    for _ in 0..10 {
        let _ = a.matmul(&b).unwrap();
    }
    let s = t.elapsed().as_secs_f64() / 10.0;
    println!(
        "matmul 1024^3: {:.1} GFLOP/s",
        2.0 * 1024f64.powi(3) / s / 1e9
    );
    let cfg = DitConfig::native_small();
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let dit = Dit::new(&cfg, vb).unwrap();
    let bsz = 32;
    let img = Tensor::randn(0f32, 1.0, (bsz, 64, cfg.in_channels()), &dev).unwrap();
    let img_ids = grid_ids(0, 8, 8, &dev).unwrap();
    let txt = Tensor::randn(0f32, 1.0, (bsz, 32, cfg.context_in_dim), &dev).unwrap();
    let txt_ids = text_ids(32, &dev).unwrap();
    let tt = Tensor::rand(0f32, 1.0, bsz, &dev).unwrap();
    let y = Tensor::randn(0f32, 1.0, (bsz, cfg.vec_in_dim), &dev).unwrap();
    for it in 0..3 {
        let t0 = Instant::now();
        let out = dit
            .forward(&DitInput::new(&img, &img_ids, &txt, &txt_ids, &tt, &y))
            .unwrap();
        let loss = out.sqr().unwrap().mean_all().unwrap();
        let f = t0.elapsed().as_secs_f64();
        let g = loss.backward().unwrap();
        let tot = t0.elapsed().as_secs_f64();
        println!(
            "iter {it}: fwd {f:.3}s total {tot:.3}s ({} grads) -> {:.1} samples/s; params {}",
            g.get_ids().count(),
            bsz as f64 / tot,
            cfg.num_params()
        );
    }
}
