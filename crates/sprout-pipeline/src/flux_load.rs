//! Loading a FLUX.1 model from the user's files (see `sprout_models::flux::files`): headers
//! are inspected first (variant, naming, size), memory is checked against what the machine
//! has, then every component is memory-mapped and built with its shapes checked.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextTransformer;
use candle_transformers::models::t5::{Config as T5Config, T5EncoderModel};
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::flash::Precision;
use sprout_models::flux::components::Components;
use sprout_models::flux::configs::{clip_config, clip_l_json, t5_xxl_json, vae_config};
use sprout_models::flux::convert::{DiffusersTransformerConfig, Renamed};
use sprout_models::flux::files::{locate, FluxFiles, Layout, Variant};
use sprout_models::flux::inspect::{
    available_memory, check_memory, gguf_metadata_string, inspect_transformer, resolve_variant,
    safetensors_elements, Inspection, GGUF_CONFIG_KEY,
};
use sprout_models::flux::lora::{Lora, LoraUsage, Target, WithLora};
use sprout_models::flux::tokenize::{clip_tokenizer, t5_tokenizer};
use sprout_models::flux::vae::{FluxVae, FluxVaeConfig};

use candle_transformers::quantized_var_builder::VarBuilder as QVarBuilder;
use sprout_models::weights::Weights;

use crate::flow::FluxShift;
use crate::flux::{default_shift, FluxModel, FluxText, T5Model, T5Slot, TextParts};
use crate::PipelineError;

pub(crate) fn weights_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Weights(e.to_string())
}

pub(crate) fn read_json(p: &Path) -> Result<serde_json::Value, PipelineError> {
    let text =
        std::fs::read_to_string(p).map_err(|e| weights_err(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| weights_err(format!("{}: {e}", p.display())))
}

pub(crate) fn mmap(files: &[std::path::PathBuf]) -> Result<MmapedSafetensors, PipelineError> {
    // SAFETY: the files are opened read-only and must not be modified while the model runs,
    // as with every memory-mapped weight loader.
    unsafe { MmapedSafetensors::multi(files) }.map_err(|e| {
        weights_err(format!(
            "{}: not a readable safetensors file ({e})",
            files
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    })
}

/// The shift of a snapshot's `scheduler/scheduler_config.json` (a fine-tune may change
/// it), else the variant's own; a single file or a folder without one takes the latter.
fn scheduler_shift(weights: &Path, variant: Variant) -> Result<FluxShift, PipelineError> {
    let p = weights.join("scheduler").join("scheduler_config.json");
    if !weights.is_dir() || !p.is_file() {
        return Ok(default_shift(variant));
    }
    let v = read_json(&p)?;
    FluxShift::from_scheduler_config(&v, &p.display().to_string()).map_err(PipelineError::Weights)
}

/// CLIP's weights as the model names them (`text_model.*`), with the adapters merged in
/// where there are any.
fn clip_builder<B: candle_nn::var_builder::SimpleBackend + 'static>(
    backend: B,
    usage: &Option<LoraUsage>,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    match usage {
        None => VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        Some(u) => VarBuilder::from_backend(
            Box::new(WithLora::with_usage(backend, u.clone(), Target::Clip)),
            dtype,
            device.clone(),
        ),
    }
}

/// A diffusers `config.json` next to a component's weights, if there is one.
/// None where there is no such file; an unreadable or invalid one is an error, not a reason
/// to fall back to a preset.
pub(crate) fn component_config(
    weights: &[std::path::PathBuf],
) -> Result<Option<serde_json::Value>, PipelineError> {
    match weights.first().and_then(|w| w.parent()) {
        Some(d) if d.join("config.json").is_file() => read_json(&d.join("config.json")).map(Some),
        _ => Ok(None),
    }
}

/// Name what the folder lacks, and where it is looked for.
fn require<'a, T>(
    part: &'a Option<T>,
    what: &str,
    files: &FluxFiles,
) -> Result<&'a T, PipelineError> {
    part.as_ref().ok_or_else(|| {
        weights_err(format!(
            "{}: no {what} found (expected next to the transformer, as in a diffusers snapshot: \
             text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, vae/ or ae.safetensors; \
             parts kept elsewhere are given with --vae FILE, --clip FILE, --t5 FILE and \
             --tokenizers DIR)",
            files.transformer[0].display()
        ))
    })
}

