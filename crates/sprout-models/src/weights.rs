//! Where a model's weights come from: dense tensors (safetensors, a training `VarMap`) or the
//! quantized tensors of a GGUF file. Written here because candle has two unrelated
//! VarBuilders for the two cases; this joins them so the one DiT implementation builds from
//! either. With GGUF, linear layers keep their quantized weights (see [`LinearWeight`]) and
//! everything else (norm scales, biases, embeddings) is dequantized at load.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_transformers::quantized_var_builder::VarBuilder as QVarBuilder;

use crate::bf16_gemm::PackedBf16;
use crate::flux::lora::LoraUsage;
use candle_core::quantized::GgmlDType;

#[derive(Clone)]
pub enum Weights<'a> {
    Dense(candle_nn::VarBuilder<'a>),
    /// GGUF tensors; `dtype` is the compute type of the layers built from them.
    Quantized {
        vb: QVarBuilder,
        dtype: DType,
    },
    /// Dense tensors of which the linear layers' weights are kept in bf16 while everything
    /// else, activations included, is f32 (`vb`'s dtype): packed for the bf16 kernel of
    /// [`crate::bf16_gemm`] where the CPU has one, else widened to f32 for each product.
    /// Half the weights' memory at f32's accuracy of everything around the products.
    Bf16Linear(candle_nn::VarBuilder<'a>),
    /// `inner` with LoRA adapters applied unmerged to its linear layers (for quantized
    /// weights, which cannot take a merged update); `prefix` is the module path so far.
    Adapted {
        inner: Box<Weights<'a>>,
        lora: LoraUsage,
        prefix: String,
    },
}

impl<'a> From<candle_nn::VarBuilder<'a>> for Weights<'a> {
    fn from(vb: candle_nn::VarBuilder<'a>) -> Self {
        Weights::Dense(vb)
    }
}

/// A linear layer's weight: dense, or quantized blocks that are multiplied directly (few
/// rows) or dequantized for one matrix product (many rows, where a dense product is faster).
#[derive(Debug, Clone)]
pub enum LinearWeight {
    Dense(Tensor),
    Quantized {
        q: Arc<QTensor>,
        dtype: DType,
    },
    /// A bf16 weight laid out for the CPU's bf16 dot-product kernel; f32 activations.
    Packed(Arc<PackedBf16>),
    /// A bf16 weight (stored so), widened to the activations' f32 for each product: bf16
    /// weights on a CPU without bf16 products, or on another device.
    Widened(Tensor),
    /// `base` plus a low-rank update `up (out, R) · down (R, in)` kept apart (f32).
    Adapted {
        base: Box<LinearWeight>,
        up: Tensor,
        down: Tensor,
    },
}

/// Activation rows from which a quantized weight is dequantized for a dense product instead
/// of multiplying the blocks row by row.
pub const DEQUANTIZE_ROWS: usize = 32;

