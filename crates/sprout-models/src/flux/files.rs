//! Finding a FLUX.1 model's files in what the user has: a Black Forest Labs file
//! (`flux1-dev.safetensors`, with `ae.safetensors` beside it), a GGUF conversion of one, or a
//! diffusers snapshot directory (`model_index.json`, `transformer/`, `vae/`, `text_encoder/`,
//! `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, sharded weights with their index JSON).
//! Which variant the files hold is read from the weights (a guidance embedding means dev or
//! Kontext) and from names (`kontext`, `fill`, `canny`, `depth` in the file name,
//! `FluxKontextPipeline` or `FluxFillPipeline` in the index).

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Schnell,
    Dev,
    Kontext,
    /// FLUX.1 Fill [dev]: inpainting and outpainting, the masked image and the mask as extra
    /// input channels.
    Fill,
    /// FLUX.1 Canny [dev]: an edge map's latents as extra input channels.
    Canny,
    /// FLUX.1 Depth [dev]: a depth map's latents as extra input channels.
    Depth,
}

impl Variant {
    pub fn parse(s: &str) -> Result<Variant> {
        match s {
            "flux-schnell" => Ok(Variant::Schnell),
            "flux-dev" => Ok(Variant::Dev),
            "flux-kontext" => Ok(Variant::Kontext),
            "flux-fill" => Ok(Variant::Fill),
            "flux-canny" => Ok(Variant::Canny),
            "flux-depth" => Ok(Variant::Depth),
            _ => Err(ModelError::Config(format!(
                "unknown FLUX model {s:?}; models: flux-schnell, flux-dev, flux-kontext, flux-fill, flux-canny, flux-depth"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Variant::Schnell => "flux-schnell",
            Variant::Dev => "flux-dev",
            Variant::Kontext => "flux-kontext",
            Variant::Fill => "flux-fill",
            Variant::Canny => "flux-canny",
            Variant::Depth => "flux-depth",
        }
    }

    /// Canny and Depth: a control image's latents beside the target's.
    pub fn is_control(self) -> bool {
        self.control_map().is_some()
    }

    /// What the control image of Canny / Depth is: an "edge" or a "depth" map.
    pub fn control_map(self) -> Option<&'static str> {
        match self {
            Variant::Canny => Some("edge"),
            Variant::Depth => Some("depth"),
            _ => None,
        }
    }

    /// T5 tokens per prompt in the reference pipelines: schnell 256, the others 512.
    pub fn t5_len(self) -> usize {
        if self == Variant::Schnell {
            256
        } else {
            512
        }
    }

    /// Guidance-distilled variants take the guidance scale as an input.
    pub fn guidance_embed(self) -> bool {
        self != Variant::Schnell
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Black Forest Labs names, one safetensors file.
    Bfl,
    /// BFL names, quantized tensors in a GGUF file.
    Gguf,
    /// diffusers names, per-component folders, possibly sharded.
    Diffusers,
}

/// The files of one FLUX model. Optional parts the user may supply separately.
#[derive(Debug, Clone)]
pub struct FluxFiles {
    pub layout: Layout,
    /// The transformer's weight files (several when sharded).
    pub transformer: Vec<PathBuf>,
    /// diffusers `transformer/config.json`.
    pub transformer_config: Option<PathBuf>,
    /// The autoencoder's weight files and whether they use diffusers names.
    pub vae: Option<(Vec<PathBuf>, bool)>,
    /// `text_encoder/` (CLIP-L) and `text_encoder_2/` (T5-XXL) weight files.
    pub clip: Option<Vec<PathBuf>>,
    pub t5: Option<Vec<PathBuf>>,
    /// `tokenizer/` and `tokenizer_2/` directories.
    pub clip_tokenizer: Option<PathBuf>,
    pub t5_tokenizer: Option<PathBuf>,
    /// The variant the names declare, if they do.
    pub named_variant: Option<Variant>,
}

fn io(p: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {e}", p.display()))
}

/// Weight files of a diffusers component: one `*.safetensors`, or the shards its
/// `*.safetensors.index.json` lists.
pub fn component_files(dir: &Path) -> Result<Option<Vec<PathBuf>>> {
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    if let Some(index) = entries
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".safetensors.index.json"))
    {
        let text = std::fs::read_to_string(index).map_err(|e| io(index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io(index, e))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| io(index, "no weight_map"))?;
        let mut shards: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        shards.sort();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(io(
                missing,
                format!("shard listed in {} is missing", index.display()),
            ));
        }
        return Ok(Some(files));
    }
    let singles: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    match singles.len() {
        0 => Ok(None),
        1 => Ok(Some(singles)),
        _ => Err(io(
            dir,
            format!(
                "{} safetensors files and no index JSON saying which to use",
                singles.len()
            ),
        )),
    }
}

