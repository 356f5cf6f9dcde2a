//! Autoencoder quality on held-out world images: PSNR and SSIM at 256².

use candle_core::Tensor;
use image::RgbImage;
use serde::Serialize;
use sprout_data::{make_batch, StreamConfig, StreamPos};
use sprout_models::ae::{psnr, Autoencoder};
use sprout_world::sampler::{CanvasChoice, SamplerConfig};

use crate::TrainError;

/// A seed no training config uses, so these images are never trained on.
pub const HELD_OUT_SEED: u64 = 0xE7A1_0000;

#[derive(Debug, Clone, Serialize)]
pub struct AeScore {
    pub images: usize,
    pub psnr_db: f64,
    pub ssim: f64,
}

/// Mean SSIM over the three channels with an 11×11 Gaussian window (σ = 1.5), constants
/// K1 = 0.01, K2 = 0.03 on 8-bit data (Wang et al. 2004).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> f64 {
    let (w, h) = a.dimensions();
    let g: Vec<f64> = (-5..=5)
        .map(|i: i32| (-(i * i) as f64 / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / gs).collect();
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let blur = |f: &dyn Fn(u32, u32) -> f64| -> Vec<f64> {
        // Separable filter with clamped borders.
        let mut tmp = vec![0f64; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                tmp[(y * w + x) as usize] = (0..11)
                    .map(|k| g[k] * f((x as i64 + k as i64 - 5).clamp(0, w as i64 - 1) as u32, y))
                    .sum();
            }
        }
        let mut out = vec![0f64; (w * h) as usize];
        for y in 0..h {
            for x in 0..w {
                out[(y * w + x) as usize] = (0..11)
                    .map(|k| {
                        g[k] * tmp[((y as i64 + k as i64 - 5).clamp(0, h as i64 - 1) as u32 * w + x)
                            as usize]
                    })
                    .sum();
            }
        }
        out
    };
    let mut total = 0.0;
    for c in 0..3 {
        let pa = |x: u32, y: u32| a.get_pixel(x, y)[c] as f64;
        let pb = |x: u32, y: u32| b.get_pixel(x, y)[c] as f64;
        let (ma, mb) = (blur(&pa), blur(&pb));
        let (saa, sbb, sab) = (
            blur(&|x, y| pa(x, y) * pa(x, y)),
            blur(&|x, y| pb(x, y) * pb(x, y)),
            blur(&|x, y| pa(x, y) * pb(x, y)),
        );
        let mut s = 0.0;
        for i in 0..ma.len() {
            let (va, vb, cov) = (
                saa[i] - ma[i] * ma[i],
                sbb[i] - mb[i] * mb[i],
                sab[i] - ma[i] * mb[i],
            );
            s += ((2.0 * ma[i] * mb[i] + c1) * (2.0 * cov + c2))
                / ((ma[i] * ma[i] + mb[i] * mb[i] + c1) * (va + vb + c2));
        }
        total += s / ma.len() as f64;
    }
    total / 3.0
}

/// Reconstruct `n` held-out 256² world images; mean PSNR (dB) and SSIM. A decoder that reads
/// the semantic map is given the scenes' exact maps.
pub fn evaluate_ae(ae: &Autoencoder, n: usize) -> Result<AeScore, TrainError> {
    let cfg = StreamConfig {
        seed: HELD_OUT_SEED,
        batch_size: 8,
        sampler: SamplerConfig {
            canvas: CanvasChoice::Fixed {
                width: 256,
                height: 256,
            },
            ..SamplerConfig::default()
        },
        ..StreamConfig::default()
    };
    let (mut p, mut s, mut count) = (0.0, 0.0, 0usize);
    let mut pos = StreamPos::default();
    while count < n {
        let batch = make_batch(&cfg, pos)?;
        pos = cfg.advance(pos);
        // A decoder that reads the semantic map gets the scenes' exact maps.
        let sem = match ae.cfg.semantic_channels {
            0 => None,
            _ => Some(crate::semantic_maps::semantic_batch(
                &batch,
                ae_map_kind(&ae.cfg)?,
                sprout_models::ae::DOWNSCALE,
                batch.images.device(),
            )?),
        };
        let y = ae.decode_with(&ae.encode(&batch.images)?, sem.as_ref())?;
        let imgs_a = sprout_pipeline::image_io::to_images(&batch.images)?;
        let imgs_b = sprout_pipeline::image_io::to_images(&y)?;
        for i in 0..batch.images.dim(0)? {
            if count == n {
                break;
            }
            let (xa, xb): (Tensor, Tensor) = (batch.images.get(i)?, y.get(i)?);
            p += psnr(&xb, &xa)?;
            s += ssim(&imgs_a[i], &imgs_b[i]);
            count += 1;
        }
    }
    Ok(AeScore {
        images: count,
        psnr_db: p / count as f64,
        ssim: s / count as f64,
    })
}

/// The kind of semantic map a decoder reads (its `ae.json`'s `semantic_map`).
pub fn ae_map_kind(
    cfg: &sprout_models::ae::AeConfig,
) -> Result<sprout_world::semantic::MapKind, TrainError> {
    sprout_pipeline::bundle::map_kind(cfg.semantic_map.as_deref())
        .map_err(|e| TrainError::Config(format!("ae.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssim_is_one_for_equal_images_and_drops_with_noise() {
        let a = RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
        });
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-9);
        let b = RgbImage::from_fn(32, 32, |x, y| {
            let p = a.get_pixel(x, y).0;
            let n = if (x + y) % 2 == 0 { 20 } else { 0 };
            image::Rgb([p[0].saturating_add(n), p[1].saturating_sub(n), p[2]])
        });
        let s = ssim(&a, &b);
        assert!(s < 0.95 && s > 0.3, "{s}");
        // A constant offset keeps structure: SSIM stays high.
        let c = RgbImage::from_fn(32, 32, |x, y| {
            let p = a.get_pixel(x, y).0;
            image::Rgb([p[0].saturating_add(3), p[1].saturating_add(3), p[2] + 3])
        });
        assert!(ssim(&a, &c) > 0.99);
    }
}
