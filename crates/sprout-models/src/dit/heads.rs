//! The attention heads of one block's joint sequence in one pass (inference on the CPU).
//!
//! Composed from candle's ops, the way from fused qkv products to the attention's inputs
//! is a permuted copy of q, k and v, an RMS norm of q and k, a concatenation of the text
//! and image parts and a rotation of q and k: each a full pass over memory with a fresh
//! tensor. Here every token's row of the products is read once and its heads written to
//! their place in the joint (B, H, L, D) q, k and v, normalised and rotated on the way.
//! Where a graph is recorded (training) or the tensors are not f32 on the CPU, the caller
//! composes (`None`); tests check both agree.

use candle_core::{Layout, Result, Tensor};
use rayon::prelude::*;

use super::config::MlpKind;
use super::views::{applies, f32_data, rows_written};
use crate::bf16_gemm::OutPtr;

/// One part of the joint sequence: a fused qkv product (B, Lᵢ, 3·H·D), whose rows may lie
/// further apart (a narrow of a wider product), and its stream's RMS norm scales (D) of q
/// and k.
#[derive(Clone, Copy)]
pub struct HeadPart<'a> {
    pub qkv: &'a Tensor,
    pub query_scale: &'a Tensor,
    pub key_scale: &'a Tensor,
}

/// The rotary tables (B or 1, 1, L, D/2) of the joint sequence and the norms' epsilon.
pub struct Rotary<'a> {
    pub eps: f32,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

/// One part's f32 values, where its rows lie (batch stride, token stride, first) and its
/// norm scales.
struct Part<'a> {
    data: &'a [f32],
    b_stride: usize,
    t_stride: usize,
    start: usize,
    len: usize,
    qs: Vec<f32>,
    ks: Vec<f32>,
}

fn contiguous_vec(t: &Tensor, len: usize, what: &str) -> Result<Vec<f32>> {
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    if v.len() != len {
        candle_core::bail!("joint heads: {what} has {} values, not {len}", v.len());
    }
    Ok(v)
}

/// q, k and v (B, H, L, D) of the sequence made of `parts` in order, q and k of each part
/// RMS-normalised with its scales, then all rotated on interleaved pairs as
/// [`crate::ops::rope_interleaved`] does. `None` where it does not apply: a tensor not f32
/// on the CPU, or one that records a graph.
pub fn joint_heads(
    parts: &[HeadPart],
    heads: usize,
    n: &Rotary,
) -> Option<Result<(Tensor, Tensor, Tensor)>> {
    let tensors = parts
        .iter()
        .flat_map(|p| [p.qkv, p.query_scale, p.key_scale])
        .chain([n.cos, n.sin]);
    (applies(tensors) && !parts.is_empty()).then(|| run(parts, heads, n))
}

