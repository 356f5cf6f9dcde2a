//! Autoencoder training: reconstruction (MSE + L1) on random crops of world images; from
//! scratch, or fine-tuning a trained autoencoder's decoder to read the world's semantic map
//! beside noisy latents (`[ae] from / semantic / train_encoder / latent_noise`).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use sprout_data::Batch;
use sprout_models::ae::{psnr, AeConfig, Autoencoder};
use sprout_models::init::seeded_varbuilder;
use sprout_world::seed::rng_for;
use sprout_world::semantic;

use crate::config::TrainConfig;
use crate::run::Task;
use crate::TrainError;

const CROP: u64 = 0xC409;
const NOISE_LEVEL: u64 = 0x5161;
const NOISE: u64 = 0x9017;

pub fn ae_preset(name: &str) -> Result<AeConfig, TrainError> {
    match name {
        "native" => Ok(AeConfig::native()),
        "tiny" => Ok(AeConfig::tiny()),
        _ => Err(TrainError::Config(format!(
            "unknown autoencoder preset {name:?}; presets: native, tiny"
        ))),
    }
}

pub struct AeTask {
    pub ae: Autoencoder,
    pub varmap: VarMap,
    crop: u32,
    l1: f64,
    seed: u64,
    train_encoder: bool,
    latent_noise: f64,
    semantic_noise: f64,
    semantic_map: semantic::MapKind,
    device: Device,
}

/// The trained autoencoder a fine-tune starts from: its config and weights.
fn read_from(dir: &std::path::Path) -> Result<(AeConfig, Vec<(String, Tensor)>), TrainError> {
    let p = dir.join("ae.json");
    let text = std::fs::read_to_string(&p)
        .map_err(|e| TrainError::Config(format!("ae.from: {}: {e}", p.display())))?;
    let cfg: AeConfig = serde_json::from_str(&text)
        .map_err(|e| TrainError::Config(format!("ae.from: {}: {e}", p.display())))?;
    let w = sprout_pipeline::bundle::read_tensors(&dir.join("ae.safetensors"), &Device::Cpu)
        .map_err(|e| TrainError::Config(format!("ae.from: {e}")))?;
    Ok((cfg, w.into_iter().collect()))
}

impl AeTask {
    pub fn new(cfg: &TrainConfig) -> Result<AeTask, TrainError> {
        let (base, from) = match &cfg.ae.from {
            Some(dir) => {
                let (c, w) = read_from(dir)?;
                (c, Some(w))
            }
            None => (ae_preset(&cfg.ae.preset)?, None),
        };
        let ae_cfg = AeConfig {
            semantic_channels: if cfg.ae.semantic {
                cfg.ae.semantic_map.channels()
            } else {
                0
            },
            semantic_map: cfg
                .ae
                .semantic
                .then(|| cfg.ae.semantic_map.name().to_string()),
            ..base
        };
        let varmap = VarMap::new();
        let device = cfg.device()?;
        let ae = Autoencoder::new(
            &ae_cfg,
            seeded_varbuilder(&varmap, cfg.seed, DType::F32, &device),
        )?;
        if let Some(weights) = from {
            // Every weight of the trained autoencoder is taken, shape-checked; only what it
            // lacks (the decoder's new semantic convolution) keeps its initial value.
            let vars = varmap.data().lock().expect("varmap");
            for (k, t) in weights {
                let Some(v) = vars.get(&k) else {
                    return Err(TrainError::Config(format!(
                        "ae.from: weight {k} is not part of this autoencoder"
                    )));
                };
                if v.shape() != t.shape() {
                    return Err(TrainError::Config(format!(
                        "ae.from: weight {k} has shape {:?}, this autoencoder's is {:?}",
                        t.dims(),
                        v.dims()
                    )));
                }
                v.set(&t.to_device(&device)?)?;
            }
        }
        Ok(AeTask {
            ae,
            varmap,
            crop: cfg.ae.crop,
            l1: cfg.ae.l1,
            seed: cfg.seed,
            train_encoder: cfg.ae.train_encoder,
            latent_noise: cfg.ae.latent_noise,
            semantic_noise: cfg.ae.semantic_noise,
            semantic_map: cfg.ae.semantic_map,
            device,
        })
    }

