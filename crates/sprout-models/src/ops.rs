//! Differentiable building blocks. On the CPU with f32 they run as fused kernels with
//! hand-written backward passes ([`crate::fused`]); elsewhere they are composed from candle
//! primitives so candle's autograd differentiates them (candle-nn's fused softmax / norm /
//! rotary kernels have no backward). The `*_composed` versions are the reference.

use crate::weights::{LinearWeight, Weights};
use candle_core::{DType, Result, Tensor, D};

/// Largest absolute element of `x` (as f32), e.g. to compare tensors or check a bound.
pub fn max_abs(x: &Tensor) -> Result<f32> {
    x.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// Largest absolute elementwise difference of two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    max_abs(&(a - b)?)
}

/// Softmax over the last dimension, stabilised by the row maximum.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    crate::fused::softmax_last_dim(x).unwrap_or_else(|| softmax_last_dim_composed(x))
}

pub fn softmax_last_dim_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// RMS norm over the last dimension with a learned per-channel `scale`.
pub fn rms_norm(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    crate::fused::rms_norm(x, scale, eps).unwrap_or_else(|| rms_norm_composed(x, scale, eps))
}

pub fn rms_norm_composed(x: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(scale)
}

/// Layer norm over the last dimension without affine parameters (FLUX's pre-norms).
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    crate::fused::layer_norm(x, eps).unwrap_or_else(|| layer_norm_composed(x, eps))
}

pub fn layer_norm_composed(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// A linear layer that multiplies all leading dimensions at once as one 2-D GEMM.
///
/// candle-nn's `Linear` broadcasts the weight over the batch, so its backward computes one
/// weight gradient per batch element and then sums them (a slow reduction); flattening to
/// (rows, in) makes the weight gradient a single GEMM.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: LinearWeight, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias }
    }

    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// The layer's compute type.
    pub fn dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }
}

impl candle_core::Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (out, inp) = self.weight.dims2()?;
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = self
            .weight
            .matmul_t_bias(&x.reshape((rows, inp))?, self.bias.as_ref())?;
        let mut shape = dims;
        *shape.last_mut().expect("rank >= 1") = out;
        y.reshape(shape)
    }
}

/// `candle_nn::linear_b`'s parameters and initialisation, with [`Linear`]'s forward; from
/// dense or quantized weights.
pub fn linear_b<'a>(
    inp: usize,
    out: usize,
    bias: bool,
    vb: impl Into<Weights<'a>>,
) -> Result<Linear> {
    let vb = vb.into();
    let weight = vb.linear_weight(out, inp, "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let bias = if bias {
        let bound = 1. / (inp as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Some(vb.get_with_hints(out, "bias", init)?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

pub fn linear<'a>(inp: usize, out: usize, vb: impl Into<Weights<'a>>) -> Result<Linear> {
    linear_b(inp, out, true, vb)
}

/// A linear layer initialised to zero (adaLN-Zero modulation and the final projection: every
/// block starts as the identity and the model's first output is zero). Loaded weights replace
/// the initial values as usual.
pub fn linear_zero<'a>(inp: usize, out: usize, vb: impl Into<Weights<'a>>) -> Result<Linear> {
    linear_zero_b(inp, out, true, vb)
}

/// [`linear_zero`], with or without a bias.
pub fn linear_zero_b<'a>(
    inp: usize,
    out: usize,
    bias: bool,
    vb: impl Into<Weights<'a>>,
) -> Result<Linear> {
    let vb = vb.into();
    let zero = candle_nn::Init::Const(0.0);
    Ok(Linear {
        weight: vb.linear_weight(out, inp, "weight", zero)?,
        bias: if bias {
            Some(vb.get_with_hints(out, "bias", zero)?)
        } else {
            None
        },
    })
}

/// SwiGLU over the last dimension: `silu(a) · b` where `x` is `[a, b]` (FLUX.2's MLP
/// activation).
pub fn swiglu(x: &Tensor) -> Result<Tensor> {
    let m = x.dim(candle_core::D::Minus1)? / 2;
    let a = x.narrow(candle_core::D::Minus1, 0, m)?;
    let b = x.narrow(candle_core::D::Minus1, m, m)?;
    a.silu()? * b
}

/// GELU with the tanh approximation (FLUX's MLP activation).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    crate::fused::gelu(x).unwrap_or_else(|| x.gelu())
}

