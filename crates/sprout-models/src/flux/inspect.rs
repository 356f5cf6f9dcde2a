//! What a FLUX model's files hold, read from their headers only (no weights are loaded): the
//! names and sizes of the tensors, hence the variant (a guidance embedding means dev or
//! Kontext), the naming, and the memory the model will need.

use std::io::Read;
use std::path::Path;

use crate::error::{ModelError, Result};
use crate::flux::files::{FluxFiles, Layout, Variant};

/// One tensor as a file's header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// Bytes stored in the file.
    pub bytes: u64,
}

fn bad(p: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {e}", p.display()))
}

/// A safetensors file's JSON header as an object, its length, and the file's length.
fn header_object(path: &Path) -> Result<(serde_json::Map<String, serde_json::Value>, u64, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let file_len = f.metadata().map_err(|e| bad(path, e))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| bad(path, "not a safetensors file (shorter than its header)"))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || n + 8 > file_len {
        return Err(bad(path, "not a safetensors file (bad header length)"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(path, format!("not a safetensors file ({e})")))?;
    match v {
        serde_json::Value::Object(obj) => Ok((obj, n, file_len)),
        _ => Err(bad(path, "safetensors header is not an object")),
    }
}

/// The free-form `__metadata__` strings of a safetensors file (empty when it has none).
pub fn safetensors_metadata(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    let (obj, _, _) = header_object(path)?;
    let Some(meta) = obj.get("__metadata__") else {
        return Ok(Default::default());
    };
    let meta = meta
        .as_object()
        .ok_or_else(|| bad(path, "__metadata__ is not an object"))?;
    meta.iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_string())),
            None => Err(bad(path, format!("__metadata__ entry {k} is not a string"))),
        })
        .collect()
}

/// The tensors of a safetensors file, from its JSON header.
pub fn safetensors_header(path: &Path) -> Result<Vec<TensorInfo>> {
    let (obj, n, file_len) = header_object(path)?;
    let mut out = Vec::with_capacity(obj.len());
    for (name, t) in &obj {
        if name == "__metadata__" {
            continue;
        }
        let shape = t["shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| bad(path, format!("tensor {name} has no shape")))?;
        let off = t["data_offsets"]
            .as_array()
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)))
            .ok_or_else(|| bad(path, format!("tensor {name} has no data offsets")))?;
        if off.1 < off.0 || off.1.checked_add(8 + n).is_none_or(|end| end > file_len) {
            return Err(bad(
                path,
                format!("tensor {name} lies outside the file (truncated download?)"),
            ));
        }
        out.push(TensorInfo {
            name: name.clone(),
            shape,
            bytes: off.1 - off.0,
        });
    }
    Ok(out)
}

/// The tensors of a GGUF file, from its header.
pub fn gguf_header(path: &Path) -> Result<Vec<TensorInfo>> {
    let c = crate::gguf::read_content(path)?;
    let file_len = std::fs::metadata(path).map_err(|e| bad(path, e))?.len();
    c.tensor_infos
        .into_iter()
        .map(|(name, t)| {
            let d = t.ggml_dtype;
            // The product of a hostile header's dimensions can overflow; so can the bytes.
            let bytes = t
                .shape
                .dims()
                .iter()
                .try_fold(1u64, |a, &x| a.checked_mul(x as u64))
                .and_then(|elems| {
                    (elems / d.block_size() as u64).checked_mul(d.type_size() as u64)
                })
                .filter(|b| {
                    c.tensor_data_offset
                        .checked_add(t.offset)
                        .and_then(|s| s.checked_add(*b))
                        .is_some_and(|end| end <= file_len)
                })
                .ok_or_else(|| {
                    bad(
                        path,
                        format!(
                            "tensor {name} ({:?}, {d:?}) lies outside the file (truncated download?)",
                            t.shape.dims()
                        ),
                    )
                })?;
            Ok(TensorInfo {
                name,
                shape: t.shape.dims().to_vec(),
                bytes,
            })
        })
        .collect()
}

/// A string value of a GGUF file's metadata, if the file has the key.
pub fn gguf_metadata_string(path: &Path, key: &str) -> Result<Option<String>> {
    let c = crate::gguf::read_content(path)?;
    match c.metadata.get(key) {
        None => Ok(None),
        Some(v) => v
            .to_string()
            .map(|s| Some(s.clone()))
            .map_err(|e| bad(path, format!("metadata {key}: {e}"))),
    }
}

/// The GGUF metadata key under which `sprout`'s writer stores the transformer's config
/// (community files have none and get the FLUX.1 preset of their variant).
pub const GGUF_CONFIG_KEY: &str = "sprout.dit_config";

