//! The forward pass of the fused attention ([`crate::flash`]) with its two products in
//! bf16 on CPUs with AVX-512 BF16 ([`crate::bf16_gemm`]): each head's keys and transposed
//! values are laid out once for the kernel, each query block is scaled and rounded once,
//! and each probability tile is rounded as it is packed; scores, the online softmax and
//! every sum stay f32. This is the precision of PyTorch's bf16 attention, for models whose
//! weights run in bf16; the f32 forward stays the one that training differentiates.

use rayon::prelude::*;

use crate::amx;
use crate::bf16_gemm::{self, PackedBf16, NR};
use crate::flash::online_softmax_with;
use crate::vmath;

/// Query rows per task.
const BQ: usize = 128;
/// Key rows per score tile (a multiple of the kernel's panel width, and even).
const BK: usize = 256;

/// (batch, heads, query rows, key rows, head width).
pub(crate) type Shape = (usize, usize, usize, usize, usize);

/// The output (B·H·Lq·D) and the log-sum-exp of each query row, from contiguous
/// (B, H, L, D) q, k, v and an optional per-key bias (B·Lk). Needs
/// [`bf16_gemm::available`]; the products run on AMX tiles where [`amx::available`].
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: Shape,
    scale: f32,
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    forward_with(q, k, v, shape, scale, bias, amx::available())
}

