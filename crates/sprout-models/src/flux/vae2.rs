//! The FLUX.2 autoencoder (diffusers' `AutoencoderKLFlux2`): FLUX.1's encoder and decoder
//! networks (candle-transformers', BFL module paths) with 32 latent channels, 1×1 convolutions
//! on the moments and before the decoder, and latents that the transformer sees patched 2×2
//! (32 · 4 = 128 channels per token) and normalised by the running statistics of a
//! batch norm the autoencoder was trained with.
//!
//! Weight names are those of Black Forest Labs' file (`encoder.quant_conv`,
//! `decoder.post_quant_conv`, `bn.running_mean`, `bn.running_var`); diffusers' names are
//! served through [`crate::flux::convert::Renamed::vae`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use candle_transformers::models::flux::autoencoder as ct;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flux2VaeConfig {
    /// Channels of the first level; level i has `ch · ch_mult[i]`.
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Latent channels before patching (FLUX.2: 32).
    pub z_channels: usize,
    /// 1×1 convolution on the encoder's moments (`encoder.quant_conv`).
    pub quant_conv: bool,
    /// 1×1 convolution before the decoder (`decoder.post_quant_conv`).
    pub post_quant_conv: bool,
    /// The batch norm's epsilon: tokens are `(patched − mean) / sqrt(var + eps)`.
    pub bn_eps: f64,
}

impl Flux2VaeConfig {
    /// The FLUX.2 autoencoder (`ae.safetensors` of FLUX.2, diffusers `vae/`).
    pub fn flux2() -> Flux2VaeConfig {
        Flux2VaeConfig {
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 32,
            quant_conv: true,
            post_quant_conv: true,
            bn_eps: 1e-4,
        }
    }

