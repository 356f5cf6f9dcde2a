use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use sprout_models::ae::{AeConfig, Autoencoder};
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let ae = Autoencoder::new(
        &AeConfig::native(),
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap();
    let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    println!("params {n}");
    for side in [128usize, 256] {
        let x = Tensor::randn(0f32, 0.5, (16, 3, side, side), &dev).unwrap();
        for it in 0..2 {
            let t0 = Instant::now();
            let z = ae.encoder.forward(&x).unwrap();
            let te = t0.elapsed().as_secs_f64();
            let y = ae.decoder.forward(&z, None).unwrap();
            let tf = t0.elapsed().as_secs_f64();
            let loss = (y - &x).unwrap().sqr().unwrap().mean_all().unwrap();
            let _g = loss.backward().unwrap();
            let tot = t0.elapsed().as_secs_f64();
            println!(
                "{side}² it{it}: enc {te:.3}s fwd {tf:.3}s total {tot:.3}s -> {:.1} samples/s",
                16.0 / tot
            );
        }
    }
}
