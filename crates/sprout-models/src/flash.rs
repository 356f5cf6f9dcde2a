//! Attention as one tiled CPU kernel with an online softmax (the flash-attention scheme):
//! the (L × L) score matrix is never formed. Each task holds one block of queries and walks
//! the keys block by block, keeping per query row the running maximum, the running sum of
//! exponentials and the unnormalised output, so memory beyond the inputs and the output is
//! one query block × one key block per thread, linear in sequence length overall.
//!
//! Written here because candle has no fused attention on the CPU (its composed form
//! materialises `B·H·L²` scores, 24 × 4352² floats per FLUX.1 block at 1024²). The tile
//! products use the `gemm` crate, which is candle's own CPU matrix-product backend, on one
//! thread per tile; the tiles run in parallel on rayon.
//!
//! The backward pass recomputes each score tile from the saved log-sum-exp of every query
//! row (FlashAttention-2's scheme), so training keeps the same memory bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::vmath;

/// Whether [`attention`] runs the fused kernel where it applies.
static FUSED: AtomicBool = AtomicBool::new(true);

/// Turns the fused kernel on (the default) or off for this process, so that `sprout bench
/// --attention composed` can time the composed attention on the same model.
pub fn set_fused(on: bool) {
    FUSED.store(on, Ordering::Relaxed);
}

/// Whether the fused kernel is on.
pub fn fused() -> bool {
    FUSED.load(Ordering::Relaxed)
}

/// The precision of the attention forward's two products (the softmax and the sums are
/// f32 either way). A property of the model that runs it, not of the process: two models
/// in one process may differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 products (the default; training, whose backward pass recomputes the scores in
    /// f32, keeps it).
    #[default]
    F32,
    /// bf16 operands with f32 sums ([`crate::flash_bf16`]) where the CPU has AVX-512 BF16,
    /// as PyTorch's bf16 attention; f32 on other CPUs ([`Precision::effective`]). For models
    /// whose linear layers multiply in bf16.
    Bf16,
}