/// `x * (1 + scale) + shift`, with `shift`, `scale` of shape (B, 1, C) broadcast over tokens.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// Rotary embedding on interleaved pairs: for each pair (x₀, x₁) and angle θ,
/// (x₀ cos θ − x₁ sin θ, x₀ sin θ + x₁ cos θ). `x`: (B, H, L, D); `cos`, `sin`: (B, 1, L, D/2).
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    crate::fused::rope_interleaved(x, cos, sin)
        .unwrap_or_else(|| rope_interleaved_composed(x, cos, sin))
}

pub fn rope_interleaved_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    let pairs = x.reshape((b, h, l, d / 2, 2))?;
    let x0 = pairs.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
    let x1 = pairs.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
    let y0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
    let y1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
    Tensor::stack(&[y0, y1], D::Minus1)?.reshape((b, h, l, d))
}

/// Scaled dot-product attention over (B, H, L, D) tensors, with an optional additive mask
/// broadcastable to (B, H, L, L): one fused kernel on the CPU in f32 ([`crate::flash`], with
/// no (L × L) score matrix) where it applies, else [`attention_composed`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    attention_with(q, k, v, mask, crate::flash::Precision::F32)
}

/// [`attention`] whose fused CPU kernel multiplies at `precision` (the composed path
/// multiplies in the tensors' dtype).
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    precision: crate::flash::Precision,
) -> Result<Tensor> {
    match crate::flash::attention(q, k, v, mask, precision) {
        Some(r) => r,
        None => attention_composed(q, k, v, mask),
    }
}

/// [`attention`] composed from candle's ops (the score matrix, its softmax, the product
/// with v): what the fused kernel is tested against, and the path of other devices.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    softmax_last_dim(&scores)?.matmul(v)
}

