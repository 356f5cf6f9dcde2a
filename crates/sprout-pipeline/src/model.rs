//! The one generation entry point: a loaded model of some family behind [`Family`], and
//! [`Model::generate`], which checks a [`Request`] against the model's [`Profile`] and runs
//! it. The command line, the server, bench and eval all call it; they only parse arguments
//! and format results.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use sprout_models::ae::DOWNSCALE;
use sprout_models::flux::files::Variant;

use crate::bundle::Bundle;
use crate::denoise::{evaluations, Hooks};
use crate::flow::Sampler;
use crate::flux::{reference_size, sampling_defaults, size_multiple, FluxModel, Img2Img, Inpaint};
use crate::flux2::{prepare_reference, Flux2Model, Flux2Variant, MAX_PROMPT_TOKENS};
use crate::image_io::{resized, to_images};
use crate::request::{check, EditSizing, InitImage, Profile, Request};
use crate::PipelineError;

/// Largest canvas side served for FLUX.1 (about 4 MP at 2048²; FLUX.1 is trained up to
/// about 2 MP).
pub const FLUX_MAX_SIDE: u32 = 2048;
/// Most reference images of one FLUX.1 Kontext edit.
pub const KONTEXT_MAX_IMAGES: usize = 4;

/// What a model family provides to the entry point: its name, limits and defaults, the
/// refusals particular to it, the start-up request, and the run of a checked request
/// (which encodes the prompts, prepares the start, and calls the one denoising loop,
/// [`crate::denoise::denoise`]).
pub trait Family {
    fn name(&self) -> String;
    fn profile(&self) -> Profile;
    /// Refusals beyond [`check`]'s, for a request that passed it.
    fn check(&self, req: &Request) -> Result<(), PipelineError>;
    /// `req.n` images, image `i` from seed `req.seed + i`.
    fn run(&mut self, req: &Request, hooks: Hooks<'_>) -> Result<Vec<RgbImage>, PipelineError>;
    /// The start-up run's request at `(w, h)`: one step, with what the model needs to run.
    fn warmup_request(&self, size: (u32, u32)) -> Result<Request, PipelineError>;
    /// The canvas of the start-up run.
    fn warmup_size(&self) -> (u32, u32);
}

/// A loaded model.
pub enum Model {
    /// Sprout's own model (a bundle directory or the embedded default).
    Native(Box<Bundle>),
    /// FLUX.1 from the user's weight files.
    Flux(Box<FluxModel>),
    /// FLUX.2 ([klein] or [dev]) from the user's weight files.
    Flux2(Box<Flux2Model>),
}

impl Model {
    pub fn family(&self) -> &dyn Family {
        match self {
            Model::Native(b) => b.as_ref(),
            Model::Flux(m) => m.as_ref(),
            Model::Flux2(m) => m.as_ref(),
        }
    }

    fn family_mut(&mut self) -> &mut dyn Family {
        match self {
            Model::Native(b) => b.as_mut(),
            Model::Flux(m) => m.as_mut(),
            Model::Flux2(m) => m.as_mut(),
        }
    }

    pub fn name(&self) -> String {
        self.family().name()
    }

    pub fn profile(&self) -> Profile {
        self.family().profile()
    }

    /// The one check: the profile's limits, then the family's own refusals.
    pub fn check(&self, req: &Request) -> Result<(), PipelineError> {
        check(req, &self.profile())?;
        self.family().check(req)
    }

    /// Check `req` and draw its images (image `i` from seed `req.seed + i`).
    pub fn generate(
        &mut self,
        req: &Request,
        hooks: Hooks<'_>,
    ) -> Result<Vec<RgbImage>, PipelineError> {
        self.check(req)?;
        self.family_mut().run(req, hooks)
    }

    pub fn warmup_size(&self) -> (u32, u32) {
        self.family().warmup_size()
    }

