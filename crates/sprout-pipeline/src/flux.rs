//! FLUX.1 text-to-image on the shared MMDiT: CLIP-L pooled text and T5 token states, 2×2
//! packed latents, the flow-matching Euler schedule (schnell: unshifted; the others: shifted
//! by the image's token count, guidance as an input), the FLUX autoencoder; Kontext's
//! reference tokens, and Fill's, Canny's and Depth's conditioning channels (`flux_cond`).
//! Reproduces diffusers' `FluxPipeline` from the same initial latents (tested).

use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::t5::T5EncoderModel;
use sprout_models::dit::embed::{grid_ids, patchify, unpatchify};
use sprout_models::dit::{Dit, DitInput};
use sprout_models::flux::files::Variant;
use sprout_models::flux::tokenize::encode_fixed;
use sprout_models::flux::vae::FluxVae;
use tokenizers::Tokenizer;

use crate::denoise::{denoise, Hooks};
use crate::flow::{schedule, Blend, FluxShift, Sampler, ShiftConfig};
use crate::image_io::{composite, to_images};
use crate::noise::noise;
use crate::PipelineError;

/// CLIP's context length in FLUX pipelines.
pub const CLIP_LEN: usize = 77;

pub struct FluxModel {
    pub variant: Variant,
    pub dit: Dit,
    pub vae: FluxVae,
    pub text: TextParts,
    /// The autoencoder's (and CLIP's) type.
    pub parts_dtype: DType,
    /// Prompts encoded ahead, as (prompt, T5 tokens, encoding): [`FluxModel::load_with_prompts`]
    /// encodes them while T5 is loaded, so that it can be dropped before the DiT loads.
    pub encoded: Vec<(String, usize, FluxText)>,
    /// The sampling times' shift: the snapshot's scheduler config, else the variant's own.
    pub shift: FluxShift,
}

/// FLUX.1's shift where no scheduler config says otherwise: none for schnell, the
/// resolution-dependent one for the guidance-distilled variants.
pub fn default_shift(variant: Variant) -> FluxShift {
    match variant {
        Variant::Schnell => FluxShift::Fixed(1.0),
        _ => FluxShift::Dynamic(ShiftConfig::default()),
    }
}

/// The text side: CLIP-L (pooled vector) and T5 (token states) with their tokenizers.
pub struct TextParts {
    pub clip: ClipTextTransformer,
    pub t5: T5Slot,
    pub clip_tokenizer: Tokenizer,
    pub t5_tokenizer: Tokenizer,
    /// T5 tokens per prompt (schnell 256, dev and Kontext 512).
    pub t5_len: usize,
    /// The DiT's compute type: the encodings are cast to it.
    pub dtype: DType,
    pub device: Device,
}

/// A T5 encoder: candle-transformers' from safetensors, Sprout's from a GGUF file.
pub enum T5Model {
    Dense(T5EncoderModel),
    Gguf(sprout_models::t5::T5Encoder),
}

impl From<T5EncoderModel> for T5Model {
    fn from(m: T5EncoderModel) -> Self {
        T5Model::Dense(m)
    }
}

impl T5Model {
    pub fn forward(&mut self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            T5Model::Dense(m) => m.forward(ids),
            T5Model::Gguf(m) => m.forward(ids),
        }
    }
}

/// The T5 encoder: held, or loaded for each prompt and dropped before the DiT runs (chosen at
/// load when the machine cannot hold T5 next to the DiT).
pub enum T5Slot {
    Resident(T5Model),
    OnDemand(Box<dyn Fn() -> Result<T5Model, PipelineError> + Send + Sync>),
}

impl T5Slot {
    fn encode(&mut self, ids: &Tensor) -> Result<Tensor, PipelineError> {
        match self {
            T5Slot::Resident(t5) => Ok(t5.forward(ids)?),
            // The loaded encoder (memory-mapped) is dropped when this returns.
            T5Slot::OnDemand(load) => Ok(load()?.forward(ids)?),
        }
    }

    pub fn is_resident(&self) -> bool {
        matches!(self, T5Slot::Resident(_))
    }
}

