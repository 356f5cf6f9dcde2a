//! Text-to-image generation with a model bundle.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use sprout_models::ae::DOWNSCALE;
use sprout_models::dit::embed::{grid_ids, patchify, text_ids, unpatchify};
use sprout_models::dit::DitInput;
use sprout_models::text::TextEncoder;

use crate::bundle::Bundle;
use crate::flow::{sample, schedule, Blend, Sampler};
use crate::noise::noise_batch;
use crate::PipelineError;

/// Largest number of images one request may ask for.
pub const MAX_IMAGES: usize = 16;
/// Largest number of sampling steps.
pub const MAX_STEPS: usize = 1000;

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: String,
    pub n: usize,
    pub seed: u64,
    pub steps: usize,
    pub guidance: f64,
    pub width: u32,
    pub height: u32,
    pub sampler: Sampler,
    /// img2img: start from this image instead of pure noise.
    pub init: Option<InitImage>,
    /// What guidance steers away from: for Sprout's models the unconditional prompt of
    /// classifier-free guidance (empty when None); for FLUX the negative prompt of true CFG.
    pub negative_prompt: Option<String>,
    /// FLUX's true classifier-free guidance scale: above 1 each step also runs the negative
    /// prompt (empty when None). Sprout's models take none.
    pub true_cfg: Option<f64>,
}

/// img2img (SDEdit): of a `steps`-step schedule only the last ones run, from the image's
/// latents noised to the time where they begin (`t·noise + (1 − t)·latents`), as
/// [`crate::flux::Img2Img`] does for FLUX.
#[derive(Debug, Clone)]
pub struct InitImage {
    /// (1, 3, height, width) in [-1, 1], at the request's canvas size.
    pub image: Tensor,
    /// In (0, 1]: 1 starts from pure noise (the image is ignored), small values keep it.
    pub strength: f64,
    /// Inpainting: (1, 1, height, width), 1 where the image is redrawn and 0 where it is
    /// kept. Latent cells touching the redrawn area are drawn ([`crate::flow::Blend`]), the
    /// rest follow the image; the kept pixels of the result are the image's own.
    pub mask: Option<Tensor>,
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

/// The kept pixels of `image` over `drawn` (both (n, 3, H, W)) where `mask` (1, 1, H, W)
/// is 0.
pub fn composite(drawn: &Tensor, image: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let m = mask.broadcast_as(drawn.shape())?;
    (drawn * &m)? + (image.broadcast_as(drawn.shape())? * (1.0 - m)?)?
}

/// Index of the first step of a `steps`-step schedule that img2img at `strength` runs
/// (diffusers' rule: `steps − min(steps·strength, steps)`, rounded down; at least the last
/// step runs).
pub fn img2img_first_step(steps: usize, strength: f64) -> Result<usize, PipelineError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(PipelineError::Request(format!(
            "strength {strength} is out of range (0, 1]"
        )));
    }
    let n = steps as f64;
    Ok((n - (n * strength).min(n)).max(0.0) as usize)
}

impl Request {
    /// Check every field against the model; the error names the field.
    pub fn validate(&self, bundle: &Bundle) -> Result<(), PipelineError> {
        let bad = |m: String| Err(PipelineError::Request(m));
        if self.prompt.trim().is_empty() {
            return bad("prompt is empty".into());
        }
        if self.true_cfg.is_some() {
            return bad(
                "true_cfg_scale applies to the FLUX models; Sprout's models guide by guidance \
                 (with negative_prompt as the unconditional prompt)"
                    .into(),
            );
        }
        if self.negative_prompt.is_some() && self.guidance == 1.0 {
            return bad("negative_prompt has no effect at guidance 1".into());
        }
        if self.n == 0 || self.n > MAX_IMAGES {
            return bad(format!("n = {} is out of range (1..={MAX_IMAGES})", self.n));
        }
        if self.steps == 0 || self.steps > MAX_STEPS {
            return bad(format!(
                "steps = {} is out of range (1..={MAX_STEPS})",
                self.steps
            ));
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 || self.guidance > 50.0 {
            return bad(format!(
                "guidance = {} is out of range (0..=50)",
                self.guidance
            ));
        }
        let max = bundle.meta.max_side;
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || !v.is_multiple_of(DOWNSCALE as u32) {
                return bad(format!(
                    "{name} {v} is not a positive multiple of {DOWNSCALE}"
                ));
            }
            if v > max {
                return bad(format!("{name} {v} exceeds this model's maximum of {max}"));
            }
        }
        if let Some(init) = &self.init {
            img2img_first_step(self.steps, init.strength)?;
            let want = [1, 3, self.height as usize, self.width as usize];
            if init.image.dims() != want {
                return bad(format!(
                    "the init image has shape {:?}; a {}x{} canvas needs {want:?}",
                    init.image.dims(),
                    self.width,
                    self.height
                ));
            }
            if let Some(m) = &init.mask {
                let want = [1, 1, self.height as usize, self.width as usize];
                if m.dims() != want {
                    return bad(format!(
                        "the mask has shape {:?}; a {}x{} canvas needs {want:?}",
                        m.dims(),
                        self.width,
                        self.height
                    ));
                }
            }
        }
        Ok(())
    }
}

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
/// [-1, 1].
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