fn run(parts: &[HeadPart], heads: usize, n: &Rotary) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, _, w) = parts[0].qkv.dims3()?;
    if !w.is_multiple_of(3 * heads) || !(w / 3 / heads).is_multiple_of(2) {
        candle_core::bail!("joint heads: width {w} is not 3 × {heads} heads of even width");
    }
    let d = w / 3 / heads;
    let mut lens = Vec::with_capacity(parts.len());
    for p in parts {
        let (pb, l, pw) = p.qkv.dims3()?;
        if (pb, pw) != (b, w) {
            candle_core::bail!(
                "joint heads: parts {:?} and {:?} differ",
                parts[0].qkv.shape(),
                p.qkv.shape()
            );
        }
        lens.push(l);
    }
    let l: usize = lens.iter().sum();
    let half = d / 2;
    let (cb, _, cl, ch) = n.cos.dims4()?;
    if (cl, ch) != (l, half) || (cb != 1 && cb != b) || n.sin.dims4()? != (cb, 1, l, half) {
        candle_core::bail!(
            "joint heads: rotary tables {:?} do not fit {l} tokens of width {d}",
            n.cos.shape()
        );
    }
    let (cos, sin) = (
        contiguous_vec(n.cos, cb * l * half, "cos")?,
        contiguous_vec(n.sin, cb * l * half, "sin")?,
    );
    let guards: Vec<_> = parts.iter().map(|p| p.qkv.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(parts.len());
    for (((storage, layout), &len), p) in guards.iter().zip(&lens).zip(parts) {
        let data = f32_data(storage, "joint heads: a part")?;
        let (b_stride, t_stride) = strides(layout)?;
        views.push(Part {
            data,
            b_stride,
            t_stride,
            start: layout.start_offset(),
            len,
            qs: contiguous_vec(p.query_scale, d, "a query scale")?,
            ks: contiguous_vec(p.key_scale, d, "a key scale")?,
        });
    }
    let total = b * heads * l * d;
    // Every element is written below before anything reads it: not zeroed first.
    let (mut q, mut k, mut v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        Vec::with_capacity(total),
        Vec::with_capacity(total),
        Vec::with_capacity(total),
    );
    let (qp, kp, vp) = (
        OutPtr(q.as_mut_ptr()),
        OutPtr(k.as_mut_ptr()),
        OutPtr(v.as_mut_ptr()),
    );
    // Tasks of 64 tokens: every token's heads land in rows no other token writes.
    (0..b * l).into_par_iter().with_min_len(64).for_each_init(
        || vec![0f32; d],
        |row_out, bt| {
            let (bi, t) = (bt / l, bt % l);
            let (mut part, mut local) = (0, t);
            while local >= views[part].len {
                local -= views[part].len;
                part += 1;
            }
            let p = &views[part];
            let at = p.start + bi * p.b_stride + local * p.t_stride;
            let row = &p.data[at..at + w];
            let tab = ((if cb == 1 { 0 } else { bi }) * l + t) * half;
            let (c, s) = (&cos[tab..tab + half], &sin[tab..tab + half]);
            let head = |i: usize| &row[i * d..(i + 1) * d];
            for hi in 0..heads {
                let dst = ((bi * heads + hi) * l + t) * d;
                // SAFETY: (bi, hi, t) rows of d floats are distinct across tokens and
                // heads and lie inside the three buffers' `total` floats of capacity,
                // which outlive the loop; written through raw pointers, never read.
                unsafe {
                    norm_rotate(head(hi), &p.qs, n.eps, c, s, row_out);
                    std::ptr::copy_nonoverlapping(row_out.as_ptr(), qp.get().add(dst), d);
                    norm_rotate(head(heads + hi), &p.ks, n.eps, c, s, row_out);
                    std::ptr::copy_nonoverlapping(row_out.as_ptr(), kp.get().add(dst), d);
                    let vr = head(2 * heads + hi);
                    std::ptr::copy_nonoverlapping(vr.as_ptr(), vp.get().add(dst), d);
                }
            }
        },
    );
    drop(guards);
    // SAFETY: the loop wrote all `total` elements of each buffer ((b, h, t) rows of d).
    unsafe {
        q.set_len(total);
        k.set_len(total);
        v.set_len(total);
    }
    let shape = (b, heads, l, d);
    let dev = parts[0].qkv.device();
    Ok((
        Tensor::from_vec(q, shape, dev)?,
        Tensor::from_vec(k, shape, dev)?,
        Tensor::from_vec(v, shape, dev)?,
    ))
}

/// The attention's output (B, H, L, D) as token rows (B, L, H·D), followed in each row by
/// the MLP activation of `mlp` (B, L, M) where it is given (rows may lie further apart):
/// `gelu(mlp)`, M wide, or for SwiGLU `silu(a) · b` of its halves `[a, b]`, M/2 wide. The
/// single block's input to its output product, written once where composing it
/// transposes, applies the activation and concatenates, each into a fresh tensor. `None`
/// where it does not apply (not f32 on the CPU, or a graph recorded).
pub fn merge_heads(attn: &Tensor, mlp: Option<(&Tensor, MlpKind)>) -> Option<Result<Tensor>> {
    applies([Some(attn), mlp.map(|m| m.0)].into_iter().flatten()).then(|| merge(attn, mlp))
}

