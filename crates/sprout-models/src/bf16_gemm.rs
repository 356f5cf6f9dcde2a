//! Products with bf16 weights kept bf16: `y (rows, out) = x (rows, in) · Wᵀ` with f32
//! activations and outputs, the weight laid out once at load in the pair-interleaved form
//! that AVX-512 BF16's `vdpbf16ps` multiplies (two bf16 products summed into one f32 lane
//! per instruction, twice the f32 FMA rate), the activations rounded to bf16 as they are
//! packed and every sum kept in f32.
//!
//! Written here because neither candle (its CPU bf16 product widens each element to f32
//! inside the `gemm` crate's f32 kernels, slower than an f32 product) nor the `gemm` crate
//! (f16 and f32 kernels only) has a bf16 dot-product kernel, and the other CPU libraries
//! that have one (oneDNN, MKL) are C++ libraries that a fresh machine does not have. The
//! kernel is chosen at run time: [`available`] says whether this CPU has AVX-512 BF16;
//! where it does not, [`crate::weights::LinearWeight`] keeps bf16 weights as tensors and
//! widens them for each product instead.
//!
//! The blocking follows the usual CPU GEMM scheme: the output is split into one rectangle
//! per thread (by rows when there are enough, else by columns), and each task packs a block
//! of `MC` activation rows once, then walks `KC`-pair slices of the weight's `NR`-column
//! panels with an `MR × NR` register tile.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output rows of one register tile.
const MR: usize = 12;
/// Output columns of one register tile (two 16-lane vectors) and of one weight panel.
pub const NR: usize = 32;
/// Input pairs (two input columns each) per slice of the reduction.
const KC: usize = 192;
/// Activation rows packed at once by a task (a multiple of `MR`).
const MC: usize = 16 * MR;

/// Whether this CPU multiplies bf16 pairs natively (AVX-512F and AVX-512 BF16), checked
/// once per process.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// An f32 rounded to the nearest bf16, ties to even (as `vcvtne2ps2bf16` and the `half`
/// crate round); NaN stays a quiet NaN.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let u = x.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for (exact).
#[inline]
fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// A `(n, k)` weight in the kernel's layout: `NR`-row panels of the weight (output
/// columns), each holding for every input pair `p` the 32-bit words
/// `W[j, 2p] | W[j, 2p + 1] << 16` of its `NR` rows `j` side by side. Rows past `n` and the
/// odd input past `k` are zero.
pub struct PackedBf16 {
    n: usize,
    k: usize,
    /// Input pairs, `ceil(k / 2)`.
    kp: usize,
    data: Vec<u32>,
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16({} × {})", self.n, self.k)
    }
}

impl PackedBf16 {
    /// Lays out a row-major `(n, k)` weight given as bf16 bit patterns.
    pub fn from_bits(bits: &[u16], n: usize, k: usize) -> PackedBf16 {
        assert_eq!(bits.len(), n * k, "weight of {n} × {k}");
        PackedBf16::pack_with(n, k, |row, col| bits[row * k + col])
    }

    /// Lays out a row-major `(n, k)` f32 matrix, rounded to bf16.
    pub fn from_f32_rows(x: &[f32], n: usize, k: usize) -> PackedBf16 {
        assert_eq!(x.len(), n * k, "matrix of {n} × {k}");
        PackedBf16::pack_with(n, k, |row, col| bf16_bits(x[row * k + col]))
    }

    /// Lays out the transpose of a row-major `(k, n)` f32 matrix, rounded to bf16: the
    /// weight `W[j, i] = x[i, j]`.
    pub fn from_f32_cols(x: &[f32], k: usize, n: usize) -> PackedBf16 {
        assert_eq!(x.len(), n * k, "matrix of {k} × {n}");
        PackedBf16::pack_with(n, k, |row, col| bf16_bits(x[col * n + row]))
    }