/// Latents (n, C, h, w) → RGB images.
pub fn to_images(x: &Tensor) -> Result<Vec<RgbImage>, PipelineError> {
    let (n, _, h, w) = x.dims4()?;
    let x = ((x.clamp(-1f32, 1f32)? + 1.0)? * 127.5)?
        .round()?
        .to_dtype(DType::U8)?;
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

/// Generate `req.n` images; image `i` uses noise from seed `req.seed + i`, so it does not
/// depend on `n`. `on_step(done, total)` reports progress.
pub fn generate(
    bundle: &Bundle,
    req: &Request,
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<RgbImage>, PipelineError> {
    let mut out = generate_many(bundle, std::slice::from_ref(req), on_step)?;
    Ok(out.swap_remove(0))
}

/// Generate several requests that share a canvas size, step count, guidance and sampler in
/// one batch (prompts and seeds may differ); returns each request's images in order. Every
/// image depends only on its own prompt and seed, so batching never changes a result
/// beyond float rounding.
pub fn generate_many(
    bundle: &Bundle,
    reqs: &[Request],
    on_step: impl FnMut(usize, usize),
) -> Result<Vec<Vec<RgbImage>>, PipelineError> {
    let mut on_step = on_step;
    generate_many_with(
        bundle,
        reqs,
        Hooks {
            cancel: &AtomicBool::new(false),
            on_step: &mut on_step,
            previews: 0,
            on_preview: &mut |_, _| {},
        },
    )
}

/// What a caller can do while a generation runs.
pub struct Hooks<'a> {
    /// Once set, sampling stops with [`PipelineError::Cancelled`] before the next network
    /// evaluation (a server cancels a job whose client went away).
    pub cancel: &'a AtomicBool,
    /// `(done, total)` network evaluations.
    pub on_step: &'a mut dyn FnMut(usize, usize),
    /// How many previews to decode during sampling, evenly spaced over the steps (the last
    /// step excluded): each is the current prediction of the final images.
    pub previews: usize,
    /// `(preview index from 0, images in request order)`.
    pub on_preview: &'a mut dyn FnMut(usize, Vec<RgbImage>),
}

/// Steps (0-based) after which `n` previews of an `steps`-step run are decoded.
pub fn preview_steps(steps: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n)
        .map(|k| (k * steps / (n + 1)).max(1) - 1)
        .filter(|&i| i + 1 < steps)
        .collect();
    v.dedup();
    v
}

/// Latents to pixels, in tiles for large canvases.
fn decode(bundle: &Bundle, z: &Tensor) -> Result<Tensor, PipelineError> {
    // The semantic channels, if any, follow the autoencoder's; they are decoded with the
    // latent when the decoder reads them (`AeConfig::semantic_channels`), else dropped.
    let c = bundle.meta.ae.latent_channels;
    let sem = match bundle.meta.ae.semantic_channels {
        0 => None,
        n => Some(z.narrow(1, c, n)?),
    };
    let z = &z.narrow(1, 0, c)?;
    let (_, _, h, w) = z.dims4()?;
    Ok(if h * w > 32 * 32 {
        bundle.ae.decode_tiled(z, sem.as_ref(), 16, 4)?
    } else {
        bundle.ae.decode_with(z, sem.as_ref())?
    })
}

