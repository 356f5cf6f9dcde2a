//! Fused CPU kernels with hand-written backward passes for the training hot path.
//!
//! Composed from candle primitives, a layer norm is seven full-size tensor ops forward and
//! more backward, each allocating; these kernels make one pass per row instead. They run for
//! contiguous f32 tensors on the CPU; the `ops` wrappers fall back to the composed versions
//! elsewhere (other devices, other dtypes), and tests check both agree.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("fused op needs a contiguous tensor"),
        },
        _ => candle_core::bail!("fused op needs f32"),
    }
}

/// Rows of length `d` processed in parallel.
fn rows_out(n: usize, d: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(d.max(1) * 64)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (ri, row) in chunk.chunks_mut(d).enumerate() {
                f(ci * 64 + ri, row);
            }
        });
    out
}

// ---------------------------------------------------------------- layer norm (no affine)

struct LayerNorm {
    eps: f32,
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "sprout-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims().last().copied().unwrap_or(1);
        let out = rows_out(x.len(), d, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (o, v) in y.iter_mut().zip(xr) {
                *o = (v - mean) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            y,
            &dy.contiguous()?,
            &LayerNormBwd { eps: self.eps },
        )?))
    }
}

/// dx = (dy − mean(dy) − y·mean(dy·y)) / σ
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "sprout-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = rows_out(x.len(), d, |r, dx| {
            let (xr, yr, gr) = (
                &x[r * d..(r + 1) * d],
                &y[r * d..(r + 1) * d],
                &dy[r * d..(r + 1) * d],
            );
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            let mg = gr.iter().sum::<f32>() / d as f32;
            let mgy = gr.iter().zip(yr).map(|(g, y)| g * y).sum::<f32>() / d as f32;
            for i in 0..d {
                dx[i] = (gr[i] - mg - yr[i] * mgy) * inv;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- softmax over the last dim

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "sprout-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let d = l.dims().last().copied().unwrap_or(1);
        let out = rows_out(x.len(), d, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            y.copy_from_slice(xr);
            let sum = vmath::exp_shifted_sum(y, vmath::max(xr));
            vmath::scale(y, 1.0 / sum);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBwd)?))
    }
}

/// dx = y·(dy − Σ dy·y)
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "sprout-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = rows_out(y.len(), d, |r, dx| {
            let (yr, gr) = (&y[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let dot = yr.iter().zip(gr).map(|(a, b)| a * b).sum::<f32>();
            for i in 0..d {
                dx[i] = yr[i] * (gr[i] - dot);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- RMS norm with scale

struct RmsNorm {
    eps: f32,
}

fn rms_inv(xr: &[f32], eps: f32) -> f32 {
    1.0 / (xr.iter().map(|v| v * v).sum::<f32>() / xr.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "sprout-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, s) = (slice(s1, l1)?, slice(s2, l2)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = rows_out(x.len(), d, |r, y| {
            let xr = &x[r * d..(r + 1) * d];
            let inv = rms_inv(xr, self.eps);
            for i in 0..d {
                y[i] = xr[i] * inv * s[i];
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x.apply_op3_no_bwd(scale, &dy, &RmsNormBwd { eps: self.eps })?;
        let d = x.dim(candle_core::D::Minus1)?;
        let xhat = x.apply_op2_no_bwd(
            &Tensor::ones(d, x.dtype(), x.device())?,
            &RmsNorm { eps: self.eps },
        )?;
        let ds = (dy * xhat)?.reshape(((), d))?.sum(0)?;
        Ok((Some(dx), Some(ds)))
    }
}

/// With g = dy·s: dx = g/r − x·(Σ g·x)/(D r³)
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "sprout-rms-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, s, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let d = l1.dims().last().copied().unwrap_or(1);
        let out = rows_out(x.len(), d, |r, dx| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
            let inv = rms_inv(xr, self.eps);
            let dot = (0..d).map(|i| gr[i] * s[i] * xr[i]).sum::<f32>();
            let k = dot * inv * inv * inv / d as f32;
            for i in 0..d {
                dx[i] = gr[i] * s[i] * inv - xr[i] * k;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- rotary embedding (interleaved)

/// x: (B, H, L, D); cos, sin: (B, 1, L, D/2). `sign` −1 applies the inverse rotation.
struct Rope {
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "sprout-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, c, s) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let [b, h, l, d]: [usize; 4] = l1
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg("rope needs (B, H, L, D)".into()))?;
        let cb = l2.dims()[0];
        let half = d / 2;
        let out = rows_out(x.len(), d, |r, y| {
            let bi = r / (h * l);
            let li = r % l;
            let t = ((if cb == 1 { 0 } else { bi }) * l + li) * half;
            let xr = &x[r * d..(r + 1) * d];
            for j in 0..half {
                let (cs, sn) = (c[t + j], self.sign * s[t + j]);
                let (x0, x1) = (xr[2 * j], xr[2 * j + 1]);
                y[2 * j] = x0 * cs - x1 * sn;
                y[2 * j + 1] = x0 * sn + x1 * cs;
            }
        });
        let _ = b;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy
            .contiguous()?
            .apply_op3_no_bwd(cos, sin, &Rope { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}

// ---------------------------------------------------------------- GELU (tanh approximation)

use crate::vmath;

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "sprout-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, x)| {
                vmath::gelu(o, x);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &GeluBwd)?))
    }
}

/// d/dx = ½(1 + tanh u) + ½x(1 − tanh² u)·√(2/π)(1 + 3b x²), u = √(2/π)(x + b x³)
struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "sprout-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(dy.par_chunks(4096)))
            .for_each(|(o, (x, g))| {
                vmath::gelu_backward(o, x, g);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn gelu(x: &Tensor) -> Option<Result<Tensor>> {
    cpu_f32(&[x]).then(|| x.contiguous()?.apply_op1(Gelu))
}

fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

pub fn layer_norm(x: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    cpu_f32(&[x]).then(|| x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 }))
}

pub fn softmax_last_dim(x: &Tensor) -> Option<Result<Tensor>> {
    cpu_f32(&[x]).then(|| x.contiguous()?.apply_op1(Softmax))
}

pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Option<Result<Tensor>> {
    cpu_f32(&[x, scale]).then(|| {
        x.contiguous()?
            .apply_op2(&scale.contiguous()?, RmsNorm { eps: eps as f32 })
    })
}

pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Result<Tensor>> {
    let ok =
        cpu_f32(&[x, cos, sin]) && x.rank() == 4 && cos.rank() == 4 && cos.dim(1).ok() == Some(1);
    ok.then(|| {
        x.contiguous()?
            .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { sign: 1.0 })
    })
}
