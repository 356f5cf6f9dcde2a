//! FLUX.1 parts the user keeps apart from the transformer, as other tools lay them out
//! (`ae.safetensors`, `clip_l.safetensors`, `t5xxl_fp16.safetensors` in separate folders):
//! `--vae`, `--clip`, `--t5` (also a GGUF T5 encoder) name such files and `--tokenizers` a folder holding diffusers'
//! `tokenizer/` and `tokenizer_2/`. What they name replaces what [`locate`](super::files::locate)
//! found beside the transformer.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};
use crate::flux::files::FluxFiles;
use crate::flux::inspect::safetensors_header;

/// Separately given FLUX.1 parts; `None` keeps what was found beside the transformer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Components {
    /// The autoencoder: one safetensors file, Black Forest Labs or diffusers names.
    pub vae: Option<PathBuf>,
    /// CLIP-L's text encoder: one safetensors file (transformers' names, `text_model.*`).
    pub clip: Option<PathBuf>,
    /// T5-XXL's encoder: one safetensors file, a folder of shards with their index JSON, or a
    /// GGUF file (llama.cpp's names, e.g. `t5-v1_1-xxl-encoder-Q8_0.gguf`).
    pub t5: Option<PathBuf>,
    /// A folder with `tokenizer/` (CLIP) and `tokenizer_2/` (T5), as in a diffusers snapshot.
    pub tokenizers: Option<PathBuf>,
    /// LoRA adapters for the transformer with their strengths, merged as it loads
    /// ([`crate::flux::lora`]).
    pub loras: Vec<(PathBuf, f64)>,
}

fn bad(p: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {e}", p.display()))
}

/// The weight files `path` names for the part `flag`: a safetensors file, or a folder holding
/// one (or shards with their index).
fn weight_files(flag: &str, path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        return crate::flux::files::component_files(path)?.ok_or_else(|| {
            bad(
                path,
                format!("{flag}: no safetensors weights in this folder"),
            )
        });
    }
    if !path.is_file() {
        return Err(bad(path, format!("{flag}: no such file or directory")));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("safetensors") => Ok(vec![path.to_path_buf()]),
        _ => Err(bad(
            path,
            format!("{flag}: expected a .safetensors file (other weight formats are not read for this part)"),
        )),
    }
}

/// Whether an autoencoder file uses diffusers' names (`encoder.down_blocks.*`) rather than
/// Black Forest Labs' (`encoder.down.*`), read from its header.
pub fn vae_uses_diffusers_names(file: &Path) -> Result<bool> {
    let names = safetensors_header(file)?;
    let has = |p: &str| names.iter().any(|t| t.name.starts_with(p));
    match (has("encoder.down_blocks.") || has("decoder.up_blocks."), has("decoder.up.")) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(bad(
            file,
            "--vae: not a FLUX autoencoder (neither encoder.down_blocks.* nor decoder.up.* tensors)",
        )),
    }
}

impl Components {
    pub fn is_empty(&self) -> bool {
        *self == Components::default()
    }

    /// Put the named parts into `files`, checking that each exists and is of the right kind.
    pub fn apply(&self, files: &mut FluxFiles) -> Result<()> {
        if let Some(p) = &self.vae {
            let w = weight_files("--vae", p)?;
            let diffusers = vae_uses_diffusers_names(&w[0])?;
            files.vae = Some((w, diffusers));
        }
        if let Some(p) = &self.clip {
            files.clip = Some(weight_files("--clip", p)?);
        }
        if let Some(p) = &self.t5 {
            // T5 may also be a GGUF file (llama.cpp's or transformers' tensor names).
            let gguf = p
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            files.t5 = Some(if gguf && p.is_file() {
                vec![p.clone()]
            } else {
                weight_files("--t5", p)?
            });
        }
        if let Some(d) = &self.tokenizers {
            if !d.is_dir() {
                return Err(bad(d, "--tokenizers: not a folder"));
            }
            let (clip, t5) = (d.join("tokenizer"), d.join("tokenizer_2"));
            if !clip.is_dir() && !t5.is_dir() {
                return Err(bad(
                    d,
                    "--tokenizers: holds neither tokenizer/ (CLIP) nor tokenizer_2/ (T5), the folders of a diffusers FLUX.1 snapshot",
                ));
            }
            if clip.is_dir() {
                files.clip_tokenizer = Some(clip);
            }
            if t5.is_dir() {
                files.t5_tokenizer = Some(t5);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flux::files::locate;
    use candle_core::{DType, Device, Tensor};

    fn write_st(p: &Path, names: &[&str]) {
        let t: std::collections::HashMap<String, Tensor> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
                )
            })
            .collect();
        candle_core::safetensors::save(&t, p).unwrap();
    }

