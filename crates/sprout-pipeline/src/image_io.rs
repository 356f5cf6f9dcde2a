//! Images ⇄ tensors, in one range: every image tensor of the pipeline is (n, 3, H, W) in
//! [-1, 1], as the autoencoders take and give them; masks are (1, 1, H, W) in {0, 1}.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::PipelineError;

/// An RGB image → (1, 3, H, W) in [-1, 1] (the inverse of [`to_images`] up to rounding).
pub fn from_image(img: &RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = img.dimensions();
    let t = Tensor::from_slice(img.as_raw(), (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .to_dtype(DType::F32)?;
    (t / 127.5)? - 1.0
}

/// `img` resized to `w`×`h` (Lanczos; unchanged when it has that size), as (1, 3, H, W) in
/// [-1, 1] on the CPU.
pub fn resized(img: &RgbImage, w: usize, h: usize) -> candle_core::Result<Tensor> {
    if img.dimensions() == (w as u32, h as u32) {
        return from_image(img, &Device::Cpu);
    }
    let img = image::imageops::resize(
        img,
        w as u32,
        h as u32,
        image::imageops::FilterType::Lanczos3,
    );
    from_image(&img, &Device::Cpu)
}

/// Images (n, 3, H, W) in [-1, 1] → RGB images (values outside the range are clamped).
pub fn to_images(x: &Tensor) -> Result<Vec<RgbImage>, PipelineError> {
    let (n, _, h, w) = x.dims4()?;
    let x = ((x.to_dtype(DType::F32)?.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)?
        .to_device(&Device::Cpu)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let chw = x
            .get(i)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_vec1::<u8>()?;
        out.push(RgbImage::from_raw(w as u32, h as u32, chw).expect("sizes match"));
    }
    Ok(out)
}

/// A mask (1, 1, H, W) in {0, 1} from a mask image, resized (nearest) to `width`×`height`:
/// with an alpha channel its transparent pixels (alpha below one half) are redrawn, as
/// OpenAI's edits API has it; without one its light pixels (luma from one half up) are, as
/// diffusers' inpainting pipelines have it.
pub fn mask_from_image(
    mask: &image::DynamicImage,
    width: u32,
    height: u32,
) -> candle_core::Result<Tensor> {
    let alpha = mask.color().has_alpha();
    let m = image::imageops::resize(
        &mask.to_rgba8(),
        width,
        height,
        image::imageops::FilterType::Nearest,
    );
    let v: Vec<f32> = m
        .pixels()
        .map(|p| {
            let redraw = if alpha {
                p[3] < 128
            } else {
                (0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32) >= 127.5
            };
            if redraw {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (1, 1, height as usize, width as usize), &Device::Cpu)
}

/// The kept pixels of `image` over `drawn` (both (n, 3, H, W), one range) where `mask`
/// (1, 1, H, W) is 0.
pub fn composite(drawn: &Tensor, image: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let dev = drawn.device();
    let m = mask.to_device(dev)?.broadcast_as(drawn.shape())?;
    let image = image.to_device(dev)?.to_dtype(drawn.dtype())?;
    (drawn * &m)? + (image.broadcast_as(drawn.shape())? * (1.0 - m)?)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tensor_round_trip_is_exact() {
        let img = RgbImage::from_fn(5, 3, |x, y| {
            image::Rgb([(x * 60) as u8, (y * 127) as u8, (255 - x * y * 17) as u8])
        });
        let t = from_image(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 3, 5]);
        // Pixel (x 1, y 2) in [-1, 1]: channel 0 is 60/127.5 − 1.
        let v = t
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(2)
            .unwrap()
            .get(1)
            .unwrap();
        assert!((v.to_scalar::<f32>().unwrap() - (60.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(to_images(&t).unwrap()[0], img);
    }

    #[test]
    fn masks_read_alpha_or_luma_and_composites_keep_the_rest() {
        // Alpha: the transparent left half is redrawn. Luma: the white right half is.
        let rgba = image::RgbaImage::from_fn(4, 2, |x, _| {
            image::Rgba([0, 0, 0, if x < 2 { 0 } else { 255 }])
        });
        let m = mask_from_image(&image::DynamicImage::ImageRgba8(rgba), 4, 2).unwrap();
        assert_eq!(
            m.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1., 1., 0., 0., 1., 1., 0., 0.]
        );
        let rgb = RgbImage::from_fn(4, 2, |x, _| image::Rgb([if x < 2 { 0 } else { 255 }; 3]));
        let l = mask_from_image(&image::DynamicImage::ImageRgb8(rgb), 4, 2).unwrap();
        assert_eq!(
            l.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0., 0., 1., 1., 0., 0., 1., 1.]
        );
        let drawn = Tensor::ones((1, 3, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let image = Tensor::zeros((1, 3, 2, 4), DType::F32, &Device::Cpu).unwrap();
        let c = composite(&drawn, &image, &m).unwrap();
        let row: Vec<f32> = c
            .get(0)
            .unwrap()
            .get(1)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(row, vec![1., 1., 0., 0.]);
    }
}
