//! FLUX.2 on the shared MMDiT: the text encoder's tapped hidden states as the prompt (Qwen3
//! for [klein], Mistral Small 3.2 for [dev]), the FLUX.2 autoencoder's normalised 128-channel
//! tokens, reference images as extra tokens at times 10, 20, … on the first rotary axis, and
//! the flow-matching Euler schedule shifted by FLUX.2's empirical rule. The distilled [klein]
//! models run without guidance, the base models with classifier-free guidance against the
//! empty prompt, [dev] with its guidance scale as a transformer input. Reproduces diffusers'
//! `Flux2KleinPipeline` and `Flux2Pipeline` from the same initial latents (tested).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use sprout_models::dit::embed::{grid_ids_4d, text_ids_4d};
use sprout_models::dit::{Dit, DitInput, References};
use sprout_models::flux::configs::flux2_vae_config;
use sprout_models::flux::convert::{is_diffusers_transformer, DiffusersFlux2Config, Renamed};
use sprout_models::flux::files::component_files;
use sprout_models::flux::tokenize::{
    encode_padded, flux2_tokenizer, mistral_chat_prompt, pads_left, qwen_chat_prompt, Padding,
    FLUX2_SYSTEM_MESSAGE,
};
use sprout_models::flux::vae2::Flux2Vae;
use sprout_models::qwen3::{body_prefix, Qwen3Config, Qwen3Encoder, Qwen3Names};
use sprout_models::weights::Weights;
use tokenizers::Tokenizer;

use crate::denoise::{denoise, Hooks};
use crate::flow::{time_shift, FluxShift, Sampler};
use crate::flux_load::{
    component_config, gguf_loaded_bytes, is_gguf, mmap, read_json, weights_err,
};
use crate::image_io::to_images;
use crate::noise::noise;
use crate::PipelineError;
use candle_transformers::quantized_var_builder::VarBuilder as QVarBuilder;
use sprout_models::dit::DitConfig;
use sprout_models::flux::inspect::{
    available_memory, check_memory, gguf_header, gguf_metadata_string, safetensors_elements,
    GGUF_CONFIG_KEY,
};

/// Qwen3 layers whose states FLUX.2 [klein] reads (transformers' `hidden_states` indices).
pub const KLEIN_TAPS: [usize; 3] = [9, 18, 27];
/// Mistral layers whose states FLUX.2 [dev] reads.
pub const DEV_TAPS: [usize; 3] = [10, 20, 30];
/// Most reference images of one [dev] edit (Black Forest Labs' documented maximum).
pub const DEV_MAX_REFERENCES: usize = 10;
/// Prompt tokens per prompt in FLUX.2's pipelines.
pub const MAX_PROMPT_TOKENS: usize = sprout_models::qwen3::LONGEST_PROMPT as usize;
/// Most reference images of one klein edit (Black Forest Labs' documented maximum).
pub const KLEIN_MAX_REFERENCES: usize = 4;
/// Working memory of a full-size FLUX.2 step and decode at about 1024² (f32 activations of
/// 4 096 image and 512 text tokens at klein's width, the autoencoder's largest maps; [dev]'s
/// wider blocks need more, which its larger weights dwarf).
const ACTIVATIONS: u64 = 3 << 30;
/// References above this many pixels are scaled down to it (diffusers' 1024²).
pub const REFERENCE_MAX_AREA: usize = 1024 * 1024;

/// The time shift FLUX.2's pipelines use: `mu` from the image's token count and the number
/// of steps, fitted by Black Forest Labs (diffusers' `compute_empirical_mu`).
pub fn empirical_mu(image_tokens: usize, steps: usize) -> f64 {
    let (a1, b1) = (8.73809524e-05, 1.89833333);
    let (a2, b2) = (0.00016927, 0.45666666);
    let n = image_tokens as f64;
    if image_tokens > 4300 {
        return a2 * n + b2;
    }
    let m_200 = a2 * n + b2;
    let m_10 = a1 * n + b1;
    let a = (m_200 - m_10) / 190.0;
    let b = m_200 - 200.0 * a;
    a * steps as f64 + b
}

/// The sampling times: `linspace(1, 1/steps, steps)` shifted by `mu`, then 0.
pub fn flux2_schedule(steps: usize, mu: f64) -> Vec<f64> {
    let mut t: Vec<f64> = (0..steps)
        .map(|i| {
            let s = if steps == 1 {
                1.0
            } else {
                1.0 - i as f64 * (1.0 - 1.0 / steps as f64) / (steps - 1) as f64
            };
            time_shift(mu, s)
        })
        .collect();
    t.push(0.0);
    t
}

/// Which FLUX.2 a model is: what it reads its prompt with and how it is guided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flux2Variant {
    /// FLUX.2 [klein] 4B / 9B, step-distilled: 4 steps, no guidance (Qwen3).
    Klein,
    /// FLUX.2 [klein] base 4B / 9B: 50 steps, classifier-free guidance (Qwen3).
    KleinBase,
    /// FLUX.2 [dev] 32B: guidance-distilled, the scale a transformer input (Mistral Small 3.2).
    Dev,
}

impl Flux2Variant {
    /// The `--model` name.
    pub fn name(self) -> &'static str {
        match self {
            Flux2Variant::Klein => "flux2-klein",
            Flux2Variant::KleinBase => "flux2-klein-base",
            Flux2Variant::Dev => "flux2-dev",
        }
    }

    /// Step-distilled: runs without guidance.
    pub fn distilled(self) -> bool {
        self == Flux2Variant::Klein
    }

    /// The text encoder's layers the pipeline reads by default.
    pub fn taps(self) -> &'static [usize] {
        match self {
            Flux2Variant::Dev => &DEV_TAPS,
            _ => &KLEIN_TAPS,
        }
    }

    /// Most reference images of one edit.
    pub fn max_references(self) -> usize {
        match self {
            Flux2Variant::Dev => DEV_MAX_REFERENCES,
            _ => KLEIN_MAX_REFERENCES,
        }
    }
    /// Refuses a part of the other FLUX.2, naming what it is: `dev_part` says the part is
    /// [dev]'s (a transformer with a guidance input, a Mistral text encoder).
    fn check_part(self, part: Part, dev_part: bool) -> Result<(), PipelineError> {
        if dev_part == (self == Flux2Variant::Dev) {
            return Ok(());
        }
        Err(weights_err(
            match (part, dev_part) {
                (Part::Transformer, false) => {
                    "the transformer has no guidance input: a FLUX.2 [klein] model, which runs \
                     with --model flux2-klein (or flux2-klein-base)"
                }
                (Part::Transformer, true) => {
                    "the transformer takes a guidance scale: a FLUX.2 [dev] model, which runs \
                     with --model flux2-dev"
                }
                (Part::TextEncoder, false) => {
                    "FLUX.2 [dev] reads Mistral Small 3.2; the text encoder given is a Qwen3 \
                     (FLUX.2 [klein]'s)"
                }
                (Part::TextEncoder, true) => {
                    "FLUX.2 [klein] reads Qwen3; the text encoder given is a Mistral (FLUX.2 \
                     [dev]'s)"
                }
            }
            .to_string(),
        ))
    }
}