fn variant_in_name(p: &Path) -> Option<Variant> {
    let n = p.file_name()?.to_string_lossy().to_lowercase();
    if n.contains("kontext") {
        Some(Variant::Kontext)
    } else if n.contains("fill") {
        Some(Variant::Fill)
    } else if n.contains("canny") {
        Some(Variant::Canny)
    } else if n.contains("depth") {
        Some(Variant::Depth)
    } else if n.contains("schnell") {
        Some(Variant::Schnell)
    } else if n.contains("dev") {
        Some(Variant::Dev)
    } else {
        None
    }
}

fn dir_if(p: PathBuf) -> Option<PathBuf> {
    p.is_dir().then_some(p)
}

/// Text encoders and tokenizers of a diffusers-style directory, if present.
fn text_parts(root: &Path, f: &mut FluxFiles) -> Result<()> {
    f.clip = component_files(&root.join("text_encoder"))?;
    f.t5 = component_files(&root.join("text_encoder_2"))?;
    f.clip_tokenizer = dir_if(root.join("tokenizer"));
    f.t5_tokenizer = dir_if(root.join("tokenizer_2"));
    Ok(())
}

/// Locate a model's files from the path the user gave (`--weights`).
pub fn locate(path: &Path) -> Result<FluxFiles> {
    if !path.exists() {
        return Err(io(path, "no such file or directory"));
    }
    let mut f = FluxFiles {
        layout: Layout::Bfl,
        transformer: Vec::new(),
        transformer_config: None,
        vae: None,
        clip: None,
        t5: None,
        clip_tokenizer: None,
        t5_tokenizer: None,
        named_variant: None,
    };
    let (root, transformer) = if path.is_file() {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        f.layout = match ext.as_str() {
            "gguf" => Layout::Gguf,
            "safetensors" => Layout::Bfl,
            _ => {
                return Err(io(
                    path,
                    "unknown weight file type (expected .safetensors or .gguf)",
                ))
            }
        };
        f.named_variant = variant_in_name(path);
        let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (root, Some(vec![path.to_path_buf()]))
    } else {
        (path.to_path_buf(), None)
    };
    if let Some(t) = transformer {
        f.transformer = t;
    } else if root.join("transformer").is_dir() {
        f.layout = Layout::Diffusers;
        f.transformer = component_files(&root.join("transformer"))?.ok_or_else(|| {
            io(
                &root.join("transformer"),
                "no safetensors weights in this folder",
            )
        })?;
        f.transformer_config = Some(root.join("transformer/config.json"));
        let index = root.join("model_index.json");
        if let Ok(text) = std::fs::read_to_string(&index) {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io(&index, e))?;
            match v["_class_name"].as_str() {
                Some(c) if c.contains("Kontext") => f.named_variant = Some(Variant::Kontext),
                Some(c) if c.contains("Fill") => f.named_variant = Some(Variant::Fill),
                _ => {}
            }
        }
    } else {
        // A BFL folder: flux1-*.safetensors (or one GGUF) at its root.
        let mut cands: Vec<PathBuf> = std::fs::read_dir(&root)
            .map_err(|e| io(&root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_lowercase();
                n.starts_with("flux") && (n.ends_with(".safetensors") || n.ends_with(".gguf"))
            })
            .collect();
        cands.sort();
        match cands.len() {
            1 => return locate(&cands[0]).map(|mut g| {
                // The transformer file decides; the folder's other parts are already found.
                g.named_variant = g.named_variant.or(variant_in_name(&root));
                g
            }),
            0 => {
                return Err(io(
                    &root,
                    "not a FLUX model folder: no transformer/ (diffusers) and no flux1-*.safetensors or *.gguf (Black Forest Labs)",
                ))
            }
            _ => {
                return Err(io(
                    &root,
                    format!(
                        "several FLUX transformer files ({}); pass the one to use",
                        cands
                            .iter()
                            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
    }
    let ae = root.join("ae.safetensors");
    f.vae = if ae.is_file() && f.layout != Layout::Diffusers {
        Some((vec![ae], false))
    } else {
        component_files(&root.join("vae"))?.map(|v| (v, true))
    };
    text_parts(&root, &mut f)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn black_forest_labs_folder_and_file() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("flux1-dev.safetensors"));
        touch(&d.path().join("ae.safetensors"));
        touch(&d.path().join("text_encoder_2/model.safetensors"));
        for p in [
            d.path().to_path_buf(),
            d.path().join("flux1-dev.safetensors"),
        ] {
            let f = locate(&p).unwrap();
            assert_eq!(f.layout, Layout::Bfl);
            assert_eq!(f.named_variant, Some(Variant::Dev));
            assert_eq!(f.transformer, vec![d.path().join("flux1-dev.safetensors")]);
            assert_eq!(f.vae, Some((vec![d.path().join("ae.safetensors")], false)));
            assert!(f.t5.is_some() && f.clip.is_none());
        }
        touch(&d.path().join("flux1-schnell-Q4_0.gguf"));
        let e = locate(d.path()).unwrap_err().to_string();
        assert!(e.contains("several FLUX transformer files"), "{e}");
        let f = locate(&d.path().join("flux1-schnell-Q4_0.gguf")).unwrap();
        assert_eq!(
            (f.layout, f.named_variant),
            (Layout::Gguf, Some(Variant::Schnell))
        );
    }

    #[test]
    fn diffusers_snapshot_with_shards() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::write(
            r.join("model_index.json"),
            r#"{"_class_name": "FluxKontextPipeline"}"#,
        )
        .unwrap();
        touch(&r.join("transformer/config.json"));
        std::fs::write(
            r.join("transformer/diffusion_pytorch_model.safetensors.index.json"),
            r#"{"weight_map": {"a": "part-2.safetensors", "b": "part-1.safetensors", "c": "part-2.safetensors"}}"#,
        )
        .unwrap();
        touch(&r.join("transformer/part-1.safetensors"));
        touch(&r.join("vae/diffusion_pytorch_model.safetensors"));
        touch(&r.join("text_encoder/model.safetensors"));
        std::fs::create_dir_all(r.join("tokenizer_2")).unwrap();
        let e = locate(r).unwrap_err().to_string();
        assert!(
            e.contains("part-2.safetensors") && e.contains("missing"),
            "{e}"
        );
        touch(&r.join("transformer/part-2.safetensors"));
        let f = locate(r).unwrap();
        assert_eq!(f.layout, Layout::Diffusers);
        assert_eq!(f.named_variant, Some(Variant::Kontext));
        assert_eq!(
            f.transformer,
            vec![
                r.join("transformer/part-1.safetensors"),
                r.join("transformer/part-2.safetensors")
            ]
        );
        assert_eq!(f.vae.as_ref().map(|v| v.1), Some(true));
        assert!(f.clip.is_some() && f.t5.is_none() && f.t5_tokenizer.is_some());
    }

    #[test]
    fn bad_paths_are_named() {
        let d = tempfile::tempdir().unwrap();
        let e = locate(&d.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("no such file"), "{e}");
        let e = locate(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a FLUX model folder"), "{e}");
        touch(&d.path().join("weights.bin"));
        let e = locate(&d.path().join("weights.bin"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown weight file type"), "{e}");
        assert!(Variant::parse("flux-pro").is_err());
    }
}
