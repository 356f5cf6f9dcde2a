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

use crate::amx;

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
    /// Pairs per panel as stored: `kp` rounded up to a whole AMX tile step (zeros past
    /// `kp`), so that a tile product never reads past its panel.
    kps: usize,
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

    /// Lays out a row-major `(n, k)` weight of GGML Q8_0 or Q4_0 blocks (32 values per
    /// block, `k` a multiple of 32), each value dequantized as GGML defines it and rounded
    /// to bf16; `None` for another block type.
    pub fn from_blocks(
        kind: candle_core::quantized::GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Option<PackedBf16> {
        use candle_core::quantized::GgmlDType;
        let block_bytes = match kind {
            GgmlDType::Q8_0 => 34,
            GgmlDType::Q4_0 => 18,
            _ => return None,
        };
        assert!(
            k.is_multiple_of(32) && bytes.len() == n * (k / 32) * block_bytes,
            "{kind:?} weight of {n} × {k}"
        );
        let blocks_per_row = k / 32;
        let scale = |b: usize| half::f16::from_le_bytes([bytes[b], bytes[b + 1]]).to_f32();
        Some(match kind {
            GgmlDType::Q8_0 => PackedBf16::pack_with(n, k, |row, col| {
                let b = (row * blocks_per_row + col / 32) * block_bytes;
                bf16_bits(bytes[b + 2 + col % 32] as i8 as f32 * scale(b))
            }),
            _ => PackedBf16::pack_with(n, k, |row, col| {
                // Low nibbles hold a block's first 16 values, high nibbles the next 16.
                let b = (row * blocks_per_row + col / 32) * block_bytes;
                let byte = bytes[b + 2 + col % 16];
                let q = if col % 32 < 16 {
                    byte & 0x0f
                } else {
                    byte >> 4
                };
                bf16_bits((q as i32 - 8) as f32 * scale(b))
            }),
        })
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
        let kps = kp.next_multiple_of(crate::amx::PAIRS);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kps * NR];
        let word = |row: usize, col: usize| -> u32 {
            if row < n && col < k {
                at(row, col) as u32
            } else {
                0
            }
        };
        data.par_chunks_mut(kps * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                for p in 0..kp {
                    for j in 0..NR {
                        let row = panel * NR + j;
                        out[p * NR + j] = word(row, 2 * p) | word(row, 2 * p + 1) << 16;
                    }
                }
            });
        PackedBf16 {
            n,
            k,
            kp,
            kps,
            data,
        }
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
            let base = panel * self.kps * NR;
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

/// Raw output pointer shared by parallel tasks, each of which writes only its own disjoint
/// part of the output (here a rows × columns rectangle; the DiT's heads, a row per head).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: every task writes only its own disjoint part of the output.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x (rows, k) · Wᵀ (+ bias)` as a fresh row-major `(rows, n)` f32 buffer.
fn product(w: &PackedBf16, bias: Option<&[f32]>, x: &[f32], rows: usize) -> Vec<f32> {
    // AMX tiles where the CPU has them and the product has a tile's worth of rows; the
    // vector kernel for the few-row products (modulation vectors), which read the weight
    // once whichever kernel runs.
    let tiled = rows >= amx::ROWS && crate::amx::available();
    product_with(w, bias, x, rows, tiled)
}

/// [`product`] with the kernel chosen by the caller: AMX tiles (`tiled`, which needs
/// [`amx::available`]) or AVX-512 BF16 vectors.
fn product_with(
    w: &PackedBf16,
    bias: Option<&[f32]>,
    x: &[f32],
    rows: usize,
    tiled: bool,
) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    // The tile kernel stores whole 32-row blocks: the buffer holds the last block's padding
    // rows too, cut off at the end.
    let held = if tiled {
        rows.next_multiple_of(amx::ROWS)
    } else {
        rows
    };
    if rows == 0 || n == 0 {
        return vec![0f32; rows * n];
    }
    // Every element is written by the kernels before anything reads it (the first
    // reduction slice stores without loading), so the buffer is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(held * n);
    let threads = rayon::current_num_threads().max(1);
    let unit = if tiled { amx::ROWS } else { MR };
    let tiles = rows.div_ceil(unit);
    let panels = n.div_ceil(NR);
    // One rectangle per thread: by rows when every thread gets a few tiles of them, else
    // by weight panels (the few-row products: modulation vectors, short prompts).
    let tasks: Vec<(usize, usize, usize, usize)> = if tiles >= 4 * threads || panels < threads {
        let per = tiles.div_ceil(threads);
        (0..threads)
            .map(|t| (t * per * unit, ((t + 1) * per * unit).min(rows), 0, panels))
            .filter(|r| r.0 < r.1)
            .collect()
    } else {
        let per = panels.div_ceil(threads);
        (0..threads)
            .map(|t| (0, rows, t * per, ((t + 1) * per).min(panels)))
            .filter(|r| r.2 < r.3)
            .collect()
    };
    let ptr = OutPtr(out.spare_capacity_mut().as_mut_ptr().cast());
    tasks.into_par_iter().for_each(|(r0, r1, p0, p1)| {
        // SAFETY: `available()` was checked by the caller (and `amx::available()` for the
        // tile kernel); the rectangle lies inside the output, and tasks' rectangles are
        // disjoint.
        unsafe {
            if tiled {
                amx_task(w, bias, x, k, ptr.get(), n, (r0, r1), (p0, p1))
            } else {
                task(w, bias, x, k, ptr.get(), n, (r0, r1), (p0, p1))
            }
        }
    });
    // SAFETY: the tasks' rectangles cover all rows × n elements, each written.
    unsafe { out.set_len(rows * n) };
    out
}