/// A FLUX.2 part whose kind tells [klein] from [dev].
#[derive(Debug, Clone, Copy)]
enum Part {
    Transformer,
    TextEncoder,
}

/// The text encoder: held, or loaded for each request and dropped before the transformer
/// runs (chosen at load when the machine cannot hold it beside the transformer).
pub enum EncoderSlot {
    Resident(Qwen3Encoder),
    OnDemand(Box<dyn Fn() -> Result<Qwen3Encoder, PipelineError> + Send + Sync>),
}

impl EncoderSlot {
    pub fn is_resident(&self) -> bool {
        matches!(self, EncoderSlot::Resident(_))
    }
}

/// The text side with its tokenizer: Qwen3 under Qwen's chat template, or Mistral under
/// Mistral Small's with FLUX.2 [dev]'s system prompt.
pub struct Flux2Text {
    pub encoder: EncoderSlot,
    pub tokenizer: Tokenizer,
    pub pad_id: u32,
    /// The tokenizer pads on the left (Mistral's).
    pub pad_left: bool,
    /// Mistral's chat template (FLUX.2 [dev]) instead of Qwen's.
    pub mistral: bool,
    /// Tokens per prompt (512).
    pub max_len: usize,
    /// The DiT's compute type: the states are cast to it.
    pub dtype: DType,
    pub device: Device,
}

impl Flux2Text {
    /// One prompt's conditioning (1, max_len, taps · hidden).
    pub fn encode(&self, prompt: &str) -> Result<Tensor, PipelineError> {
        self.encode_len(prompt, self.max_len)
    }

    /// [`encode`](Self::encode) padded or truncated to `len` tokens.
    pub fn encode_len(&self, prompt: &str, len: usize) -> Result<Tensor, PipelineError> {
        Ok(self.encode_all(&[prompt], len)?.swap_remove(0))
    }

    /// Several prompts, each (1, len, taps · hidden), through one load of an on-demand
    /// encoder.
    pub fn encode_all(&self, prompts: &[&str], len: usize) -> Result<Vec<Tensor>, PipelineError> {
        let loaded;
        let encoder = match &self.encoder {
            EncoderSlot::Resident(e) => e,
            EncoderSlot::OnDemand(load) => {
                loaded = load()?;
                &loaded
            }
        };
        let padding = Padding {
            len,
            pad_id: self.pad_id,
            left: self.pad_left,
            // Qwen's text goes through the tokenizer's own call, which adds nothing for
            // Qwen; Mistral's through `apply_chat_template`, which adds no special tokens.
            add_special_tokens: !self.mistral,
        };
        prompts
            .iter()
            .map(|p| {
                let text = if self.mistral {
                    mistral_chat_prompt(FLUX2_SYSTEM_MESSAGE, p)
                } else {
                    qwen_chat_prompt(p)
                };
                let (ids, mask) = encode_padded(&self.tokenizer, &text, padding)?;
                let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
                let mask = Tensor::new(mask.as_slice(), &self.device)?.unsqueeze(0)?;
                Ok(encoder.forward(&ids, &mask)?.to_dtype(self.dtype)?)
            })
            .collect()
    }
}

/// A reference image's normalised tokens and the grid they cover.
pub struct Flux2Reference {
    /// (1, rows·cols, 128).
    pub tokens: Tensor,
    pub rows: usize,
    pub cols: usize,
}

/// A `w`×`h` reference scaled down to about [`REFERENCE_MAX_AREA`] pixels when larger
/// (each side truncated, as diffusers' resize to a target area does), else as it is.
pub fn scaled_to_reference_area(w: usize, h: usize) -> (usize, usize) {
    if w * h <= REFERENCE_MAX_AREA {
        return (w, h);
    }
    let scale = (REFERENCE_MAX_AREA as f64 / (w * h) as f64).sqrt();
    ((w as f64 * scale) as usize, (h as f64 * scale) as usize)
}

/// The size a `w`×`h` reference has once prepared ([`prepare_reference`]): scaled to the
/// reference area, then cropped to multiples of `multiple`. FLUX.2's pipelines draw an edit
/// that names no size on its first reference's prepared size.
pub fn reference_dims(w: usize, h: usize, multiple: usize) -> (usize, usize) {
    let (w, h) = scaled_to_reference_area(w, h);
    (w / multiple * multiple, h / multiple * multiple)
}

/// A reference image as FLUX.2's pipelines take it: at least 64 pixels a side and at most
/// 8:1, scaled down (Lanczos) to about 1024² pixels when larger, then centre-cropped to
/// multiples of `multiple` (16). `k` numbers the image in errors.
pub fn prepare_reference(
    img: &image::RgbImage,
    multiple: usize,
    k: usize,
) -> Result<image::RgbImage, PipelineError> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 64 || h < 64 {
        return Err(PipelineError::invalid(
            "image",
            format!("reference image {k} is {w}x{h}; both sides must be at least 64 pixels"),
        ));
    }
    if w.max(h) > 8 * w.min(h) {
        return Err(PipelineError::invalid(
            "image",
            format!("reference image {k} is {w}x{h}; its aspect ratio must be at most 8:1"),
        ));
    }
    let mut img = img.clone();
    let (nw, nh) = scaled_to_reference_area(w, h);
    if (nw, nh) != (w, h) {
        img = image::imageops::resize(
            &img,
            nw as u32,
            nh as u32,
            image::imageops::FilterType::Lanczos3,
        );
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (cw, ch) = (w / multiple * multiple, h / multiple * multiple);
    let (left, top) = ((w - cw) / 2, (h - ch) / 2);
    Ok(image::imageops::crop_imm(&img, left as u32, top as u32, cw as u32, ch as u32).to_image())
}

/// Builds the transformer again (the tight memory plan's reload).
type LoadDit = Box<dyn Fn() -> Result<Dit, PipelineError> + Send + Sync>;