    /// A random crop offset (the same for the whole batch), keyed by step, on the 32-pixel
    /// grid so that crops align with latent cells; and the crop's size.
    fn crop_box(&self, h: usize, w: usize, step: u64) -> (usize, usize, usize, usize) {
        let c = self.crop as usize;
        if c == 0 || (c >= h && c >= w) {
            return (0, 0, h, w);
        }
        let mut rng = rng_for(self.seed, CROP, step);
        let (ch, cw) = (c.min(h), c.min(w));
        let y0 = 32 * rng.random_range(0..=(h - ch) / 32);
        let x0 = 32 * rng.random_range(0..=(w - cw) / 32);
        (y0, x0, ch, cw)
    }

    /// `x` plus Gaussian noise whose standard deviation is drawn per image from
    /// U(0, `max`), deterministic in (seed, step, what).
    fn noisy(&self, x: &Tensor, max: f64, step: u64, what: u64) -> Result<Tensor, TrainError> {
        if max == 0.0 {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let mut rng = rng_for(self.seed ^ what, NOISE_LEVEL, step);
        let sd: Vec<f32> = (0..b).map(|_| rng.random_range(0.0..max) as f32).collect();
        let sd = Tensor::from_vec(sd, (b, 1, 1, 1), &self.device)?;
        let seeds: Vec<u64> = (0..b as u64)
            .map(|i| {
                sprout_world::seed::mix64(
                    self.seed ^ what ^ NOISE ^ sprout_world::seed::mix64(step),
                ) ^ i
            })
            .collect();
        let eps = sprout_pipeline::noise::noise_batch(&seeds, &x.dims()[1..], &self.device)?;
        Ok((x + eps.broadcast_mul(&sd)?)?)
    }
}

impl Task for AeTask {
    fn params(&self) -> Vec<(String, Var)> {
        self.varmap
            .data()
            .lock()
            .expect("varmap")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn loss(
        &mut self,
        batch: &Batch,
        step: u64,
    ) -> Result<(Tensor, BTreeMap<String, f64>), TrainError> {
        let images = batch.images.to_device(&self.device)?;
        let (_, _, h, w) = images.dims4()?;
        let (y0, x0, ch, cw) = self.crop_box(h, w, step);
        let x = images.narrow(2, y0, ch)?.narrow(3, x0, cw)?;
        let mut z = self.ae.encoder.forward(&x)?;
        if !self.train_encoder {
            z = z.detach();
        }
        if self.latent_noise > 0.0 {
            let zn = self.noisy(&self.ae.normalize(&z)?, self.latent_noise, step, 1)?;
            z = self.ae.denormalize(&zn)?;
        }
        let sem = if self.ae.cfg.semantic_channels > 0 {
            // The whole image's map, cut to the crop's cells.
            let cell = sprout_models::ae::DOWNSCALE;
            let full =
                crate::semantic_maps::semantic_batch(batch, self.semantic_map, cell, &self.device)?;
            let s = full
                .narrow(2, y0 / cell, ch / cell)?
                .narrow(3, x0 / cell, cw / cell)?;
            Some(self.noisy(&s, self.semantic_noise, step, 2)?)
        } else {
            None
        };
        let y = self.ae.decoder.forward(&z, sem.as_ref())?;
        let diff = (&y - &x)?;
        let mse = diff.sqr()?.mean_all()?;
        let loss = (&mse + (diff.abs()?.mean_all()? * self.l1)?)?;
        let mut m = BTreeMap::new();
        m.insert("psnr".into(), psnr(&y.detach(), &x)?);
        m.insert("mse".into(), mse.to_scalar::<f32>()? as f64);
        Ok((loss, m))
    }

    fn extra_files(&self) -> Vec<(&'static str, String)> {
        vec![(
            "ae.json",
            serde_json::to_string_pretty(&self.ae.cfg).expect("json"),
        )]
    }
}