    #[test]
    fn named_parts_replace_what_the_folder_has() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("unet")).unwrap();
        std::fs::write(r.join("unet/flux1-schnell.safetensors"), b"").unwrap();
        let mut f = locate(&r.join("unet/flux1-schnell.safetensors")).unwrap();
        assert!(f.vae.is_none() && f.clip.is_none() && f.t5.is_none());
        std::fs::create_dir_all(r.join("vae")).unwrap();
        std::fs::create_dir_all(r.join("clip")).unwrap();
        write_st(
            &r.join("vae/ae.safetensors"),
            &["decoder.up.0.block.0.conv1.weight"],
        );
        write_st(
            &r.join("vae/diffusers.safetensors"),
            &["decoder.up_blocks.0.resnets.0.conv1.weight"],
        );
        write_st(&r.join("clip/clip_l.safetensors"), &["text_model.x"]);
        write_st(&r.join("clip/t5xxl_fp16.safetensors"), &["shared.weight"]);
        std::fs::create_dir_all(r.join("tok/tokenizer_2")).unwrap();
        let c = Components {
            vae: Some(r.join("vae/ae.safetensors")),
            clip: Some(r.join("clip/clip_l.safetensors")),
            t5: Some(r.join("clip/t5xxl_fp16.safetensors")),
            tokenizers: Some(r.join("tok")),
            ..Default::default()
        };
        c.apply(&mut f).unwrap();
        assert_eq!(f.vae, Some((vec![r.join("vae/ae.safetensors")], false)));
        assert_eq!(f.clip, Some(vec![r.join("clip/clip_l.safetensors")]));
        assert_eq!(f.t5, Some(vec![r.join("clip/t5xxl_fp16.safetensors")]));
        assert_eq!(f.t5_tokenizer, Some(r.join("tok/tokenizer_2")));
        assert_eq!(f.clip_tokenizer, None);
        let c = Components {
            vae: Some(r.join("vae/diffusers.safetensors")),
            ..Default::default()
        };
        c.apply(&mut f).unwrap();
        assert_eq!(f.vae.as_ref().map(|v| v.1), Some(true));
    }

    #[test]
    fn wrong_parts_are_named() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::write(r.join("flux1-dev.safetensors"), b"").unwrap();
        let mut f = locate(&r.join("flux1-dev.safetensors")).unwrap();
        let err = |c: Components, f: &mut FluxFiles| c.apply(f).unwrap_err().to_string();
        let e = err(
            Components {
                t5: Some(r.join("missing.safetensors")),
                ..Default::default()
            },
            &mut f,
        );
        assert!(
            e.contains("--t5") && e.contains("missing.safetensors") && e.contains("no such file"),
            "{e}"
        );
        std::fs::write(r.join("clip.gguf"), b"").unwrap();
        let e = err(
            Components {
                clip: Some(r.join("clip.gguf")),
                ..Default::default()
            },
            &mut f,
        );
        assert!(e.contains("expected a .safetensors file"), "{e}");
        write_st(&r.join("clip.safetensors"), &["text_model.x"]);
        let e = err(
            Components {
                vae: Some(r.join("clip.safetensors")),
                ..Default::default()
            },
            &mut f,
        );
        assert!(e.contains("--vae: not a FLUX autoencoder"), "{e}");
        std::fs::create_dir_all(r.join("empty")).unwrap();
        let e = err(
            Components {
                tokenizers: Some(r.join("empty")),
                ..Default::default()
            },
            &mut f,
        );
        assert!(e.contains("neither tokenizer/"), "{e}");
        let e = err(
            Components {
                clip: Some(r.join("empty")),
                ..Default::default()
            },
            &mut f,
        );
        assert!(e.contains("no safetensors weights"), "{e}");
    }
}