pub struct Flux2Model {
    /// The transformer; None only while prompts are encoded under the tight memory plan.
    dit: Option<Dit>,
    dit_config: DitConfig,
    /// The tight memory plan: the transformer is dropped while the text encoder runs and
    /// built again after it (None: both stay loaded).
    reload_dit: Option<LoadDit>,
    pub vae: Flux2Vae,
    pub text: Flux2Text,
    pub variant: Flux2Variant,
    /// A fixed time shift from the snapshot's scheduler config (`use_dynamic_shifting`
    /// false); None for the released snapshots' dynamic shifting, which the pipelines drive
    /// with their empirical μ.
    pub fixed_shift: Option<f64>,
    /// The autoencoder's type.
    pub parts_dtype: DType,
}

/// (B, C, h, w) → (B, h·w, C).
pub fn pack(z: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = z.dims4()?;
    z.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// (B, h·w, C) → (B, C, h, w).
fn unpack(x: &Tensor, h: usize, w: usize) -> candle_core::Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

impl Flux2Model {
    /// A FLUX.2 diffusers snapshot directory (`transformer/`, `vae/`, `text_encoder/`,
    /// `tokenizer/`, `model_index.json`; [klein] or [dev]), the DiT in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Flux2Model, PipelineError> {
        Flux2Model::load_with(Some(dir), None, Flux2Files::default(), dtype, device)
    }

    /// [`load`](Self::load) reading the text encoder's states after layers `taps` (diffusers'
    /// `text_encoder_out_layers`) instead of the variant's (klein 9, 18, 27; dev 10, 20, 30).
    pub fn load_with_taps(
        dir: &Path,
        taps: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Flux2Model, PipelineError> {
        Flux2Model::load_with(Some(dir), Some(taps), Flux2Files::default(), dtype, device)
    }

    /// [`load_with_taps`](Self::load_with_taps), with the parts `files` names in place of
    /// the snapshot's (GGUF files, as users download them); `taps` None for the variant's.
    pub fn load_with(
        dir: Option<&Path>,
        taps: Option<&[usize]>,
        files: Flux2Files<'_>,
        dtype: DType,
        device: &Device,
    ) -> Result<Flux2Model, PipelineError> {
        // Read before any part is loaded: the plan below weighs all of them against it.
        let available = available_memory();
        let text_encoder = files.text_encoder;
        // A part's files: the one given, else the snapshot folder's, or, with no folder, a
        // refusal naming the flag that gives it as a file.
        let part = |given: Option<&Path>,
                    name: &str,
                    flag: &str|
         -> Result<Vec<std::path::PathBuf>, PipelineError> {
            if let Some(f) = given {
                return Ok(vec![f.to_path_buf()]);
            }
            let Some(dir) = dir else {
                return Err(weights_err(format!(
                    "no snapshot folder to take the {name} from: give it with {flag} FILE"
                )));
            };
            component_files(&dir.join(name))?.ok_or_else(|| {
                weights_err(format!(
                    "{}: no {name}/ folder with safetensors weights (a FLUX.2 snapshot has \
                     transformer/, vae/, text_encoder/ and tokenizer/)",
                    dir.display()
                ))
            })
        };
        let variant = match dir {
            Some(dir) => snapshot_variant(dir)?,
            None => files.variant.unwrap_or(Flux2Variant::Klein),
        };
        let taps = taps.unwrap_or(variant.taps());

        // The transformer: the snapshot's, or a GGUF file given in its place.
        let source = match files.transformer.filter(|p| is_gguf(p)) {
            Some(g) => DitSource::Gguf(g.to_path_buf()),
            None => DitSource::Safetensors(part(files.transformer, "transformer", "--weights")?),
        };
        let (dit, dcfg, dit_bytes, bf16_linear) = build_dit(&source, dtype, device)?;

        variant.check_part(Part::Transformer, dcfg.guidance_embed)?;

        // The autoencoder (f32: it is small next to the rest).
        let parts_dtype = DType::F32;
        let vf = part(files.vae, "vae", "--vae")?;
        let vcfg = match component_config(&vf)? {
            Some(v) => flux2_vae_config(&v)?,
            // A file without its config: the sizes from its tensors' shapes.
            None => sprout_models::flux::vae2::Flux2VaeConfig::from_tensors(&headers(&vf)?)
                .map_err(|e| weights_err(format!("{}: {e}", vf[0].display())))?,
        };
        if vcfg.token_channels() != dcfg.in_channels() {
            return Err(weights_err(format!(
                "the autoencoder makes {} channels per token, the transformer takes {}",
                vcfg.token_channels(),
                dcfg.in_channels()
            )));
        }
        let vst = mmap(&vf)?;
        let vnames: Vec<String> = vst.tensors().into_iter().map(|(n, _)| n).collect();
        let vb = if vnames.iter().any(|n| n.contains("down_blocks.")) {
            VarBuilder::from_backend(
                Box::new(Renamed::vae(vst, vcfg.ch_mult.len())),
                parts_dtype,
                device.clone(),
            )
        } else {
            VarBuilder::from_backend(Box::new(vst), parts_dtype, device.clone())
        };
        let vae = Flux2Vae::new(&vcfg, vb)
            .map_err(|e| weights_err(format!("{}: {e}", vf[0].display())))?;

        // The text encoder: the snapshot's, or a GGUF file given in its place.
        type LoadEncoder = Box<dyn Fn() -> Result<Qwen3Encoder, PipelineError> + Send + Sync>;
        let text_gguf = text_encoder.filter(|p| is_gguf(p));
        let (qcfg, text_bytes, load_encoder): (Qwen3Config, u64, LoadEncoder) = match text_gguf {
            Some(g) => {
                let cfg = sprout_models::qwen3::gguf_config(g)?;
                // Its blocks as stored, the embedding table dequantized to f32.
                let stored = std::fs::metadata(g).map(|m| m.len()).unwrap_or(0);
                let bytes = stored + 4 * (cfg.vocab_size * cfg.hidden_size) as u64;
                let (g, taps, device) = (g.to_path_buf(), taps.to_vec(), device.clone());
                let load = move || -> Result<Qwen3Encoder, PipelineError> {
                    Ok(sprout_models::qwen3::load_gguf(
                        &g,
                        &taps,
                        DType::F32,
                        &device,
                    )?)
                };
                (cfg, bytes, Box::new(load))
            }
            None => {
                let ef = part(text_encoder, "text_encoder", "--text-encoder")?;
                let info = headers(&ef)?;
                let cfg = match component_config(&ef)? {
                    Some(ecfg) => Qwen3Config::from_json(&ecfg)?,
                    // A file without its config: the sizes from its tensors' shapes.
                    None => Qwen3Config::from_tensors(&info)
                        .map_err(|e| weights_err(format!("{}: {e}", ef[0].display())))?,
                };
                // The body's prefix: `model.` (a causal LM), none (a bare body), or a
                // multimodal Mistral3's `language_model.model.` / `model.language_model.`.
                let prefix =
                    body_prefix(info.iter().map(|t| t.name.as_str())).ok_or_else(|| {
                        weights_err(format!(
                            "{}: no embed_tokens.weight: not a Qwen3 or Mistral text encoder",
                            ef[0].display()
                        ))
                    })?;
                // What the encoder loads: its body up to the last tapped layer (not a vision
                // tower, the LM head or the layers after, a third of Mistral3's file).
                let n = encoder_elements(&info, prefix, taps, cfg.num_hidden_layers);
                let bytes = n * if bf16_linear {
                    2
                } else {
                    dtype.size_in_bytes() as u64
                };
                let (qcfg, taps, device) = (cfg.clone(), taps.to_vec(), device.clone());
                let load = move || -> Result<Qwen3Encoder, PipelineError> {
                    let st = mmap(&ef)?;
                    let backend: Box<dyn SimpleBackend> = if prefix == "model." {
                        Box::new(st)
                    } else {
                        Box::new(Renamed::replace_prefix(st, "model.", prefix.to_string()))
                    };
                    let vb = VarBuilder::from_backend(backend, dtype, device.clone());
                    let w = if bf16_linear {
                        Weights::Bf16Linear(vb)
                    } else {
                        Weights::Dense(vb)
                    };
                    Qwen3Encoder::new(&qcfg, Qwen3Names::Transformers, &taps, &w)
                        .map_err(|e| weights_err(format!("{}: {e}", ef[0].display())))
                };
                (cfg, bytes, Box::new(load))
            }
        };
        variant.check_part(Part::TextEncoder, !qcfg.qk_norm)?;
        let width = dcfg.context_in_dim;
        if width != taps.len() * qcfg.hidden_size {
            return Err(weights_err(format!(
                "the text encoder is {} wide; the transformer takes {width} = {} tapped states \
                 of {} (a text encoder of another size?)",
                qcfg.hidden_size,
                taps.len(),
                width / taps.len().max(1)
            )));
        }
        if let Some(t) = taps.iter().find(|&&t| t > qcfg.num_hidden_layers) {
            return Err(weights_err(format!(
                "the text encoder has {} layers; FLUX.2 reads the state after layer {t}",
                qcfg.num_hidden_layers
            )));
        }
        // The memory plan: every part resident when they fit; else each request's prompts
        // are encoded with the transformer dropped (the text encoder loaded, run and dropped,
        // then the transformer built again), so only the larger of the two is ever held;
        // else refused with the estimate. Linear weights stay in bf16 when `bf16_linear`,
        // the rest f32.
        let rest = safetensors_elements(&vf).map_err(weights_err)? * 4
            + if bf16_linear { ACTIVATIONS } else { 0 };
        let (encoder, reload_dit) = if !files.tight_memory
            && text_encoder_resident(dit_bytes, text_bytes, rest, available)?
        {
            (EncoderSlot::Resident(load_encoder()?), None)
        } else {
            let device = device.clone();
            let reload: LoadDit = Box::new(move || Ok(build_dit(&source, dtype, &device)?.0));
            (EncoderSlot::OnDemand(load_encoder), Some(reload))
        };
        let tok_dir = match (files.tokenizer, dir) {
            (Some(t), _) if t.join("tokenizer").join("tokenizer.json").is_file() => {
                t.join("tokenizer")
            }
            (Some(t), _) => t.to_path_buf(),
            (None, Some(dir)) => dir.join("tokenizer"),
            (None, None) => {
                return Err(weights_err(
                    "no snapshot folder to take the tokenizer from: give its folder (with \
                     tokenizer.json) with --tokenizers DIR"
                        .to_string(),
                ))
            }
        };
        let tokenizer = flux2_tokenizer(&tok_dir)?;
        let mistral = variant == Flux2Variant::Dev;
        // A tokenizer folder may lack its config (single files); one that is there must read.
        let optional_json = |name: &str| -> Result<serde_json::Value, PipelineError> {
            let p = tok_dir.join(name);
            if p.is_file() {
                read_json(&p)
            } else {
                Ok(serde_json::Value::Null)
            }
        };
        let tok_cfg = optional_json("tokenizer_config.json")?;
        let pad_left = pads_left(&tok_cfg, &optional_json("tokenizer.json")?, mistral)?;
        let pad = tok_cfg["pad_token"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| if mistral { "<pad>" } else { "<|endoftext|>" }.into());
        let pad_id = tokenizer
            .token_to_id(&pad)
            .ok_or_else(|| weights_err(format!("the tokenizer has no pad token {pad}")))?;
        Ok(Flux2Model {
            dit: Some(dit),
            dit_config: dcfg,
            reload_dit,
            vae,
            text: Flux2Text {
                encoder,
                tokenizer,
                pad_id,
                pad_left,
                mistral,
                max_len: MAX_PROMPT_TOKENS,
                dtype,
                device: device.clone(),
            },
            variant,
            fixed_shift: snapshot_fixed_shift(dir)?,
            parts_dtype,
        })
    }

    pub fn dtype(&self) -> DType {
        self.text.dtype
    }

    /// The transformer's config.
    pub fn dit_config(&self) -> &DitConfig {
        &self.dit_config
    }

    /// The transformer (loaded at every point but inside [`encode_prompts`](Self::encode_prompts)).
    pub fn dit(&self) -> Result<&Dit, PipelineError> {
        self.dit
            .as_ref()
            .ok_or_else(|| PipelineError::Request("the transformer is not loaded".into()))
    }

    /// Whether memory is tight: prompts are encoded with the transformer dropped.
    pub fn tight_memory(&self) -> bool {
        self.reload_dit.is_some()
    }

    /// Several prompts' conditioning, each (1, len, taps · hidden) ([`Flux2Text::encode_all`]),
    /// under the memory plan: when it is tight the transformer is dropped first and built
    /// again after, so the text encoder never sits beside it.
    pub fn encode_prompts(
        &mut self,
        prompts: &[&str],
        len: usize,
    ) -> Result<Vec<Tensor>, PipelineError> {
        let Some(reload) = &self.reload_dit else {
            return self.text.encode_all(prompts, len);
        };
        self.dit = None;
        let encoded = self.text.encode_all(prompts, len);
        self.dit = Some(reload()?);
        encoded
    }

    pub fn device(&self) -> &Device {
        &self.text.device
    }

    /// Canvas sides are multiples of this (16: 8 per latent cell, 2×2 cells per token).
    pub fn size_multiple(&self) -> usize {
        self.vae.cfg.downscale()
    }

    /// Seeded initial latents for a `width`×`height` image, as tokens (1, L, 128).
    pub fn initial_latents(
        &self,
        seed: u64,
        width: usize,
        height: usize,
    ) -> Result<Tensor, PipelineError> {
        let f = self.size_multiple();
        let c = self.vae.cfg.token_channels();
        let z = noise(seed, &[1, c, height / f, width / f], self.device())?;
        Ok(pack(&z)?.to_dtype(self.dtype())?)
    }

    /// An image (1, 3, H, W) in [-1, 1], sides multiples of [`size_multiple`](Self::size_multiple),
    /// as a reference: encoded (posterior mean), normalised, as tokens.
    pub fn encode_reference(&self, image: &Tensor) -> Result<Flux2Reference, PipelineError> {
        let z = self
            .vae
            .encode(&image.to_device(self.device())?.to_dtype(self.parts_dtype)?)?;
        let (_, _, rows, cols) = z.dims4()?;
        Ok(Flux2Reference {
            tokens: pack(&z)?.to_dtype(self.dtype())?,
            rows,
            cols,
        })
    }

    /// Denoise tokens (1, L, 128) of a `width`×`height` image in `steps` Euler steps and
    /// decode them to an image (1, 3, H, W) in [-1, 1]. `negative` (the klein base models'
    /// guidance against it at `guidance`) is ignored by the distilled klein models, as
    /// diffusers does, and by [dev], whose transformer takes `guidance` itself.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_with(
        &self,
        text: &Tensor,
        negative: Option<&Tensor>,
        latents: &Tensor,
        refs: &[Flux2Reference],
        (width, height): (usize, usize),
        steps: usize,
        guidance: f64,
        hooks: Hooks<'_>,
    ) -> Result<Tensor, PipelineError> {
        let dev = self.device().clone();
        let f = self.size_multiple();
        let (h, w) = (height / f, width / f);
        let c = self.vae.cfg.token_channels();
        if latents.dims() != [1, h * w, c] {
            return Err(PipelineError::Request(format!(
                "latents have shape {:?}; a {width}x{height} image needs (1, {}, {c}) tokens",
                latents.dims(),
                h * w
            )));
        }
        let img_ids = grid_ids_4d(0, h, w, &dev)?;
        let txt_ids = text_ids_4d(text.dim(1)?, &dev)?;
        let (ref_tokens, ref_ids) = if refs.is_empty() {
            (None, None)
        } else {
            let tokens: Vec<&Tensor> = refs.iter().map(|r| &r.tokens).collect();
            let ids = refs
                .iter()
                .enumerate()
                .map(|(k, r)| grid_ids_4d(10 * (k + 1), r.rows, r.cols, &dev))
                .collect::<candle_core::Result<Vec<_>>>()?;
            (
                Some(Tensor::cat(&tokens, 1)?.to_dtype(self.dtype())?),
                Some(Tensor::cat(&ids, 1)?),
            )
        };
        // [dev] takes the scale as an input; the [klein] base models guide against a negative.
        let embedded = self.variant == Flux2Variant::Dev;
        let guided = self.variant == Flux2Variant::KleinBase && guidance > 1.0;
        let negative = match (guided, negative) {
            (true, Some(n)) => Some(n),
            (true, None) => {
                return Err(PipelineError::Request(
                    "guidance above 1 needs the negative prompt's encoding".into(),
                ))
            }
            (false, _) => None,
        };
        // A fixed shift s is the time shift at μ = ln s (s·t / (1 + (s − 1)·t)).
        let mu = match self.fixed_shift {
            Some(s) => s.ln(),
            None => empirical_mu(h * w, steps),
        };
        let times = flux2_schedule(steps, mu);
        let y = Tensor::zeros((1, 0), self.dtype(), &dev)?;
        let scale = Tensor::new(&[guidance as f32], &dev)?.to_dtype(self.dtype())?;
        let cancel = hooks.cancel;
        let velocity = |x: &Tensor, t: f64| -> Result<Tensor, PipelineError> {
            let t = Tensor::new(&[t as f32], &dev)?;
            let xin = x.to_dtype(self.dtype())?;
            let forward = |text: &Tensor| -> Result<Tensor, PipelineError> {
                let v = self.dit()?.forward(&DitInput {
                    references: ref_tokens
                        .as_ref()
                        .zip(ref_ids.as_ref())
                        .map(|(tokens, ids)| References { tokens, ids }),
                    guidance: embedded.then_some(&scale),
                    ..DitInput::new(&xin, &img_ids, text, &txt_ids, &t, &y)
                })?;
                Ok(v.to_dtype(DType::F32)?)
            };
            let v = forward(text)?;
            Ok(match negative {
                Some(n) => {
                    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                        return Err(PipelineError::Cancelled);
                    }
                    let vn = forward(n)?;
                    (&vn + ((v - &vn)? * guidance)?)?
                }
                None => v,
            })
        };
        let x = denoise(
            latents.to_dtype(DType::F32)?,
            &times,
            Sampler::Euler,
            None,
            hooks,
            velocity,
            |x0| to_images(&self.decode(x0, h, w)?),
        )?;
        self.decode(&x, h, w)
    }

    /// Tokens (1, h·w, 128) to an image (1, 3, 16h, 16w) in [-1, 1] (f32); tiled above 64²
    /// tokens.
    pub fn decode(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor, PipelineError> {
        let z = unpack(x, h, w)?.to_dtype(self.parts_dtype)?;
        let img = if h * w > 64 * 64 {
            self.vae.decode_tiled(&z, 32, 4)?
        } else {
            self.vae.decode(&z)?
        };
        Ok(img.to_dtype(DType::F32)?.clamp(-1f32, 1f32)?)
    }
}

