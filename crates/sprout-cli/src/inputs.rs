//! Input images of `generate`: reading one with a clear error, and resizing it to a canvas.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

pub fn open_image(path: &Path, flag: &str) -> Result<image::RgbImage> {
    Ok(image::ImageReader::open(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("{flag} {}: not a readable image", path.display()))?
        .to_rgb8())
}

/// `img` resized to `w`×`h` (unchanged when it has that size), as (1, 3, H, W) in [-1, 1].
pub fn resized(img: &image::RgbImage, w: usize, h: usize) -> Result<Tensor> {
    let to_tensor =
        |img: &image::RgbImage| sprout_pipeline::generate::from_image(img, &Device::Cpu);
    if img.dimensions() == (w as u32, h as u32) {
        return Ok(to_tensor(img)?);
    }
    let img = image::imageops::resize(
        img,
        w as u32,
        h as u32,
        image::imageops::FilterType::Lanczos3,
    );
    Ok(to_tensor(&img)?)
}