impl Precision {
    /// What runs on this CPU: [`Precision::Bf16`] only where it has bf16 products.
    pub fn effective(self) -> Self {
        match self {
            Precision::Bf16 if crate::bf16_gemm::available() => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

/// Query rows per task.
const BQ: usize = 128;
/// Key rows per tile.
const BK: usize = 256;

/// `dst (m × n, row stride ld_dst) = alpha · dst + beta · lhs · rhs`, on the calling thread.
/// Strides are given as (row stride, column stride) in elements.
#[allow(clippy::too_many_arguments)]
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ld_dst: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Every index the product touches lies inside the slices given.
    assert!(dst.len() >= (m - 1) * ld_dst + n);
    assert!(k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(k == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the bounds were checked above; dst does not alias lhs or rhs (distinct
    // borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld_dst as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The shapes of one attention call: batch, heads, query rows, key rows, head width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
}

/// Fused attention over contiguous f32 (B, H, L, D) tensors, with an optional additive bias
/// per key (B, Lk) (the key-padding masks Sprout's models use).
struct FlashAttention {
    scale: f32,
    /// The forward pass's products in bf16 ([`Precision::Bf16`] on a CPU that has them).
    bf16: bool,
    bias: Option<Arc<Vec<f32>>>,
    /// Log-sum-exp of every query row's scores, (B·H·Lq), saved by the forward pass for the
    /// backward one.
    lse: Mutex<Option<Arc<Vec<f32>>>>,
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("flash attention: {what} is not f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("flash attention: {what} is not contiguous"),
    }
}

/// Rows `start..start + n` of a row-major matrix `d` wide.
fn rows(x: &[f32], start: usize, n: usize, d: usize) -> &[f32] {
    &x[start * d..(start + n) * d]
}

fn rows_mut(x: &mut [f32], start: usize, n: usize, d: usize) -> &mut [f32] {
    &mut x[start * d..(start + n) * d]
}

/// Scores of one tile: `s (qr × kr) = scale · q kᵀ + bias`.
fn scores(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    bias: Option<&[f32]>,
    dims: (usize, usize, usize),
    scale: f32,
) {
    let (qr, kr, d) = dims;
    product((qr, kr, d), s, kr, false, q, (d, 1), k, (1, d), scale);
    if let Some(bias) = bias {
        for row in s[..qr * kr].chunks_mut(kr) {
            for (x, b) in row.iter_mut().zip(bias) {
                *x += b;
            }
        }
    }
}

/// One query row's step of the online softmax over a tile of its scores: `row` becomes
/// `exp(score − m′)` for the new running maximum `m′`, the running sum `l` and the row's
/// unnormalised output `o` are rescaled to it, and the tile's sum is added to `l`.
pub(crate) fn online_softmax(row: &mut [f32], (m, l): (&mut f32, &mut f32), o: &mut [f32]) {
    online_softmax_with(row, (m, l), o, vmath::exp_shifted_sum)
}

/// [`online_softmax`] with the row's exponentials taken by `exp_sum` (as
/// [`vmath::exp_shifted_sum`]: in place, returning their sum).
pub(crate) fn online_softmax_with(
    row: &mut [f32],
    (m, l): (&mut f32, &mut f32),
    o: &mut [f32],
    exp_sum: fn(&mut [f32], f32) -> f32,
) {
    let m_new = m.max(vmath::max(row));
    if m_new == f32::NEG_INFINITY {
        // Every key so far is masked out entirely.
        row.fill(0.0);
        return;
    }
    let correction = (*m - m_new).exp();
    let sum = exp_sum(row, m_new);
    *l = *l * correction + sum;
    *m = m_new;
    if correction != 1.0 {
        vmath::scale(o, correction);
    }
}

impl FlashAttention {
    /// The key bias of batch entry `b`, if any.
    fn head_bias(&self, b: usize, lk: usize) -> Option<&[f32]> {
        self.bias.as_ref().map(|x| rows(x, b, 1, lk))
    }

    /// The forward pass: the output (B·H·Lq·D) and the log-sum-exp of each query row.
    fn forward(&self, q: &[f32], k: &[f32], v: &[f32], n: Dims) -> (Vec<f32>, Vec<f32>) {
        let Dims { h, lq, lk, d, .. } = n;
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; n.b * h * lq];
        out.par_chunks_mut(lq * d)
            .zip(lse.par_chunks_mut(lq))
            .enumerate()
            .for_each(|(bh, (o_head, lse_head))| {
                let (qh, kh, vh) = (
                    rows(q, bh * lq, lq, d),
                    rows(k, bh * lk, lk, d),
                    rows(v, bh * lk, lk, d),
                );
                let bias = self.head_bias(bh / h, lk);
                o_head
                    .par_chunks_mut(BQ * d)
                    .zip(lse_head.par_chunks_mut(BQ))
                    .enumerate()
                    .for_each(|(qb, (o, lse))| {
                        let qr = lse.len();
                        let qs = rows(qh, qb * BQ, qr, d);
                        let mut s = vec![0f32; qr * BK];
                        let mut m = vec![f32::NEG_INFINITY; qr];
                        let mut l = vec![0f32; qr];
                        for k0 in (0..lk).step_by(BK) {
                            let kr = BK.min(lk - k0);
                            let (ks, vs) = (rows(kh, k0, kr, d), rows(vh, k0, kr, d));
                            scores(
                                &mut s,
                                qs,
                                ks,
                                bias.map(|b| &b[k0..k0 + kr]),
                                (qr, kr, d),
                                self.scale,
                            );
                            for i in 0..qr {
                                online_softmax(
                                    &mut s[i * kr..(i + 1) * kr],
                                    (&mut m[i], &mut l[i]),
                                    &mut o[i * d..(i + 1) * d],
                                );
                            }
                            // o += p v
                            product((qr, d, kr), o, d, true, &s, (kr, 1), vs, (d, 1), 1.0);
                        }
                        for i in 0..qr {
                            let inv = 1.0 / l[i];
                            for y in &mut o[i * d..(i + 1) * d] {
                                *y *= inv;
                            }
                            lse[i] = m[i] + l[i].ln();
                        }
                    });
            });
        (out, lse)
    }

    /// The backward pass: (dq, dk, dv) from the inputs, the output, its gradient and the
    /// saved log-sum-exp. One task per (batch, head); within it, key blocks outside and
    /// query blocks inside, so each task writes only its own head's gradients.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &[f32],
        dout: &[f32],
        lse: &[f32],
        n: Dims,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let Dims { h, lq, lk, d, .. } = n;
        let mut dq = vec![0f32; q.len()];
        let mut dk = vec![0f32; k.len()];
        let mut dv = vec![0f32; v.len()];
        dq.par_chunks_mut(lq * d)
            .zip(dk.par_chunks_mut(lk * d))
            .zip(dv.par_chunks_mut(lk * d))
            .enumerate()
            .for_each(|(bh, ((dqh, dkh), dvh))| {
                let (qh, oh, doh) = (
                    rows(q, bh * lq, lq, d),
                    rows(o, bh * lq, lq, d),
                    rows(dout, bh * lq, lq, d),
                );
                let (kh, vh) = (rows(k, bh * lk, lk, d), rows(v, bh * lk, lk, d));
                let lseh = rows(lse, bh, 1, lq);
                let bias = self.head_bias(bh / h, lk);
                // delta_i = dO_i · O_i
                let delta: Vec<f32> = (0..lq)
                    .map(|i| {
                        doh[i * d..(i + 1) * d]
                            .iter()
                            .zip(&oh[i * d..(i + 1) * d])
                            .map(|(a, b)| a * b)
                            .sum()
                    })
                    .collect();
                let mut p = vec![0f32; BQ * BK];
                let mut ds = vec![0f32; BQ * BK];
                for k0 in (0..lk).step_by(BK) {
                    let kr = BK.min(lk - k0);
                    let (ks, vs) = (rows(kh, k0, kr, d), rows(vh, k0, kr, d));
                    let dks = rows_mut(dkh, k0, kr, d);
                    let dvs = rows_mut(dvh, k0, kr, d);
                    for q0 in (0..lq).step_by(BQ) {
                        let qr = BQ.min(lq - q0);
                        let (qs, dos) = (rows(qh, q0, qr, d), rows(doh, q0, qr, d));
                        scores(
                            &mut p,
                            qs,
                            ks,
                            bias.map(|b| &b[k0..k0 + kr]),
                            (qr, kr, d),
                            self.scale,
                        );
                        for i in 0..qr {
                            let li = lseh[q0 + i];
                            vmath::exp_shifted_sum(&mut p[i * kr..(i + 1) * kr], li);
                        }
                        // dV += Pᵀ dO
                        product((kr, d, qr), dvs, d, true, &p, (1, kr), dos, (d, 1), 1.0);
                        // dP = dO Vᵀ, then dS = P ∘ (dP − delta)
                        product(
                            (qr, kr, d),
                            &mut ds,
                            kr,
                            false,
                            dos,
                            (d, 1),
                            vs,
                            (1, d),
                            1.0,
                        );
                        for i in 0..qr {
                            let di = delta[q0 + i];
                            let (pr, dr) =
                                (&p[i * kr..(i + 1) * kr], &mut ds[i * kr..(i + 1) * kr]);
                            for (g, pv) in dr.iter_mut().zip(pr) {
                                *g = pv * (*g - di);
                            }
                        }
                        // dQ += scale · dS K ; dK += scale · dSᵀ Q
                        let dqs = rows_mut(dqh, q0, qr, d);
                        product(
                            (qr, d, kr),
                            dqs,
                            d,
                            true,
                            &ds,
                            (kr, 1),
                            ks,
                            (d, 1),
                            self.scale,
                        );
                        product(
                            (kr, d, qr),
                            dks,
                            d,
                            true,
                            &ds,
                            (1, kr),
                            qs,
                            (d, 1),
                            self.scale,
                        );
                    }
                }
            });
        (dq, dk, dv)
    }
}

fn dims(q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
    let (b, h, lq, d) = q.shape().dims4()?;
    let (kb, kh, lk, kd) = k.shape().dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.shape().dims4()? != (b, h, lk, d) {
        candle_core::bail!(
            "flash attention: q {:?}, k {:?} and v {:?} do not fit together",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    Ok(Dims { b, h, lq, lk, d })
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = dims(ql, kl, vl)?;
        let (q, k, v) = (
            f32_slice(qs, ql, "q")?,
            f32_slice(ks, kl, "k")?,
            f32_slice(vs, vl, "v")?,
        );
        if let Some(b) = &self.bias {
            if b.len() != n.b * n.lk {
                candle_core::bail!("flash attention: the key bias does not match the keys");
            }
        }
        let (out, lse) = if self.bf16 {
            let shape = (n.b, n.h, n.lq, n.lk, n.d);
            let bias = self.bias.as_ref().map(|b| b.as_slice());
            crate::flash_bf16::forward(q, k, v, shape, self.scale, bias)
        } else {
            self.forward(q, k, v, n)
        };
        *self.lse.lock().expect("lse") = Some(Arc::new(lse));
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let lse = self.lse.lock().expect("lse").clone().ok_or_else(|| {
            candle_core::Error::Msg("flash attention: backward before forward".into())
        })?;
        let data = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (b, h, lq, d) = q.dims4()?;
        let lk = k.dim(2)?;
        let n = Dims { b, h, lq, lk, d };
        let (dq, dk, dv) = self.backward(
            &data(q)?,
            &data(k)?,
            &data(v)?,
            &data(out)?,
            &data(&grad.contiguous()?)?,
            &lse,
            n,
        );
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}

/// The per-key bias (B·Lk) of an additive mask that depends on the key only: shape
/// (B or 1, 1, 1, Lk). `None` for any other mask.
fn key_bias(mask: &Tensor, b: usize, lk: usize) -> Result<Option<Vec<f32>>> {
    let Ok((mb, m1, m2, ml)) = mask.dims4() else {
        return Ok(None);
    };
    if m1 != 1 || m2 != 1 || ml != lk || (mb != b && mb != 1) {
        return Ok(None);
    }
    let row = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(Some(if mb == b {
        row
    } else {
        row.iter().copied().cycle().take(b * lk).collect()
    }))
}

/// Scaled dot-product attention over (B, H, L, D) f32 tensors on the CPU as one fused
/// kernel, with an optional additive mask per key ((B or 1, 1, 1, Lk)). `None` where the
/// kernel does not apply (another device or dtype, or a mask of another shape): the caller
/// then composes the attention from candle's ops.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    precision: Precision,
) -> Option<Result<Tensor>> {
    let on_cpu_f32 = [q, k, v]
        .iter()
        .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32);
    if !fused() || !on_cpu_f32 || q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return None;
    }
    let run = || -> Result<Option<Tensor>> {
        let (b, _, _, d) = q.dims4()?;
        let lk = k.dim(2)?;
        let bias = match mask {
            None => None,
            Some(m) => match key_bias(m, b, lk)? {
                Some(bias) => Some(Arc::new(bias)),
                None => return Ok(None),
            },
        };
        let op = FlashAttention {
            scale: 1.0 / (d as f32).sqrt(),
            bf16: precision.effective() == Precision::Bf16,
            bias,
            lse: Mutex::new(None),
        };
        Ok(Some(q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            op,
        )?))
    };
    run().transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention_composed;
    use candle_core::Var;

    fn randn(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        // Deterministic values in (-2, 2) from a counter hash, so the test needs no RNG state.
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let v: Vec<f32> = (0..n as u64)
            .map(|i| {
                let x = sprout_hash(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
                (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn sprout_hash(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A key-padding mask (B, 1, 1, Lk): 0 where kept, −1e9 where masked.
    fn key_mask(b: usize, lk: usize) -> Tensor {
        let v: Vec<f32> = (0..b * lk)
            .map(|i| {
                if (i % lk) % 7 == 3 || (i / lk == 1 && i % lk >= lk - 40) {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(v, (b, 1, 1, lk), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::ops::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn the_fused_kernel_matches_the_composed_attention() {
        // Query and key counts that are not multiples of the blocks (64 and 256), one key
        // block only, several, and fewer keys than queries.
        for (lq, lk, mask) in [
            (70, 300, false),
            (70, 300, true),
            (5, 9, false),
            (130, 513, true),
            (300, 40, true),
        ] {
            let (b, h, d) = (2, 3, 16);
            let q = randn((b, h, lq, d), 1);
            let k = randn((b, h, lk, d), 2);
            let v = randn((b, h, lk, d), 3);
            let m = mask.then(|| key_mask(b, lk));
            let fused = attention(&q, &k, &v, m.as_ref(), Precision::F32)
                .expect("applies")
                .unwrap();
            let composed = attention_composed(&q, &k, &v, m.as_ref()).unwrap();
            let e = max_diff(&fused, &composed);
            assert!(e < 2e-5, "lq {lq} lk {lk} mask {mask}: max |Δ| = {e}");
        }
        // A mask of one row for every batch entry broadcasts the same way.
        let (q, k, v) = (
            randn((2, 2, 33, 8), 4),
            randn((2, 2, 65, 8), 5),
            randn((2, 2, 65, 8), 6),
        );
        let m = key_mask(1, 65);
        let e = max_diff(
            &attention(&q, &k, &v, Some(&m), Precision::F32)
                .expect("applies")
                .unwrap(),
            &attention_composed(&q, &k, &v, Some(&m)).unwrap(),
        );
        assert!(e < 2e-5, "{e}");
    }

    #[test]
    fn the_precision_is_the_callers_and_bf16_stays_near_f32() {
        let (q, k, v) = (
            randn((1, 2, 40, 16), 7),
            randn((1, 2, 70, 16), 8),
            randn((1, 2, 70, 16), 9),
        );
        let run = |p| attention(&q, &k, &v, None, p).expect("applies").unwrap();
        let composed = attention_composed(&q, &k, &v, None).unwrap();
        let (f, b) = (run(Precision::F32), run(Precision::Bf16));
        assert!(max_diff(&f, &composed) < 2e-5);
        if Precision::Bf16.effective() == Precision::Bf16 {
            // bf16 operands (8 significant bits) move the output, within their rounding.
            let e = max_diff(&b, &composed);
            assert!(e > 1e-5 && e < 5e-2, "bf16 attention: max |Δ| = {e}");
        } else {
            assert_eq!(Precision::Bf16.effective(), Precision::F32);
            assert_eq!(max_diff(&b, &f), 0.0);
        }
        // Calls interleaved with the bf16 one are unchanged by it.
        assert_eq!(max_diff(&run(Precision::F32), &f), 0.0);
    }

    #[test]
    fn other_masks_dtypes_and_layouts_are_left_to_the_composed_path_or_handled() {
        let (q, k, v) = (
            randn((1, 2, 16, 8), 1),
            randn((1, 2, 16, 8), 2),
            randn((1, 2, 16, 8), 3),
        );
        // A full (L × L) mask is not a key mask: the caller composes.
        let full = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&q, &k, &v, Some(&full), Precision::F32).is_none());
        assert!(attention(
            &q.to_dtype(DType::BF16).unwrap(),
            &k,
            &v,
            None,
            Precision::F32
        )
        .is_none());
        // A transposed (non-contiguous) input is made contiguous first.
        let qt = q
            .transpose(2, 3)
            .unwrap()
            .contiguous()
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let e = max_diff(
            &attention(&qt, &k, &v, None, Precision::F32)
                .expect("applies")
                .unwrap(),
            &attention_composed(&q, &k, &v, None).unwrap(),
        );
        assert!(e < 2e-5, "{e}");
    }

    #[test]
    fn gradients_match_the_composed_attention() {
        for (lq, lk, mask) in [(70, 300, true), (9, 5, false)] {
            let (b, h, d) = (2, 2, 8);
            let grads = |fused: bool| {
                let q = Var::from_tensor(&randn((b, h, lq, d), 7)).unwrap();
                let k = Var::from_tensor(&randn((b, h, lk, d), 8)).unwrap();
                let v = Var::from_tensor(&randn((b, h, lk, d), 9)).unwrap();
                let m = mask.then(|| key_mask(b, lk));
                let y = if fused {
                    attention(&q, &k, &v, m.as_ref(), Precision::F32)
                        .expect("applies")
                        .unwrap()
                } else {
                    attention_composed(&q, &k, &v, m.as_ref()).unwrap()
                };
                // A loss that weighs every output differently.
                let w = randn((b, h, lq, d), 10);
                let g = (y * w).unwrap().sum_all().unwrap().backward().unwrap();
                [q.as_tensor(), k.as_tensor(), v.as_tensor()].map(|t| g.get(t).unwrap().clone())
            };
            let (f, c) = (grads(true), grads(false));
            for (name, (a, b)) in ["q", "k", "v"].iter().zip(f.iter().zip(&c)) {
                let scale = crate::ops::max_abs(b).unwrap().max(1.0);
                let e = max_diff(a, b) / scale;
                assert!(
                    e < 1e-4,
                    "d{name} (lq {lq}, lk {lk}): relative max |Δ| = {e}"
                );
            }
        }
    }
}