/// Where a FLUX.2 transformer's weights are.
#[derive(Debug, Clone)]
enum DitSource {
    /// A GGUF file (block-quantized or f16).
    Gguf(std::path::PathBuf),
    /// Safetensors files (a snapshot's `transformer/`, or one file).
    Safetensors(Vec<std::path::PathBuf>),
}

/// The transformer from `source`: the DiT, its config, the bytes it holds once loaded, and
/// whether its linear layers keep bf16 weights (a full-size model on the CPU, whose text
/// encoder then does the same).
fn build_dit(
    source: &DitSource,
    dtype: DType,
    device: &Device,
) -> Result<(Dit, DitConfig, u64, bool), PipelineError> {
    match source {
        DitSource::Gguf(g) => {
            let infos = gguf_header(g).map_err(weights_err)?;
            let dcfg = flux2_gguf_config(g, &infos)?;
            let stored: u64 = infos.iter().map(|t| t.bytes).sum();
            let in_file = |e: &dyn std::fmt::Display| weights_err(format!("{}: {e}", g.display()));
            let vb = QVarBuilder::from_gguf(g, device).map_err(|e| in_file(&e))?;
            // Block-quantized weights (under 16 bits a value) run their many-row products
            // in bf16 where the CPU has bf16 products, and so does attention, as FLUX.1's
            // GGUF models; f16 files keep f32 attention.
            let values: u64 = infos
                .iter()
                .map(|t| t.shape.iter().product::<usize>() as u64)
                .sum();
            let blocks = stored < 2 * values;
            let dit = Dit::new(&dcfg, Weights::Quantized { vb, dtype })
                .map(|d| {
                    if device.is_cpu() && blocks {
                        d.with_attention(sprout_models::flash::Precision::Bf16)
                    } else {
                        d
                    }
                })
                .map_err(|e| in_file(&e))?;
            let bytes = gguf_loaded_bytes(&infos, dtype.size_in_bytes());
            let full_size = device.is_cpu() && dtype == DType::F32 && stored >= 1 << 30;
            Ok((dit, dcfg, bytes, full_size))
        }
        DitSource::Safetensors(tf) => {
            let (dcfg, backend) = flux2_transformer(tf)?;
            // Small models (the test snapshots) compute in f32 throughout; full-size ones
            // on the CPU keep their bf16 weights for the linear layers (f32 around them,
            // as FLUX.1's).
            let stored: u64 = tf
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
                .sum();
            let bf16_linear = device.is_cpu() && dtype == DType::F32 && stored >= 1 << 30;
            let vb = VarBuilder::from_backend(backend, dtype, device.clone());
            let dit = if bf16_linear {
                Dit::new(&dcfg, Weights::Bf16Linear(vb))
                    .map(|d| d.with_attention(sprout_models::flash::Precision::Bf16))
            } else {
                Dit::new(&dcfg, vb)
            }
            .map_err(|e| weights_err(format!("{}: {e}", tf[0].display())))?;
            let n = safetensors_elements(tf).map_err(weights_err)?;
            let bytes = n * if bf16_linear {
                2
            } else {
                dtype.size_in_bytes() as u64
            };
            Ok((dit, dcfg, bytes, bf16_linear))
        }
    }
}

