//! Autoencoder training: reconstruction (MSE + L1) on random crops of world images.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use sprout_data::Batch;
use sprout_models::ae::{psnr, AeConfig, Autoencoder};
use sprout_models::init::seeded_varbuilder;
use sprout_world::seed::rng_for;

use crate::config::TrainConfig;
use crate::run::Task;
use crate::TrainError;

const CROP: u64 = 0xC409;

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
    device: Device,
}

impl AeTask {
    pub fn new(cfg: &TrainConfig) -> Result<AeTask, TrainError> {
        let ae_cfg = ae_preset(&cfg.ae.preset)?;
        let varmap = VarMap::new();
        let device = cfg.device()?;
        let ae = Autoencoder::new(
            &ae_cfg,
            seeded_varbuilder(&varmap, cfg.seed, DType::F32, &device),
        )?;
        Ok(AeTask {
            ae,
            varmap,
            crop: cfg.ae.crop,
            l1: cfg.ae.l1,
            seed: cfg.seed,
            device,
        })
    }

    /// A random crop (the same offset for the whole batch), keyed by step.
    fn crop(&self, x: &Tensor, step: u64) -> Result<Tensor, TrainError> {
        let x = &x.to_device(&self.device)?;
        let (_, _, h, w) = x.dims4()?;
        let c = self.crop as usize;
        if c == 0 || (c >= h && c >= w) {
            return Ok(x.clone());
        }
        let mut rng = rng_for(self.seed, CROP, step);
        let (ch, cw) = (c.min(h), c.min(w));
        // Offsets on the 32-pixel grid, so crops align with latent cells.
        let y0 = 32 * rng.random_range(0..=(h - ch) / 32);
        let x0 = 32 * rng.random_range(0..=(w - cw) / 32);
        Ok(x.narrow(2, y0, ch)?.narrow(3, x0, cw)?)
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
        let x = self.crop(&batch.images, step)?;
        let y = self.ae.decoder.forward(&self.ae.encoder.forward(&x)?)?;
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
