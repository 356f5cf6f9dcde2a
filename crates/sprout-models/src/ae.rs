//! The deep-compression autoencoder (DC-AE style, f32: a 256×256 image becomes an 8×8 latent).
//!
//! The encoder leaves full resolution at once (space-to-channel by 8) and works at low
//! resolution: 1×1 residual MLP blocks at 1/8, 3×3 residual conv blocks at 1/16 and 1/32.
//! Every resolution change is a space-to-channel (down) or channel-to-space (up) step with a
//! parameter-free residual shortcut (channel averaging / channel duplication), which is what
//! lets high compression train stably. Images of any size that is a multiple of 32 work; the
//! decoder can decode large latents in overlapping tiles.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AeConfig {
    pub latent_channels: usize,
    /// Channels at 1/8, 1/16 and 1/32 of the image size.
    pub widths: [usize; 3],
    /// Residual blocks per stage in the encoder (1/8, 1/16, 1/32).
    pub encoder_blocks: [usize; 3],
    /// Residual blocks per stage in the decoder (1/32, 1/16, 1/8).
    pub decoder_blocks: [usize; 3],
    /// Latent normalisation: the DiT sees `(z - shift) * scale`, then, per channel `c`,
    /// `(· - channel_shift[c]) * channel_scale[c]` when those are given (empty: none).
    /// Per-channel statistics give every latent channel unit variance, so the flow loss
    /// weighs low-variance (detail) channels as much as the rest.
    pub scale: f64,
    pub shift: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_shift: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_scale: Vec<f64>,
    /// Semantic channels the decoder reads beside the latent (0 = none): per latent cell,
    /// the world's semantic map (`sprout_world::semantic`) that a DiT with semantic channels
    /// denoises together with the latent. A 3×3 convolution (`decoder.semantic`, starting at
    /// zero) adds them to the decoder's first features, so a decoder fine-tuned from one
    /// without them starts as that decoder.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub semantic_channels: usize,
    /// Which semantic map those channels are (`sprout_world::semantic::MapKind`'s name;
    /// absent: `occupancy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_map: Option<String>,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

/// Total spatial compression.
pub const DOWNSCALE: usize = 32;

impl AeConfig {
    pub fn native() -> AeConfig {
        AeConfig {
            latent_channels: 32,
            widths: [128, 256, 256],
            encoder_blocks: [1, 1, 1],
            decoder_blocks: [2, 2, 2],
            scale: 1.0,
            shift: 0.0,
            channel_shift: Vec::new(),
            channel_scale: Vec::new(),
            semantic_channels: 0,
            semantic_map: None,
        }
    }

    pub fn tiny() -> AeConfig {
        AeConfig {
            latent_channels: 4,
            widths: [16, 32, 32],
            encoder_blocks: [1, 1, 1],
            decoder_blocks: [1, 1, 1],
            scale: 1.0,
            shift: 0.0,
            channel_shift: Vec::new(),
            channel_scale: Vec::new(),
            semantic_channels: 0,
            semantic_map: None,
        }
    }

