//! Input images of `generate`: reading one with a clear error.

use std::path::Path;

use anyhow::{Context, Result};

pub fn open_image(path: &Path, flag: &str) -> Result<image::RgbImage> {
    Ok(image::ImageReader::open(path)
        .with_context(|| format!("{flag} {}", path.display()))?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("{flag} {}: not a readable image", path.display()))?
        .to_rgb8())
}