/// What the transformer files say about the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub guidance: bool,
    pub diffusers_names: bool,
    /// Bytes of all transformer tensors as stored.
    pub bytes: u64,
    /// Elements of all transformer tensors (bytes once loaded = elements × dtype size).
    pub elements: u64,
    /// Elements of the largest tensor (a quantized one is dequantized whole for a product).
    pub largest: u64,
    /// Channels the input projection takes per token (`img_in` / `x_embedder`): 64 for the
    /// text-to-image and Kontext models, 384 for Fill, 128 for Canny and Depth.
    pub input_channels: Option<usize>,
    /// Channels the final layer predicts per token (`final_layer.linear` / `proj_out`): 64.
    pub output_channels: Option<usize>,
}

impl Inspection {
    /// Conditioning channels per token: what the input projection takes beyond what the
    /// model predicts.
    pub fn cond_channels(&self) -> usize {
        match (self.input_channels, self.output_channels) {
            (Some(i), Some(o)) => i.saturating_sub(o),
            _ => 0,
        }
    }

    /// What the conditioning channels make of the model.
    pub fn conditioning(&self) -> Conditioning {
        let (cond, out) = (self.cond_channels(), self.output_channels.unwrap_or(0));
        match cond {
            0 => Conditioning::None,
            c if c == out => Conditioning::Control,
            c if c > out => Conditioning::Fill,
            _ => Conditioning::Unknown,
        }
    }
}

/// The kinds of FLUX.1 transformer by their extra input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// schnell, dev, Kontext.
    None,
    /// Canny, Depth: a control image's latents (as many channels as the model predicts).
    Control,
    /// Fill: the masked image's latents and the mask.
    Fill,
    Unknown,
}

impl Conditioning {
    pub fn of(v: Variant) -> Conditioning {
        match v {
            Variant::Fill => Conditioning::Fill,
            Variant::Canny | Variant::Depth => Conditioning::Control,
            Variant::Schnell | Variant::Dev | Variant::Kontext => Conditioning::None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Conditioning::None => {
                "FLUX.1 weights without conditioning channels (schnell, dev or Kontext)"
            }
            Conditioning::Control => "FLUX.1 Canny or Depth weights",
            Conditioning::Fill => "FLUX.1 Fill weights",
            Conditioning::Unknown => "weights with conditioning channels of no known FLUX.1 model",
        }
    }
}

/// "Scaled" FP8 files store each weight divided by a per-tensor scale kept beside it
/// (`*.scale_weight`, marked by a `scaled_fp8` tensor); read as plain FP8 they would give
/// wrong numbers, so they are refused by name.
pub fn refuse_scaled_fp8(path: &Path, infos: &[TensorInfo]) -> Result<()> {
    if infos
        .iter()
        .any(|t| t.name == "scaled_fp8" || t.name.ends_with(".scale_weight"))
    {
        return Err(bad(
            path,
            "scaled FP8 weights (a scaled_fp8 / *.scale_weight tensor) are not supported; \
             use the file in bf16, fp16 or plain FP8 (e4m3fn), or a GGUF transformer",
        ));
    }
    Ok(())
}

/// Elements of all tensors of some safetensors files (checking each file's header), and
/// refusing scaled FP8 ones.
pub fn safetensors_elements(files: &[std::path::PathBuf]) -> Result<u64> {
    let mut n = 0;
    for f in files {
        let infos = safetensors_header(f)?;
        refuse_scaled_fp8(f, &infos)?;
        n += infos
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum::<u64>();
    }
    Ok(n)
}

pub fn inspect_transformer(files: &FluxFiles) -> Result<Inspection> {
    let mut infos = Vec::new();
    for p in &files.transformer {
        infos.extend(match files.layout {
            Layout::Gguf => gguf_header(p)?,
            Layout::Bfl | Layout::Diffusers => safetensors_header(p)?,
        });
    }
    let has = |prefix: &str| infos.iter().any(|t| t.name.starts_with(prefix));
    let diffusers_names = has("transformer_blocks.") || has("x_embedder.");
    if !diffusers_names && !has("double_blocks.") {
        return Err(ModelError::Config(format!(
            "{}: no FLUX transformer tensors (neither double_blocks.* nor transformer_blocks.*)",
            files.transformer[0].display()
        )));
    }
    refuse_scaled_fp8(&files.transformer[0], &infos)?;
    let input_channels = infos
        .iter()
        .find(|t| t.name == "img_in.weight" || t.name == "x_embedder.weight")
        .and_then(|t| t.shape.last().copied());
    let output_channels = infos
        .iter()
        .find(|t| t.name == "final_layer.linear.weight" || t.name == "proj_out.weight")
        .and_then(|t| t.shape.first().copied());
    Ok(Inspection {
        input_channels,
        output_channels,
        guidance: has("guidance_in.") || has("time_text_embed.guidance_embedder."),
        diffusers_names,
        bytes: infos.iter().map(|t| t.bytes).sum(),
        elements: infos
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum(),
        largest: infos
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .max()
            .unwrap_or(0),
    })
}

