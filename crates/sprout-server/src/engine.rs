//! What the worker runs: Sprout's own model bundle or a FLUX.1 model from the user's weight
//! files, behind one set of limits and defaults ([`Profile`]) and one run call.

use image::RgbImage;
use sprout_models::ae::DOWNSCALE;
use sprout_models::flux::files::Variant;
use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::flux::{reference_size, sampling_defaults, size_multiple, FluxModel, Inpaint};
use sprout_pipeline::generate::{
    generate_many_with, resized, to_images, Hooks, InitImage, Request,
};
use sprout_pipeline::PipelineError;
use sprout_world::AspectRatio;

pub enum Engine {
    Native(Box<Bundle>),
    Flux(Box<FluxModel>),
}

/// What requests to a served model are checked against, and filled in with.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Canvas sides must be multiples of this.
    pub multiple: u32,
    pub max_side: u32,
    /// The canvas of `size: auto` (and of the start-up run).
    pub default_size: (u32, u32),
    pub default_steps: usize,
    pub default_guidance: f64,
    pub sampler: Sampler,
    /// Whether the model takes input images (`/v1/images/edits`).
    pub edits: bool,
}

impl Profile {
    /// Canvases to offer (the web page's choices): the default area at 1:1, 3:2, 2:3, 16:9
    /// and 9:16, then twice the default side where the model allows it.
    pub fn sizes(&self) -> Vec<(u32, u32)> {
        let side = self.default_size.0.max(self.default_size.1);
        let mut out: Vec<(u32, u32)> = ["1:1", "3:2", "2:3", "16:9", "9:16"]
            .iter()
            .filter_map(|r| AspectRatio::parse(r).ok())
            .map(|r| r.canvas(side))
            .collect();
        out.push((2 * side, 2 * side));
        out.retain(|&(w, h)| {
            w.max(h) <= self.max_side && w % self.multiple == 0 && h % self.multiple == 0
        });
        out.dedup();
        out
    }
}

/// Largest canvas side served for FLUX.1 (about 4 MP at 2048²; FLUX.1 is trained up to
/// about 2 MP).
pub const FLUX_MAX_SIDE: u32 = 2048;

impl Engine {
    pub fn profile(&self) -> Profile {
        match self {
            Engine::Native(b) => Profile {
                multiple: DOWNSCALE as u32,
                max_side: b.meta.max_side,
                default_size: (256, 256),
                default_steps: b.meta.default_steps,
                default_guidance: b.meta.default_guidance,
                sampler: b.meta.sampler,
                edits: false,
            },
            Engine::Flux(m) => {
                let (steps, guidance) = sampling_defaults(m.variant);
                let multiple = size_multiple(&m.vae) as u32;
                let side = 1024 / multiple * multiple;
                Profile {
                    multiple,
                    max_side: FLUX_MAX_SIDE / multiple * multiple,
                    default_size: (side, side),
                    default_steps: steps,
                    default_guidance: guidance,
                    sampler: Sampler::Euler,
                    edits: m.variant == Variant::Kontext || m.variant.is_control(),
                }
            }
        }
    }

    /// The canvas of the start-up run: Sprout's own model at its largest size, FLUX.1 at
    /// its default one (its largest takes minutes per step on a CPU).
    pub fn warmup_size(&self) -> (u32, u32) {
        let p = self.profile();
        match self {
            Engine::Native(_) => {
                let side = p.max_side / p.multiple * p.multiple;
                (side, side)
            }
            Engine::Flux(_) => p.default_size,
        }
    }

    /// The start-up run's request and input images: one step at `(w, h)` from text; for
    /// FLUX.1 Fill, which only inpaints, a grey canvas redrawn whole; for Canny and Depth, a
    /// grey control image.
    pub fn warmup_request(
        &self,
        (w, h): (u32, u32),
    ) -> Result<(Request, Vec<RgbImage>), PipelineError> {
        let p = self.profile();
        let (init, inputs) = match self {
            Engine::Flux(m) if m.variant == Variant::Fill => {
                let dev = candle_core::Device::Cpu;
                let (w, h) = (w as usize, h as usize);
                let init = InitImage {
                    image: candle_core::Tensor::zeros((1, 3, h, w), candle_core::DType::F32, &dev)?,
                    strength: 1.0,
                    mask: Some(candle_core::Tensor::ones(
                        (1, 1, h, w),
                        candle_core::DType::F32,
                        &dev,
                    )?),
                };
                (Some(init), vec![])
            }
            Engine::Flux(m) if m.variant.is_control() => {
                (None, vec![RgbImage::from_pixel(w, h, image::Rgb([128; 3]))])
            }
            _ => (None, vec![]),
        };
        let req = Request {
            prompt: "warm-up".into(),
            n: 1,
            seed: 0,
            steps: 1,
            guidance: p.default_guidance,
            width: w,
            height: h,
            sampler: p.sampler,
            init,
            negative_prompt: None,
            true_cfg: None,
        };
        Ok((req, inputs))
    }

