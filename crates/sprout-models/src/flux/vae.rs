//! The FLUX autoencoder (16 latent channels, f8). Its encoder and decoder networks are
//! candle-transformers' (BFL module paths); this wrapper adds what that crate's
//! `AutoEncoder` lacks: a deterministic encode (the posterior mean, as diffusers'
//! img2img/Kontext pipelines use, instead of a random sample), tiled decoding, and a config
//! that also describes the small test models.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::flux::autoencoder as ct;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FluxVaeConfig {
    /// Channels of the first level; level i has `ch · ch_mult[i]`.
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub z_channels: usize,
    pub scale_factor: f64,
    pub shift_factor: f64,
}

impl FluxVaeConfig {
    /// The FLUX.1 autoencoder (`ae.safetensors`, diffusers `vae/`).
    pub fn flux() -> FluxVaeConfig {
        FluxVaeConfig {
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
            scale_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }

    /// Pixels per latent cell along each side.
    pub fn downscale(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    fn candle(&self) -> ct::Config {
        ct::Config {
            resolution: 256,
            in_channels: 3,
            ch: self.ch,
            out_ch: 3,
            ch_mult: self.ch_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            z_channels: self.z_channels,
            scale_factor: self.scale_factor,
            shift_factor: self.shift_factor,
        }
    }
}

pub struct FluxVae {
    pub cfg: FluxVaeConfig,
    encoder: ct::Encoder,
    decoder: ct::Decoder,
}

impl FluxVae {
    /// From BFL names (`encoder.down.0.block.0.conv1.weight`, …).
    pub fn new(cfg: &FluxVaeConfig, vb: VarBuilder) -> Result<FluxVae> {
        let c = cfg.candle();
        Ok(FluxVae {
            encoder: ct::Encoder::new(&c, vb.pp("encoder"))?,
            decoder: ct::Decoder::new(&c, vb.pp("decoder"))?,
            cfg: cfg.clone(),
        })
    }

    /// Images (B, 3, H, W) in [-1, 1] → scaled latents (the posterior mean).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let f = self.cfg.downscale();
        if c != 3 || h % f != 0 || w % f != 0 {
            candle_core::bail!(
                "FLUX autoencoder input must be (B, 3, H, W) with H and W multiples of {f}, got {:?}",
                x.dims()
            );
        }
        let moments = self.encoder.forward(x)?;
        let mean = moments.narrow(1, 0, self.cfg.z_channels)?;
        (mean - self.cfg.shift_factor)? * self.cfg.scale_factor
    }

    /// Scaled latents → images in about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = ((z / self.cfg.scale_factor)? + self.cfg.shift_factor)?;
        self.decoder.forward(&z)
    }

    /// Decode in overlapping tiles of `tile` latent cells (see [`crate::tiling`]).
    pub fn decode_tiled(&self, z: &Tensor, tile: usize, overlap: usize) -> Result<Tensor> {
        crate::tiling::decode_tiled(z, tile, overlap, self.cfg.downscale(), |t| self.decode(t))
    }
}
