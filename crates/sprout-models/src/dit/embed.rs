//! Embedders: the timestep/vector MLP, and rotary tables over three position axes.

use crate::ops::Linear;
use crate::weights::Weights;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::Module;

/// `out_layer(silu(in_layer(x)))` (FLUX's MLPEmbedder; FLUX.2's has no biases).
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    pub fn new(in_dim: usize, hidden: usize, bias: bool, vb: Weights) -> Result<Self> {
        Ok(MlpEmbedder {
            in_layer: crate::ops::linear_b(in_dim, hidden, bias, vb.pp("in_layer"))?,
            out_layer: crate::ops::linear_b(hidden, hidden, bias, vb.pp("out_layer"))?,
        })
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.out_layer.forward(&self.in_layer.forward(x)?.silu()?)
    }
}

/// Rotary angle tables for position ids (B, L, axes): per axis `i` with `d_i` dimensions,
/// angles `pos · θ^(−2j/d_i)` for `j < d_i/2`, concatenated over the axes. Returns
/// (cos, sin), each (B, 1, L, head_dim/2), ready to broadcast over heads.
pub fn rope_tables(ids: &Tensor, axes_dim: &[usize], theta: usize) -> Result<(Tensor, Tensor)> {
    let dev = ids.device();
    let mut parts = Vec::with_capacity(axes_dim.len());
    for (i, &d) in axes_dim.iter().enumerate() {
        let omega: Vec<f32> = (0..d / 2)
            .map(|j| 1.0 / (theta as f64).powf(2.0 * j as f64 / d as f64) as f32)
            .collect();
        let omega = Tensor::from_vec(omega, (1, 1, d / 2), dev)?;
        let pos = ids.narrow(D::Minus1, i, 1)?.to_dtype(DType::F32)?;
        parts.push(pos.broadcast_mul(&omega)?);
    }
    let ang = Tensor::cat(&parts, D::Minus1)?.unsqueeze(1)?;
    Ok((ang.cos()?, ang.sin()?))
}

/// Position ids (1, h·w, 3) of an h×w token grid of image `index` (0 = the target).
pub fn grid_ids(index: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(h * w * 3);
    for r in 0..h {
        for c in 0..w {
            v.extend_from_slice(&[index as f32, r as f32, c as f32]);
        }
    }
    Tensor::from_vec(v, (1, h * w, 3), dev)
}

/// FLUX.2's position ids (1, h·w, 4) of an h×w token grid at `time` (0 for the target,
/// 10·(k + 1) for reference image k, as diffusers' FLUX.2 pipelines place them): (time,
/// row, column, 0).
pub fn grid_ids_4d(time: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(h * w * 4);
    for r in 0..h {
        for c in 0..w {
            v.extend_from_slice(&[time as f32, r as f32, c as f32, 0.0]);
        }
    }
    Tensor::from_vec(v, (1, h * w, 4), dev)
}

/// FLUX.2's position ids (1, n, 4) of text tokens: (0, 0, 0, token index).
pub fn text_ids_4d(n: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n).flat_map(|l| [0.0, 0.0, 0.0, l as f32]).collect();
    Tensor::from_vec(v, (1, n, 4), dev)
}

/// The target image's position ids (1, h·w, axes) in the layout of a preset with `axes`
/// rotary axes: FLUX.1's 3 ([`grid_ids`]) or FLUX.2's 4 ([`grid_ids_4d`]).
pub fn image_ids(axes: usize, h: usize, w: usize, dev: &Device) -> Result<Tensor> {
    match axes {
        4 => grid_ids_4d(0, h, w, dev),
        _ => grid_ids(0, h, w, dev),
    }
}

/// Text position ids (1, n, axes) in the layout of a preset with `axes` rotary axes: FLUX.1's
/// zeros ([`text_ids`]) or FLUX.2's token indices ([`text_ids_4d`]).
pub fn prompt_ids(axes: usize, n: usize, dev: &Device) -> Result<Tensor> {
    match axes {
        4 => text_ids_4d(n, dev),
        _ => text_ids(n, dev),
    }
}

/// Position ids (1, n, 3) of text tokens: all zeros, as FLUX does.
pub fn text_ids(n: usize, dev: &Device) -> Result<Tensor> {
    Tensor::zeros((1, n, 3), DType::F32, dev)
}

/// Latents (B, C, H, W) to tokens (B, (H/p)(W/p), C·p·p), FLUX's `b c (h ph) (w pw) -> b (h w) (c ph pw)`.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if p == 1 {
        return x.flatten_from(2)?.transpose(1, 2)?.contiguous();
    }
    x.reshape((b, c, h / p, p, w / p, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, (h / p) * (w / p), c * p * p))
}

/// Inverse of [`patchify`] for a latent of `h`×`w`.
pub fn unpatchify(x: &Tensor, p: usize, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, cpp) = x.dims3()?;
    let c = cpp / (p * p);
    if p == 1 {
        return x.transpose(1, 2)?.reshape((b, c, h, w));
    }
    x.reshape((b, h / p, w / p, c, p, p))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_tables_closed_form() {
        let dev = Device::Cpu;
        // One token at (image 1, row 2, column 3); axes 2, 4, 2 dims.
        let ids = Tensor::from_vec(vec![1f32, 2., 3.], (1, 1, 3), &dev).unwrap();
        let (cos, sin) = rope_tables(&ids, &[2, 4, 2], 100).unwrap();
        assert_eq!(cos.dims(), &[1, 1, 1, 4]);
        // Angles: axis0 1·1; axis1 2·1, 2·100^(-1/2) = 0.2; axis2 3·1.
        let want = [1f32, 2.0, 0.2, 3.0];
        let c = cos.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let s = sin.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for k in 0..4 {
            assert!((c[k] - want[k].cos()).abs() < 1e-6 && (s[k] - want[k].sin()).abs() < 1e-6);
        }
    }

    #[test]
    fn patchify_round_trips_in_flux_order() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2. * 3. * 4. * 6., &dev)
            .unwrap()
            .reshape((2, 3, 4, 6))
            .unwrap();
        for p in [1, 2] {
            let t = patchify(&x, p).unwrap();
            assert_eq!(t.dims(), &[2, 24 / (p * p), 3 * p * p]);
            let back = unpatchify(&t, p, 4, 6).unwrap();
            assert_eq!(
                back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        // p = 2: token 0 holds channel 0's top-left 2x2 block first: x[0,0,0,0], x[0,0,0,1], x[0,0,1,0], x[0,0,1,1].
        let t = patchify(&x, 2).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(&t[0][0][..4], &[0., 1., 6., 7.]);
        // Token 1 is the next block to the right.
        assert_eq!(&t[0][1][..4], &[2., 3., 8., 9.]);
    }

    #[test]
    fn grid_ids_enumerate_rows_then_columns() {
        let ids = grid_ids(2, 2, 3, &Device::Cpu)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(ids[0][4], vec![2., 1., 1.]);
        assert_eq!(ids[0].len(), 6);
    }
}