/// Bytes `elements` weights take when loaded as `dtype` (whatever they are stored as:
/// FP8, fp16, bf16 or f32).
fn loaded_bytes(elements: u64, dtype: DType) -> u64 {
    elements * dtype.size_in_bytes() as u64
}

fn stored_bytes(files: &[std::path::PathBuf]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// How the text encoders share memory with the DiT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryPlan {
    /// Everything stays loaded.
    Resident,
    /// T5 is loaded for each prompt and dropped before the DiT runs.
    T5OnDemand,
}

/// Working memory of a full-size FLUX.1 step and decode at about 1024² (attention scores of
/// 24 heads over 4 352 tokens alone take 1.8 GB in f32).
const FULL_SIZE_ACTIVATIONS: u64 = 3 << 30;

/// Bytes each part needs once loaded.
struct Needs {
    dit: u64,
    t5: u64,
    rest: u64,
}

impl Needs {
    fn plan(&self, what: &str, available: Option<u64>) -> Result<MemoryPlan, PipelineError> {
        let all = self.dit + self.t5 + self.rest;
        if check_memory(what, all, available).is_ok() {
            return Ok(MemoryPlan::Resident);
        }
        // T5 alone with CLIP, then the DiT with CLIP and the autoencoder.
        check_memory(what, self.dit.max(self.t5) + self.rest, available)?;
        Ok(MemoryPlan::T5OnDemand)
    }
}

pub(crate) fn is_gguf(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// T5 from safetensors (candle-transformers' encoder, `cfg`) or from a GGUF file (Sprout's,
/// its config read from the file; computing in f32 on the CPU as GGUF transformers do).
fn load_t5(
    files: &[std::path::PathBuf],
    cfg: &T5Config,
    dtype: DType,
    device: &Device,
) -> Result<T5Model, PipelineError> {
    if is_gguf(&files[0]) {
        let dtype = if device.is_cpu() { DType::F32 } else { dtype };
        return Ok(T5Model::Gguf(
            sprout_models::t5::load_gguf(&files[0], dtype, device).map_err(weights_err)?,
        ));
    }
    let vb = VarBuilder::from_backend(Box::new(mmap(files)?), dtype, device.clone());
    T5EncoderModel::load(vb, cfg)
        .map(T5Model::Dense)
        .map_err(|e| weights_err(format!("{}: {e}", files[0].display())))
}

/// Bytes a GGUF model whose header lists `infos` takes once loaded: its blocks as stored,
/// plus its largest tensor dequantized at `value_bytes` a value (a T5's embedding table; a
/// transformer's largest weight, widened for a product).
pub(crate) fn gguf_loaded_bytes(
    infos: &[sprout_models::flux::inspect::TensorInfo],
    value_bytes: usize,
) -> u64 {
    let stored: u64 = infos.iter().map(|t| t.bytes).sum();
    let largest = infos
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64)
        .max()
        .unwrap_or(0);
    stored + value_bytes as u64 * largest
}