/// Sinusoidal embedding of `t` (B,) scaled by `time_factor`: `[cos(t·f), sin(t·f)]` with
/// `dim / 2` frequencies `f_j = max_period^(−j / (dim/2))` (FLUX's convention: cosines first).
pub fn timestep_embedding(t: &Tensor, dim: usize, time_factor: f64) -> Result<Tensor> {
    let half = dim / 2;
    let dev = t.device();
    let freqs: Vec<f32> = (0..half)
        .map(|j| (-(10_000f64.ln()) * j as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), dev)?;
    let args = (t.to_dtype(DType::F32)? * time_factor)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    Tensor::cat(&[args.cos()?, args.sin()?], 1)?.to_dtype(t.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d <= tol, "max abs diff {d}");
    }

    #[test]
    fn composed_ops_match_candle_fused_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 3, 5, 8), &dev).unwrap();
        close(
            &softmax_last_dim(&x).unwrap(),
            &candle_nn::ops::softmax_last_dim(&x).unwrap(),
            1e-6,
        );
        let scale = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        close(
            &rms_norm(&x, &scale, 1e-6).unwrap(),
            &candle_nn::ops::rms_norm(&x, &scale, 1e-6).unwrap(),
            1e-5,
        );
        let ones = Tensor::ones(8, DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros(8, DType::F32, &dev).unwrap();
        close(
            &layer_norm(&x, 1e-6).unwrap(),
            &candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn rope_rotates_pairs_in_closed_form() {
        let dev = Device::Cpu;
        // One head, one token, D = 4: pairs (1, 0) and (0, 2), angles π/2 and π/3.
        let x = Tensor::from_vec(vec![1f32, 0., 0., 2.], (1, 1, 1, 4), &dev).unwrap();
        let th = [std::f32::consts::FRAC_PI_2, std::f32::consts::FRAC_PI_3];
        let cos = Tensor::from_vec(th.map(f32::cos).to_vec(), (1, 1, 1, 2), &dev).unwrap();
        let sin = Tensor::from_vec(th.map(f32::sin).to_vec(), (1, 1, 1, 2), &dev).unwrap();
        let y = rope_interleaved(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = [0.0, 1.0, -2.0 * th[1].sin(), 2.0 * th[1].cos()];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        // Rotations preserve norms and compose: rope(θ) then rope(−θ) is the identity.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap();
        let ang = Tensor::randn(0f32, 3.0, (2, 1, 4, 4), &dev).unwrap();
        let (c, s) = (ang.cos().unwrap(), ang.sin().unwrap());
        let y = rope_interleaved(&x, &c, &s).unwrap();
        close(
            &y.sqr().unwrap().sum_all().unwrap(),
            &x.sqr().unwrap().sum_all().unwrap(),
            1e-3,
        );
        close(
            &rope_interleaved(&y, &c, &s.neg().unwrap()).unwrap(),
            &x,
            1e-5,
        );
        // And match candle's interleaved kernel (forward only there).
        let c2 = c
            .squeeze(1)
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let s2 = s
            .squeeze(1)
            .unwrap()
            .narrow(0, 0, 1)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let x0 = x.narrow(0, 0, 1).unwrap().contiguous().unwrap();
        let y0 = y.narrow(0, 0, 1).unwrap();
        close(
            &candle_nn::rotary_emb::rope_i(&x0, &c2, &s2).unwrap(),
            &y0,
            1e-5,
        );
    }

    #[test]
    fn ops_are_differentiable() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 2, 3, 4), &dev).unwrap();
        let scale = Var::ones(4, DType::F32, &dev).unwrap();
        let ang = Tensor::randn(0f32, 1.0, (2, 1, 3, 2), &dev).unwrap();
        let y = rope_interleaved(
            &rms_norm(x.as_tensor(), scale.as_tensor(), 1e-6).unwrap(),
            &ang.cos().unwrap(),
            &ang.sin().unwrap(),
        )
        .unwrap();
        let y = attention(&y, &layer_norm(&y, 1e-6).unwrap(), &y, None).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_some() && g.get(&scale).is_some());
    }

    #[test]
    fn fused_kernels_match_composed_values_and_gradients() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.5, (2, 3, 5, 8), &dev).unwrap();
        let scale = Var::randn(1f32, 0.2, 8, &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (2, 1, 5, 4), &dev).unwrap();
        let (c, s) = (ang.cos().unwrap(), ang.sin().unwrap());
        let w = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
        type F = Box<dyn Fn(&Tensor, &Tensor) -> Result<Tensor>>;
        let pairs: Vec<(&str, F, F)> = vec![
            (
                "softmax",
                Box::new(|x, _| softmax_last_dim(x)),
                Box::new(|x, _| softmax_last_dim_composed(x)),
            ),
            ("gelu", Box::new(|x, _| gelu(x)), Box::new(|x, _| x.gelu())),
            (
                "layer_norm",
                Box::new(|x, _| layer_norm(x, 1e-6)),
                Box::new(|x, _| layer_norm_composed(x, 1e-6)),
            ),
            (
                "rms_norm",
                Box::new(|x, s| rms_norm(x, s, 1e-6)),
                Box::new(|x, s| rms_norm_composed(x, s, 1e-6)),
            ),
            (
                "rope",
                {
                    let (c, s) = (c.clone(), s.clone());
                    Box::new(move |x, _| rope_interleaved(x, &c, &s))
                },
                {
                    let (c, s) = (c.clone(), s.clone());
                    Box::new(move |x, _| rope_interleaved_composed(x, &c, &s))
                },
            ),
        ];
        for (name, fused, composed) in pairs {
            // A transposed (non-contiguous) input exercises the contiguity handling too.
            let xt = x
                .as_tensor()
                .transpose(2, 3)
                .unwrap()
                .transpose(2, 3)
                .unwrap();
            let a = fused(&xt, scale.as_tensor()).unwrap();
            let b = composed(&xt, scale.as_tensor()).unwrap();
            close(&a, &b, 2e-5);
            let ga = (a * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (b * &w).unwrap().sum_all().unwrap().backward().unwrap();
            close(ga.get(&x).unwrap(), gb.get(&x).unwrap(), 2e-4);
            if name == "rms_norm" {
                close(ga.get(&scale).unwrap(), gb.get(&scale).unwrap(), 2e-4);
            }
        }
    }

    #[test]
    fn flattened_linear_matches_candle_linear() {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let ours = linear(6, 5, vb.pp("l")).unwrap();
        let (w, b) = {
            let data = vm.data().lock().unwrap();
            (
                data["l.weight"].as_tensor().clone(),
                data["l.bias"].as_tensor().clone(),
            )
        };
        let theirs = candle_nn::Linear::new(w, Some(b));
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 6), &dev).unwrap();
        use candle_core::Module;
        close(
            &ours.forward(&x).unwrap(),
            &theirs.forward(&x).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn timestep_embedding_closed_form() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[0.5f32], &dev).unwrap();
        let e = timestep_embedding(&t, 4, 1000.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // Frequencies 1 and 10000^(-1/2) = 0.01; argument 500 · f.
        let want = [500f32.cos(), 5f32.cos(), 500f32.sin(), 5f32.sin()];
        for (a, b) in e[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-3, "{e:?}");
        }
    }
}