/// [`forward`] with its products on AMX tiles (`tiled`) or AVX-512 BF16 vectors. For the
/// tiles, the query block, the probabilities and the output accumulator are held padded
/// to whole 32-row tile blocks (and the output to whole panels), so that every product is
/// whole tiles; the vector kernel accumulates into the output itself.
fn forward_with(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, h, lq, lk, d): Shape,
    scale: f32,
    bias: Option<&[f32]>,
    tiled: bool,
) -> (Vec<f32>, Vec<f32>) {
    assert!(bf16_gemm::available() && (!tiled || amx::available()));
    let mut out = vec![0f32; b * h * lq * d];
    let mut lse = vec![0f32; b * h * lq];
    let pairs = d.div_ceil(2);
    let dpanels = d.div_ceil(NR);
    // Words per packed query row and floats per accumulator row.
    let (dp, ldo) = if tiled {
        (pairs.next_multiple_of(amx::PAIRS), dpanels * NR)
    } else {
        (pairs, d)
    };
    out.par_chunks_mut(lq * d)
        .zip(lse.par_chunks_mut(lq))
        .enumerate()
        .for_each(|(bh, (o_head, lse_head))| {
            let kh = &k[bh * lk * d..(bh + 1) * lk * d];
            let vh = &v[bh * lk * d..(bh + 1) * lk * d];
            let keys = PackedBf16::from_f32_rows(kh, lk, d);
            let values = PackedBf16::from_f32_cols(vh, lk, d);
            let qh = &q[bh * lq * d..(bh + 1) * lq * d];
            let bias = bias.map(|x| &x[(bh / h) * lk..(bh / h + 1) * lk]);
            o_head
                .par_chunks_mut(BQ * d)
                .zip(lse_head.par_chunks_mut(BQ))
                .enumerate()
                .for_each(|(qb, (o, lse))| {
                    let qr = lse.len();
                    let rows = if tiled {
                        qr.next_multiple_of(amx::ROWS)
                    } else {
                        qr
                    };
                    // SAFETY: `amx::available()` was checked above for the tiles.
                    let tiles = tiled.then(|| unsafe { amx::Tiles::new() });
                    let qs = &qh[qb * BQ * d..];
                    let mut aq = Vec::new();
                    let mut ap = Vec::new();
                    let mut padded = Vec::new();
                    if tiled {
                        aq.resize(rows * dp, 0);
                        bf16_gemm::round_rows_tiled(&mut aq, dp, qs, d, qr, d, scale);
                        ap.resize(rows * BK / 2, 0);
                        padded.resize(rows * ldo, 0.0);
                    } else {
                        bf16_gemm::pack_a(&mut aq, qs, d, qr, d, scale);
                    }
                    let acc: &mut [f32] = if tiled { &mut padded } else { &mut *o };
                    let mut s = vec![0f32; rows * BK];
                    let mut m = vec![f32::NEG_INFINITY; qr];
                    let mut l = vec![0f32; qr];
                    for k0 in (0..lk).step_by(BK) {
                        let kr = BK.min(lk - k0);
                        let panels = (k0 / NR, (k0 + kr).div_ceil(NR));
                        // s = q kᵀ for keys k0..k0 + kr.
                        // SAFETY: the kernel's features were checked (and the tile state is
                        // live); `aq` holds `rows` packed rows of `dp` pairs, the keys'
                        // panels hold dp pairs each, and `s` rows of BK floats, which the
                        // panels of keys k0..k0 + kr fill (BK is a multiple of NR).
                        unsafe {
                            panel_product(
                                tiles.as_ref(),
                                (&aq, dp, rows),
                                (&keys, 0, dp),
                                panels,
                                (s.as_mut_ptr(), BK),
                                false,
                            )
                        }
                        for i in 0..qr {
                            let row = &mut s[i * BK..i * BK + kr];
                            if let Some(bias) = bias {
                                for (x, b) in row.iter_mut().zip(&bias[k0..k0 + kr]) {
                                    *x += b;
                                }
                            }
                            // The probabilities are rounded to bf16 (2⁻⁹) for the product:
                            // the coarse exp's 10⁻⁵ is far inside that.
                            online_softmax_with(
                                row,
                                (&mut m[i], &mut l[i]),
                                &mut acc[i * ldo..i * ldo + d],
                                vmath::exp_shifted_sum_coarse,
                            );
                        }
                        // o += p v over the pairs of keys k0..k0 + kr.
                        let (lda, kc) = if tiled {
                            // To a whole tile step: the probabilities past kr are zero, the
                            // values' padding too.
                            if kr < BK {
                                ap.fill(0);
                            }
                            bf16_gemm::round_rows_tiled(&mut ap, BK / 2, &s, BK, qr, kr, 1.0);
                            (BK / 2, kr.div_ceil(2).next_multiple_of(amx::PAIRS))
                        } else {
                            let kp = bf16_gemm::pack_a(&mut ap, &s, BK, qr, kr, 1.0);
                            (kp, kp)
                        };
                        // SAFETY: as above; `ap` holds the packed probabilities, the values'
                        // pairs from k0 / 2 exist (k0 is even; for the tiles a multiple of
                        // 16, and the pairs to a whole tile step lie inside the padded
                        // panels), and `acc` holds rows of ldo floats.
                        unsafe {
                            panel_product(
                                tiles.as_ref(),
                                (&ap, lda, rows),
                                (&values, k0 / 2, kc),
                                (0, dpanels),
                                (acc.as_mut_ptr(), ldo),
                                true,
                            )
                        }
                    }
                    for i in 0..qr {
                        if tiled {
                            o[i * d..(i + 1) * d].copy_from_slice(&padded[i * ldo..i * ldo + d]);
                        }
                        vmath::scale(&mut o[i * d..(i + 1) * d], 1.0 / l[i]);
                        lse[i] = m[i] + l[i].ln();
                    }
                });
        });
    (out, lse)
}