/// The text conditioning of one prompt.
#[derive(Clone)]
pub struct FluxText {
    /// T5 token states (1, t5_len, 4096).
    pub states: Tensor,
    /// CLIP pooled vector (1, 768).
    pub pooled: Tensor,
    /// True classifier-free guidance (diffusers' `true_cfg_scale` with a negative prompt):
    /// each step also runs the negative prompt and moves along `v_neg + scale·(v − v_neg)`.
    pub true_cfg: Option<(Box<FluxText>, f64)>,
}

impl FluxText {
    /// This prompt guided away from `negative` at `scale` (true CFG; 1 would change nothing,
    /// at twice the cost).
    pub fn with_negative(self, negative: FluxText, scale: f64) -> FluxText {
        FluxText {
            true_cfg: Some((Box::new(negative), scale)),
            ..self
        }
    }
}

/// A reference image for in-context editing (Kontext): its packed latents and the packed
/// grid they cover.
pub struct Reference {
    /// (1, rows·cols, 4·C).
    pub tokens: Tensor,
    pub rows: usize,
    pub cols: usize,
}

/// img2img, as diffusers' `FluxImg2ImgPipeline`: of a `steps`-step schedule, the last
/// `steps − int(steps − min(steps·strength, steps))` steps run, starting from the image's
/// latents noised to that step's time `t` (`t·noise + (1 − t)·image`).
pub struct Img2Img {
    /// The input image's packed latents (1, L, 4·C), e.g. [`FluxModel::encode_reference`]'s
    /// tokens.
    pub image: Tensor,
    /// In (0, 1]: 1 starts from pure noise, small values keep the image.
    pub strength: f64,
    /// Inpainting: redraw only the mask's area (see [`Inpaint`]).
    pub inpaint: Option<Inpaint>,
}

/// The area an img2img run redraws: latent cells touching it are drawn
/// ([`crate::flow::Blend`], as diffusers' `FluxInpaintPipeline` blends), the others follow
/// the image, and the result keeps the image's own pixels outside it.
pub struct Inpaint {
    /// (1, 1, H, W): 1 where the image is redrawn, 0 where it is kept.
    pub mask: Tensor,
    /// The image (1, 3, H, W) in [-1, 1], at the canvas size.
    pub image: Tensor,
}

impl Inpaint {
    /// Both at the `width`×`height` canvas, else an error naming their shapes.
    pub(crate) fn check(&self, width: usize, height: usize) -> Result<(), PipelineError> {
        let want = [1, 1, height, width];
        if self.mask.dims() != want || self.image.dims() != [1, 3, height, width] {
            return Err(PipelineError::Request(format!(
                "the inpainting mask {:?} and image {:?} must be {want:?} and [1, 3, {height}, {width}]",
                self.mask.dims(),
                self.image.dims()
            )));
        }
        Ok(())
    }
}

impl Img2Img {
    /// Index of the first schedule step that runs.
    pub fn first_step(&self, steps: usize) -> Result<usize, PipelineError> {
        crate::request::img2img_first_step(steps, self.strength)
    }
}