    /// The layout of the `(n, k)` weight whose element `(row, col)` is `at(row, col)`.
    fn pack_with(n: usize, k: usize, at: impl Fn(usize, usize) -> u16 + Sync) -> PackedBf16 {
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        let word = |row: usize, col: usize| -> u32 {
            if row < n && col < k {
                at(row, col) as u32
            } else {
                0
            }
        };
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                for p in 0..kp {
                    for j in 0..NR {
                        let row = panel * NR + j;
                        out[p * NR + j] = word(row, 2 * p) | word(row, 2 * p + 1) << 16;
                    }
                }
            });
        PackedBf16 { n, k, kp, data }
    }

    /// Lays out a `(n, k)` tensor (any float dtype; rounded to bf16 if it is not bf16).
    pub fn from_tensor(w: &Tensor) -> Result<PackedBf16> {
        let (n, k) = w.dims2()?;
        let w = w
            .to_dtype(candle_core::DType::BF16)?
            .to_device(&candle_core::Device::Cpu)?
            .flatten_all()?;
        let bits: Vec<u16> = w
            .to_vec1::<half::bf16>()?
            .into_iter()
            .map(|b| b.to_bits())
            .collect();
        Ok(PackedBf16::from_bits(&bits, n, k))
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes the packed weight holds.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The weight back as an f32 `(n, k)` tensor (its bf16 values, exactly).
    pub fn to_f32(&self) -> Result<Tensor> {
        let mut w = vec![0f32; self.n * self.k];
        for (row, out) in w.chunks_mut(self.k.max(1)).enumerate().take(self.n) {
            let (panel, j) = (row / NR, row % NR);
            let base = panel * self.kp * NR;
            for (col, o) in out.iter_mut().enumerate() {
                let word = self.data[base + (col / 2) * NR + j];
                *o = bf16_value((word >> (16 * (col % 2))) as u16);
            }
        }
        Tensor::from_vec(w, (self.n, self.k), &candle_core::Device::Cpu)
    }

    /// `x (rows, k) · Wᵀ` for a contiguous f32 CPU tensor of any rank whose last dimension
    /// is `k`; the result has `x`'s leading dimensions and `n` columns. Needs [`available`].
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(&Product {
            w: self,
            bias: None,
        })
    }

    /// [`PackedBf16::matmul_t`] plus a bias of `n` values added to every row, in the same
    /// pass.
    pub fn matmul_t_bias(&self, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let bias = bias
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if bias.len() != self.n {
            candle_core::bail!(
                "bf16 product: a bias of {} values for a weight of {} × {}",
                bias.len(),
                self.n,
                self.k
            );
        }
        x.apply_op1_no_bwd(&Product {
            w: self,
            bias: Some(bias),
        })
    }
}

/// `x · Wᵀ` as a candle op (no backward: packed weights are loaded, not trained).
struct Product<'a> {
    w: &'a PackedBf16,
    /// Added to every row as each output tile is stored (one pass instead of two).
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for Product<'_> {
    fn name(&self) -> &'static str {
        "sprout-bf16-product"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("bf16 product: the activations are {:?}, not f32", s.dtype());
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("bf16 product: the activations are not contiguous");
        };
        let dims = l.dims();
        let k = dims.last().copied().unwrap_or(1);
        if k != self.w.k {
            candle_core::bail!(
                "bf16 product: activations of width {k} against a weight of {} × {}",
                self.w.n,
                self.w.k
            );
        }
        if !available() {
            candle_core::bail!("bf16 product: this CPU has no AVX-512 BF16");
        }
        let x = &v[a..b];
        let rows = x.len() / k.max(1);
        let out = product(self.w, self.bias.as_deref(), x, rows);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = self.w.n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