    pub fn validate(&self) -> crate::error::Result<()> {
        let [w8, w16, w32] = self.widths;
        let divides = |a: usize, b: usize| b > 0 && a.is_multiple_of(b);
        let ok =
            divides(4 * w8, w16) && divides(4 * w16, w32) && divides(w32, self.latent_channels);
        if !ok {
            return Err(ModelError::Config(format!(
                "autoencoder widths {:?} / latent {} must divide for the shortcuts (4·w8 by w16, 4·w16 by w32, w32 by latent)",
                self.widths, self.latent_channels
            )));
        }
        if !(self.scale.is_finite() && self.scale > 0.0 && self.shift.is_finite()) {
            return Err(ModelError::Config(format!(
                "autoencoder latent scale {} / shift {} must be finite with scale > 0",
                self.scale, self.shift
            )));
        }
        let (ns, nc) = (self.channel_shift.len(), self.channel_scale.len());
        if ns != nc || (ns != 0 && ns != self.latent_channels) {
            return Err(ModelError::Config(format!(
                "autoencoder channel_shift ({ns} values) and channel_scale ({nc} values) must both be empty or both hold one value per latent channel ({})",
                self.latent_channels
            )));
        }
        let bad = self
            .channel_shift
            .iter()
            .position(|v| !v.is_finite())
            .or_else(|| {
                self.channel_scale
                    .iter()
                    .position(|v| !(v.is_finite() && *v > 0.0))
            });
        if let Some(c) = bad {
            return Err(ModelError::Config(format!(
                "autoencoder latent channel {c}: channel_shift {} / channel_scale {} must be finite with scale > 0",
                self.channel_shift[c], self.channel_scale[c]
            )));
        }
        Ok(())
    }
}

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    candle_nn::conv2d(cin, cout, k, cfg, vb)
}

/// A convolution initialised to zero: residual branches and resolution changes start as
/// their parameter-free shortcuts.
fn zero_conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        ..Default::default()
    };
    let w = vb.get_with_hints((cout, cin, k, k), "weight", candle_nn::Init::Const(0.0))?;
    let b = vb.get_with_hints(cout, "bias", candle_nn::Init::Const(0.0))?;
    Ok(Conv2d::new(w, Some(b), cfg))
}

/// RMS norm over channels of a (B, C, H, W) map, learned per-channel scale.
#[derive(Debug, Clone)]
struct ChannelNorm {
    scale: Tensor,
}

impl ChannelNorm {
    fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(ChannelNorm {
            scale: vb.get_with_hints((1, c, 1, 1), "scale", candle_nn::Init::Const(1.0))?,
        })
    }
}

impl Module for ChannelNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(1)?;
        x.broadcast_div(&(ms + 1e-6)?.sqrt()?)?
            .broadcast_mul(&self.scale)
    }
}

/// `x + conv2(silu(conv1(silu(norm(x)))))` with 3×3 (or 1×1, with a 2× wider middle) convs.
#[derive(Debug, Clone)]
struct ResBlock {
    norm: ChannelNorm,
    conv1: Conv2d,
    conv2: Conv2d,
}

impl ResBlock {
    fn new(c: usize, k: usize, vb: VarBuilder) -> Result<Self> {
        let mid = if k == 1 { 2 * c } else { c };
        Ok(ResBlock {
            norm: ChannelNorm::new(c, vb.pp("norm"))?,
            conv1: conv(c, mid, k, vb.pp("conv1"))?,
            conv2: zero_conv(mid, c, k, vb.pp("conv2"))?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm.forward(x)?.silu()?)?;
        x + self.conv2.forward(&h.silu()?)?
    }
}

/// Mean over consecutive groups of channels: (B, C, H, W) → (B, C/g, H, W).
fn channel_average(x: &Tensor, out: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, out, c / out, h, w))?.mean(2)
}

/// Each channel repeated `r` times in place: (B, C, H, W) → (B, C·r, H, W).
fn channel_repeat(x: &Tensor, r: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, c, r, h, w))?
        .reshape((b, c * r, h, w))
}

/// Space-to-channel by 2 with a channel-averaging shortcut.
#[derive(Debug, Clone)]
struct Down {
    proj: Conv2d,
    cout: usize,
}

impl Down {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Down {
            proj: zero_conv(4 * cin, cout, 1, vb.pp("proj"))?,
            cout,
        })
    }
}

impl Module for Down {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s = candle_nn::ops::pixel_unshuffle(x, 2)?;
        self.proj.forward(&s)? + channel_average(&s, self.cout)?
    }
}

/// Channel-to-space by 2 with a channel-duplicating shortcut.
#[derive(Debug, Clone)]
struct Up {
    proj: Conv2d,
    cin: usize,
    cout: usize,
}

