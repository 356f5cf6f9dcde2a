//! What the DiT's one-pass inference steps ([`super::heads`], [`super::adaln`]) share: when
//! they apply, borrowed f32 views of CPU tensors, and output buffers written row by row.

use std::mem::MaybeUninit;

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;

/// Whether a one-pass step applies to these tensors: all f32 on the CPU and none recording
/// a graph (training composes candle's ops, which have backward passes).
pub(super) fn applies<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> bool {
    ts.into_iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && !t.track_op())
}

/// The f32 values of a CPU storage; `what` names it in the error.
pub(super) fn f32_data<'a>(s: &'a Storage, what: &str) -> Result<&'a [f32]> {
    match s {
        Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(v),
        _ => candle_core::bail!("{what} is not f32 on the CPU"),
    }
}

/// Runs `f` on the values of `t` (made contiguous first), f32 on the CPU.
pub(super) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let v = f32_data(&storage, "a tensor")?;
    let start = layout.start_offset();
    f(&v[start..start + t.elem_count()])
}

/// A fresh buffer of `n` floats of which `fill` writes every element of each row of `c`
/// (in parallel, row index given), not zeroed first.
pub(super) fn rows_written(
    n: usize,
    c: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(r, row)| fill(r, row));
    // SAFETY: `fill` wrote every element of every row.
    unsafe { out.set_len(n) };
    out
}