/// The transformer's config: diffusers' `config.json`, Sprout's GGUF metadata, else the
/// FLUX.1 preset of the variant with the conditioning channels `inspection` read from the
/// headers.
pub(crate) fn transformer_config(
    files: &sprout_models::flux::files::FluxFiles,
    inspection: &Inspection,
    variant: Variant,
) -> Result<DitConfig, PipelineError> {
    let gguf_config = if files.layout == Layout::Gguf {
        gguf_metadata_string(&files.transformer[0], GGUF_CONFIG_KEY)?
    } else {
        None
    };
    Ok(match (&files.transformer_config, files.layout) {
        (Some(p), Layout::Diffusers) => {
            let c: DiffusersTransformerConfig = serde_json::from_value(read_json(p)?)
                .map_err(|e| weights_err(format!("{}: {e}", p.display())))?;
            c.to_dit()?
        }
        _ if gguf_config.is_some() => {
            serde_json::from_str(gguf_config.as_deref().unwrap_or_default()).map_err(|e| {
                weights_err(format!(
                    "{}: metadata {GGUF_CONFIG_KEY}: {e}",
                    files.transformer[0].display()
                ))
            })?
        }
        // No config stored: FLUX.1's, with the conditioning channels the weights take
        // (Fill, Canny, Depth).
        _ => {
            let preset = if variant.guidance_embed() {
                DitConfig::flux_dev()
            } else {
                DitConfig::flux_schnell()
            };
            DitConfig {
                cond_channels: inspection.cond_channels(),
                ..preset
            }
        }
    })
}

impl FluxModel {
    /// Load `asked` from the user's `weights` (a file or folder). Small models (the tests'
    /// tiny ones) compute in f32; full-size ones in bf16 as stored; a GGUF transformer keeps
    /// its quantized weights and computes in f32 on the CPU (bf16 on CUDA).
    pub fn load(
        weights: &Path,
        parts: &Components,
        asked: Variant,
        device: &Device,
    ) -> Result<FluxModel, PipelineError> {
        Self::load_with_prompts(weights, parts, asked, device, &[], None).map(|(m, _)| m)
    }