fn merge(attn: &Tensor, mlp: Option<(&Tensor, MlpKind)>) -> Result<Tensor> {
    let attn = attn.contiguous()?;
    let (b, h, l, d) = attn.dims4()?;
    let kind = mlp.map_or(MlpKind::Gelu, |m| m.1);
    let mlp = mlp.map(|m| m.0);
    let m = match mlp {
        Some(x) => {
            let (mb, ml, m) = x.dims3()?;
            if (mb, ml) != (b, l) || (kind == MlpKind::SwiGlu && m % 2 != 0) {
                candle_core::bail!(
                    "merge heads: the MLP part {:?} does not fit the attention {:?}",
                    x.shape(),
                    attn.shape()
                );
            }
            m
        }
        None => 0,
    };
    // Columns the activation writes.
    let m_out = match kind {
        MlpKind::Gelu => m,
        MlpKind::SwiGlu => m / 2,
    };
    let w = h * d + m_out;
    let (a_storage, a_layout) = attn.storage_and_layout();
    let a = f32_data(&a_storage, "merge heads: the attention")?;
    let a = &a[a_layout.start_offset()..];
    let mlp_guard = mlp.map(|x| x.storage_and_layout());
    let mlp_view = match &mlp_guard {
        Some((st, lay)) => {
            let (bs, ts) = strides(lay)?;
            Some((
                f32_data(st, "merge heads: the MLP part")?,
                bs,
                ts,
                lay.start_offset(),
            ))
        }
        None => None,
    };
    let out = rows_written(b * l * w, w, |bt, row| {
        let (bi, t) = (bt / l, bt % l);
        for hi in 0..h {
            let src = ((bi * h + hi) * l + t) * d;
            row[hi * d..(hi + 1) * d].write_copy_of_slice(&a[src..src + d]);
        }
        if let Some((x, bs, ts, start)) = mlp_view {
            let at = start + bi * bs + t * ts;
            let mut buf = [0f32; 512];
            let dst = &mut row[h * d..];
            match kind {
                MlpKind::Gelu => {
                    for (o, i) in dst.chunks_mut(512).zip(x[at..at + m].chunks(512)) {
                        crate::vmath::gelu(&mut buf[..i.len()], i);
                        o.write_copy_of_slice(&buf[..i.len()]);
                    }
                }
                MlpKind::SwiGlu => {
                    let (gate, value) = x[at..at + m].split_at(m_out);
                    for (o, (g, v)) in dst.iter_mut().zip(gate.iter().zip(value)) {
                        o.write(g / (1.0 + (-g).exp()) * v);
                    }
                }
            }
        }
    });
    drop(a_storage);
    drop(mlp_guard);
    Tensor::from_vec(out, (b, l, w), attn.device())
}

/// The (batch, token) strides of a (B, L, W) layout whose rows are contiguous.
fn strides(l: &Layout) -> Result<(usize, usize)> {
    match l.stride() {
        [sb, st, 1] => Ok((*sb, *st)),
        s => candle_core::bail!("joint heads: a part's rows are not contiguous (strides {s:?})"),
    }
}

