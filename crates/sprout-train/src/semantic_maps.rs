//! The world's semantic maps of a training batch, from its scenes: what a DiT with semantic
//! channels denoises and what a decoder that reads the map is given.

use candle_core::{Device, Tensor};
use sprout_data::Batch;
use sprout_world::semantic::MapKind;

use crate::TrainError;

/// The semantic maps of kind `kind` of a batch (B, channels, rows, cols) over cells of
/// `cell` pixels.
pub fn semantic_batch(
    batch: &Batch,
    kind: MapKind,
    cell: usize,
    dev: &Device,
) -> Result<Tensor, TrainError> {
    let (b, _, ih, iw) = batch.images.dims4()?;
    let pixels: Vec<f32> = batch.images.flatten_all()?.to_vec1()?;
    let plane = 3 * ih * iw;
    let channels = kind.channels();
    let mut all = Vec::with_capacity(b * channels * (ih / cell) * (iw / cell));
    for (k, scene) in batch.scenes.iter().enumerate() {
        let map = kind
            .map(scene, &pixels[k * plane..(k + 1) * plane], cell)
            .map_err(|e| TrainError::Config(format!("semantic map: {e}")))?;
        all.extend(map);
    }
    Ok(Tensor::from_vec(
        all,
        (b, channels, ih / cell, iw / cell),
        dev,
    )?)
}
