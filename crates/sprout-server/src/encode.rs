//! Encoding result images as PNG, JPEG or WebP.

use image::{ExtendedColorType, ImageEncoder, RgbImage};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Png,
    Jpeg,
    /// Lossless WebP (the image crate's encoder has no lossy mode).
    Webp,
}

impl OutputFormat {
    pub fn parse(s: Option<&str>) -> Result<OutputFormat, ApiError> {
        match s {
            None | Some("png") => Ok(OutputFormat::Png),
            Some("jpeg") | Some("jpg") => Ok(OutputFormat::Jpeg),
            Some("webp") => Ok(OutputFormat::Webp),
            Some(other) => Err(ApiError::invalid(
                "output_format",
                format!("output_format {other:?} is not one of png, jpeg, webp"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }
}

/// `compression` is OpenAI's 0–100 `output_compression`; for JPEG, quality = compression
/// (100 = best); PNG and WebP are lossless.
pub fn encode(img: &RgbImage, format: OutputFormat, compression: u8) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    let (w, h) = img.dimensions();
    let r =
        match format {
            OutputFormat::Png => image::codecs::png::PngEncoder::new(&mut out).write_image(
                img.as_raw(),
                w,
                h,
                ExtendedColorType::Rgb8,
            ),
            OutputFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(
                &mut out,
                compression.clamp(1, 100),
            )
            .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
            OutputFormat::Webp => image::codecs::webp::WebPEncoder::new_lossless(&mut out)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8),
        };
    r.map_err(|e| ApiError::Internal(format!("encoding {}: {e}", format.name())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_decodes_back() {
        let img = RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, 77])
        });
        for f in [OutputFormat::Png, OutputFormat::Webp] {
            let back = image::load_from_memory(&encode(&img, f, 100).unwrap())
                .unwrap()
                .to_rgb8();
            assert_eq!(back, img, "{f:?} is lossless");
        }
        let jpeg = encode(&img, OutputFormat::Jpeg, 90).unwrap();
        assert_eq!(
            image::guess_format(&jpeg).unwrap(),
            image::ImageFormat::Jpeg
        );
        let back = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (40, 24));
        assert!(OutputFormat::parse(Some("gif")).is_err());
    }
}