/// `y = rotate(x / rms(x) · scale)` on interleaved pairs.
fn norm_rotate(x: &[f32], scale: &[f32], eps: f32, cos: &[f32], sin: &[f32], y: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for j in 0..cos.len() {
        let x0 = x[2 * j] * inv * scale[2 * j];
        let x1 = x[2 * j + 1] * inv * scale[2 * j + 1];
        y[2 * j] = x0 * cos[j] - x1 * sin[j];
        y[2 * j + 1] = x0 * sin[j] + x1 * cos[j];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{max_abs_diff, rms_norm, rope_interleaved};
    use candle_core::Device;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        crate::test_util::hashed(shape, seed)
    }

    /// The composition the DiT runs where the one pass does not apply: split, norm,
    /// concatenate, rotate.
    fn composed(parts: &[HeadPart], heads: usize, n: &Rotary) -> (Tensor, Tensor, Tensor) {
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for p in parts {
            let x = p.qkv.contiguous().unwrap();
            let (b, l, w) = x.dims3().unwrap();
            let d = w / 3 / heads;
            let x = x
                .reshape((b, l, 3, heads, d))
                .unwrap()
                .permute((2, 0, 3, 1, 4))
                .unwrap();
            let get = |i| x.get(i).unwrap().contiguous().unwrap();
            qs.push(rms_norm(&get(0), p.query_scale, n.eps as f64).unwrap());
            ks.push(rms_norm(&get(1), p.key_scale, n.eps as f64).unwrap());
            vs.push(get(2));
        }
        let cat = |xs: Vec<Tensor>| Tensor::cat(&xs, 2).unwrap();
        let (q, k, v) = (cat(qs), cat(ks), cat(vs));
        (
            rope_interleaved(&q, n.cos, n.sin).unwrap(),
            rope_interleaved(&k, n.cos, n.sin).unwrap(),
            v,
        )
    }

    #[test]
    fn one_pass_equals_split_norm_concatenate_and_rotate() {
        let (b, heads, d) = (2, 3, 8);
        let w = 3 * heads * d;
        let txt = randn(&[b, 5, w], 1);
        // The image part as a narrow of a wider product, as the single block's qkv is.
        let wide = randn(&[b, 7, w + 10], 2);
        let img = wide.narrow(2, 0, w).unwrap();
        let ang = randn(&[b, 1, 12, d / 2], 3);
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let scales: Vec<Tensor> = (4..8).map(|s| randn(&[d], s)).collect();
        let parts = [
            HeadPart {
                qkv: &txt,
                query_scale: &scales[0],
                key_scale: &scales[1],
            },
            HeadPart {
                qkv: &img,
                query_scale: &scales[2],
                key_scale: &scales[3],
            },
        ];
        let n = Rotary {
            eps: 1e-6,
            cos: &cos,
            sin: &sin,
        };
        let (q, k, v) = joint_heads(&parts, heads, &n).unwrap().unwrap();
        let (wq, wk, wv) = composed(&parts, heads, &n);
        assert!(max_abs_diff(&q, &wq).unwrap() < 1e-5);
        assert!(max_abs_diff(&k, &wk).unwrap() < 1e-5);
        assert_eq!(max_abs_diff(&v, &wv).unwrap(), 0.0);
        // Tables shared by the batch (B = 1) broadcast the same way.
        let (c1, s1) = (cos.narrow(0, 0, 1).unwrap(), sin.narrow(0, 0, 1).unwrap());
        let n1 = Rotary {
            eps: 1e-6,
            cos: &c1,
            sin: &s1,
        };
        let (q, _, _) = joint_heads(&parts, heads, &n1).unwrap().unwrap();
        let (wq, _, _) = composed(&parts, heads, &n1);
        assert!(max_abs_diff(&q, &wq).unwrap() < 1e-5);
    }

    #[test]
    fn merged_heads_equal_the_transposed_attention_and_the_concatenated_gelu() {
        let (b, h, l, d, m) = (2, 3, 5, 4, 9);
        let attn = randn(&[b, h, l, d], 11);
        let wide = randn(&[b, l, m + 6], 12);
        let mlp = wide.narrow(2, 6, m).unwrap();
        let rows = attn
            .transpose(1, 2)
            .unwrap()
            .reshape((b, l, h * d))
            .unwrap();
        let got = merge_heads(&attn, None).unwrap().unwrap();
        assert_eq!(max_abs_diff(&got, &rows).unwrap(), 0.0);
        let want = Tensor::cat(&[rows.clone(), crate::ops::gelu(&mlp).unwrap()], 2).unwrap();
        let got = merge_heads(&attn, Some((&mlp, MlpKind::Gelu)))
            .unwrap()
            .unwrap();
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-6);
        // SwiGLU: silu of the first half times the second, half as many columns.
        let glu = wide.narrow(2, 2, 8).unwrap();
        let (a, v) = (glu.narrow(2, 0, 4).unwrap(), glu.narrow(2, 4, 4).unwrap());
        let silu: Vec<f32> = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let vv: Vec<f32> = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let by_hand: Vec<f32> = silu
            .iter()
            .zip(&vv)
            .map(|(a, v)| a / (1.0 + (-a).exp()) * v)
            .collect();
        let by_hand = Tensor::from_vec(by_hand, (b, l, 4), &Device::Cpu).unwrap();
        let want = Tensor::cat(&[rows, by_hand], 2).unwrap();
        let got = merge_heads(&attn, Some((&glu, MlpKind::SwiGlu)))
            .unwrap()
            .unwrap();
        assert_eq!(got.dims(), &[b, l, h * d + 4]);
        assert!(max_abs_diff(&got, &want).unwrap() < 1e-6);
        let composed = crate::ops::swiglu(&glu.contiguous().unwrap()).unwrap();
        assert!(max_abs_diff(&composed, &want.narrow(2, h * d, 4).unwrap()).unwrap() < 1e-6);
        let short = randn(&[b, l - 1, m], 13);
        let e = merge_heads(&attn, Some((&short, MlpKind::Gelu)))
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit the attention"), "{e}");
    }

    #[test]
    fn it_leaves_recorded_graphs_and_refuses_misfits_by_name() {
        let (heads, d) = (2, 4);
        let x = randn(&[1, 3, 3 * heads * d], 1);
        let ang = randn(&[1, 1, 3, d / 2], 2);
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let s = Tensor::ones(d, candle_core::DType::F32, &Device::Cpu).unwrap();
        let n = Rotary {
            eps: 1e-6,
            cos: &cos,
            sin: &sin,
        };
        let part = |qkv| HeadPart {
            qkv,
            query_scale: &s,
            key_scale: &s,
        };
        let var = candle_core::Var::from_tensor(&x).unwrap();
        assert!(joint_heads(&[part(var.as_tensor())], heads, &n).is_none());
        let e = joint_heads(&[part(&x), part(&x)], heads, &n)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("rotary tables"), "{e}");
        let e = joint_heads(&[part(&x)], 5, &n)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not 3 × 5 heads"), "{e}");
    }
}