/// Raw output pointer shared by the tasks, which write disjoint rectangles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: every task writes only its own rows × columns rectangle of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x (rows, k) · Wᵀ (+ bias)` as a fresh row-major `(rows, n)` f32 buffer.
fn product(w: &PackedBf16, bias: Option<&[f32]>, x: &[f32], rows: usize) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    let mut out = vec![0f32; rows * n];
    if rows == 0 || n == 0 {
        return out;
    }
    let threads = rayon::current_num_threads().max(1);
    let tiles = rows.div_ceil(MR);
    let panels = n.div_ceil(NR);
    // One rectangle per thread: by rows when every thread gets a few tiles of them, else
    // by weight panels (the few-row products: modulation vectors, short prompts).
    let tasks: Vec<(usize, usize, usize, usize)> = if tiles >= 4 * threads || panels < threads {
        let per = tiles.div_ceil(threads);
        (0..threads)
            .map(|t| (t * per * MR, ((t + 1) * per * MR).min(rows), 0, panels))
            .filter(|r| r.0 < r.1)
            .collect()
    } else {
        let per = panels.div_ceil(threads);
        (0..threads)
            .map(|t| (0, rows, t * per, ((t + 1) * per).min(panels)))
            .filter(|r| r.2 < r.3)
            .collect()
    };
    let ptr = OutPtr(out.as_mut_ptr());
    tasks.into_par_iter().for_each(|(r0, r1, p0, p1)| {
        // SAFETY: `available()` was checked by the caller; the rectangle lies inside the
        // output, and tasks' rectangles are disjoint.
        unsafe { task(w, bias, x, k, ptr.get(), n, (r0, r1), (p0, p1)) }
    });
    out
}

/// One task: output rows `r0..r1` × weight panels `p0..p1`.
///
/// # Safety
/// Needs AVX-512F and AVX-512 BF16; `out` must hold `(r1, n)` row-major f32 elements.
#[allow(clippy::too_many_arguments)]
unsafe fn task(
    w: &PackedBf16,
    bias: Option<&[f32]>,
    x: &[f32],
    k: usize,
    out: *mut f32,
    n: usize,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let kp = w.kp;
    let mut a = Vec::new();
    let mut ic = r0;
    while ic < r1 {
        let mc = MC.min(r1 - ic);
        pack_a(&mut a, &x[ic * k..(ic + mc) * k], k, mc, k, 1.0);
        let c = out.add(ic * n + p0 * NR);
        block(&a, kp, mc, w, 0, kp, (p0, p1), c, n, false, bias);
        ic += mc;
    }
}

/// `c (+)= A · Bᵀ` for `rows` rows of packed activations `a` (from [`pack_a`], `a_kp`
/// pairs per row) times the weight's panels `p0..p1` over its pairs `b_p0..b_p0 + kc`
/// (the activations' pairs `0..kc`). `c` points at the output element of row 0 and the
/// first column of panel `p0`, rows `ldc` apart; only columns below the weight's `n` are
/// written. With `accumulate` false the product replaces `c`; `bias` (one value per weight
/// row, `n`) is added at the end.
///
/// # Safety
/// Needs AVX-512F and AVX-512 BF16 ([`available`]); `c` must hold `rows` rows of the
/// panels' columns at stride `ldc`, and `a` `rows` packed rows of at least `kc` pairs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block(
    a: &[u32],
    a_kp: usize,
    rows: usize,
    w: &PackedBf16,
    b_p0: usize,
    kc: usize,
    (p0, p1): (usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: Option<&[f32]>,
) {
    let tiles = rows.div_ceil(MR);
    assert!(bias.is_none_or(|b| b.len() == w.n));
    assert!(a.len() >= tiles * a_kp * MR && kc <= a_kp && b_p0 + kc <= w.kp);
    let mut pc = 0;
    while pc < kc {
        let kcc = KC.min(kc - pc);
        let first = pc == 0 && !accumulate;
        let last = pc + kcc == kc;
        for panel in p0..p1 {
            let b = w.data.as_ptr().add(panel * w.kp * NR + (b_p0 + pc) * NR);
            let cols = NR.min(w.n - panel * NR);
            // The bias of the panel's columns, added as the last slice is stored.
            let mut padded = [0f32; NR];
            let bp = match bias {
                Some(bias) if last => {
                    padded[..cols].copy_from_slice(&bias[panel * NR..panel * NR + cols]);
                    padded.as_ptr()
                }
                _ => std::ptr::null(),
            };
            for t in 0..tiles {
                let tile_rows = MR.min(rows - t * MR);
                let ap = a.as_ptr().add(t * a_kp * MR + pc * MR);
                let ct = c.add(t * MR * ldc + (panel - p0) * NR);
                if tile_rows == MR && cols == NR {
                    kernel(kcc, ap, b, ct, ldc, first, bp);
                } else {
                    // An edge tile: through a full-size buffer.
                    let mut buf = [0f32; MR * NR];
                    if !first {
                        for i in 0..tile_rows {
                            for j in 0..cols {
                                buf[i * NR + j] = *ct.add(i * ldc + j);
                            }
                        }
                    }
                    kernel(kcc, ap, b, buf.as_mut_ptr(), NR, first, bp);
                    for i in 0..tile_rows {
                        for j in 0..cols {
                            *ct.add(i * ldc + j) = buf[i * NR + j];
                        }
                    }
                }
            }
        }
        pc += kcc;
    }
}