/// Rows of activations an AMX task multiplies at once (eight 32-row tile blocks): every
/// slice of a weight panel is read from memory once per block and from cache for its
/// other seven tile blocks.
const AMX_MB: usize = 8 * amx::ROWS;
/// Input pairs per reduction slice of an AMX task: the block's rounded activations
/// (`AMX_MB` × 3 KiB) and a panel's slice (96 KiB) stay in L2, and the output blocks are
/// loaded and stored once per slice. Measured on a 2-core Xeon with AMX (1024-row to
/// 4352-row products of FLUX.1's widths): 256 pairs 0.93–1.08 TFLOP/s, 512 1.0–1.16,
/// 768 1.05–1.25, 1024 0.97–1.27, 1536 0.98–1.22.
const AMX_KC: usize = 768;

/// [`task`] with AMX tiles, blocked as CPU GEMMs are: for each block of `AMX_MB` rows and
/// each `AMX_KC`-pair slice of the reduction, the block's slice of activations is rounded
/// to bf16 once (packed by tiles, zero past the input and past the rows), then every
/// weight panel's slice multiplies it in 32 × 32 output blocks, accumulated in the output
/// (the bias added by the first slice). A partial last panel goes through a buffer.
///
/// # Safety
/// Needs [`available`] and [`amx::available`]; `out` must hold
/// `(r1.next_multiple_of(32), n)` row-major f32 elements.
#[allow(clippy::too_many_arguments)]
unsafe fn amx_task(
    w: &PackedBf16,
    bias: Option<&[f32]>,
    x: &[f32],
    k: usize,
    out: *mut f32,
    n: usize,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
) {
    let kps = w.kps;
    let chunk = AMX_KC.min(kps);
    let tiles = amx::Tiles::new();
    let mut a = vec![0u32; AMX_MB * chunk];
    // The partial last panel's columns of the row block, accumulated over the slices.
    let partial = (!n.is_multiple_of(NR) && p1 * NR > n).then(|| p1 - 1);
    let mut edge = vec![0f32; AMX_MB * NR];
    let biases: Vec<[f32; NR]> = (p0..p1)
        .map(|panel| {
            let mut b = [0f32; NR];
            if let Some(bias) = bias {
                let cols = NR.min(n - panel * NR);
                b[..cols].copy_from_slice(&bias[panel * NR..panel * NR + cols]);
            }
            b
        })
        .collect();
    let mut ic = r0;
    while ic < r1 {
        let mc = AMX_MB.min(r1 - ic);
        let padded = mc.next_multiple_of(amx::ROWS);
        for pc in (0..kps).step_by(chunk) {
            let kc = chunk.min(kps - pc);
            // This slice's inputs 2·pc .. 2·(pc + kc), those past k (and past the rows) zero.
            let (c0, c1) = ((2 * pc).min(k), (2 * (pc + kc)).min(k));
            if c1 - c0 < 2 * kc || mc < padded {
                a[..padded * kc].fill(0);
            }
            round_rows_tiled(&mut a, kc, &x[ic * k + c0..], k, mc, c1 - c0, 1.0);
            for panel in p0..p1 {
                let b = w.data.as_ptr().add(panel * kps * NR + pc * NR);
                let bp = if pc == 0 && bias.is_some() {
                    biases[panel - p0].as_ptr()
                } else {
                    std::ptr::null()
                };
                let (c, ldc) = if partial == Some(panel) {
                    (edge.as_mut_ptr(), NR)
                } else {
                    (out.add(ic * n + panel * NR), n)
                };
                let next = w
                    .data
                    .as_ptr()
                    .add((panel + 1).min(p1 - 1) * kps * NR + pc * NR);
                panel_blocks(
                    &tiles,
                    a.as_ptr(),
                    kc,
                    padded,
                    b,
                    kc,
                    c,
                    ldc,
                    pc > 0,
                    bp,
                    next,
                );
            }
        }
        if let Some(panel) = partial {
            let cols = n - panel * NR;
            for i in 0..mc {
                let dst = out.add((ic + i) * n + panel * NR);
                std::ptr::copy_nonoverlapping(edge.as_ptr().add(i * NR), dst, cols);
            }
        }
        ic += mc;
    }
}