    /// From the tensors of a weight file given without its `config.json` (diffusers' or
    /// Black Forest Labs' names): the first level's channels from `encoder.conv_in`, each
    /// level's from its first block, the blocks per level, the latent channels from
    /// `encoder.conv_out` (mean and log-variance), the 1×1 convolutions from their presence;
    /// the batch norm's epsilon, which no shape carries, is FLUX.2's 10⁻⁴.
    pub fn from_tensors(
        infos: &[crate::flux::inspect::TensorInfo],
    ) -> std::result::Result<Flux2VaeConfig, String> {
        let shape = |name: &str| infos.iter().find(|t| t.name == name).map(|t| &t.shape);
        let ch = shape("encoder.conv_in.weight")
            .map(|s| s[0])
            .ok_or("no tensor encoder.conv_in.weight: not an autoencoder")?;
        // diffusers: encoder.down_blocks.{i}.resnets.{j}; BFL: encoder.down.{i}.block.{j}.
        let (down, block) = if infos
            .iter()
            .any(|t| t.name.starts_with("encoder.down_blocks."))
        {
            ("encoder.down_blocks.", "resnets")
        } else {
            ("encoder.down.", "block")
        };
        let index = |rest: &str| rest.split('.').next()?.parse::<usize>().ok();
        let levels = infos
            .iter()
            .filter_map(|t| index(t.name.strip_prefix(down)?))
            .max()
            .map_or(0, |i| i + 1);
        let blocks = infos
            .iter()
            .filter_map(|t| index(t.name.strip_prefix(&format!("{down}0.{block}."))?))
            .max()
            .map_or(0, |i| i + 1);
        if levels == 0 || blocks == 0 || ch == 0 {
            return Err(format!("no {down}N.{block}.M tensors: not an autoencoder"));
        }
        let ch_mult = (0..levels)
            .map(|i| {
                let n = format!("{down}{i}.{block}.0.conv1.weight");
                shape(&n)
                    .map(|s| s[0] / ch)
                    .ok_or_else(|| format!("no tensor {n}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let moments = shape("encoder.conv_out.weight")
            .map(|s| s[0])
            .ok_or("no tensor encoder.conv_out.weight")?;
        let has = |names: &[&str]| names.iter().any(|n| shape(n).is_some());
        Ok(Flux2VaeConfig {
            ch,
            ch_mult,
            num_res_blocks: blocks,
            z_channels: moments / 2,
            quant_conv: has(&["quant_conv.weight", "encoder.quant_conv.weight"]),
            post_quant_conv: has(&["post_quant_conv.weight", "decoder.post_quant_conv.weight"]),
            bn_eps: Flux2VaeConfig::flux2().bn_eps,
        })
    }

    /// Pixels per latent cell along each side (before the 2×2 patching).
    pub fn cell(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    /// Pixels per transformer token along each side (FLUX.2: 16).
    pub fn downscale(&self) -> usize {
        2 * self.cell()
    }

    /// Channels of one token: the 2×2 patch of latent cells.
    pub fn token_channels(&self) -> usize {
        4 * self.z_channels
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
            scale_factor: 1.0,
            shift_factor: 0.0,
        }
    }
}

pub struct Flux2Vae {
    pub cfg: Flux2VaeConfig,
    encoder: ct::Encoder,
    decoder: ct::Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    /// (1, 4z, 1, 1) each.
    bn_mean: Tensor,
    bn_std: Tensor,
}

fn conv1x1(c: usize, vb: VarBuilder) -> Result<Conv2d> {
    candle_nn::conv2d(c, c, 1, Conv2dConfig::default(), vb)
}

impl Flux2Vae {
    pub fn new(cfg: &Flux2VaeConfig, vb: VarBuilder) -> Result<Flux2Vae> {
        let c = cfg.candle();
        let z = cfg.z_channels;
        let tc = cfg.token_channels();
        let var = vb
            .pp("bn")
            .get(tc, "running_var")?
            .to_dtype(candle_core::DType::F32)?;
        let bn_std = (var + cfg.bn_eps)?.sqrt()?.to_dtype(vb.dtype())?;
        Ok(Flux2Vae {
            encoder: ct::Encoder::new(&c, vb.pp("encoder"))?,
            decoder: ct::Decoder::new(&c, vb.pp("decoder"))?,
            quant_conv: cfg
                .quant_conv
                .then(|| conv1x1(2 * z, vb.pp("encoder.quant_conv")))
                .transpose()?,
            post_quant_conv: cfg
                .post_quant_conv
                .then(|| conv1x1(z, vb.pp("decoder.post_quant_conv")))
                .transpose()?,
            bn_mean: vb
                .pp("bn")
                .get(tc, "running_mean")?
                .reshape((1, tc, 1, 1))?,
            bn_std: bn_std.reshape((1, tc, 1, 1))?,
            cfg: cfg.clone(),
        })
    }

    /// Images (B, 3, H, W) in [-1, 1] → normalised token latents (B, 4z, H/16, W/16): the
    /// posterior mean (as diffusers' FLUX.2 pipelines take it), patched 2×2 and normalised.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let f = self.cfg.downscale();
        if c != 3 || h % f != 0 || w % f != 0 {
            candle_core::bail!(
                "FLUX.2 autoencoder input must be (B, 3, H, W) with H and W multiples of {f}, got {:?}",
                x.dims()
            );
        }
        let mut moments = self.encoder.forward(x)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let mean = moments.narrow(1, 0, self.cfg.z_channels)?;
        patchify(&mean)?
            .broadcast_sub(&self.bn_mean)?
            .broadcast_div(&self.bn_std)
    }

    /// Normalised token latents (B, 4z, h, w) → images (B, 3, 16h, 16w) in about [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4()?;
        if c != self.cfg.token_channels() {
            candle_core::bail!(
                "FLUX.2 autoencoder decodes {} channels per token, got {:?}",
                self.cfg.token_channels(),
                z.dims()
            );
        }
        let z = z
            .broadcast_mul(&self.bn_std)?
            .broadcast_add(&self.bn_mean)?;
        let mut z = unpatchify(&z)?;
        if let Some(p) = &self.post_quant_conv {
            z = p.forward(&z)?;
        }
        self.decoder.forward(&z)
    }

    /// Decode in overlapping tiles of `tile` token cells (see [`crate::tiling`]).
    pub fn decode_tiled(&self, z: &Tensor, tile: usize, overlap: usize) -> Result<Tensor> {
        crate::tiling::decode_tiled(z, tile, overlap, self.cfg.downscale(), |t| self.decode(t))
    }
}

/// (B, C, H, W) → (B, 4C, H/2, W/2): channel `4c + 2dy + dx` holds cell (2y + dy, 2x + dx)
/// of channel c (diffusers' `_patchify_latents`).
pub fn patchify(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2, w / 2, 2))?
        .permute((0, 1, 3, 5, 2, 4))?
        .reshape((b, c * 4, h / 2, w / 2))
}

/// The inverse of [`patchify`].
pub fn unpatchify(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    x.reshape((b, c4 / 4, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .reshape((b, c4 / 4, h * 2, w * 2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn patching_is_diffusers_layout_and_inverts() {
        // Channel 0 of a 1×1×2×2 map: cells (0,0)=0, (0,1)=1, (1,0)=2, (1,1)=3 land in
        // channels 0..4 in that order.
        let x = Tensor::arange(0f32, 4.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let p = patchify(&x).unwrap();
        assert_eq!(p.dims(), &[1, 4, 1, 1]);
        assert_eq!(
            p.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3.]
        );
        let y = Tensor::arange(0f32, 2.0 * 4.0 * 6.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 4, 6))
            .unwrap();
        let back = unpatchify(&patchify(&y).unwrap()).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