/// Packs `rows` rows of the row-major f32 matrix `x` (rows `ld` apart, their first `k`
/// columns), each times `mul`, into `a` for [`block`]: for every `MR`-row tile, for every
/// input pair `p`, the words `x[i, 2p] | x[i, 2p + 1] << 16` (rounded to bf16) of its rows
/// side by side; rows past `rows` and the odd input past `k` are zero. Returns the pairs
/// per row, `ceil(k / 2)`.
pub(crate) fn pack_a(
    a: &mut Vec<u32>,
    x: &[f32],
    ld: usize,
    rows: usize,
    k: usize,
    mul: f32,
) -> usize {
    let kp = k.div_ceil(2);
    let tiles = rows.div_ceil(MR);
    a.clear();
    a.resize(tiles * kp * MR, 0);
    for t in 0..tiles {
        let tile = &mut a[t * kp * MR..(t + 1) * kp * MR];
        for i in 0..MR.min(rows - t * MR) {
            let r = t * MR + i;
            let row = &x[r * ld..r * ld + k];
            let mut pairs = row.chunks_exact(2);
            for (p, pair) in (&mut pairs).enumerate() {
                tile[p * MR + i] =
                    bf16_bits(pair[0] * mul) as u32 | (bf16_bits(pair[1] * mul) as u32) << 16;
            }
            if let [last] = pairs.remainder() {
                tile[(kp - 1) * MR + i] = bf16_bits(*last * mul) as u32;
            }
        }
    }
    kp
}