/// Parts of a FLUX.2 model given apart from its snapshot folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flux2Files<'a> {
    /// The transformer as one file instead of `transformer/`: GGUF (written by `sprout
    /// quantize --model flux2-klein|flux2-dev`, or a community conversion with Black Forest
    /// Labs' tensor names) or safetensors (Black Forest Labs' release file, with or without
    /// ComfyUI's `model.diffusion_model.` prefix, or diffusers' names with its config.json).
    pub transformer: Option<&'a Path>,
    /// The text encoder instead of `text_encoder/`: a llama.cpp GGUF file of Qwen3 or
    /// Mistral (`llama`), or a safetensors file of transformers' names (its config.json
    /// beside it, else read from its shapes).
    pub text_encoder: Option<&'a Path>,
    /// The autoencoder's safetensors file instead of `vae/` (Black Forest Labs' or
    /// diffusers' names; its config.json beside it, else read from its shapes).
    pub vae: Option<&'a Path>,
    /// A folder with the text encoder's `tokenizer.json` (or its `tokenizer/`) instead of
    /// the snapshot's `tokenizer/`.
    pub tokenizer: Option<&'a Path>,
    /// Which FLUX.2 the files are, where no `model_index.json` says (single files: `--model
    /// flux2-klein`, `flux2-klein-base` or `flux2-dev`).
    pub variant: Option<Flux2Variant>,
    /// Take the tight memory plan (prompts encoded with the transformer dropped) even where
    /// every part fits.
    pub tight_memory: bool,
}