    /// [`load`](Self::load), encoding `prompts` on the way: when memory cannot hold T5 next to
    /// the DiT, the text encoders are loaded first, the prompts encoded, T5 dropped and only
    /// then the DiT loaded (later prompts load T5 again for themselves). `t5_len` overrides
    /// the variant's T5 tokens per prompt ([`Variant::t5_len`]). `parts` names components kept
    /// apart from the transformer; their configs come from a `config.json` beside them, else
    /// FLUX.1's (CLIP-L, T5-v1.1-XXL), and every tensor's shape is checked as it loads.
    pub fn load_with_prompts(
        weights: &Path,
        parts: &Components,
        asked: Variant,
        device: &Device,
        prompts: &[&str],
        t5_len: Option<usize>,
    ) -> Result<(FluxModel, Vec<FluxText>), PipelineError> {
        let mut files = locate(weights)?;
        parts.apply(&mut files)?;
        let inspection = inspect_transformer(&files)?;
        let variant = resolve_variant(asked, &files, &inspection)?;
        let gguf = files.layout == Layout::Gguf;
        // Adapters are read first, so that a bad file fails before minutes of loading.
        let mut lora = None;
        if !parts.loras.is_empty() {
            let mut l = Lora::default();
            for (p, s) in &parts.loras {
                l.add_file(p, *s)?;
            }
            lora = Some(l);
        }
        // The tests' tiny models are far below a gigabyte; FLUX.1 releases far above.
        let full_size = inspection.bytes >= 1 << 30;
        let dtype = match (gguf, device.is_cpu()) {
            (true, true) => DType::F32,
            (true, false) => DType::BF16,
            _ if full_size => DType::BF16,
            _ => DType::F32,
        };
        // A bf16 file on the CPU: its linear weights stay bf16 (packed for the CPU's bf16
        // kernel where it has one, else widened per product) and everything else, the
        // activations included, computes in f32, whose elementwise kernels are the fast ones.
        let bf16_linear = !gguf && device.is_cpu() && dtype == DType::BF16;
        let compute = if bf16_linear { DType::F32 } else { dtype };
        let clip_files = require(&files.clip, "CLIP text encoder (text_encoder/)", &files)?;
        let t5_files = require(&files.t5, "T5 text encoder (text_encoder_2/)", &files)?;
        let (vae_files, vae_diffusers) = require(&files.vae, "autoencoder", &files)?;
        let clip_tok = require(&files.clip_tokenizer, "CLIP tokenizer (tokenizer/)", &files)?;
        let t5_tok = require(&files.t5_tokenizer, "T5 tokenizer (tokenizer_2/)", &files)?;
        let elements = |f: &[std::path::PathBuf]| safetensors_elements(f).map_err(weights_err);
        let t5_gguf = is_gguf(&t5_files[0]);
        let (clip_elems, vae_elems) = (elements(clip_files)?, elements(vae_files)?);
        let parts_stored =
            stored_bytes(t5_files) + stored_bytes(clip_files) + stored_bytes(vae_files);
        // T5-XXL stays in bf16 when large (9.5 GB; f32 would double it). The autoencoder and
        // CLIP are small and run in f32 on the CPU, whose convolutions have no bf16 kernel.
        let t5_dtype = if parts_stored < 1 << 30 {
            DType::F32
        } else {
            DType::BF16
        };
        let parts_dtype = if device.is_cpu() {
            DType::F32
        } else {
            t5_dtype
        };
        let needs = Needs {
            dit: if gguf {
                // Quantized blocks as stored, plus the largest weight dequantized for a product.
                inspection.bytes + inspection.largest * dtype.size_in_bytes() as u64
            } else {
                loaded_bytes(inspection.elements, dtype)
            },
            t5: if t5_gguf {
                let infos =
                    sprout_models::flux::inspect::gguf_header(&t5_files[0]).map_err(weights_err)?;
                gguf_loaded_bytes(&infos, 4)
            } else {
                loaded_bytes(elements(t5_files)?, t5_dtype)
            },
            rest: loaded_bytes(clip_elems + vae_elems, parts_dtype)
                + if full_size { FULL_SIZE_ACTIVATIONS } else { 0 },
        };
        let plan = needs.plan(variant.name(), available_memory())?;

        let ccfg = clip_config(&component_config(clip_files)?.unwrap_or_else(clip_l_json))?;
        // Adapters may touch CLIP too (kohya's lora_te1_*); one record of what was used
        // serves CLIP and the transformer.
        let usage = lora.take().map(LoraUsage::new);
        let clip_st = mmap(clip_files)?;
        let bare = clip_st
            .get("text_model.embeddings.token_embedding.weight")
            .is_err()
            && clip_st.get("embeddings.token_embedding.weight").is_ok();
        let vb = if bare {
            clip_builder(
                Renamed::without_prefix(clip_st, "text_model."),
                &usage,
                parts_dtype,
                device,
            )
        } else {
            clip_builder(clip_st, &usage, parts_dtype, device)
        };
        let clip = ClipTextTransformer::new(vb.pp("text_model"), &ccfg)
            .map_err(|e| weights_err(format!("{}: {e}", clip_files[0].display())))?;
        // A GGUF T5 carries its sizes; this config is for safetensors weights.
        let tcfg: T5Config = serde_json::from_value(
            component_config(t5_files)?
                .filter(|_| !t5_gguf)
                .unwrap_or_else(t5_xxl_json),
        )
        .map_err(|e| {
            let beside = t5_files[0].with_file_name("config.json");
            weights_err(format!(
                "{}, beside the T5 weights {}: not a T5 config ({e})",
                beside.display(),
                t5_files[0].display()
            ))
        })?;
        let t5 = T5Slot::Resident(load_t5(t5_files, &tcfg, t5_dtype, device)?);
        let mut text = TextParts {
            clip,
            t5,
            clip_tokenizer: clip_tokenizer(clip_tok)?,
            t5_tokenizer: t5_tokenizer(t5_tok)?,
            t5_len: t5_len.unwrap_or(variant.t5_len()),
            dtype: compute,
            device: device.clone(),
        };
        let encoded = prompts
            .iter()
            .map(|p| text.encode(p))
            .collect::<Result<Vec<_>, _>>()?;
        if plan == MemoryPlan::T5OnDemand {
            let (t5_files, device) = (t5_files.clone(), device.clone());
            text.t5 = T5Slot::OnDemand(Box::new(move || {
                load_t5(&t5_files, &tcfg, t5_dtype, &device)
            }));
        }

        let dit_cfg = transformer_config(&files, &inspection, variant)?;
        let in_file = |e: &dyn std::fmt::Display| {
            weights_err(format!("{}: {e}", files.transformer[0].display()))
        };
        let dit = if gguf {
            let vb =
                QVarBuilder::from_gguf(&files.transformer[0], device).map_err(|e| in_file(&e))?;
            let w = Weights::Quantized { vb, dtype };
            // Block-quantized weights (under 16 bits a value): their many-row products run
            // in bf16 where the CPU has bf16 products (`LinearWeight::matmul_t`), and so
            // does this model's attention.
            let attention = if device.is_cpu() && inspection.bytes < 2 * inspection.elements {
                Precision::Bf16
            } else {
                Precision::F32
            };
            match &usage {
                None => Dit::new(&dit_cfg, w),
                // Quantized weights take the adapters unmerged, beside each product.
                Some(u) => Dit::new(
                    &dit_cfg,
                    Weights::Adapted {
                        inner: Box::new(w),
                        lora: u.clone(),
                        prefix: String::new(),
                    },
                ),
            }
            .map(|d| d.with_attention(attention))
        } else {
            let st = mmap(&files.transformer)?;
            let vb = match (usage.clone(), inspection.diffusers_names) {
                (None, true) => VarBuilder::from_backend(
                    Box::new(Renamed::transformer(st)),
                    compute,
                    device.clone(),
                ),
                (None, false) => VarBuilder::from_backend(Box::new(st), compute, device.clone()),
                (Some(u), true) => VarBuilder::from_backend(
                    Box::new(WithLora::with_usage(
                        Renamed::transformer(st),
                        u,
                        Target::Transformer,
                    )),
                    compute,
                    device.clone(),
                ),
                (Some(u), false) => VarBuilder::from_backend(
                    Box::new(WithLora::with_usage(st, u, Target::Transformer)),
                    compute,
                    device.clone(),
                ),
            };
            if bf16_linear {
                // The attention's products in bf16 too, as the linear layers'.
                Dit::new(&dit_cfg, Weights::Bf16Linear(vb))
                    .map(|d| d.with_attention(Precision::Bf16))
            } else {
                Dit::new(&dit_cfg, vb)
            }
        }
        .map_err(|e| in_file(&e))?;
        if let Some(u) = usage {
            u.check_all_used()?;
        }

        let vcfg = match component_config(vae_files)? {
            Some(v) => vae_config(&v)?,
            None => FluxVaeConfig::flux(),
        };
        let st = mmap(vae_files)?;
        let vb = if *vae_diffusers {
            VarBuilder::from_backend(
                Box::new(Renamed::vae(st, vcfg.ch_mult.len())),
                parts_dtype,
                device.clone(),
            )
        } else {
            VarBuilder::from_backend(Box::new(st), parts_dtype, device.clone())
        };
        let vae = FluxVae::new(&vcfg, vb)
            .map_err(|e| weights_err(format!("{}: {e}", vae_files[0].display())))?;

        let shift = scheduler_shift(weights, variant)?;
        Ok((
            FluxModel {
                shift,
                variant,
                dit,
                vae,
                parts_dtype,
                encoded: prompts
                    .iter()
                    .zip(&encoded)
                    .map(|(p, t)| (p.to_string(), text.t5_len, t.clone()))
                    .collect(),
                text,
            },
            encoded,
        ))
    }
}
