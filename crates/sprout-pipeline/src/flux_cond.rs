//! The extra input channels of FLUX.1 Fill, Canny and Depth, concatenated to each target token
//! before the DiT's input projection and fixed over the steps (as diffusers' `FluxFillPipeline`
//! and `FluxControlPipeline` build them; tested against both):
//! - Fill: the latents of the image with the masked area blanked (`image · (1 − mask)`, so
//!   mid-grey there), then the mask itself at pixel resolution, each `f`×`f` block of the
//!   autoencoder's factor `f` unshuffled into `f²` channels and packed like the latents;
//! - Canny / Depth: the latents of the control image (an edge or depth map at the canvas size).

use candle_core::Tensor;
use sprout_models::dit::embed::patchify;
use sprout_models::flux::files::Variant;

use crate::flux::{FluxModel, Img2Img, Reference};
use crate::PipelineError;

/// A mask (1, 1, H, W) with each `f`×`f` pixel block unshuffled into `f²` channels and 2×2
/// packed: (1, H/2f · W/2f, 4·f²). Values ≥ 0.5 count as masked.
pub fn packed_mask(mask: &Tensor, f: usize) -> candle_core::Result<Tensor> {
    let (b, _, hh, ww) = mask.dims4()?;
    let (h, w) = (hh / f, ww / f);
    let binary = mask.ge(0.5)?.to_dtype(candle_core::DType::F32)?;
    let cells = binary
        .reshape((b, h, f, w, f))?
        .permute((0, 2, 4, 1, 3))?
        .reshape((b, f * f, h, w))?;
    patchify(&cells, 2)
}

/// Canny thresholds of the reference's edge encoder for FLUX.1 Canny (low, high).
pub const CANNY_THRESHOLDS: (f32, f32) = (50.0, 200.0);