/// The headers of safetensors `files`, one list.
fn headers(
    files: &[std::path::PathBuf],
) -> Result<Vec<sprout_models::flux::inspect::TensorInfo>, PipelineError> {
    let mut out = Vec::new();
    for f in files {
        out.extend(sprout_models::flux::inspect::safetensors_header(f).map_err(weights_err)?);
    }
    Ok(out)
}

/// Which FLUX.2 a snapshot folder holds: its `model_index.json`'s pipeline class
/// (`Flux2Pipeline`: [dev]; `Flux2KleinPipeline`: [klein], step-distilled when
/// `is_distilled`); a folder without one, or of another pipeline, is refused.
pub fn snapshot_variant(dir: &Path) -> Result<Flux2Variant, PipelineError> {
    let index = dir.join("model_index.json");
    if !index.is_file() {
        return Err(weights_err(format!(
            "{}: no model_index.json (not a diffusers snapshot)",
            dir.display()
        )));
    }
    let v = read_json(&index)?;
    match v["_class_name"].as_str() {
        Some("Flux2Pipeline") => Ok(Flux2Variant::Dev),
        Some("Flux2KleinPipeline") | None => Ok(if v["is_distilled"].as_bool().unwrap_or(false) {
            Flux2Variant::Klein
        } else {
            Flux2Variant::KleinBase
        }),
        Some(c) => Err(weights_err(format!(
            "{}: _class_name = {c}; this loader reads FLUX.2 snapshots (Flux2KleinPipeline, \
             Flux2Pipeline)",
            index.display()
        ))),
    }
}

/// The values a text encoder built for `taps` reads from a file listing `infos`: under
/// `prefix`, the embedding, the layers before the last tapped one, and the final norm when
/// the last layer (of `layers`) is tapped.
fn encoder_elements(
    infos: &[sprout_models::flux::inspect::TensorInfo],
    prefix: &str,
    taps: &[usize],
    layers: usize,
) -> u64 {
    let last = taps.iter().copied().max().unwrap_or(0);
    infos
        .iter()
        .filter(|t| {
            let Some(name) = t.name.strip_prefix(prefix) else {
                return false;
            };
            match name.strip_prefix("layers.") {
                Some(rest) => rest
                    .split('.')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i < last),
                None => name == "embed_tokens.weight" || (name == "norm.weight" && last == layers),
            }
        })
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .sum()
}