    pub fn warmup_request(&self, size: (u32, u32)) -> Result<Request, PipelineError> {
        self.family().warmup_request(size)
    }
}

impl Family for Bundle {
    fn name(&self) -> String {
        self.meta.name.clone()
    }

    fn profile(&self) -> Profile {
        native_profile(
            self.meta.max_side,
            self.meta.default_steps,
            self.meta.default_guidance,
            self.meta.sampler,
        )
    }

    fn check(&self, req: &Request) -> Result<(), PipelineError> {
        if req.latents.is_some() {
            return Err(PipelineError::invalid(
                "latents",
                "given initial latents apply to the FLUX models",
            ));
        }
        if req.max_sequence_length.is_some() {
            return Err(PipelineError::invalid(
                "max_sequence_length",
                "max_sequence_length applies to the FLUX models (T5 tokens per prompt)",
            ));
        }
        Ok(())
    }

    fn run(&mut self, req: &Request, hooks: Hooks<'_>) -> Result<Vec<RgbImage>, PipelineError> {
        Ok(crate::generate::run_checked(self, std::slice::from_ref(req), hooks)?.swap_remove(0))
    }

    fn warmup_request(&self, (w, h): (u32, u32)) -> Result<Request, PipelineError> {
        Ok(Request {
            steps: 1,
            width: w,
            height: h,
            ..Request::new("warm-up", &self.profile())
        })
    }

    /// Sprout's own model warms up at its largest size (memory problems show at start).
    fn warmup_size(&self) -> (u32, u32) {
        let p = self.profile();
        let side = p.max_side / p.multiple * p.multiple;
        (side, side)
    }
}

/// What a native bundle offers, from its limit and sampling defaults: canvases in multiples
/// of the autoencoder's downscale, 256² by default, Euler or Heun, text to image with img2img
/// and inpainting.
pub fn native_profile(
    max_side: u32,
    default_steps: usize,
    default_guidance: f64,
    sampler: Sampler,
) -> Profile {
    Profile {
        multiple: DOWNSCALE as u32,
        max_side,
        default_size: (256, 256),
        default_steps,
        default_guidance,
        sampler,
        samplers: vec![Sampler::Euler, Sampler::Heun],
        edits: false,
        images: (0, 0),
        images_are: String::new(),
        true_cfg: false,
        takes_init: true,
        takes_mask: true,
        needs_mask: false,
        edit_sizing: EditSizing::DefaultArea,
    }
}

/// What a FLUX.1 variant offers, with canvas sides in multiples of `multiple` (16 for
/// FLUX.1's autoencoder): known before its weights load.
pub fn flux_profile(variant: Variant, multiple: u32) -> Profile {
    let (steps, guidance) = sampling_defaults(variant);
    let side = 1024 / multiple * multiple;
    Profile {
        multiple,
        max_side: FLUX_MAX_SIDE / multiple * multiple,
        default_size: (side, side),
        default_steps: steps,
        default_guidance: guidance,
        sampler: Sampler::Euler,
        samplers: vec![Sampler::Euler],
        edits: variant == Variant::Kontext || variant.is_control(),
        images: match variant {
            Variant::Kontext => (0, KONTEXT_MAX_IMAGES),
            v if v.is_control() => (1, 1),
            _ => (0, 0),
        },
        images_are: match variant.control_map() {
            Some("edge") => "control image (an edge map)",
            Some(_) => "control image (a depth map)",
            None => "reference images",
        }
        .into(),
        true_cfg: true,
        // Canny and Depth start from an image (img2img) but draw their layout from the
        // control image, not a mask; Fill only inpaints.
        takes_init: true,
        takes_mask: !variant.is_control(),
        needs_mask: variant == Variant::Fill,
        edit_sizing: EditSizing::DefaultArea,
    }
}

/// The T5 length a request asks of `variant`, checked (param `max_sequence_length`).
pub fn check_t5_len(variant: Variant, len: Option<usize>) -> Result<(), PipelineError> {
    let max = variant.t5_len();
    match len {
        Some(l) if l == 0 || l > max => Err(PipelineError::invalid(
            "max_sequence_length",
            format!(
                "max_sequence_length {l} is out of range for {} (1..={max})",
                variant.name()
            ),
        )),
        _ => Ok(()),
    }
}

impl Family for FluxModel {
    fn name(&self) -> String {
        self.variant.name().to_string()
    }

