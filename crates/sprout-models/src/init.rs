//! Seeded parameter initialisation.
//!
//! candle's CPU initialisers draw from an unseeded generator, so two runs of one training
//! config would start from different weights and a resumed run could never be compared with
//! an uninterrupted one. This VarBuilder backend creates each variable from candle's own
//! `Init` description, drawing from a ChaCha generator keyed by (seed, variable name).

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

struct Seeded {
    map: VarMap,
    seed: u64,
}

fn key(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    });
    h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The initial value `init` describes, drawn from `rng`.
pub fn draw(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| {
        (mean + std * rng.sample::<f64, _>(StandardNormal)) as f32
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(rng, mean, stdev)).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| normal(rng, 0.0, std)).collect(),
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
                }
            }
        }
    }
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.map.data().lock().expect("varmap lock");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "shape mismatch for {name}: expected {s:?}, have {:?}",
                    v.shape()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(key(self.seed, name));
        let t = Tensor::from_vec(draw(h, &s, &mut rng), s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        data.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a seeded initialiser needs the tensor's shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("varmap lock")
            .contains_key(name)
    }
}

/// A VarBuilder that creates trainable variables in `map`, initialised from `seed`.
pub fn seeded_varbuilder(
    map: &VarMap,
    seed: u64,
    dtype: DType,
    dev: &Device,
) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Seeded {
            map: map.clone(),
            seed,
        }),
        dtype,
        dev.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dit::{Dit, DitConfig};

    #[test]
    fn same_seed_same_weights_different_seed_different_weights() {
        let build = |seed| {
            let vm = VarMap::new();
            Dit::new(
                &DitConfig::tiny(),
                seeded_varbuilder(&vm, seed, DType::F32, &Device::Cpu),
            )
            .unwrap();
            let mut all: Vec<(String, Vec<f32>)> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_tensor()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f32>()
                            .unwrap(),
                    )
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        let (a, b, c) = (build(1), build(1), build(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Linear weights follow candle's Kaiming-normal init: std sqrt(2 / fan_in) = sqrt(2/4).
        let w = &a.iter().find(|(k, _)| k == "img_in.weight").unwrap().1;
        let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 0.5f32.sqrt()).abs() < 0.15, "{std}");
    }
}