impl LinearWeight {
    /// (out, in).
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self {
            LinearWeight::Dense(w) => w.dims2(),
            LinearWeight::Quantized { q, .. } => q.shape().dims2(),
            LinearWeight::Packed(p) => Ok(p.dims()),
            LinearWeight::Widened(w) => w.dims2(),
            LinearWeight::Adapted { base, .. } => base.dims2(),
        }
    }

    /// The compute type of the layer.
    pub fn dtype(&self) -> DType {
        match self {
            LinearWeight::Dense(w) => w.dtype(),
            LinearWeight::Quantized { dtype, .. } => *dtype,
            LinearWeight::Packed(_) | LinearWeight::Widened(_) => DType::F32,
            LinearWeight::Adapted { base, .. } => base.dtype(),
        }
    }

    /// `x (rows, in) → x·Wᵀ + bias (rows, out)`: in one pass for a packed bf16 weight.
    pub fn matmul_t_bias(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        match (self, bias) {
            (LinearWeight::Packed(p), Some(b)) => p.matmul_t_bias(&x.contiguous()?, b),
            (_, Some(b)) => self.matmul_t(x)?.broadcast_add(b),
            (_, None) => self.matmul_t(x),
        }
    }

    /// `x (rows, in) → x·Wᵀ (rows, out)`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            LinearWeight::Dense(w) => x.matmul(&w.t()?),
            LinearWeight::Quantized { q, dtype } => {
                let rows = x.dim(0)?;
                let blocks =
                    !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
                if rows >= DEQUANTIZE_ROWS
                    && blocks
                    && *dtype == DType::F32
                    && x.device().is_cpu()
                    && crate::bf16_gemm::available()
                {
                    // Many rows of a block-quantized weight on a CPU with bf16 products:
                    // dequantized and laid out for the bf16 kernel (AMX tiles where
                    // present) for this product only, so the weight stays quantized in
                    // memory; the dequantized values are rounded to bf16 (relative 2⁻⁹,
                    // below Q8_0's own rounding of each block).
                    let (n, k) = q.shape().dims2()?;
                    let p = match PackedBf16::from_blocks(q.dtype(), &q.data()?, n, k) {
                        Some(p) => p,
                        None => {
                            let w = q.dequantize(x.device())?.flatten_all()?;
                            PackedBf16::from_f32_rows(&w.to_vec1::<f32>()?, n, k)
                        }
                    };
                    p.matmul_t(&x.contiguous()?)
                } else if rows >= DEQUANTIZE_ROWS {
                    let w = q.dequantize(x.device())?.to_dtype(*dtype)?;
                    x.matmul(&w.t()?)
                } else {
                    // candle's block product takes f32 activations.
                    let y = candle_core::Module::forward(
                        &candle_core::quantized::QMatMul::QTensor(q.clone()),
                        &x.to_dtype(DType::F32)?,
                    )?;
                    y.to_dtype(*dtype)
                }
            }
            LinearWeight::Packed(p) => p.matmul_t(&x.contiguous()?),
            LinearWeight::Widened(w) => x.matmul(&w.to_dtype(x.dtype())?.t()?),
            LinearWeight::Adapted { base, up, down } => {
                let y = base.matmul_t(x)?;
                let d = x
                    .to_dtype(DType::F32)?
                    .matmul(&down.t()?)?
                    .matmul(&up.t()?)?;
                let dt = y.dtype();
                y + d.to_dtype(dt)?
            }
        }
    }
}

impl<'a> Weights<'a> {
    pub fn pp<S: ToString>(&self, s: S) -> Self {
        match self {
            Weights::Dense(vb) => Weights::Dense(vb.pp(s)),
            Weights::Bf16Linear(vb) => Weights::Bf16Linear(vb.pp(s)),
            Weights::Quantized { vb, dtype } => Weights::Quantized {
                vb: vb.pp(s),
                dtype: *dtype,
            },
            Weights::Adapted {
                inner,
                lora,
                prefix,
            } => {
                let s = s.to_string();
                Weights::Adapted {
                    inner: Box::new(inner.pp(&s)),
                    lora: lora.clone(),
                    prefix: if prefix.is_empty() {
                        s
                    } else {
                        format!("{prefix}.{s}")
                    },
                }
            }
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Weights::Dense(vb) | Weights::Bf16Linear(vb) => vb.device(),
            Weights::Quantized { vb, .. } => vb.device(),
            Weights::Adapted { inner, .. } => inner.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Weights::Dense(vb) | Weights::Bf16Linear(vb) => vb.dtype(),
            Weights::Quantized { dtype, .. } => *dtype,
            Weights::Adapted { inner, .. } => inner.dtype(),
        }
    }

    /// A dense tensor (initialised with `init` when the dense builder creates variables).
    pub fn get_with_hints<S: Into<Shape>>(
        &self,
        shape: S,
        name: &str,
        init: candle_nn::Init,
    ) -> Result<Tensor> {
        match self {
            Weights::Dense(vb) | Weights::Bf16Linear(vb) => vb.get_with_hints(shape, name, init),
            Weights::Quantized { vb, dtype } => vb
                .get(shape, name)?
                .dequantize(vb.device())?
                .to_dtype(*dtype),
            Weights::Adapted { inner, .. } => inner.get_with_hints(shape, name, init),
        }
    }

