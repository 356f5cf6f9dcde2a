//! Sprout's own model family: text-to-image, img2img and inpainting with a model bundle,
//! several requests of one canvas in one batch. Callers go through
//! [`crate::model::Model::generate`]; [`generate_many`] is the batched form eval uses.

use candle_core::{DType, Tensor};
use image::RgbImage;
use sprout_models::ae::DOWNSCALE;
use sprout_models::dit::embed::{grid_ids, patchify, text_ids, unpatchify};
use sprout_models::dit::DitInput;
use sprout_models::text::TextEncoder;

use crate::bundle::Bundle;
use crate::denoise::{denoise, Hooks};
use crate::flow::{schedule, Blend};
use crate::image_io::{composite, to_images};
use crate::model::Family;
use crate::noise::noise_batch;
use crate::request::{check, img2img_first_step, Request};
use crate::PipelineError;

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
    Hooks::progress(&mut on_step, |hooks| {
        generate_many_with(bundle, reqs, hooks)
    })
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
    let map = bundle.meta.semantic_map.estimate(iw, ih, &rgb, DOWNSCALE);
    let sem = Tensor::from_vec(
        map,
        (1, bundle.meta.semantic_channels, h, w),
        image.device(),
    )?;
    Ok(Tensor::cat(&[&z, &sem], 1)?)
}

/// [`generate_many`] with cancellation and previews: each request gets the one check
/// ([`crate::model::Model::check`]'s), then they run as one batch.
pub fn generate_many_with(
    bundle: &Bundle,
    reqs: &[Request],
    hooks: Hooks<'_>,
) -> Result<Vec<Vec<RgbImage>>, PipelineError> {
    let profile = Family::profile(bundle);
    for r in reqs {
        check(r, &profile)?;
        Family::check(bundle, r)?;
    }
    run_checked(bundle, reqs, hooks)
}

/// [`generate_many_with`] up to the denoised latents, before decoding: one row per image,
/// the autoencoder's channels followed by the semantic ones, if any (what diagnostics of a
/// model's semantic channels read).
pub fn generate_latents(
    bundle: &Bundle,
    reqs: &[Request],
    hooks: Hooks<'_>,
) -> Result<Tensor, PipelineError> {
    let profile = Family::profile(bundle);
    for r in reqs {
        check(r, &profile)?;
        Family::check(bundle, r)?;
    }
    sample_latents(bundle, reqs, hooks)
}

/// Requests that passed the one check, as one batch: they must share the canvas, steps,
/// guidance, sampler and img2img strength.
pub(crate) fn run_checked(
    bundle: &Bundle,
    reqs: &[Request],
    hooks: Hooks<'_>,
) -> Result<Vec<Vec<RgbImage>>, PipelineError> {
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    let z = sample_latents(bundle, reqs, hooks)?;
    let inpaint = reqs
        .iter()
        .any(|r| r.init.as_ref().is_some_and(|i| i.mask.is_some()));
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

/// The denoised latents of checked requests run as one batch (see [`run_checked`]): one
/// row per image, with the autoencoder's channels followed by the semantic ones, if any.
fn sample_latents(
    bundle: &Bundle,
    reqs: &[Request],
    hooks: Hooks<'_>,
) -> Result<Tensor, PipelineError> {
    let Some(req) = reqs.first() else {
        return Err(PipelineError::Request("no requests to sample".into()));
    };
    for r in reqs {
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
    let dev = bundle.device.clone();
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
                        Some(m) => m.to_device(&dev)?.max_pool2d(DOWNSCALE)?,
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
    let velocity = |x: &Tensor, t: f64| -> Result<Tensor, PipelineError> {
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
        Ok(unpatchify(&v, p, h, w)?)
    };
    denoise(
        x,
        times,
        req.sampler,
        blend.as_ref(),
        hooks,
        velocity,
        |x0| to_images(&decode(bundle, x0)?),
    )
}
