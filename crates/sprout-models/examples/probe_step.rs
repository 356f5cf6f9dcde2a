use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use sprout_models::init::seeded_varbuilder;
use sprout_models::probe::{Probe, ProbeConfig};
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let p = ProbeConfig::standard();
    let vm = VarMap::new();
    let probe = Probe::new(&p, seeded_varbuilder(&vm, 0, DType::F32, &dev)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (p.batch, p.tokens, p.dim), &dev).unwrap();
    for _ in 0..4 {
        let t0 = Instant::now();
        let loss = probe
            .forward(&x)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let f = t0.elapsed().as_secs_f64();
        let _g = loss.backward().unwrap();
        let b = t0.elapsed().as_secs_f64() - f;
        println!("fwd {f:.3} bwd {b:.3}");
    }
}