/// Rounds `rows` rows of the row-major f32 `x` (rows `ld` apart, their first `k` inputs),
/// each times `mul`, to bf16 in the tile-packed layout of [`amx::block_32x32`]: 32-row
/// blocks of `kc / 16` steps, each step the 16 × 64-byte tile (a 32-bit word per input
/// pair `2p, 2p + 1`) of the block's rows 0–15 and then that of rows 16–31. What lies
/// past `k` (up to `2 · kc`) and past the rows (to the block's end) is left as it is.
pub(crate) fn round_rows_tiled(
    a: &mut [u32],
    kc: usize,
    x: &[f32],
    ld: usize,
    rows: usize,
    k: usize,
    mul: f32,
) {
    assert!(available() && kc.is_multiple_of(amx::PAIRS) && k <= 2 * kc);
    let block = amx::ROWS * kc;
    assert!(a.len() >= rows.div_ceil(amx::ROWS) * block);
    for i in 0..rows {
        let row = &x[i * ld..i * ld + k];
        let at = (i / amx::ROWS) * block + ((i % amx::ROWS) / 16) * 256 + (i % 16) * 16;
        // SAFETY: AVX-512 BF16 was checked above; every chunk's 16 words lie inside the
        // row's block, one step (512 words) apart.
        unsafe { round_row_strided(row, a.as_mut_ptr().add(at), 512, mul) }
    }
}