    fn profile(&self) -> Profile {
        flux_profile(self.variant, size_multiple(&self.vae) as u32)
    }

    fn check(&self, req: &Request) -> Result<(), PipelineError> {
        check_t5_len(self.variant, req.max_sequence_length)?;
        if let Some(l) = &req.latents {
            let f = self.vae.cfg.downscale();
            let tokens = (req.height as usize / f / 2) * (req.width as usize / f / 2);
            let c = 4 * self.dit.config().latent_channels;
            if l.rank() != 3 || l.dims()[1..] != [tokens, c] {
                return Err(PipelineError::invalid(
                    "latents",
                    format!(
                        "latents have shape {:?}; a {}x{} image needs (n, {tokens}, {c}) packed latents",
                        l.dims(),
                        req.width,
                        req.height
                    ),
                ));
            }
        }
        Ok(())
    }

    fn run(&mut self, req: &Request, hooks: Hooks<'_>) -> Result<Vec<RgbImage>, PipelineError> {
        run_flux(self, req, hooks)
    }

    /// For FLUX.1 Fill, which only inpaints, a grey canvas redrawn whole; for Canny and
    /// Depth, a grey control image.
    fn warmup_request(&self, (w, h): (u32, u32)) -> Result<Request, PipelineError> {
        let base = Request {
            steps: 1,
            width: w,
            height: h,
            ..Request::new("warm-up", &self.profile())
        };
        Ok(match self.variant {
            Variant::Fill => {
                let dev = Device::Cpu;
                let (w, h) = (w as usize, h as usize);
                Request {
                    init: Some(InitImage {
                        image: Tensor::zeros((1, 3, h, w), DType::F32, &dev)?,
                        strength: 1.0,
                        mask: Some(Tensor::ones((1, 1, h, w), DType::F32, &dev)?),
                    }),
                    ..base
                }
            }
            v if v.is_control() => Request {
                images: vec![RgbImage::from_pixel(w, h, image::Rgb([128; 3]))],
                ..base
            },
            _ => base,
        })
    }

    /// FLUX.1 warms up at its default size (its largest takes minutes per step on a CPU).
    fn warmup_size(&self) -> (u32, u32) {
        self.profile().default_size
    }
}

/// A checked request through FLUX.1: the prompt (and true CFG's negative prompt) encoded,
/// the references (Kontext: each at its nearest preferred ratio and the canvas's area) or
/// the control image (at the canvas) encoded, the img2img / inpainting start, then each
/// image through the one loop. Previews show the first image.
fn run_flux(
    m: &mut FluxModel,
    req: &Request,
    hooks: Hooks<'_>,
) -> Result<Vec<RgbImage>, PipelineError> {
    let (w, h) = (req.width as usize, req.height as usize);
    let multiple = size_multiple(&m.vae);
    let t5_len = req.max_sequence_length;
    let text = match req.true_cfg.filter(|s| *s > 1.0) {
        Some(s) => {
            let negative = m.prompt_text(req.negative_prompt.as_deref().unwrap_or(""), t5_len)?;
            m.prompt_text(&req.prompt, t5_len)?
                .with_negative(negative, s)
        }
        None => m.prompt_text(&req.prompt, t5_len)?,
    };
    let references = req
        .images
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
        Some(i) => Some(Img2Img {
            image: m.encode_reference(&i.image)?.tokens,
            strength: i.strength,
            inpaint: i.mask.as_ref().map(|mask| Inpaint {
                mask: mask.clone(),
                image: i.image.clone(),
            }),
        }),
        None => None,
    };
    let evals = evaluations(
        Sampler::Euler,
        match &init {
            Some(i) => req.steps - i.first_step(req.steps)?,
            None => req.steps,
        },
    );
    each_image(req, evals, hooks, |i, hooks| {
        let latents = start_latents(req, i, m.dtype(), m.device(), |seed| {
            m.initial_latents(seed, w, h)
        })?;
        m.sample_with(
            &text,
            &latents,
            &references,
            init.as_ref(),
            (w, h),
            req.steps,
            req.guidance,
            hooks,
        )
    })
}

