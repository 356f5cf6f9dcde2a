//! The training-speed probe: a plain pre-norm transformer (d = 256, 8 layers, 96 tokens ×
//! batch 32, f32) built from the same ops as the DiT, so `sprout bench --train` can compare
//! its step time with other frameworks' numbers for the same shape.

use crate::ops::Linear;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::ops::{attention, layer_norm};

pub struct ProbeConfig {
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub tokens: usize,
    pub batch: usize,
}

impl ProbeConfig {
    pub fn standard() -> ProbeConfig {
        ProbeConfig {
            dim: 256,
            layers: 8,
            heads: 4,
            tokens: 96,
            batch: 32,
        }
    }

    /// Forward FLOPs of one batch (matmuls and attention).
    pub fn forward_flops(&self) -> f64 {
        let (d, l, t, b) = (
            self.dim as f64,
            self.layers as f64,
            self.tokens as f64,
            self.batch as f64,
        );
        let matmul = 2.0 * 12.0 * d * d * t * b; // qkv 3d², proj d², mlp 8d²
        let attn = 4.0 * t * t * d * b;
        l * (matmul + attn)
    }
}

struct Layer {
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

pub struct Probe {
    layers: Vec<Layer>,
}

impl Probe {
    pub fn new(cfg: &ProbeConfig, vb: VarBuilder) -> Result<Probe> {
        let d = cfg.dim;
        let layers = (0..cfg.layers)
            .map(|i| {
                let vb = vb.pp(i);
                Ok(Layer {
                    qkv: crate::ops::linear(d, 3 * d, vb.pp("qkv"))?,
                    proj: crate::ops::linear(d, d, vb.pp("proj"))?,
                    fc1: crate::ops::linear(d, 4 * d, vb.pp("fc1"))?,
                    fc2: crate::ops::linear(4 * d, d, vb.pp("fc2"))?,
                    heads: cfg.heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Probe { layers })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let mut x = x.clone();
        for l in &self.layers {
            let hd = d / l.heads;
            let qkv = l
                .qkv
                .forward(&layer_norm(&x, 1e-5)?)?
                .reshape((b, t, 3, l.heads, hd))?
                .permute((2, 0, 3, 1, 4))?;
            let (q, k, v) = (
                qkv.get(0)?.contiguous()?,
                qkv.get(1)?.contiguous()?,
                qkv.get(2)?.contiguous()?,
            );
            let a = attention(&q, &k, &v, None)?
                .transpose(1, 2)?
                .reshape((b, t, d))?;
            x = (x + l.proj.forward(&a)?)?;
            let h = l
                .fc2
                .forward(&crate::ops::gelu(&l.fc1.forward(&layer_norm(&x, 1e-5)?)?)?)?;
            x = (x + h)?;
        }
        Ok(x)
    }
}