impl Up {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Up {
            proj: zero_conv(cin, 4 * cout, 1, vb.pp("proj"))?,
            cin,
            cout,
        })
    }
}

impl Module for Up {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let shortcut = channel_repeat(x, 4 * self.cout / self.cin)?;
        candle_nn::ops::pixel_shuffle(&(self.proj.forward(x)? + shortcut)?, 2)
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    stem: Conv2d,
    s8: Vec<ResBlock>,
    down16: Down,
    s16: Vec<ResBlock>,
    down32: Down,
    s32: Vec<ResBlock>,
    out: Conv2d,
    latent: usize,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    stem: Conv2d,
    s32: Vec<ResBlock>,
    up16: Up,
    s16: Vec<ResBlock>,
    up8: Up,
    s8: Vec<ResBlock>,
    out: Conv2d,
    semantic: Option<Conv2d>,
    w32: usize,
    latent: usize,
}

fn blocks(n: usize, c: usize, k: usize, vb: VarBuilder) -> Result<Vec<ResBlock>> {
    (0..n).map(|i| ResBlock::new(c, k, vb.pp(i))).collect()
}

impl Encoder {
    fn new(cfg: &AeConfig, vb: VarBuilder) -> Result<Self> {
        let [w8, w16, w32] = cfg.widths;
        Ok(Encoder {
            stem: conv(3 * 64, w8, 1, vb.pp("stem"))?,
            s8: blocks(cfg.encoder_blocks[0], w8, 1, vb.pp("s8"))?,
            down16: Down::new(w8, w16, vb.pp("down16"))?,
            s16: blocks(cfg.encoder_blocks[1], w16, 3, vb.pp("s16"))?,
            down32: Down::new(w16, w32, vb.pp("down32"))?,
            s32: blocks(cfg.encoder_blocks[2], w32, 3, vb.pp("s32"))?,
            out: zero_conv(w32, cfg.latent_channels, 1, vb.pp("out"))?,
            latent: cfg.latent_channels,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.stem.forward(&candle_nn::ops::pixel_unshuffle(x, 8)?)?;
        for b in &self.s8 {
            h = b.forward(&h)?;
        }
        h = self.down16.forward(&h)?;
        for b in &self.s16 {
            h = b.forward(&h)?;
        }
        h = self.down32.forward(&h)?;
        for b in &self.s32 {
            h = b.forward(&h)?;
        }
        self.out.forward(&h)? + channel_average(&h, self.latent)?
    }
}

impl Decoder {
    fn new(cfg: &AeConfig, vb: VarBuilder) -> Result<Self> {
        let [w8, w16, w32] = cfg.widths;
        Ok(Decoder {
            stem: zero_conv(cfg.latent_channels, w32, 1, vb.pp("stem"))?,
            s32: blocks(cfg.decoder_blocks[0], w32, 3, vb.pp("s32"))?,
            up16: Up::new(w32, w16, vb.pp("up16"))?,
            s16: blocks(cfg.decoder_blocks[1], w16, 3, vb.pp("s16"))?,
            up8: Up::new(w16, w8, vb.pp("up8"))?,
            s8: blocks(cfg.decoder_blocks[2], w8, 1, vb.pp("s8"))?,
            out: conv(w8, 3 * 64, 1, vb.pp("out"))?,
            semantic: match cfg.semantic_channels {
                0 => None,
                n => Some(zero_conv(n, w32, 3, vb.pp("semantic"))?),
            },
            w32,
            latent: cfg.latent_channels,
        })
    }

    /// Raw latent (B, C, h, w), and for a decoder with semantic channels the semantic map
    /// (B, S, h, w) → image. A semantic map must be given exactly when the decoder reads one.
    pub fn forward(&self, z: &Tensor, semantic: Option<&Tensor>) -> Result<Tensor> {
        let mut h = (self.stem.forward(z)? + channel_repeat(z, self.w32 / self.latent)?)?;
        match (&self.semantic, semantic) {
            (Some(conv), Some(s)) => {
                let (b, _, lh, lw) = z.dims4()?;
                let want = (b, conv.weight().dim(1)?, lh, lw);
                if s.dims4()? != want {
                    candle_core::bail!(
                        "the decoder's semantic map must be {want:?} (batch, channels, latent rows, latent columns), got {:?}",
                        s.dims()
                    );
                }
                h = (h + conv.forward(s)?)?;
            }
            (Some(conv), None) => candle_core::bail!(
                "this decoder reads {} semantic channels beside the latent, and none were given",
                conv.weight().dim(1)?
            ),
            (None, Some(_)) => {
                candle_core::bail!(
                    "this decoder reads no semantic channels, but a semantic map was given"
                )
            }
            (None, None) => {}
        }
        for b in &self.s32 {
            h = b.forward(&h)?;
        }
        h = self.up16.forward(&h)?;
        for b in &self.s16 {
            h = b.forward(&h)?;
        }
        h = self.up8.forward(&h)?;
        for b in &self.s8 {
            h = b.forward(&h)?;
        }
        candle_nn::ops::pixel_shuffle(&self.out.forward(&h)?, 8)
    }
}

#[derive(Debug, Clone)]
pub struct Autoencoder {
    pub cfg: AeConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// Per-channel shift and scale as (1, C, 1, 1) tensors, when the config has them.
    channel_norm: Option<(Tensor, Tensor)>,
}

impl Autoencoder {
    pub fn new(cfg: &AeConfig, vb: VarBuilder) -> crate::error::Result<Self> {
        cfg.validate()?;
        let channel_norm = if cfg.channel_shift.is_empty() {
            None
        } else {
            let c = cfg.latent_channels;
            let t = |v: &[f64]| {
                let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
                Tensor::from_vec(v, (1, c, 1, 1), vb.device())
            };
            Some((t(&cfg.channel_shift)?, t(&cfg.channel_scale)?))
        };
        Ok(Autoencoder {
            cfg: cfg.clone(),
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            channel_norm,
        })
    }

    /// Raw encoder output → the DiT's normalised latent.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        let z = ((z - self.cfg.shift)? * self.cfg.scale)?;
        match &self.channel_norm {
            Some((shift, scale)) => z.broadcast_sub(shift)?.broadcast_mul(scale),
            None => Ok(z),
        }
    }

    /// The DiT's normalised latent → raw decoder input (inverse of [`normalize`]).
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.channel_norm {
            Some((shift, scale)) => z.broadcast_div(scale)?.broadcast_add(shift)?,
            None => z.clone(),
        };
        (z / self.cfg.scale)? + self.cfg.shift
    }

