//! Writing a FLUX.1 transformer (any layout the loader reads, LoRA adapters merged) or a T5
//! encoder as a GGUF file, as community conversions are: Black Forest Labs tensor names
//! (llama.cpp's for T5), linear weights in the chosen block format, norms, biases and short
//! rows in f32 ([`sprout_models::gguf`]), and the config in Sprout's metadata key.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;
use sprout_models::dit::{Dit, DitConfig};
use sprout_models::flux::components::Components;
use sprout_models::flux::convert::Renamed;
use sprout_models::flux::files::{locate, Layout, Variant};
use sprout_models::flux::inspect::{inspect_transformer, resolve_variant, GGUF_CONFIG_KEY};
use sprout_models::flux::lora::{Lora, LoraUsage, Target, WithLora};

use crate::flux_load::{component_config, mmap, transformer_config, weights_err};
use crate::PipelineError;

/// The BFL names of every tensor of a transformer with config `cfg`, from building it over
/// a recording backend.
pub fn transformer_tensor_names(cfg: &DitConfig) -> Result<Vec<String>, PipelineError> {
    let params = sprout_models::recorder::record(|vb| {
        Dit::new(cfg, vb)
            .map(|_| ())
            .map_err(candle_core::Error::wrap)
    })?;
    Ok(params.into_iter().map(|(n, _)| n).collect())
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub tensors: usize,
    pub quantized: usize,
    pub bytes: u64,
}

fn write(
    out: &Path,
    tensors: Vec<(String, QTensor)>,
    meta: &[(&str, &str)],
    q: GgmlDType,
) -> Result<Written, PipelineError> {
    let quantized = tensors.iter().filter(|(_, t)| t.dtype() == q).count();
    let n = tensors.len();
    sprout_models::gguf::write(out, &tensors, meta)?;
    Ok(Written {
        tensors: n,
        quantized,
        bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
    })
}

/// Refuse, with the estimate, to quantize `elements` values to `q` where the machine cannot
/// hold them: the quantized tensors are held until the file is written.
fn check_held(elements: u64, q: GgmlDType) -> Result<(), PipelineError> {
    let held = elements as f64 * q.type_size() as f64 / q.block_size() as f64;
    Ok(sprout_models::flux::inspect::check_memory(
        "quantizing",
        held as u64,
        sprout_models::flux::inspect::available_memory(),
    )?)
}

/// The tensors `names` of `backend` (read from `file`) in format `q` (norms, biases and short
/// rows as [`sprout_models::gguf::quantize`] keeps them); `on_tensor(done, total)` reports.
fn quantize_all(
    backend: &dyn SimpleBackend,
    names: &[String],
    q: GgmlDType,
    file: &str,
    on_tensor: &mut impl FnMut(usize, usize),
) -> Result<Vec<(String, QTensor)>, PipelineError> {
    let mut tensors = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let t = backend
            .get_unchecked(name, DType::F32, &Device::Cpu)
            .map_err(|e| weights_err(format!("{file}: {e}")))?;
        tensors.push((name.clone(), sprout_models::gguf::quantize(name, &t, q)?));
        on_tensor(i + 1, names.len());
    }
    Ok(tensors)
}