    /// A linear layer's `(out, in)` weight; quantized weights stay quantized.
    pub fn linear_weight(
        &self,
        out: usize,
        inp: usize,
        name: &str,
        init: candle_nn::Init,
    ) -> Result<LinearWeight> {
        match self {
            Weights::Dense(vb) => Ok(LinearWeight::Dense(vb.get_with_hints(
                (out, inp),
                name,
                init,
            )?)),
            Weights::Bf16Linear(vb) => {
                let w = vb.get_with_hints_dtype((out, inp), name, init, DType::BF16)?;
                if vb.device().is_cpu() && crate::bf16_gemm::available() {
                    Ok(LinearWeight::Packed(Arc::new(PackedBf16::from_tensor(&w)?)))
                } else {
                    Ok(LinearWeight::Widened(w))
                }
            }
            Weights::Quantized { vb, dtype } => {
                let q = vb.get((out, inp), name)?;
                match q.dtype() {
                    // Unquantized tensors in a GGUF file (rows too short for blocks).
                    candle_core::quantized::GgmlDType::F32
                    | candle_core::quantized::GgmlDType::F16
                    | candle_core::quantized::GgmlDType::BF16 => Ok(LinearWeight::Dense(
                        q.dequantize(vb.device())?.to_dtype(*dtype)?,
                    )),
                    _ => Ok(LinearWeight::Quantized { q, dtype: *dtype }),
                }
            }
            Weights::Adapted {
                inner,
                lora,
                prefix,
            } => {
                let base = inner.linear_weight(out, inp, name, init)?;
                let full = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                Ok(match lora.low_rank(&full, out, inp)? {
                    None => base,
                    Some(lr) => LinearWeight::Adapted {
                        base: Box::new(base),
                        up: lr.up.to_device(self.device())?,
                        down: lr.down.to_device(self.device())?,
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// Both products of a quantized weight against the dense product with the dequantized
    /// weight: exact up to float rounding from `DEQUANTIZE_ROWS` rows (of both operands
    /// rounded to bf16 where the CPU has bf16 products, which then run them), within the
    /// 8-bit quantization of the activations below.
    #[test]
    fn quantized_products_match_the_dequantized_weight() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (48, 256), &dev).unwrap();
        for q in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K] {
            let qt = Arc::new(QTensor::quantize(&w, q).unwrap());
            let dense = qt.dequantize(&dev).unwrap();
            let lw = LinearWeight::Quantized {
                q: qt,
                dtype: DType::F32,
            };
            assert_eq!(lw.dims2().unwrap(), (48, 256));
            for rows in [3, DEQUANTIZE_ROWS + 5] {
                let x = Tensor::randn(0f32, 1.0, (rows, 256), &dev).unwrap();
                let bf16 = rows >= DEQUANTIZE_ROWS && crate::bf16_gemm::available();
                let r = |t: &Tensor| {
                    if bf16 {
                        t.to_dtype(DType::BF16)
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap()
                    } else {
                        t.clone()
                    }
                };
                let want = r(&x).matmul(&r(&dense).t().unwrap()).unwrap();
                let got = lw.matmul_t(&x).unwrap();
                let err = crate::ops::max_abs_diff(&got, &want).unwrap();
                let scale = crate::ops::max_abs(&want).unwrap();
                let tol = if rows >= DEQUANTIZE_ROWS { 1e-5 } else { 0.02 };
                assert!(err <= tol * scale, "{q:?} rows {rows}: {err} vs {scale}");
            }
        }
    }

    /// A bf16 linear weight (packed for the CPU's bf16 kernel, or widened where there is
    /// none) multiplies f32 activations as the f32 product of the bf16-rounded operands
    /// does, up to the order of the f32 sums; its compute type is f32, and the norms and
    /// biases of the same builder stay f32.
    #[test]
    fn bf16_linear_weights_multiply_f32_activations() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (40, 96), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 40, &dev).unwrap();
        let map = std::collections::HashMap::from([
            ("l.weight".to_string(), w.to_dtype(DType::BF16).unwrap()),
            ("l.bias".to_string(), bias.clone()),
        ]);
        let vb = Weights::Bf16Linear(candle_nn::VarBuilder::from_tensors(map, DType::F32, &dev));
        let lin = crate::ops::linear(96, 40, vb.pp("l")).unwrap();
        assert_eq!(lin.dtype(), DType::F32);
        // The bf16 kernel rounds the activations too; the widened product keeps them.
        let rounds_x = match lin.weight() {
            LinearWeight::Packed(_) => {
                assert!(crate::bf16_gemm::available());
                true
            }
            LinearWeight::Widened(t) => {
                assert_eq!(t.dtype(), DType::BF16);
                false
            }
            other => panic!("a bf16 linear weight became {other:?}"),
        };
        let x = Tensor::randn(0f32, 1.0, (3, 5, 96), &dev).unwrap();
        let got = candle_core::Module::forward(&lin, &x).unwrap();
        let round = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let want = (if rounds_x { round(&x) } else { x.clone() })
            .broadcast_matmul(&round(&w).t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let e = crate::ops::max_abs_diff(&got, &want).unwrap();
        assert!(e < 1e-4, "{e}");
    }
}