/// One row of [`round_rows_tiled`], rounded to nearest even, 32 inputs per instruction:
/// each 32-input chunk's 16 words `stride` words after the previous chunk's.
///
/// # Safety
/// Needs AVX-512F and AVX-512 BF16; `dst` must hold `ceil(row.len() / 32)` chunks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_row_strided(row: &[f32], dst: *mut u32, stride: usize, mul: f32) {
    use std::arch::x86_64::*;
    let whole = row.len() / 32;
    let m = _mm512_set1_ps(mul);
    for c in 0..whole {
        let lo = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(32 * c)), m);
        let hi = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(32 * c + 16)), m);
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.add(stride * c) as *mut _, v);
    }
    let tail = &row[32 * whole..];
    if !tail.is_empty() {
        let d = dst.add(stride * whole);
        let mut pairs = tail.chunks_exact(2);
        for (p, pair) in (&mut pairs).enumerate() {
            *d.add(p) = bf16_bits(pair[0] * mul) as u32 | (bf16_bits(pair[1] * mul) as u32) << 16;
        }
        if let [last] = pairs.remainder() {
            *d.add(tail.len() / 2) = bf16_bits(*last * mul) as u32;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row_strided(_: &[f32], _: *mut u32, _: usize, _: f32) {
    unreachable!("bf16 products need x86-64 with AVX-512 BF16 (checked by `available`)")
}

/// `c (+)= A · Wᵀ` with AMX tiles for `rows` (a multiple of 32) rows of `a`, tile-packed
/// by [`round_rows_tiled`] with `lda` pairs per row (zero past their valid pairs), times
/// the weight's panels `p0..p1` over its pairs `b_p0..b_p0 + kc` (the rows' pairs
/// `0..kc`; `kc` a multiple of 16, which may run into the panels' zero padding). `c`
/// points at the element of row 0 and the first column of panel `p0`, rows `ldc` floats
/// apart, and receives whole panels (32 columns each, past the weight's `n` too).
///
/// # Safety
/// Needs [`amx::available`] and a live [`amx::Tiles`]; `a` must hold `rows · lda` words
/// with `lda ≥ kc`, and `c` `rows` rows of `(p1 - p0) · 32` floats at stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile_block(
    tiles: &amx::Tiles,
    a: &[u32],
    lda: usize,
    rows: usize,
    w: &PackedBf16,
    b_p0: usize,
    kc: usize,
    (p0, p1): (usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    assert!(rows.is_multiple_of(amx::ROWS) && kc.is_multiple_of(amx::PAIRS) && kc > 0);
    assert!(
        a.len() >= rows * lda
            && lda >= kc
            && b_p0 + kc <= w.kps
            && p1 * NR <= w.n.next_multiple_of(NR)
    );
    let panel_at = |panel: usize| w.data.as_ptr().add(panel * w.kps * NR + b_p0 * NR);
    for panel in p0..p1 {
        let c = c.add((panel - p0) * NR);
        let next = panel_at((panel + 1).min(p1 - 1));
        let (a, null) = (a.as_ptr(), std::ptr::null());
        panel_blocks(
            tiles,
            a,
            lda,
            rows,
            panel_at(panel),
            kc,
            c,
            ldc,
            accumulate,
            null,
            next,
        );
    }
}

/// One weight panel's 32 × 32 output blocks down `rows` (a multiple of 32) rows of the
/// tile-packed `a` (`lda` pairs per row), over `kc` pairs of the panel from `b`, into `c`
/// (rows `ldc` floats apart; `accumulate` and `bias` as [`amx::block_32x32`] takes them).
/// The same slice of the panel at `next` is fetched into L2 meanwhile, each block fetching
/// its share: the first block of the next panel would wait for memory otherwise (FLUX.1's
/// products measured 0.97–1.09 TFLOP/s without, 1.0–1.27 with).
///
/// # Safety
/// As [`amx::block_32x32`] for every block: a live [`amx::Tiles`], `a` holding `rows`
/// packed rows of `lda ≥ kc` pairs, `b` `kc` pairs of its panel, `c` `rows` rows of 32
/// floats.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_blocks(
    tiles: &amx::Tiles,
    a: *const u32,
    lda: usize,
    rows: usize,
    b: *const u32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    bias: *const f32,
    next: *const u32,
) {
    let share = kc * NR * 4 / (rows / amx::ROWS);
    for (i, sub) in (0..rows).step_by(amx::ROWS).enumerate() {
        amx::block_32x32(
            tiles,
            a.add(sub * lda),
            b,
            kc / amx::PAIRS,
            c.add(sub * ldc),
            ldc * 4,
            accumulate,
            bias,
            (next as *const u8).add(i * share),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row(_: &[f32], _: &mut [u32], _: f32) {
    unreachable!("bf16 products need x86-64 with AVX-512 BF16 (checked by `available`)")
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
            let b = w.data.as_ptr().add(panel * w.kps * NR + (b_p0 + pc) * NR);
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

    /// Both kernels against the f32 product of the rounded operands, on the same shapes:
    /// rows that fill whole 32-row tile blocks and rows that do not, an input width that is
    /// neither a whole tile step (32) nor even, a partial weight panel, with and without a
    /// bias, and a reduction long enough for several row blocks of the tile kernel.
    #[test]
    fn the_tile_and_vector_kernels_agree_with_the_f32_product() {
        if !available() {
            eprintln!("this CPU has no AVX-512 BF16: the bf16 kernels are not run here");
            return;
        }
        let dev = Device::Cpu;
        let tiles = crate::amx::available();
        if !tiles {
            eprintln!("this CPU (or OS) has no AMX tiles: only the vector kernel is run");
        }
        for (rows, k, n, with_bias) in [
            (32, 32, 32, false),
            (33, 45, 70, true),
            (96, 512, 64, true),
            (200, 501, 70, false),
            (64, 6000, 40, true),
        ] {
            let x = Tensor::randn(0f32, 1.0, (rows, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let bias = with_bias.then(|| b.to_vec1::<f32>().unwrap());
            let mut want = rounded(&x).matmul(&rounded(&w).t().unwrap()).unwrap();
            if with_bias {
                want = want.broadcast_add(&b).unwrap();
            }
            let p = PackedBf16::from_tensor(&w).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let tol = 1e-6 * (k as f32) * (k as f32).sqrt();
            for tiled in [false, true] {
                if tiled && !tiles {
                    continue;
                }
                let got = product_with(&p, bias.as_deref(), &xs, rows, tiled);
                let got = Tensor::from_vec(got, (rows, n), &dev).unwrap();
                let d = crate::ops::max_abs_diff(&got, &want).unwrap();
                assert!(d <= tol, "{rows}×{k}×{n} tiled {tiled}: {d} > {tol}");
            }
        }
    }

    /// Q8_0 and Q4_0 blocks decode to candle's dequantized values, rounded to bf16.
    #[test]
    fn quantized_blocks_unpack_to_candles_dequantized_values() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let w = Tensor::randn(0f32, 1.0, (40, 96), &Device::Cpu).unwrap();
        for kind in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = QTensor::quantize(&w, kind).unwrap();
            let p = PackedBf16::from_blocks(kind, &q.data().unwrap(), 40, 96).unwrap();
            let want = rounded(&q.dequantize(&Device::Cpu).unwrap());
            let d = crate::ops::max_abs_diff(&p.to_f32().unwrap(), &want).unwrap();
            assert_eq!(d, 0.0, "{kind:?}");
        }
        assert!(PackedBf16::from_blocks(GgmlDType::Q4K, &[], 0, 256).is_none());
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