/// The `MR × NR` register tile: `c (MR rows, stride ldc) (+)= Σ_p a[p] · b[p]` over `kc`
/// pairs, where `a` holds `MR` words per pair and `b` `NR` words per pair; then adds the
/// `NR` floats at `bias` to every row, unless it is null.
///
/// # Safety
/// Needs AVX-512F and AVX-512 BF16; `a` must hold `kc · MR` words, `b` `kc · NR`, and `c`
/// `MR` rows of `NR` floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    first: bool,
    bias: *const f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if !first {
        for (i, row) in acc.iter_mut().enumerate() {
            row[0] = _mm512_loadu_ps(c.add(i * ldc));
            row[1] = _mm512_loadu_ps(c.add(i * ldc + 16));
        }
    }
    for p in 0..kc {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
        for (i, row) in acc.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
            row[0] = _mm512_dpbf16_ps(row[0], av, b0);
            row[1] = _mm512_dpbf16_ps(row[1], av, b1);
        }
    }
    if !bias.is_null() {
        let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
        for row in acc.iter_mut() {
            row[0] = _mm512_add_ps(row[0], b0);
            row[1] = _mm512_add_ps(row[1], b1);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * ldc), row[0]);
        _mm512_storeu_ps(c.add(i * ldc + 16), row[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(
    _: usize,
    _: *const u32,
    _: *const u32,
    _: *mut f32,
    _: usize,
    _: bool,
    _: *const f32,
) {
    unreachable!("bf16 products need x86-64 with AVX-512 BF16 (checked by `available`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rounded(x: &Tensor) -> Tensor {
        x.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
    }

    #[test]
    fn rounding_matches_the_half_crate() {
        for x in [
            0.0f32,
            -0.0,
            1.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 512.0,
            -3.3e-5,
            65504.0,
            f32::MAX,
            1e-40,
        ] {
            assert_eq!(bf16_bits(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        // Ties go to even: 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷.
        assert_eq!(
            bf16_bits(1.0 + 1.0 / 256.0),
            half::bf16::from_f32(1.0).to_bits()
        );
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
    }

    #[test]
    fn packing_round_trips_the_bf16_weight() {
        // Odd sizes: a partial panel and an odd input width.
        let w = Tensor::randn(0f32, 1.0, (37, 21), &Device::Cpu).unwrap();
        let p = PackedBf16::from_tensor(&w).unwrap();
        assert_eq!(p.dims(), (37, 21));
        let back = p.to_f32().unwrap();
        assert_eq!(crate::ops::max_abs_diff(&back, &rounded(&w)).unwrap(), 0.0);
    }

    /// The kernel against the f32 product of the same bf16-rounded operands, whose every
    /// partial product is exact in f32: only the order of the f32 sums differs. Shapes cover
    /// full and edge tiles, several reduction slices, an odd input width, both ways of
    /// splitting the work, and a rank-3 input.
    #[test]
    fn products_match_the_f32_product_of_the_rounded_operands() {
        if !available() {
            eprintln!("this CPU has no AVX-512 BF16: the bf16 kernel is not run here");
            return;
        }
        let dev = Device::Cpu;
        for (rows, k, n) in [
            (1, 8, 5),
            (7, 3, 40),
            (12, 64, 32),
            (200, 501, 70),
            (430, 384, 96),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let p = PackedBf16::from_tensor(&w).unwrap();
            let got = p.matmul_t(&x).unwrap();
            let want = rounded(&x).matmul(&rounded(&w).t().unwrap()).unwrap();
            assert_eq!(got.dims(), &[rows, n]);
            let d = crate::ops::max_abs_diff(&got, &want).unwrap();
            // Sums of k terms of size ~1: f32 rounding of order k · 2⁻²⁴ · sqrt(k).
            let tol = 1e-6 * (k as f32) * (k as f32).sqrt().max(1.0);
            assert!(d <= tol, "{rows}×{k}×{n}: {d} > {tol}");
        }
        // With a bias, over a partial panel and several reduction slices.
        let (x, w) = (
            Tensor::randn(0f32, 1.0, (30, 500), &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (45, 500), &dev).unwrap(),
        );
        let bias = Tensor::randn(0f32, 1.0, 45, &dev).unwrap();
        let got = PackedBf16::from_tensor(&w)
            .unwrap()
            .matmul_t_bias(&x, &bias)
            .unwrap();
        let want = rounded(&x)
            .matmul(&rounded(&w).t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(crate::ops::max_abs_diff(&got, &want).unwrap() < 1e-3);
        let x = Tensor::randn(0f32, 1.0, (2, 9, 48), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (33, 48), &dev).unwrap();
        let got = PackedBf16::from_tensor(&w).unwrap().matmul_t(&x).unwrap();
        let want = rounded(&x)
            .broadcast_matmul(&rounded(&w).t().unwrap())
            .unwrap();
        assert_eq!(got.dims(), &[2, 9, 33]);
        assert!(crate::ops::max_abs_diff(&got, &want).unwrap() < 1e-4);
    }

    #[test]
    fn a_wrong_width_is_refused_by_name() {
        let w = PackedBf16::from_tensor(&Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let x = Tensor::zeros((2, 6), DType::F32, &Device::Cpu).unwrap();
        let e = w.matmul_t(&x).unwrap_err().to_string();
        assert!(e.contains("width 6") && e.contains("4 × 8"), "{e}");
    }
}