/// A snapshot's `scheduler/scheduler_config.json` as FLUX.2's pipelines use it: with dynamic
/// shifting (the released snapshots) the pipeline's empirical μ, so None (the file's
/// `base_shift` / `max_shift` go unused, as in diffusers, which passes μ itself); without,
/// its fixed `shift`. Fields that would sample on other times are refused by name
/// ([`FluxShift::from_scheduler_config`]).
fn snapshot_fixed_shift(dir: Option<&Path>) -> Result<Option<f64>, PipelineError> {
    let Some(p) = dir.map(|d| d.join("scheduler").join("scheduler_config.json")) else {
        return Ok(None);
    };
    if !p.is_file() {
        return Ok(None);
    }
    let shift = FluxShift::from_scheduler_config(&read_json(&p)?, &p.display().to_string())
        .map_err(PipelineError::Weights)?;
    Ok(match shift {
        FluxShift::Dynamic(_) => None,
        FluxShift::Fixed(s) => Some(s),
    })
}

/// ComfyUI's prefix on a transformer saved inside a whole checkpoint.
const COMFY_PREFIX: &str = "model.diffusion_model.";

/// A FLUX.2 transformer's safetensors `files` (a snapshot's `transformer/` or one file;
/// diffusers' or Black Forest Labs' names, the latter possibly under ComfyUI's
/// `model.diffusion_model.`): its DiT config from the `config.json` beside them (read field
/// by field), else, for Black Forest Labs' names, from the tensors' shapes
/// ([`flux2_config_from_tensors`]); and its tensors under Black Forest Labs' names, which
/// are the DiT's module paths.
pub fn flux2_transformer(
    files: &[std::path::PathBuf],
) -> Result<(DitConfig, Box<dyn SimpleBackend>), PipelineError> {
    let first = files
        .first()
        .ok_or_else(|| weights_err("no transformer weight files".to_string()))?;
    let infos = headers(files)?;
    let prefixed = infos.iter().any(|t| t.name.starts_with(COMFY_PREFIX));
    let infos: Vec<_> = infos
        .into_iter()
        .filter_map(|mut t| {
            if prefixed {
                t.name = t.name.strip_prefix(COMFY_PREFIX)?.to_string();
            }
            Some(t)
        })
        .collect();
    let diffusers = is_diffusers_transformer(infos.iter().map(|t| t.name.as_str()));
    let cfg = match component_config(files)? {
        Some(json) => {
            let folder = first
                .parent()
                .unwrap_or(Path::new("."))
                .display()
                .to_string();
            let tcfg: DiffusersFlux2Config = serde_json::from_value(json)
                .map_err(|e| weights_err(format!("{folder}/config.json: {e}")))?;
            tcfg.to_dit()?
        }
        None if diffusers => {
            return Err(weights_err(format!(
                "{}: diffusers' tensor names and no config.json beside the file (a snapshot's \
                 transformer/ has one)",
                first.display()
            )))
        }
        None => flux2_config_from_tensors(&infos)
            .map_err(|e| weights_err(format!("{}: {e}", first.display())))?,
    };
    let st = mmap(files)?;
    let backend: Box<dyn SimpleBackend> = match (prefixed, diffusers) {
        (false, false) => Box::new(st),
        (false, true) => Box::new(Renamed::flux2_transformer(st)),
        (true, false) => Box::new(Renamed::with_prefix(st, COMFY_PREFIX.to_string())),
        (true, true) => Box::new(Renamed::flux2_transformer(Renamed::with_prefix(
            st,
            COMFY_PREFIX.to_string(),
        ))),
    };
    Ok((cfg, backend))
}

/// The DiT config of a FLUX.2 transformer GGUF file whose header lists `infos`: the one
/// Sprout stores in its metadata when it wrote the file, else read from the tensors' shapes
/// ([`flux2_config_from_tensors`]). A FLUX.1 file is refused by name.
pub fn flux2_gguf_config(
    path: &Path,
    infos: &[sprout_models::flux::inspect::TensorInfo],
) -> Result<DitConfig, PipelineError> {
    let bad = |e: String| weights_err(format!("{}: {e}", path.display()));
    let cfg = match gguf_metadata_string(path, GGUF_CONFIG_KEY)? {
        Some(json) => serde_json::from_str::<DitConfig>(&json)
            .map_err(|e| bad(format!("metadata {GGUF_CONFIG_KEY}: {e}")))?,
        None => flux2_config_from_tensors(infos).map_err(bad)?,
    };
    if !cfg.shared_modulation || cfg.vec_in_dim != 0 {
        return Err(bad(
            "a FLUX.1 transformer (its config has no shared modulation); it runs with --model flux-schnell|flux-dev|…".into(),
        ));
    }
    Ok(cfg)
}