/// The latents sampling starts from for an input image: the autoencoder's, followed, for a
/// model with semantic channels, by the image's semantic map estimated from its pixels
/// (`sprout_world::semantic::estimate_map`: objects by the closed-world colour rule, kinds
/// unknown).
fn init_latents(bundle: &Bundle, image: &Tensor) -> Result<Tensor, PipelineError> {
    let z = bundle.ae.encode(image)?;
    if bundle.meta.semantic_channels == 0 {
        return Ok(z);
    }
    let (_, _, ih, iw) = image.dims4()?;
    let (_, _, h, w) = z.dims4()?;
    let rgb: Vec<f32> = image.flatten_all()?.to_vec1()?;
    let map = sprout_world::semantic::estimate_map(iw, ih, &rgb, DOWNSCALE);
    let sem = Tensor::from_vec(
        map,
        (1, bundle.meta.semantic_channels, h, w),
        image.device(),
    )?;
    Ok(Tensor::cat(&[&z, &sem], 1)?)
}

/// [`generate_many`] with cancellation and previews.
pub fn generate_many_with(
    bundle: &Bundle,
    reqs: &[Request],
    hooks: Hooks<'_>,
) -> Result<Vec<Vec<RgbImage>>, PipelineError> {
    let Hooks {
        cancel,
        on_step,
        previews,
        on_preview,
    } = hooks;
    let Some(req) = reqs.first() else {
        return Ok(Vec::new());
    };
    for r in reqs {
        r.validate(bundle)?;
        if (r.width, r.height, r.steps, r.sampler)
            != (req.width, req.height, req.steps, req.sampler)
            || r.guidance != req.guidance
            || r.init.as_ref().map(|i| i.strength) != req.init.as_ref().map(|i| i.strength)
        {
            return Err(PipelineError::Request(format!(
                "requests batched together must share size, steps, guidance, sampler and \
                 img2img strength ({}x{}, {} steps, guidance {}, {:?} vs {}x{}, {} steps, \
                 guidance {}, {:?})",
                req.width,
                req.height,
                req.steps,
                req.guidance,
                req.sampler,
                r.width,
                r.height,
                r.steps,
                r.guidance,
                r.sampler
            )));
        }
    }
    let dev = Device::Cpu;
    let cfg = bundle.dit.config();
    let (h, w) = (
        req.height as usize / DOWNSCALE,
        req.width as usize / DOWNSCALE,
    );
    let p = cfg.patch_size;
    let seeds: Vec<u64> = reqs
        .iter()
        .flat_map(|r| (0..r.n as u64).map(|i| r.seed.wrapping_add(i)))
        .collect();
    let n = seeds.len();
    let x = noise_batch(&seeds, &[cfg.latent_channels, h, w], &dev)?;
    let cfg_on = req.guidance != 1.0;
    let mut prompts: Vec<String> = reqs
        .iter()
        .flat_map(|r| std::iter::repeat_n(r.prompt.clone(), r.n))
        .collect();
    if cfg_on {
        // The unconditional prompt of each sample: its request's negative prompt, else empty.
        prompts.extend(
            reqs.iter().flat_map(|r| {
                std::iter::repeat_n(r.negative_prompt.clone().unwrap_or_default(), r.n)
            }),
        );
    }
    let emb = bundle.text.encode(&prompts, &dev)?;
    for (name, t) in [("text states", &emb.states), ("pooled text", &emb.pooled)] {
        if !t.abs()?.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(PipelineError::Weights(format!(
                "the text encoder produced NaN {name}"
            )));
        }
    }
    let img_ids = grid_ids(0, h / p, w / p, &dev)?;
    let txt_ids = text_ids(emb.states.dim(1)?, &dev)?;
    let mu = bundle.meta.shift.mu((h / p) * (w / p));
    let times = schedule(req.steps, mu);
    let inpaint = reqs
        .iter()
        .any(|r| r.init.as_ref().is_some_and(|i| i.mask.is_some()));
    let (times, x, blend) = match &req.init {
        None => (&times[..], x, None),
        Some(init) => {
            let first = img2img_first_step(req.steps, init.strength)?;
            let (mut latents, mut masks) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for r in reqs {
                let init = r.init.as_ref().expect("strengths match");
                let z = init_latents(bundle, &init.image.to_device(&dev)?)?;
                latents.extend(std::iter::repeat_n(z, r.n));
                if inpaint {
                    // A latent cell is drawn when any of its pixels is; without a mask, all are.
                    let m = match &init.mask {
                        Some(m) => m.max_pool2d(DOWNSCALE)?,
                        None => Tensor::ones((1, 1, h, w), DType::F32, &dev)?,
                    };
                    masks.extend(std::iter::repeat_n(m, r.n));
                }
            }
            let z = Tensor::cat(&latents, 0)?;
            let t = times[first];
            let start = ((&x * t)? + (&z * (1.0 - t))?)?;
            let blend = inpaint
                .then(|| -> candle_core::Result<Blend> {
                    Ok(Blend {
                        latents: z,
                        noise: x,
                        mask: Tensor::cat(&masks, 0)?,
                    })
                })
                .transpose()?;
            (&times[first..], start, blend)
        }
    };
    let steps = times.len() - 1;
    let evals = match req.sampler {
        Sampler::Euler => steps,
        Sampler::Heun => 2 * steps - 1,
    };
    let mut done = 0;
    let velocity = |x: &Tensor, t: f64| -> candle_core::Result<Tensor> {
        if cancel.load(Ordering::Relaxed) {
            candle_core::bail!("cancelled");
        }
        let tokens = patchify(x, p)?;
        let (tokens, rows) = if cfg_on {
            (Tensor::cat(&[&tokens, &tokens], 0)?, 2 * n)
        } else {
            (tokens, n)
        };
        let tt = Tensor::full(t as f32, rows, &dev)?;
        let v = bundle.dit.forward(&DitInput {
            txt_mask: Some(&emb.mask),
            ..DitInput::new(&tokens, &img_ids, &emb.states, &txt_ids, &tt, &emb.pooled)
        })?;
        let v = if cfg_on {
            let (c, u) = (v.narrow(0, 0, n)?, v.narrow(0, n, n)?);
            (&u + ((c - &u)? * req.guidance)?)?
        } else {
            v
        };
        unpatchify(&v, p, h, w)
    };
    let at = preview_steps(steps, previews);
    let last_v = std::cell::RefCell::new(None::<Tensor>);
    let mut shown = 0;
    let z = match sample(
        x,
        times,
        req.sampler,
        blend.as_ref(),
        |x, t| {
            let v = velocity(x, t)?;
            done += 1;
            on_step(done.min(evals), evals);
            *last_v.borrow_mut() = Some(v.clone());
            Ok(v)
        },
        |i, x| {
            if !x.abs()?.sum_all()?.to_scalar::<f32>()?.is_finite() {
                candle_core::bail!("latents became NaN during sampling")
            }
            if at.contains(&i) {
                if let Some(v) = last_v.borrow().as_ref() {
                    // The current prediction of the data: x0 = x_t − t·v.
                    let x0 = (x - (v * times[i + 1])?)?;
                    let img = decode(bundle, &x0).map_err(candle_core::Error::wrap)?;
                    let imgs = to_images(&img).map_err(candle_core::Error::wrap)?;
                    on_preview(shown, imgs);
                    shown += 1;
                }
            }
            Ok(())
        },
    ) {
        Ok(z) => z,
        Err(_) if cancel.load(Ordering::Relaxed) => return Err(PipelineError::Cancelled),
        Err(e) => return Err(e.into()),
    };
    let mut drawn = decode(bundle, &z)?;
    if inpaint {
        let mut parts = Vec::with_capacity(reqs.len());
        let mut k = 0;
        for r in reqs {
            let part = drawn.narrow(0, k, r.n)?;
            k += r.n;
            let init = r.init.as_ref().expect("inpainting has an init image");
            parts.push(match &init.mask {
                Some(m) => composite(&part, &init.image, m)?,
                None => part,
            });
        }
        drawn = Tensor::cat(&parts, 0)?;
    }
    let mut images = to_images(&drawn)?.into_iter();
    Ok(reqs
        .iter()
        .map(|r| images.by_ref().take(r.n).collect())
        .collect())
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
}