    /// `req.n` images (image `i` from seed `req.seed + i`); `refs` are an edit's input
    /// images, which only models whose [`Profile::edits`] is set take. Previews of a FLUX
    /// request show its first image.
    pub fn run(
        &mut self,
        req: &Request,
        refs: &[RgbImage],
        hooks: Hooks<'_>,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        match self {
            Engine::Native(b) => {
                if !refs.is_empty() {
                    return Err(PipelineError::Request(format!(
                        "the model {} draws from text only and takes no input images",
                        b.meta.name
                    )));
                }
                Ok(generate_many_with(b, std::slice::from_ref(req), hooks)?.swap_remove(0))
            }
            Engine::Flux(m) => run_flux(m, req, refs, hooks),
        }
    }
}

fn run_flux(
    m: &mut FluxModel,
    req: &Request,
    refs: &[RgbImage],
    hooks: Hooks<'_>,
) -> Result<Vec<RgbImage>, PipelineError> {
    let name = m.variant.name();
    if m.variant.is_control() {
        if refs.len() != 1 || req.init.is_some() {
            return Err(PipelineError::Request(format!(
                "{name} draws from one control image (an edge or depth map) and no mask: send it as the one image of /v1/images/edits"
            )));
        }
    } else if !refs.is_empty() && m.variant != Variant::Kontext {
        return Err(PipelineError::Request(format!(
            "the model {name} draws from text only; editing needs flux-kontext"
        )));
    }
    if m.variant == Variant::Fill && req.init.as_ref().and_then(|i| i.mask.as_ref()).is_none() {
        return Err(PipelineError::Request(
            "flux-fill only redraws the masked area of an image: send the image and a mask to /v1/images/edits".into(),
        ));
    }
    if req.sampler != Sampler::Euler {
        return Err(PipelineError::Request(
            "FLUX models sample with euler (their schedules are distilled for it)".into(),
        ));
    }
    let Hooks {
        cancel,
        on_step,
        previews,
        on_preview,
    } = hooks;
    let (w, h) = (req.width as usize, req.height as usize);
    let multiple = size_multiple(&m.vae);
    let text = match (req.true_cfg.filter(|s| *s > 1.0), &req.negative_prompt) {
        (Some(s), negative) => {
            let negative = m.encode_text(negative.as_deref().unwrap_or(""))?;
            m.encode_text(&req.prompt)?.with_negative(negative, s)
        }
        (None, Some(_)) => {
            return Err(PipelineError::Request(format!(
                "negative_prompt needs true_cfg_scale above 1 with {} (FLUX's true classifier-free guidance)",
                m.variant.name()
            )))
        }
        (None, None) => m.encode_text(&req.prompt)?,
    };
    let references = refs
        .iter()
        .map(|img| {
            // A control image covers the canvas; Kontext's references keep their shape.
            let (rw, rh) = if m.variant.is_control() {
                (w, h)
            } else {
                reference_size(img.width() as usize, img.height() as usize, w * h, multiple)
            };
            m.encode_reference(&resized(img, rw, rh)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let init = match &req.init {
        Some(i) => Some(sprout_pipeline::flux::Img2Img {
            image: m.encode_reference(&i.image)?.tokens,
            strength: i.strength,
            inpaint: i.mask.as_ref().map(|mask| Inpaint {
                mask: mask.clone(),
                image: i.image.clone(),
            }),
        }),
        None => None,
    };
    let mut out = Vec::with_capacity(req.n);
    for i in 0..req.n {
        let latents = m.initial_latents(req.seed.wrapping_add(i as u64), w, h)?;
        let img = m.sample_with(
            &text,
            &latents,
            &references,
            init.as_ref(),
            (w, h),
            req.steps,
            req.guidance,
            Hooks {
                cancel,
                on_step: &mut |done, total| on_step(i * total + done, req.n * total),
                previews: if i == 0 { previews } else { 0 },
                on_preview: &mut *on_preview,
            },
        )?;
        out.extend(to_images(&((img * 2.0)? - 1.0)?)?);
    }
    Ok(out)
}
