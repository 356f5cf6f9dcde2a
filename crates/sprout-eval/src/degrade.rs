//! Degradations used to prove the reader robust: Gaussian blur, additive noise, JPEG.

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;
use rand::Rng;
use rand_distr::{Distribution, Normal};
use sprout_world::seed::{purpose, rng_for};

pub const BLUR_SIGMA: f32 = 1.0;
pub const NOISE_SIGMA: f32 = 0.03;
pub const JPEG_QUALITY: u8 = 70;

pub fn blur(img: &RgbImage, sigma: f32) -> RgbImage {
    image::imageops::blur(img, sigma)
}

/// Additive Gaussian noise with standard deviation `sigma` (in units of full scale).
pub fn noise<R: Rng>(img: &RgbImage, sigma: f32, rng: &mut R) -> RgbImage {
    let n = Normal::new(0.0f32, sigma * 255.0).expect("finite sigma");
    let mut out = img.clone();
    for v in out.iter_mut() {
        *v = (*v as f32 + n.sample(rng)).round().clamp(0.0, 255.0) as u8;
    }
    out
}

pub fn jpeg(img: &RgbImage, quality: u8) -> RgbImage {
    let mut buf = Vec::new();
    JpegEncoder::new_with_quality(&mut buf, quality)
        .encode_image(img)
        .expect("JPEG encoding to memory");
    image::load_from_memory(&buf)
        .expect("decoding our own JPEG")
        .to_rgb8()
}

/// Blur (σ = 1 px), then noise (σ = 0.03), then JPEG (quality 70), seeded per image.
pub fn degrade(img: &RgbImage, seed: u64, index: u64) -> RgbImage {
    let mut rng = rng_for(seed, purpose::DEGRADE, index);
    jpeg(
        &noise(&blur(img, BLUR_SIGMA), NOISE_SIGMA, &mut rng),
        JPEG_QUALITY,
    )
}

/// Uniform random noise: a baseline that must score near zero.
pub fn pure_noise(width: u32, height: u32, seed: u64, index: u64) -> RgbImage {
    let mut rng = rng_for(seed, purpose::DEGRADE, index ^ 0xA5A5);
    let mut img = RgbImage::new(width, height);
    for v in img.iter_mut() {
        *v = rng.random();
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_has_the_requested_spread() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
        let mut rng = rng_for(1, 2, 3);
        let out = noise(&img, NOISE_SIGMA, &mut rng);
        let n = out.len() as f32;
        let mean = out.iter().map(|v| *v as f32).sum::<f32>() / n;
        let var = out.iter().map(|v| (*v as f32 - mean).powi(2)).sum::<f32>() / n;
        let sd = var.sqrt() / 255.0;
        assert!((mean - 128.0).abs() < 0.5, "{mean}");
        assert!((sd - NOISE_SIGMA).abs() < 0.003, "{sd}");
    }

    #[test]
    fn blur_preserves_mass_and_spreads_an_impulse() {
        let mut img = RgbImage::from_pixel(21, 21, image::Rgb([0, 0, 0]));
        img.put_pixel(10, 10, image::Rgb([255, 255, 255]));
        let out = blur(&img, 1.0);
        let centre = out.get_pixel(10, 10)[0] as f32 / 255.0;
        // A unit impulse under a σ=1 Gaussian keeps 1/(2πσ²) ≈ 0.159 at the centre.
        assert!((centre - 0.159).abs() < 0.03, "{centre}");
        assert!(out.get_pixel(11, 10)[0] > 0);
    }
}