/// Kontext's preferred resolutions (width, height), as its reference pipeline lists them.
pub const KONTEXT_RESOLUTIONS: [(usize, usize); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// Sampling defaults of each variant (steps, guidance), as their reference pipelines use.
pub fn sampling_defaults(v: Variant) -> (usize, f64) {
    match v {
        Variant::Schnell => (4, 0.0),
        Variant::Dev => (28, 3.5),
        Variant::Kontext => (28, 2.5),
        Variant::Fill => (50, 30.0),
        Variant::Canny => (50, 30.0),
        Variant::Depth => (30, 10.0),
    }
}

/// The size a reference image of `width`×`height` enters an edit at: its nearest preferred
/// Kontext resolution (those are about 1024² pixels), scaled by √(`area` / 1024²) and
/// rounded down to `multiple`. A canvas of about 1024² (within 3 %, which every preferred
/// resolution is) gets the preferred resolution itself, as the reference pipeline resizes;
/// a smaller canvas gets proportionally smaller references.
pub fn reference_size(width: usize, height: usize, area: usize, multiple: usize) -> (usize, usize) {
    let (kw, kh) = kontext_size(width, height);
    let scale = match (area as f64).sqrt() / 1024.0 {
        s if (s - 1.0).abs() < 0.03 => 1.0,
        s => s,
    };
    let side = |v: usize| ((v as f64 * scale) as usize / multiple * multiple).max(multiple);
    (side(kw), side(kh))
}

/// The preferred Kontext resolution whose aspect ratio is nearest to `width`/`height`.
pub fn kontext_size(width: usize, height: usize) -> (usize, usize) {
    let a = width as f64 / height as f64;
    *KONTEXT_RESOLUTIONS
        .iter()
        .min_by(|x, y| {
            let d = |r: &&(usize, usize)| (a - r.0 as f64 / r.1 as f64).abs();
            d(x).total_cmp(&d(y))
        })
        .expect("non-empty")
}

/// Pixels per latent cell of `vae` times the 2×2 packing: canvas sides must be multiples.
pub fn size_multiple(vae: &FluxVae) -> usize {
    vae.cfg.downscale() * 2
}

impl TextParts {
    pub fn encode(&mut self, prompt: &str) -> Result<FluxText, PipelineError> {
        self.encode_len(prompt, self.t5_len)
    }

    /// [`encode`](Self::encode) with `t5_len` T5 tokens instead of the parts' own.
    pub fn encode_len(&mut self, prompt: &str, t5_len: usize) -> Result<FluxText, PipelineError> {
        let dev = &self.device;
        let eos = self
            .clip_tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or_else(|| PipelineError::Weights("CLIP tokenizer lacks <|endoftext|>".into()))?;
        let clip_ids = encode_fixed(&self.clip_tokenizer, prompt, CLIP_LEN, eos)?;
        let t5_ids = encode_fixed(&self.t5_tokenizer, prompt, t5_len, 0)?;
        let clip_ids = Tensor::new(clip_ids.as_slice(), dev)?.unsqueeze(0)?;
        let t5_ids = Tensor::new(t5_ids.as_slice(), dev)?.unsqueeze(0)?;
        Ok(FluxText {
            pooled: self.clip.forward(&clip_ids)?.to_dtype(self.dtype)?,
            states: self.t5.encode(&t5_ids)?.to_dtype(self.dtype)?,
            true_cfg: None,
        })
    }
}

impl FluxModel {
    pub fn encode_text(&mut self, prompt: &str) -> Result<FluxText, PipelineError> {
        self.text.encode(prompt)
    }

    /// `prompt` encoded with `t5_len` T5 tokens (the model's own when None), from the
    /// prompts encoded ahead when it is one of them.
    pub fn prompt_text(
        &mut self,
        prompt: &str,
        t5_len: Option<usize>,
    ) -> Result<FluxText, PipelineError> {
        let len = t5_len.unwrap_or(self.text.t5_len);
        if let Some((_, _, t)) = self
            .encoded
            .iter()
            .find(|(p, l, _)| p == prompt && *l == len)
        {
            return Ok(t.clone());
        }
        self.text.encode_len(prompt, len)
    }

    /// The DiT's compute type.
    pub fn dtype(&self) -> DType {
        self.text.dtype
    }

    pub fn device(&self) -> &Device {
        &self.text.device
    }

    /// Seeded initial latents for a `width`×`height` image, packed (1, tokens, 4·C).
    pub fn initial_latents(
        &self,
        seed: u64,
        width: usize,
        height: usize,
    ) -> Result<Tensor, PipelineError> {
        let f = self.vae.cfg.downscale();
        let c = self.dit.config().latent_channels;
        let z = noise(seed, &[1, c, height / f, width / f], self.device())?;
        Ok(patchify(&z, 2)?.to_dtype(self.dtype())?)
    }

    /// An image (1, 3, H, W) in [-1, 1] as a reference: encoded by the autoencoder's
    /// posterior mean and packed. Its sides must be multiples of [`size_multiple`].
    pub fn encode_reference(&self, image: &Tensor) -> Result<Reference, PipelineError> {
        let z = self
            .vae
            .encode(&image.to_device(self.device())?.to_dtype(self.parts_dtype)?)?;
        let (_, _, h, w) = z.dims4()?;
        Ok(Reference {
            tokens: patchify(&z, 2)?.to_dtype(self.dtype())?,
            rows: h / 2,
            cols: w / 2,
        })
    }

    /// Denoise packed latents (1, L, 4·C) of a `width`×`height` image in `steps` Euler steps
    /// and decode them to an image (1, 3, H, W) in [0, 1]. Reference `refs[k]` enters as
    /// extra tokens with image index k + 1 on the first rotary axis. With `init` (img2img),
    /// `latents` is the noise and only the schedule's last steps run (see [`Img2Img`]).
    /// `on_step(done, total)`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        text: &FluxText,
        latents: &Tensor,
        refs: &[Reference],
        init: Option<&Img2Img>,
        width: usize,
        height: usize,
        steps: usize,
        guidance: f64,
        mut on_step: impl FnMut(usize, usize),
    ) -> Result<Tensor, PipelineError> {
        let img = Hooks::progress(&mut on_step, |hooks| {
            self.sample_with(
                text,
                latents,
                refs,
                init,
                (width, height),
                steps,
                guidance,
                hooks,
            )
        })?;
        // diffusers' `output_type="pt"` range, which the parity fixtures hold.
        Ok(((img + 1.0)? / 2.0)?)
    }

    /// [`sample`](Self::sample) through the one denoising loop ([`denoise`]), with
    /// cancellation and previews, giving the image in the pipeline's range [-1, 1].
    #[allow(clippy::too_many_arguments)]
    pub fn sample_with(
        &self,
        text: &FluxText,
        latents: &Tensor,
        refs: &[Reference],
        init: Option<&Img2Img>,
        (width, height): (usize, usize),
        steps: usize,
        guidance: f64,
        hooks: Hooks<'_>,
    ) -> Result<Tensor, PipelineError> {
        let dev = self.device();
        let f = self.vae.cfg.downscale();
        let (h, w) = (height / f, width / f);
        let tokens = (h / 2) * (w / 2);
        if latents.dims() != [1, tokens, 4 * self.dit.config().latent_channels] {
            return Err(PipelineError::Request(format!(
                "latents have shape {:?}; a {width}x{height} image needs (1, {tokens}, {}) packed latents",
                latents.dims(),
                4 * self.dit.config().latent_channels
            )));
        }
        let img_ids = grid_ids(0, h / 2, w / 2, dev)?;
        let cond = self
            .conditioning(refs, init, (width, height), tokens)?
            .map(|c| c.to_dtype(self.dtype()))
            .transpose()?;
        // Canny's and Depth's image is conditioning, not a sequence of reference tokens.
        let refs = if self.variant.is_control() { &[] } else { refs };
        let (ref_tokens, ref_ids) = if refs.is_empty() {
            (None, None)
        } else {
            let tokens: Vec<&Tensor> = refs.iter().map(|r| &r.tokens).collect();
            let ids = refs
                .iter()
                .enumerate()
                .map(|(k, r)| grid_ids(k + 1, r.rows, r.cols, dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            (
                Some(Tensor::cat(&tokens, 1)?.to_dtype(self.dtype())?),
                Some(Tensor::cat(&ids, 1)?),
            )
        };
        let txt_ids = Tensor::zeros((1, text.states.dim(1)?, 3), DType::F32, dev)?;
        let mu = self.shift.mu(tokens);
        let times = schedule(steps, mu);
        let mut blend = None;
        let (times, x) = match init {
            None => (&times[..], latents.to_dtype(DType::F32)?),
            Some(init) => {
                // Fill inpaints by its conditioning; the others by blending (diffusers' way).
                if let Some(ip) = init.inpaint.as_ref().filter(|_| cond.is_none()) {
                    ip.check(width, height)?;
                    // A latent cell is drawn when any of its pixels is; packed as the latents.
                    let c = self.dit.config().latent_channels;
                    let cells = ip.mask.to_device(dev)?.max_pool2d(f)?;
                    let mask = patchify(&cells.broadcast_as((1, c, h, w))?.contiguous()?, 2)?;
                    blend = Some(Blend {
                        latents: init.image.to_dtype(DType::F32)?,
                        noise: latents.to_dtype(DType::F32)?,
                        mask,
                    });
                }
                let start = init.first_step(steps)?;
                if init.image.dims() != latents.dims() {
                    return Err(PipelineError::Request(format!(
                        "img2img image latents {:?} differ from the noise latents {:?}",
                        init.image.dims(),
                        latents.dims()
                    )));
                }
                // The image's latents noised to the first remaining step's time.
                let t = times[start];
                let x = ((latents.to_dtype(DType::F32)? * t)?
                    + (init.image.to_dtype(DType::F32)? * (1.0 - t))?)?;
                (&times[start..], x)
            }
        };
        let g = Tensor::new(&[guidance as f32], dev)?;
        // True CFG runs two passes per step: a cancel between them stops before the second.
        let cancel = hooks.cancel;
        let velocity = |x: &Tensor, t: f64| -> Result<Tensor, PipelineError> {
            let t = Tensor::new(&[t as f32], dev)?;
            let xin = match &cond {
                Some(c) => Tensor::cat(&[&x.to_dtype(self.dtype())?, c], 2)?,
                None => x.to_dtype(self.dtype())?,
            };
            let forward = |text: &FluxText| -> Result<Tensor, PipelineError> {
                let v = self.dit.forward(&DitInput {
                    guidance: self.variant.guidance_embed().then_some(&g),
                    references: ref_tokens
                        .as_ref()
                        .zip(ref_ids.as_ref())
                        .map(|(tokens, ids)| sprout_models::dit::References { tokens, ids }),
                    ..DitInput::new(&xin, &img_ids, &text.states, &txt_ids, &t, &text.pooled)
                })?;
                Ok(v.to_dtype(DType::F32)?)
            };
            let v = forward(text)?;
            Ok(match &text.true_cfg {
                Some((negative, scale)) => {
                    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(PipelineError::Cancelled);
                    }
                    let vn = forward(negative)?;
                    (&vn + ((v - &vn)? * *scale)?)?
                }
                None => v,
            })
        };
        let x = denoise(
            x,
            times,
            Sampler::Euler,
            blend.as_ref(),
            hooks,
            velocity,
            |x0| to_images(&self.decode(x0, h, w)?),
        )?;
        let img = self.decode(&x, h, w)?;
        match init.and_then(|i| i.inpaint.as_ref()) {
            Some(ip) => Ok(composite(&img, &ip.image, &ip.mask)?),
            None => Ok(img),
        }
    }

    /// Packed latents (1, L, 4·C) of an `h`×`w`-cell latent grid to an image (1, 3, H, W) in
    /// [-1, 1] (f32); tiled above 128² cells.
    fn decode(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor, PipelineError> {
        let z = unpatchify(x, 2, h, w)?.to_dtype(self.parts_dtype)?;
        let img = if h * w > 128 * 128 {
            self.vae.decode_tiled(&z, 64, 8)?
        } else {
            self.vae.decode(&z)?
        };
        Ok(img.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_keep_the_nearest_kontext_ratio_at_the_canvas_area() {
        // At 1024² the preferred resolutions themselves: 4:3 → 1184×880, portrait 9:16 →
        // 752×1392 (ratio 0.540 is nearest to 0.5625).
        assert_eq!(reference_size(800, 600, 1024 * 1024, 16), (1184, 880));
        assert_eq!(kontext_size(900, 1600), (752, 1392));
        assert_eq!(reference_size(900, 1600, 1024 * 1024, 16), (752, 1392));
        // Every preferred resolution maps to itself at 1024², also those whose area is not
        // exactly 1024² (672×1568 is 1.05 MP).
        for (w, h) in KONTEXT_RESOLUTIONS {
            assert_eq!(reference_size(w, h, 1024 * 1024, 16), (w, h));
            // A canvas that is itself a preferred resolution gets references of it.
            assert_eq!(reference_size(w, h, w * h, 16), (w, h));
        }
        // A 32² canvas with steps of 4: about 32² pixels at the same ratio, rounded down.
        let (w, h) = reference_size(800, 600, 32 * 32, 4);
        assert_eq!((w % 4, h % 4), (0, 0));
        assert!(
            (w * h) as f64 <= 1024.0 && (w * h) as f64 > 0.6 * 1024.0,
            "{w}x{h}"
        );
        assert!(
            ((w as f64 / h as f64) - 1184.0 / 880.0).abs() < 0.25,
            "{w}x{h}"
        );
        // Never below one step.
        assert_eq!(reference_size(4000, 10, 16, 16), (16, 16));
    }
}