/// Each of a request's images through `draw`, in order: image `i` reports its network
/// evaluations after those of the images before it (`evals` each), and only the first
/// takes previews. `draw` returns the decoded image as a (1, 3, H, W) tensor.
fn each_image(
    req: &Request,
    evals: usize,
    hooks: Hooks<'_>,
    mut draw: impl FnMut(usize, Hooks<'_>) -> Result<Tensor, PipelineError>,
) -> Result<Vec<RgbImage>, PipelineError> {
    let Hooks {
        cancel,
        on_step,
        previews,
        on_preview,
    } = hooks;
    let mut out = Vec::with_capacity(req.n);
    for i in 0..req.n {
        let img = draw(
            i,
            Hooks {
                cancel,
                on_step: &mut |done, _| on_step(i * evals + done, req.n * evals),
                previews: if i == 0 { previews } else { 0 },
                on_preview: &mut *on_preview,
            },
        )?;
        out.extend(to_images(&img)?);
    }
    Ok(out)
}

/// Image `i`'s starting latents: row `i` of the request's latents, or `noise` of seed + i.
fn start_latents(
    req: &Request,
    i: usize,
    dtype: DType,
    device: &Device,
    noise: impl FnOnce(u64) -> Result<Tensor, PipelineError>,
) -> Result<Tensor, PipelineError> {
    match &req.latents {
        Some(l) => Ok(l.narrow(0, i, 1)?.to_dtype(dtype)?.to_device(device)?),
        None => noise(req.seed.wrapping_add(i as u64)),
    }
}

/// What FLUX.2 offers: 1024² by default, sides in multiples of 16 up to 2048, Euler; the
/// distilled [klein] models 4 steps without guidance, the base models 50 steps at guidance 4
/// (against the empty prompt, or the negative prompt when given), [dev] 50 steps at its
/// embedded guidance 4; reference images up to the variant's maximum (klein 4, dev 10), no
/// img2img or mask (diffusers' `Flux2KleinPipeline` and `Flux2Pipeline` have neither).
pub fn flux2_profile(variant: Flux2Variant) -> Profile {
    let distilled = variant.distilled();
    Profile {
        multiple: 16,
        max_side: FLUX_MAX_SIDE,
        default_size: (1024, 1024),
        default_steps: if distilled { 4 } else { 50 },
        default_guidance: if distilled { 1.0 } else { 4.0 },
        sampler: Sampler::Euler,
        samplers: vec![Sampler::Euler],
        edits: true,
        images: (0, variant.max_references()),
        images_are: "reference images".into(),
        true_cfg: false,
        takes_init: false,
        takes_mask: false,
        needs_mask: false,
        edit_sizing: EditSizing::AsReference,
    }
}

impl Family for Flux2Model {
    fn name(&self) -> String {
        self.variant.name().to_string()
    }

    fn profile(&self) -> Profile {
        flux2_profile(self.variant)
    }

    fn check(&self, req: &Request) -> Result<(), PipelineError> {
        if let Some(l) = req
            .max_sequence_length
            .filter(|l| *l == 0 || *l > MAX_PROMPT_TOKENS)
        {
            return Err(PipelineError::invalid(
                "max_sequence_length",
                format!(
                    "max_sequence_length {l} is out of range for FLUX.2 (1..={MAX_PROMPT_TOKENS})"
                ),
            ));
        }
        let distilled = self.variant.distilled();
        if distilled && req.guidance != 1.0 {
            return Err(PipelineError::invalid(
                "guidance",
                format!(
                    "guidance {} does not apply: this FLUX.2 [klein] is step-distilled and runs without guidance (1)",
                    req.guidance
                ),
            ));
        }
        if distilled && req.negative_prompt.is_some() {
            return Err(PipelineError::invalid(
                "negative_prompt",
                "negative_prompt does not apply: this FLUX.2 [klein] is step-distilled and runs without guidance",
            ));
        }
        if self.variant == Flux2Variant::Dev && req.negative_prompt.is_some() {
            return Err(PipelineError::invalid(
                "negative_prompt",
                "negative_prompt does not apply: FLUX.2 [dev] is guidance-distilled (its guidance scale is a transformer input, with no negative prompt)",
            ));
        }
        if let Some(l) = &req.latents {
            let f = self.size_multiple();
            let tokens = (req.height as usize / f) * (req.width as usize / f);
            let c = self.vae.cfg.token_channels();
            if l.rank() != 3 || l.dims()[1..] != [tokens, c] {
                return Err(PipelineError::invalid(
                    "latents",
                    format!(
                        "latents have shape {:?}; a {}x{} image needs (n, {tokens}, {c}) tokens",
                        l.dims(),
                        req.width,
                        req.height
                    ),
                ));
            }
        }
        for (k, img) in req.images.iter().enumerate() {
            prepare_reference(img, self.size_multiple(), k)?;
        }
        Ok(())
    }

    fn run(&mut self, req: &Request, hooks: Hooks<'_>) -> Result<Vec<RgbImage>, PipelineError> {
        run_flux2(self, req, hooks)
    }

    fn warmup_request(&self, (w, h): (u32, u32)) -> Result<Request, PipelineError> {
        Ok(Request {
            steps: 1,
            width: w,
            height: h,
            ..Request::new("warm-up", &self.profile())
        })
    }

    /// FLUX.2 warms up at its default size, as FLUX.1.
    fn warmup_size(&self) -> (u32, u32) {
        self.profile().default_size
    }
}

/// A checked request through FLUX.2: the prompt (and, for a guided [klein] base model, the
/// negative or empty prompt) encoded, the references prepared as diffusers does and encoded, then each image
/// through the one loop. Previews show the first image.
fn run_flux2(
    m: &mut Flux2Model,
    req: &Request,
    hooks: Hooks<'_>,
) -> Result<Vec<RgbImage>, PipelineError> {
    let (w, h) = (req.width as usize, req.height as usize);
    let len = req.max_sequence_length.unwrap_or(m.text.max_len);
    let mut prompts = vec![req.prompt.as_str()];
    if m.variant == Flux2Variant::KleinBase && req.guidance > 1.0 {
        prompts.push(req.negative_prompt.as_deref().unwrap_or(""));
    }
    let mut encoded = m.encode_prompts(&prompts, len)?.into_iter();
    let text = encoded.next().expect("one per prompt");
    let negative = encoded.next();
    let references = req
        .images
        .iter()
        .enumerate()
        .map(|(k, img)| {
            let img = prepare_reference(img, m.size_multiple(), k)?;
            m.encode_reference(&crate::image_io::from_image(&img, &Device::Cpu)?)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let evals = evaluations(Sampler::Euler, req.steps);
    each_image(req, evals, hooks, |i, hooks| {
        let latents = start_latents(req, i, m.dtype(), m.device(), |seed| {
            m.initial_latents(seed, w, h)
        })?;
        m.sample_with(
            &text,
            negative.as_ref(),
            &latents,
            &references,
            (w, h),
            req.steps,
            req.guidance,
            hooks,
        )
    })
}