/// A FLUX.2 transformer's DiT config from its tensors' names and shapes (Black Forest Labs'
/// names, as community GGUF conversions have them): the width from `img_in`, the head width
/// from the query norms, the text width from `txt_in`, the MLP ratio from the first MLP, the
/// block counts, guidance from `guidance_in`. Rotary axes are FLUX.2's four of 32, so a head
/// width other than 128 is refused (such a file needs its config: `sprout quantize` stores
/// it); the load then checks every tensor's shape against the config.
pub fn flux2_config_from_tensors(
    infos: &[sprout_models::flux::inspect::TensorInfo],
) -> Result<DitConfig, String> {
    let numel = |name: &str| {
        infos
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.iter().product::<usize>())
            .ok_or_else(|| format!("no tensor {name}"))
    };
    let blocks = |prefix: &str| {
        infos
            .iter()
            .filter_map(|t| {
                t.name
                    .strip_prefix(prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |i| i + 1)
    };
    if numel("double_stream_modulation_img.lin.weight").is_err() {
        return Err("not a FLUX.2 transformer (no double_stream_modulation_img.lin.weight; a FLUX.1 file runs with --model flux-schnell|flux-dev|…)".into());
    }
    let base = DitConfig::flux2_dev();
    let head_dim: usize = base.axes_dim.iter().sum();
    let tokens_in = base.latent_channels * base.patch_size * base.patch_size;
    let hidden = numel("img_in.weight")? / tokens_in;
    let head = numel("double_blocks.0.img_attn.norm.query_norm.scale")?;
    if head != head_dim || hidden == 0 || !hidden.is_multiple_of(head) {
        return Err(format!(
            "heads {head} wide in a {hidden}-wide transformer; FLUX.2's rotary axes take {head_dim} (a file of another shape needs its config, which `sprout quantize --model flux2-klein|flux2-dev` stores)"
        ));
    }
    let mlp = numel("double_blocks.0.img_mlp.0.weight")? as f64 / (2.0 * (hidden * hidden) as f64);
    Ok(DitConfig {
        hidden_size: hidden,
        num_heads: hidden / head,
        context_in_dim: numel("txt_in.weight")? / hidden,
        mlp_ratio: mlp,
        depth: blocks("double_blocks."),
        depth_single_blocks: blocks("single_blocks."),
        guidance_embed: infos.iter().any(|t| t.name.starts_with("guidance_in.")),
        ..base
    })
}

/// The memory plan for `dit`, `text` (encoder) and `rest` bytes: whether the text encoder
/// stays loaded beside the transformer (true) or is loaded for each request and dropped
/// before the transformer runs (false); refused, with the estimate, when even the larger of
/// the two does not fit beside the rest.
pub fn text_encoder_resident(
    dit: u64,
    text: u64,
    rest: u64,
    available: Option<u64>,
) -> Result<bool, PipelineError> {
    if check_memory("FLUX.2", dit + text + rest, available).is_ok() {
        return Ok(true);
    }
    check_memory("FLUX.2", dit.max(text) + rest, available)?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names and shapes of a model built from `cfg`, as a file of it lists them.
    fn tensors_of(cfg: &DitConfig) -> Vec<sprout_models::flux::inspect::TensorInfo> {
        sprout_models::recorder::record(|vb| {
            Dit::new(cfg, vb)
                .map(|_| ())
                .map_err(candle_core::Error::wrap)
        })
        .unwrap()
        .into_iter()
        .map(|(name, shape)| sprout_models::flux::inspect::TensorInfo {
            name,
            shape,
            bytes: 0,
        })
        .collect()
    }

    #[test]
    fn a_flux2_config_is_read_back_from_the_shapes_of_its_tensors() {
        for cfg in [
            DitConfig::flux2_klein_4b(),
            DitConfig::flux2_klein_9b(),
            DitConfig::flux2_dev(),
        ] {
            assert_eq!(flux2_config_from_tensors(&tensors_of(&cfg)).unwrap(), cfg);
        }
        let e = flux2_config_from_tensors(&tensors_of(&DitConfig::flux_dev())).unwrap_err();
        assert!(e.contains("not a FLUX.2 transformer"), "{e}");
        // Heads of another width than the rotary axes take: refused, naming the width.
        let mut odd = tensors_of(&DitConfig::flux2_klein_4b());
        for t in odd
            .iter_mut()
            .filter(|t| t.name.ends_with("query_norm.scale"))
        {
            t.shape = vec![64];
        }
        let e = flux2_config_from_tensors(&odd).unwrap_err();
        assert!(e.contains("heads 64 wide"), "{e}");
    }

    #[test]
    fn the_text_encoder_is_weighed_by_the_tensors_it_loads() {
        let t = |name: &str, n: usize| sprout_models::flux::inspect::TensorInfo {
            name: name.into(),
            shape: vec![n],
            bytes: 0,
        };
        let infos = [
            t("language_model.model.embed_tokens.weight", 100),
            t("language_model.model.layers.0.mlp.up_proj.weight", 10),
            t("language_model.model.layers.1.mlp.up_proj.weight", 10),
            t("language_model.model.layers.2.mlp.up_proj.weight", 10),
            t("language_model.model.norm.weight", 1),
            t("language_model.lm_head.weight", 100),
            t(
                "vision_tower.transformer.layers.0.attention.q_proj.weight",
                50,
            ),
        ];
        let p = "language_model.model.";
        assert_eq!(encoder_elements(&infos, p, &[1, 2], 3), 120);
        assert_eq!(encoder_elements(&infos, p, &[3], 3), 131);
    }

    #[test]
    fn the_text_encoder_is_dropped_when_both_do_not_fit_and_refused_when_neither_does() {
        const GB: u64 = 1_000_000_000;
        // klein 4B, bf16 linear layers: 7.8 GB + 8.0 GB + 3 GB of the rest.
        assert!(text_encoder_resident(7_800_000_000, 8 * GB, 3 * GB, Some(24 * GB)).unwrap());
        assert!(!text_encoder_resident(7_800_000_000, 8 * GB, 3 * GB, Some(16 * GB)).unwrap());
        assert!(text_encoder_resident(7_800_000_000, 8 * GB, 3 * GB, None).unwrap());
        // klein 9B on 16 GB: the transformer alone (18 GB) does not fit.
        let e = text_encoder_resident(18 * GB, 16 * GB, 3 * GB, Some(16 * GB)).unwrap_err();
        assert!(e.to_string().contains("21.0 GB"), "{e}");
    }

    #[test]
    fn the_schedule_is_diffusers_linspace_shifted() {
        // No shift: linspace(1, 1/4, 4) then 0.
        let t = flux2_schedule(4, 0.0);
        let want = [1.0, 0.75, 0.5, 0.25, 0.0];
        for (a, b) in t.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{t:?}");
        }
        assert_eq!(flux2_schedule(1, 0.0), vec![1.0, 0.0]);
        // mu from the closed form at 4096 tokens (1024²) and 4 steps: between the fits.
        let mu = empirical_mu(4096, 4);
        let m200 = 0.00016927 * 4096.0 + 0.45666666;
        let m10 = 8.73809524e-05 * 4096.0 + 1.89833333;
        let a = (m200 - m10) / 190.0;
        assert!((mu - (m200 - 196.0 * a)).abs() < 1e-9);
        // A fixed shift s as μ = ln s is s·t / (1 + (s − 1)·t) on the same linspace.
        let s = 3.0f64;
        for (a, t) in flux2_schedule(4, s.ln()).iter().zip(want) {
            assert!((a - s * t / (1.0 + (s - 1.0) * t)).abs() < 1e-12);
        }
        // Above 4300 tokens only the 200-step fit.
        assert!((empirical_mu(5000, 4) - (0.00016927 * 5000.0 + 0.45666666)).abs() < 1e-12);
    }
}