    fn check(x: &Tensor) -> Result<()> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h % DOWNSCALE != 0 || w % DOWNSCALE != 0 {
            candle_core::bail!("autoencoder input must be (B, 3, H, W) with H and W multiples of {DOWNSCALE}, got {:?}", x.dims());
        }
        Ok(())
    }

    /// Image in [-1, 1] (B, 3, H, W) → normalised latent (B, C, H/32, W/32).
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Self::check(x)?;
        self.normalize(&self.encoder.forward(x)?)
    }

    /// Normalised latent → image in [-1, 1] (not clamped), for a decoder without semantic
    /// channels.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with(z, None)
    }

    /// Normalised latent and, for a decoder that reads them, its semantic map → image.
    pub fn decode_with(&self, z: &Tensor, semantic: Option<&Tensor>) -> Result<Tensor> {
        self.decoder.forward(&self.denormalize(z)?, semantic)
    }

    /// Decode in overlapping tiles of `tile`×`tile` latent cells with `overlap` cells blended
    /// linearly, so large canvases decode in bounded memory. Equal to [`decode_with`] where the
    /// receptive field fits inside a tile.
    pub fn decode_tiled(
        &self,
        z: &Tensor,
        semantic: Option<&Tensor>,
        tile: usize,
        overlap: usize,
    ) -> Result<Tensor> {
        let c = self.cfg.latent_channels;
        match semantic {
            None => crate::tiling::decode_tiled(z, tile, overlap, DOWNSCALE, |t| self.decode(t)),
            // The map is cut into the same tiles as the latent: both travel as one tensor.
            Some(s) => {
                let both = Tensor::cat(&[z, s], 1)?;
                crate::tiling::decode_tiled(&both, tile, overlap, DOWNSCALE, |t| {
                    let (_, n, _, _) = t.dims4()?;
                    self.decode_with(&t.narrow(1, 0, c)?, Some(&t.narrow(1, c, n - c)?))
                })
            }
        }
    }
}