/// `c (+)= a · w` over the weight's panels `p0..p1` and its pairs `b_p0..b_p0 + kc`, for
/// `rows` packed rows of `a` (`lda` pairs each; c's rows `ldc` floats apart): on the tiles
/// where they are held (`a` tile-packed, `rows` whole tile blocks), else on the vector
/// kernel.
///
/// # Safety
/// As [`bf16_gemm::tile_block`] or [`bf16_gemm::block`], whichever runs.
unsafe fn panel_product(
    tiles: Option<&amx::Tiles>,
    (a, lda, rows): (&[u32], usize, usize),
    (w, b_p0, kc): (&PackedBf16, usize, usize),
    panels: (usize, usize),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    match tiles {
        Some(t) => bf16_gemm::tile_block(t, a, lda, rows, w, b_p0, kc, panels, c, ldc, accumulate),
        None => bf16_gemm::block(a, lda, rows, w, b_p0, kc, panels, c, ldc, accumulate, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // Deterministic values in (-2, 2).
        (0..n as u32)
            .map(|i| {
                let x = (i ^ seed.wrapping_mul(0x9E37_79B9)).wrapping_mul(0x85EB_CA6B);
                ((x ^ (x >> 13)).wrapping_mul(0xC2B2_AE35) >> 8) as f32 / (1 << 24) as f32 * 4.0
                    - 2.0
            })
            .collect()
    }

    /// Against the composed f32 attention: within bf16's rounding of q, k, v and the
    /// probabilities (relative 2⁻⁸ each), for query and key counts that are not multiples
    /// of the blocks, several key blocks, an odd key count, a head width that is not a
    /// multiple of the panel, and a key mask.
    #[test]
    fn the_bf16_forward_matches_the_f32_attention_within_bf16_rounding() {
        if !bf16_gemm::available() {
            eprintln!("this CPU has no AVX-512 BF16: the bf16 attention is not run here");
            return;
        }
        let dev = Device::Cpu;
        for (lq, lk, d, masked) in [(70, 300, 16, false), (130, 513, 40, true), (5, 9, 8, false)] {
            let (b, h) = (2, 2);
            let (q, k, v) = (
                values(b * h * lq * d, 1),
                values(b * h * lk * d, 2),
                values(b * h * lk * d, 3),
            );
            let bias: Vec<f32> = (0..b * lk)
                .map(|i| {
                    if masked && i % 7 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let scale = 1.0 / (d as f32).sqrt();
            let paths: &[bool] = if amx::available() {
                &[false, true]
            } else {
                &[false]
            };
            for &tiled in paths {
                let (out, lse) = forward_with(
                    &q,
                    &k,
                    &v,
                    (b, h, lq, lk, d),
                    scale,
                    masked.then_some(&bias[..]),
                    tiled,
                );
                let t =
                    |x: &[f32], l: usize| Tensor::from_vec(x.to_vec(), (b, h, l, d), &dev).unwrap();
                let mask = Tensor::from_vec(bias.clone(), (b, 1, 1, lk), &dev).unwrap();
                let want = crate::ops::attention_composed(
                    &t(&q, lq),
                    &t(&k, lk),
                    &t(&v, lk),
                    masked.then_some(&mask),
                )
                .unwrap();
                let got = Tensor::from_vec(out, (b, h, lq, d), &dev).unwrap();
                let e = crate::ops::max_abs_diff(&got, &want).unwrap();
                assert!(e > 0.0 && e < 3e-2, "lq {lq} lk {lk} d {d}: max |Δ| = {e}");
                // The log-sum-exp of the first query row of the first head, in f64.
                let mut want_lse = 0f64;
                let mut mx = f64::NEG_INFINITY;
                let scores: Vec<f64> = (0..lk)
                    .map(|j| {
                        let s: f64 = (0..d)
                            .map(|c| q[c] as f64 * k[j * d + c] as f64)
                            .sum::<f64>()
                            * scale as f64
                            + bias[j] as f64;
                        mx = mx.max(s);
                        s
                    })
                    .collect();
                for s in &scores {
                    want_lse += (s - mx).exp();
                }
                let want_lse = mx + want_lse.ln();
                assert!(
                    (lse[0] as f64 - want_lse).abs() < 3e-2,
                    "{} vs {want_lse}",
                    lse[0]
                );
            }
        }
    }
}