/// The variant to run: the one asked for, if the files can be it.
pub fn resolve_variant(asked: Variant, files: &FluxFiles, i: &Inspection) -> Result<Variant> {
    let path = files.transformer[0].display();
    if i.guidance != asked.guidance_embed() {
        let held = if i.guidance {
            "guidance-distilled weights (dev, Kontext, Fill, Canny or Depth: they have a guidance embedding)"
        } else {
            "FLUX.1 schnell weights (they have no guidance embedding)"
        };
        return Err(ModelError::Config(format!(
            "--model {} does not match {path}: these are {held}",
            asked.name()
        )));
    }
    if i.conditioning() != Conditioning::of(asked) {
        let held = i.conditioning().describe();
        return Err(ModelError::Config(format!(
            "--model {} does not match {path}: these are {held} (the input projection takes {} \
             channels per token, the model predicts {})",
            asked.name(),
            i.input_channels.unwrap_or(0),
            i.output_channels.unwrap_or(0)
        )));
    }
    match (asked, files.named_variant) {
        (Variant::Dev, Some(Variant::Kontext)) | (Variant::Kontext, Some(Variant::Dev)) => {
            Err(ModelError::Config(format!(
                "--model {} does not match {path}: its name says {}",
                asked.name(),
                files.named_variant.map(Variant::name).unwrap_or_default()
            )))
        }
        _ => Ok(asked),
    }
}

/// Memory this machine can still give (`MemAvailable`), in bytes; None where unknown.
pub fn available_memory() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuse before loading when `needed` bytes will not fit in `available` (with 10 % slack).
pub fn check_memory(what: &str, needed: u64, available: Option<u64>) -> Result<()> {
    match available {
        Some(a) if needed as f64 > a as f64 * 0.9 => Err(ModelError::Config(format!(
            "{what} needs about {:.1} GB of memory and this machine has {:.1} GB available; \
             use a quantized GGUF file (Q8_0 or Q4_0) or free memory",
            needed as f64 / 1e9,
            a as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::flux::files::locate;

    fn write(path: &Path, names: &[&str]) {
        let t: HashMap<String, Tensor> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Tensor::zeros((2, 3), DType::BF16, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&t, path).unwrap();
    }

    #[test]
    fn variants_are_read_from_the_weights_and_mismatches_refused() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("flux1-dev.safetensors");
        write(
            &dev,
            &[
                "double_blocks.0.img_attn.qkv.weight",
                "guidance_in.in_layer.weight",
            ],
        );
        let schnell = d.path().join("mine.safetensors");
        write(&schnell, &["double_blocks.0.img_attn.qkv.weight"]);
        let f = locate(&dev).unwrap();
        let i = inspect_transformer(&f).unwrap();
        assert_eq!(
            i,
            Inspection {
                guidance: true,
                diffusers_names: false,
                bytes: 2 * 6 * 2,
                elements: 2 * 6,
                largest: 6,
                input_channels: None,
                output_channels: None,
            }
        );
        assert_eq!(resolve_variant(Variant::Dev, &f, &i).unwrap(), Variant::Dev);
        let e = resolve_variant(Variant::Schnell, &f, &i)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--model flux-schnell") && e.contains("guidance embedding"),
            "{e}"
        );
        let e = resolve_variant(Variant::Kontext, &f, &i)
            .unwrap_err()
            .to_string();
        assert!(e.contains("its name says flux-dev"), "{e}");
        let f = locate(&schnell).unwrap();
        let i = inspect_transformer(&f).unwrap();
        assert!(!i.guidance);
        let scaled = d.path().join("flux1-dev-fp8-scaled.safetensors");
        write(
            &scaled,
            &["double_blocks.0.img_attn.qkv.weight", "scaled_fp8"],
        );
        let e = inspect_transformer(&locate(&scaled).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("scaled FP8 weights") && e.contains("fp8-scaled"),
            "{e}"
        );
        assert!(resolve_variant(Variant::Dev, &f, &i).is_err());
        assert_eq!(
            resolve_variant(Variant::Schnell, &f, &i).unwrap(),
            Variant::Schnell
        );
    }

    #[test]
    fn broken_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("flux1-schnell.safetensors");
        std::fs::write(&p, b"short").unwrap();
        let e = safetensors_header(&p).unwrap_err().to_string();
        assert!(
            e.contains("flux1-schnell.safetensors") && e.contains("not a safetensors"),
            "{e}"
        );
        write(&p, &["double_blocks.0.x.weight"]);
        let len = std::fs::metadata(&p).unwrap().len();
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..len as usize - 4]).unwrap();
        let e = safetensors_header(&p).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let g = d.path().join("flux1-dev.gguf");
        std::fs::write(&g, b"GGUFjunk").unwrap();
        let e = gguf_header(&g).unwrap_err().to_string();
        assert!(e.contains("not a readable GGUF"), "{e}");
        let e = check_memory("FLUX.1 dev", 30_000_000_000, Some(24_000_000_000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("30.0 GB") && e.contains("24.0 GB"), "{e}");
        assert!(check_memory("x", 1, Some(24_000_000_000)).is_ok());
    }
}