/// Peak signal-to-noise ratio (dB) of two images in [-1, 1].
pub fn psnr(a: &Tensor, b: &Tensor) -> Result<f64> {
    let mse = ((a.clamp(-1f32, 1f32)? - b.clamp(-1f32, 1f32)?)? / 2.0)?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    Ok(10.0 * (1.0 / mse.max(1e-12)).log10())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn shapes_any_aspect() {
        let vm = VarMap::new();
        let ae = Autoencoder::new(
            &AeConfig::tiny(),
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        )
        .unwrap();
        for (h, w) in [(64, 64), (96, 160), (128, 32)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu).unwrap();
            let z = ae.encode(&x).unwrap();
            assert_eq!(z.dims(), &[2, 4, h / 32, w / 32]);
            assert_eq!(ae.decode(&z).unwrap().dims(), &[2, 3, h, w]);
        }
        let bad = Tensor::zeros((1, 3, 40, 64), DType::F32, &Device::Cpu).unwrap();
        assert!(ae
            .encode(&bad)
            .unwrap_err()
            .to_string()
            .contains("multiples of 32"));
    }

    #[test]
    fn shortcuts_are_exact_space_channel_rearrangements() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 16., &dev)
            .unwrap()
            .reshape((1, 4, 2, 2))
            .unwrap();
        let avg = channel_average(&x, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(avg, vec![2., 3., 4., 5., 10., 11., 12., 13.]);
        let rep = channel_repeat(&x, 2).unwrap();
        assert_eq!(rep.dims(), &[1, 8, 2, 2]);
        assert_eq!(
            channel_average(&rep, 4)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn tiled_decoding_matches_whole_decoding_for_a_pointwise_decoder() {
        // With every 3x3 block removed, the decoder is pointwise per latent cell, so tiles
        // blended with weights that sum to one reproduce the whole decode exactly.
        let cfg = AeConfig {
            decoder_blocks: [0, 0, 1],
            ..AeConfig::tiny()
        };
        let vm = VarMap::new();
        let ae =
            Autoencoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        let z = Tensor::randn(0f32, 1.0, (1, 4, 5, 7), &Device::Cpu).unwrap();
        let whole = ae.decode(&z).unwrap();
        let tiled = ae.decode_tiled(&z, None, 3, 1).unwrap();
        let d = crate::ops::max_abs_diff(&whole, &tiled).unwrap();
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn a_semantic_decoder_starts_as_the_plain_one_and_checks_its_map() {
        let dev = Device::Cpu;
        let cfg = AeConfig {
            semantic_channels: 3,
            decoder_blocks: [0, 0, 1],
            ..AeConfig::tiny()
        };
        let vm = VarMap::new();
        let ae = Autoencoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        // The same weights without the semantic convolution: the plain decoder.
        let plain_w: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| !k.starts_with("decoder.semantic"))
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let plain = Autoencoder::new(
            &AeConfig {
                semantic_channels: 0,
                ..cfg.clone()
            },
            VarBuilder::from_tensors(plain_w, DType::F32, &dev),
        )
        .unwrap();
        let z = Tensor::randn(0f32, 1.0, (2, 4, 5, 7), &dev).unwrap();
        let s = Tensor::randn(0f32, 1.0, (2, 3, 5, 7), &dev).unwrap();
        let want = plain.decode(&z).unwrap();
        let got = ae.decode_with(&z, Some(&s)).unwrap();
        assert!(crate::ops::max_abs_diff(&want, &got).unwrap() < 1e-6);
        // Tiles cut the map with the latent (pointwise decoder, zero semantic weights).
        let tiled = ae.decode_tiled(&z, Some(&s), 3, 1).unwrap();
        assert!(crate::ops::max_abs_diff(&want, &tiled).unwrap() < 1e-4);
        // A nonzero semantic convolution changes the image.
        let w = vm
            .data()
            .lock()
            .unwrap()
            .get("decoder.semantic.weight")
            .unwrap()
            .clone();
        w.set(&Tensor::ones(w.shape(), DType::F32, &dev).unwrap())
            .unwrap();
        let moved = ae.decode_with(&z, Some(&s)).unwrap();
        assert!(crate::ops::max_abs_diff(&want, &moved).unwrap() > 1e-3);
        for (err, what) in [
            (ae.decode(&z).unwrap_err(), "reads 3 semantic channels"),
            (
                ae.decode_with(&z, Some(&s.narrow(1, 0, 2).unwrap()))
                    .unwrap_err(),
                "semantic map must be (2, 3, 5, 7)",
            ),
            (
                plain.decode_with(&z, Some(&s)).unwrap_err(),
                "reads no semantic channels",
            ),
        ] {
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn latent_normalisation_closed_form_and_inverse() {
        let dev = Device::Cpu;
        let cfg = AeConfig {
            scale: 2.0,
            shift: 0.5,
            channel_shift: vec![1.0, -1.0, 0.0, 3.0],
            channel_scale: vec![0.5, 4.0, 1.0, 0.25],
            ..AeConfig::tiny()
        };
        let vm = VarMap::new();
        let ae = Autoencoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
        let raw = Tensor::new(&[1.5f32, 2.0, -0.5, 4.5], &dev)
            .unwrap()
            .reshape((1, 4, 1, 1))
            .unwrap();
        let z = ae.normalize(&raw).unwrap();
        // ((1.5-0.5)*2-1)*0.5, ((2-0.5)*2+1)*4, (-0.5-0.5)*2*1, ((4.5-0.5)*2-3)*0.25
        assert_eq!(
            z.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.5, 16.0, -2.0, 1.25]
        );
        let back = ae.denormalize(&z).unwrap();
        assert!(crate::ops::max_abs_diff(&back, &raw).unwrap() < 1e-6);
        for (shift, scale, what) in [
            (vec![0.0; 3], vec![1.0; 3], "one value per latent channel"),
            (vec![0.0; 4], vec![], "both be empty"),
            (vec![0.0; 4], vec![1.0, 1.0, 0.0, 1.0], "channel 2"),
            (vec![0.0, f64::NAN, 0.0, 0.0], vec![1.0; 4], "channel 1"),
        ] {
            let bad = AeConfig {
                channel_shift: shift,
                channel_scale: scale,
                ..AeConfig::tiny()
            };
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        // Configs written before per-channel statistics existed still load.
        let old: AeConfig = serde_json::from_str(
            r#"{"latent_channels":4,"widths":[16,32,32],"encoder_blocks":[1,1,1],"decoder_blocks":[1,1,1],"scale":2.0,"shift":0.1}"#,
        )
        .unwrap();
        assert!(old.channel_shift.is_empty() && old.validate().is_ok());
    }

    #[test]
    fn psnr_closed_form() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        // A uniform error of 0.2 in [-1, 1] is 0.1 of full scale: PSNR = 20 dB.
        let b = (a.clone() + 0.2).unwrap();
        assert!((psnr(&a, &b).unwrap() - 20.0).abs() < 1e-4);
    }
}