/// Write the transformer of `weights` (with `parts.loras` merged) to `out` as GGUF in
/// format `q`; `on_tensor(done, total)` reports progress.
pub fn quantize_transformer(
    weights: &Path,
    parts: &Components,
    asked: Variant,
    q: GgmlDType,
    out: &Path,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<Written, PipelineError> {
    let files = locate(weights)?;
    if files.layout == Layout::Gguf {
        return Err(weights_err(format!(
            "{}: already a GGUF file; quantize from the safetensors weights",
            files.transformer[0].display()
        )));
    }
    let inspection = inspect_transformer(&files)?;
    let variant = resolve_variant(asked, &files, &inspection)?;
    let cfg = transformer_config(&files, &inspection, variant)?;
    check_held(inspection.elements, q)?;
    let names = transformer_tensor_names(&cfg)?;
    let st = mmap(&files.transformer)?;
    let usage = if parts.loras.is_empty() {
        None
    } else {
        let mut l = Lora::default();
        for (p, s) in &parts.loras {
            l.add_file(p, *s)?;
        }
        Some(LoraUsage::new(l))
    };
    let file = files.transformer[0].display().to_string();
    let mut gather = |b: &dyn SimpleBackend| quantize_all(b, &names, q, &file, &mut on_tensor);
    let t = Target::Transformer;
    let tensors = match (usage.clone(), inspection.diffusers_names) {
        (None, true) => gather(&Renamed::transformer(st))?,
        (None, false) => gather(&st)?,
        (Some(u), true) => gather(&WithLora::with_usage(Renamed::transformer(st), u, t))?,
        (Some(u), false) => gather(&WithLora::with_usage(st, u, t))?,
    };
    if let Some(u) = usage {
        u.check_all_used()?;
    }
    let json = serde_json::to_string(&cfg).map_err(|e| weights_err(e.to_string()))?;
    write(
        out,
        tensors,
        &[("general.architecture", "flux"), (GGUF_CONFIG_KEY, &json)],
        q,
    )
}

/// Write a T5 encoder's safetensors weights (transformers' names; config from a
/// `config.json` beside them, else T5-v1.1-XXL) to `out` as GGUF with llama.cpp's names.
pub fn quantize_t5(t5: &Path, q: GgmlDType, out: &Path) -> Result<Written, PipelineError> {
    let files = sprout_models::flux::files::component_files(t5)?
        .or_else(|| t5.is_file().then(|| vec![t5.to_path_buf()]))
        .ok_or_else(|| weights_err(format!("{}: no T5 safetensors weights", t5.display())))?;
    let cfg_json =
        component_config(&files)?.unwrap_or_else(sprout_models::flux::configs::t5_xxl_json);
    let cfg: sprout_models::t5::T5EncoderConfig = serde_json::from_value(cfg_json)
        .map_err(|e| weights_err(format!("{}: not a T5 config ({e})", t5.display())))?;
    let mut tensors = std::collections::HashMap::new();
    for f in &files {
        for (k, v) in candle_core::safetensors::load(f, &Device::Cpu)? {
            // The decoder and the LM head, if the file has them, are not the encoder's.
            if k == "shared.weight" || k.starts_with("encoder.") {
                tensors.insert(k, v.to_dtype(DType::F32)?);
            }
        }
    }
    if !tensors.contains_key("shared.weight") {
        return Err(weights_err(format!(
            "{}: not a T5 encoder (no shared.weight)",
            t5.display()
        )));
    }
    let n = tensors.len();
    sprout_models::t5::write_gguf(out, &tensors, q, Some(&cfg))?;
    let quantized = tensors
        .iter()
        .filter(|(k, v)| {
            sprout_models::gguf::quantizes(&sprout_models::t5::llama_cpp_name(k), v.dims(), q)
        })
        .count();
    Ok(Written {
        tensors: n,
        quantized,
        bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
    })
}

/// A FLUX.2 transformer (a diffusers snapshot's `transformer/` folder with its config.json,
/// or the snapshot folder itself; diffusers' or Black Forest Labs' names) as GGUF in format
/// `q` with Black Forest Labs' names and the DiT config in Sprout's metadata key, for
/// `--transformer` of `--model flux2-klein|flux2-dev`; `on_tensor(done, total)` reports
/// progress.
pub fn quantize_flux2_transformer(
    weights: &Path,
    q: GgmlDType,
    out: &Path,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<Written, PipelineError> {
    let dir = if weights.join("transformer").is_dir() {
        weights.join("transformer")
    } else {
        weights.to_path_buf()
    };
    let files = sprout_models::flux::files::component_files(&dir)?.ok_or_else(|| {
        weights_err(format!(
            "{}: no FLUX.2 transformer safetensors (a snapshot's transformer/ folder)",
            weights.display()
        ))
    })?;
    let (cfg, backend) = crate::flux2::flux2_transformer(&files)?;
    let elements =
        sprout_models::flux::inspect::safetensors_elements(&files).map_err(weights_err)?;
    check_held(elements, q)?;
    let names = transformer_tensor_names(&cfg)?;
    let file = files[0].display().to_string();
    let tensors = quantize_all(backend.as_ref(), &names, q, &file, &mut on_tensor)?;
    let json = serde_json::to_string(&cfg).map_err(|e| weights_err(e.to_string()))?;
    write(
        out,
        tensors,
        &[("general.architecture", "flux2"), (GGUF_CONFIG_KEY, &json)],
        q,
    )
}

/// A transformers text encoder of FLUX.2 (Qwen3 for [klein], Mistral3 for [dev]: a
/// `text_encoder/` folder with its config.json, or a safetensors file beside one) as a
/// llama.cpp GGUF file with linear layers and the embedding table as `q`
/// ([`sprout_models::qwen3::write_gguf`]: `qwen3`, or `llama` for Mistral); the LM head and a
/// vision tower, if present, are left out.
/// `mistral` says which of the two the caller asked for; the other is refused by name.
pub fn quantize_text_encoder(
    dir: &Path,
    mistral: bool,
    q: GgmlDType,
    out: &Path,
) -> Result<Written, PipelineError> {
    let files = sprout_models::flux::files::component_files(dir)?
        .or_else(|| dir.is_file().then(|| vec![dir.to_path_buf()]))
        .ok_or_else(|| {
            weights_err(format!(
                "{}: no text encoder safetensors weights",
                dir.display()
            ))
        })?;
    let cfg_json = component_config(&files)?.ok_or_else(|| {
        weights_err(format!(
            "{}: no config.json beside the text encoder's weights",
            dir.display()
        ))
    })?;
    let cfg = sprout_models::qwen3::Qwen3Config::from_json(&cfg_json)?;
    if cfg.qk_norm == mistral {
        let (is, run) = if mistral {
            ("a Qwen3", "qwen3")
        } else {
            ("a Mistral", "mistral")
        };
        return Err(weights_err(format!(
            "{}: {is} text encoder (its config.json); quantize it with --model {run}",
            dir.display()
        )));
    }
    // One tensor at a time from the mapped files: a 24B Mistral never sits in memory in f32.
    let st = crate::flux_load::mmap(&files)?;
    let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    if sprout_models::qwen3::body_prefix(names.iter().map(String::as_str)).is_none() {
        return Err(weights_err(format!(
            "{}: not a Qwen3 or Mistral model (no embed_tokens.weight)",
            dir.display()
        )));
    }
    let (n, quantized) = sprout_models::qwen3::write_gguf(
        out,
        &names,
        |k| st.load(k, &Device::Cpu)?.to_dtype(DType::F32),
        &cfg,
        q,
    )?;
    Ok(Written {
        tensors: n,
        quantized,
        bytes: std::fs::metadata(out).map(|m| m.len()).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{flux_fixture, flux_fixture_config};

    /// The names listed from the structure are exactly the tensors of the BFL fixture files
    /// (with and without the guidance embedding).
    #[test]
    fn tensor_names_are_those_of_the_files() {
        for v in ["dev", "schnell"] {
            let file = format!("transformer_{v}_bfl.safetensors");
            let c: sprout_models::flux::convert::DiffusersTransformerConfig =
                serde_json::from_value(flux_fixture_config(&file).unwrap()).unwrap();
            let names = transformer_tensor_names(&c.to_dit().unwrap()).unwrap();
            let mut want: Vec<String> =
                sprout_models::flux::inspect::safetensors_header(&flux_fixture(&file))
                    .unwrap()
                    .into_iter()
                    .map(|t| t.name)
                    .collect();
            want.sort();
            assert_eq!(names, want, "{v}");
        }
    }
}