/// An edge map of `img` for FLUX.1 Canny, white edges on black: imageproc's Canny detector
/// (Gaussian blur σ 1.4, Sobel gradient magnitude, non-maximum suppression, hysteresis between
/// `low` and `high`) on the image's luma. The reference uses OpenCV's, which skips the blur
/// and thresholds |dx| + |dy|, so maps differ in detail.
pub fn canny_map(img: &image::RgbImage, (low, high): (f32, f32)) -> image::RgbImage {
    let edges = imageproc::edges::canny(&image::imageops::grayscale(img), low, high);
    image::RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let v = edges.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

impl FluxModel {
    /// The conditioning tokens (1, L, cond_channels) for a `width`×`height` canvas of `tokens`
    /// packed tokens, or None for models that take none. Fill reads the image and mask of
    /// `init`'s inpainting; Canny and Depth read the one image in `refs`, which must cover the
    /// canvas.
    pub(crate) fn conditioning(
        &self,
        refs: &[Reference],
        init: Option<&Img2Img>,
        (width, height): (usize, usize),
        tokens: usize,
    ) -> Result<Option<Tensor>, PipelineError> {
        let cond = self.dit.config().cond_channels;
        let name = self.variant.name();
        let bad = |m: String| Err(PipelineError::Request(m));
        match self.variant {
            Variant::Fill => {
                if !refs.is_empty() {
                    return bad(format!("{name} takes no reference images"));
                }
                let Some(ip) = init.and_then(|i| i.inpaint.as_ref()) else {
                    return bad(format!(
                        "{name} redraws the masked area of an image: it needs an image and a mask"
                    ));
                };
                ip.check(width, height)?;
                let dev = self.device();
                let mask = ip.mask.to_device(dev)?.to_dtype(candle_core::DType::F32)?;
                let kept = (1.0 - mask.ge(0.5)?.to_dtype(candle_core::DType::F32)?)?;
                let image = ip.image.to_device(dev)?.to_dtype(candle_core::DType::F32)?;
                let blanked = image.broadcast_mul(&kept)?;
                let latents = self.encode_reference(&blanked)?.tokens;
                let mask = packed_mask(&mask, self.vae.cfg.downscale())?;
                let t = Tensor::cat(&[latents.to_dtype(mask.dtype())?, mask], 2)?;
                self.check_cond(t, cond, tokens).map(Some)
            }
            Variant::Canny | Variant::Depth => {
                let [control] = refs else {
                    return bad(format!(
                        "{name} needs one control image (an {} map), {} given",
                        self.variant.control_map().unwrap_or("edge or depth"),
                        refs.len()
                    ));
                };
                self.check_cond(control.tokens.clone(), cond, tokens)
                    .map(Some)
            }
            Variant::Schnell | Variant::Dev | Variant::Kontext => Ok(None),
        }
    }

    fn check_cond(&self, t: Tensor, cond: usize, tokens: usize) -> Result<Tensor, PipelineError> {
        if t.dims() != [1, tokens, cond] {
            return Err(PipelineError::Request(format!(
                "{}: the conditioning has shape {:?}; the weights take (1, {tokens}, {cond}) \
                 (is the control image the canvas size?)",
                self.variant.name(),
                t.dims()
            )));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_edge_map_of_a_square_is_its_outline() {
        // A 20×20 white square at (22, 22) on a 64×64 black image: edge pixels lie within two
        // pixels of its border, they go round it, and none lie elsewhere.
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let inside = (22..42).contains(&x) && (22..42).contains(&y);
            image::Rgb(if inside { [255; 3] } else { [0; 3] })
        });
        let e = canny_map(&img, CANNY_THRESHOLDS);
        // Pixels from the square's border: 0 on its outermost rows and columns, counting
        // inwards inside it and outwards outside it.
        let dist = |x: i32, y: i32| {
            let outside = (22 - x).max(x - 41).max(22 - y).max(y - 41);
            if outside > 0 {
                outside
            } else {
                (x - 22).min(41 - x).min(y - 22).min(41 - y)
            }
        };
        let mut on = 0;
        for (x, y, p) in e.enumerate_pixels() {
            assert!(p[0] == 0 || p[0] == 255);
            assert!(p[0] == p[1] && p[1] == p[2]);
            if p[0] == 255 {
                on += 1;
                assert!(dist(x as i32, y as i32) <= 2, "edge at ({x}, {y})");
            }
        }
        // Most of the 80-pixel outline is found.
        assert!(on >= 60, "{on} edge pixels");
        // Every side has edges along its middle.
        let edge = |x: u32, y: u32| e.get_pixel(x, y)[0] == 255;
        let along = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
            xs.clone().any(|x| ys.clone().any(|y| edge(x, y)))
        };
        assert!(along(26..38, 19..25), "top");
        assert!(along(26..38, 39..45), "bottom");
        assert!(along(19..25, 26..38), "left");
        assert!(along(39..45, 26..38), "right");
    }

    #[test]
    fn the_mask_is_unshuffled_per_pixel_block() {
        // 4×4 pixels, f = 2: one 2×2-cell token of 4·4 channels; channel (dy, dx) of cell
        // (r, c) is pixel (2r + dy, 2c + dx), cells packed (c, ph, pw) as the latents.
        let v: Vec<f32> = (0..16)
            .map(|i| if i % 3 == 0 { 1.0 } else { 0.2 })
            .collect();
        let m = Tensor::from_vec(v.clone(), (1, 1, 4, 4), &Device::Cpu).unwrap();
        let p = packed_mask(&m, 2).unwrap();
        assert_eq!(p.dims(), [1, 1, 16]);
        let got = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for dy in 0..2 {
            for dx in 0..2 {
                for r in 0..2 {
                    for c in 0..2 {
                        let pixel = v[(2 * r + dy) * 4 + 2 * c + dx];
                        let want = if pixel >= 0.5 { 1.0 } else { 0.0 };
                        assert_eq!(got[(dy * 2 + dx) * 4 + r * 2 + c], want);
                    }
                }
            }
        }
    }
}
