//! Input images of `generate`: reading one with a clear error.

use std::path::Path;

use anyhow::{Context, Result};

/// The image given to `flag`, as decoded (alpha kept).
pub fn open_any(path: &Path, flag: &str) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("{flag} {}: not a readable image", path.display()))
}

pub fn open_image(path: &Path, flag: &str) -> Result<image::RgbImage> {
    Ok(open_any(path, flag)?.to_rgb8())
}
