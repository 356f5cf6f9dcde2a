//! Seeded noise: sample `i` of a request draws its noise from its own generator keyed by
//! seed + i, so an image never depends on the batch it was generated in.

use candle_core::{Device, Result, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Standard normal noise of `shape` (without the batch dimension) from `seed`.
pub fn noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Tensor::from_vec(v, shape, device)
}

/// A batch of noise: row `i` uses `seeds[i]`.
pub fn noise_batch(seeds: &[u64], shape: &[usize], device: &Device) -> Result<Tensor> {
    let rows = seeds
        .iter()
        .map(|s| noise(*s, shape, device))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_depend_only_on_their_seed() {
        let dev = Device::Cpu;
        let a = noise_batch(&[5, 6, 7], &[2, 3], &dev).unwrap();
        let b = noise_batch(&[6], &[2, 3], &dev).unwrap();
        assert_eq!(
            a.get(1).unwrap().to_vec2::<f32>().unwrap(),
            b.get(0).unwrap().to_vec2::<f32>().unwrap()
        );
        let big = noise(1, &[100_000], &dev).unwrap();
        let mean = big.mean_all().unwrap().to_scalar::<f32>().unwrap();
        let var = big
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
