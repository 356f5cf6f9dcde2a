//! LoRA adapters for the FLUX.1 transformer, merged into its weights as they load:
//! `W' = W + Σ scale · (alpha / rank) · B·A` for every adapted linear layer.
//!
//! The files in circulation name layers three ways, all read here: Black Forest Labs module
//! paths (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`), diffusers / PEFT
//! paths (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, where q, k and v are
//! separate layers that BFL's weights fuse), and kohya's flattened names
//! (`lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` with a `.alpha`). Written here
//! because candle has no LoRA loader; the merge sits in a VarBuilder backend over the
//! BFL-named weights, so it applies whichever layout the base weights come in, and every
//! adapter tensor must land on a layer (an adapter for another model is an error, not a no-op).
//! Quantized (GGUF) weights take the same updates as low-rank factors beside each product
//! ([`crate::weights::Weights::Adapted`]). Adapter parts for CLIP-L (`lora_te1_*`,
//! `text_encoder.*`) merge into CLIP the same way ([`Target::Clip`]); T5 parts are refused.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use crate::error::{ModelError, Result};
use crate::flux::convert::{transformer_source, Source};

/// One adapted layer: `up (out, rank) · down (rank, in)`, times `scale`.
#[derive(Debug, Clone)]
struct Pair {
    down: Tensor,
    up: Tensor,
    scale: f64,
}

/// What a file holds for one layer: down, up, alpha.
type Found = (Option<Tensor>, Option<Tensor>, Option<f64>);

/// Adapters to merge: layer key (as the file names it, prefixes removed) → pairs.
#[derive(Debug, Default)]
pub struct Lora {
    layers: HashMap<String, Vec<Pair>>,
    /// Which file each key came from, for errors.
    files: HashMap<String, PathBuf>,
}

fn bad(p: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Config(format!("{}: {e}", p.display()))
}

/// `(layer key, role)` of a tensor name; role is "down", "up" or "alpha".
fn parse_name(name: &str) -> Option<(String, &'static str)> {
    let mut n = name;
    for p in [
        "base_model.model.",
        "model.diffusion_model.",
        "diffusion_model.",
        "transformer.",
    ] {
        if let Some(rest) = n.strip_prefix(p) {
            n = rest;
            break;
        }
    }
    for (suffix, role) in [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".alpha", "alpha"),
    ] {
        if let Some(key) = n.strip_suffix(suffix) {
            return Some((key.to_string(), role));
        }
    }
    None
}

/// The metadata entry in which diffusers stores each model's PEFT `LoraConfig` as JSON (keys
/// `transformer.lora_alpha`, `transformer.alpha_pattern`, `text_encoder.r`, …).
const PEFT_METADATA: &str = "lora_adapter_metadata";

/// One model's PEFT adapter config: what sets the factor of layers without an `.alpha` tensor.
#[derive(Debug, Default)]
struct PeftConfig {
    alpha: Option<f64>,
    /// Per-layer alphas: PEFT matches pattern `p` against a layer's path as the regular
    /// expression `(.*\.)?(p)$`, taking the first match in the stored (sorted) order.
    alpha_pattern: Vec<(regex::Regex, f64)>,
    /// rsLoRA divides alpha by √rank instead of rank.
    rslora: bool,
}

/// The PEFT configs of a file's models (`transformer`, `text_encoder`), from its metadata.
#[derive(Debug, Default)]
struct PeftConfigs(HashMap<String, PeftConfig>);

impl PeftConfigs {
    fn read(path: &Path) -> Result<PeftConfigs> {
        let meta = crate::flux::inspect::safetensors_metadata(path)?;
        let Some(text) = meta.get(PEFT_METADATA) else {
            return Ok(PeftConfigs::default());
        };
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| {
                bad(
                    path,
                    format!("metadata {PEFT_METADATA} is not a JSON object ({e})"),
                )
            })?;
        let number = |k: &str, v: &serde_json::Value| {
            v.as_f64()
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("metadata {PEFT_METADATA}: {k} = {v} is not a positive number"),
                    )
                })
        };
        let mut out: HashMap<String, PeftConfig> = HashMap::new();
        for (k, v) in &fields {
            let Some((model, field)) = k.split_once('.') else {
                continue;
            };
            let c = out.entry(model.to_string()).or_default();
            match field {
                "lora_alpha" => c.alpha = Some(number(k, v)?),
                "use_rslora" => c.rslora = v.as_bool() == Some(true),
                "use_dora" if v.as_bool() == Some(true) => {
                    return Err(bad(
                        path,
                        format!("a DoRA adapter ({k} is true); Sprout applies plain LoRA only"),
                    ))
                }
                "alpha_pattern" => {
                    for (p, a) in v.as_object().into_iter().flatten() {
                        let re =
                            regex::Regex::new(&format!(r"^(?:.*\.)?(?:{p})$")).map_err(|e| {
                                bad(
                                    path,
                                    format!("metadata {PEFT_METADATA}: {k} pattern {p:?}: {e}"),
                                )
                            })?;
                        c.alpha_pattern.push((re, number(&format!("{k}.{p}"), a)?));
                    }
                }
                _ => {}
            }
        }
        Ok(PeftConfigs(out))
    }

    /// The factor alpha / rank (alpha / √rank for rsLoRA) of layer `key` (as [`parse_name`]
    /// leaves it: `text_encoder.` kept, `transformer.` removed) of rank `rank`; None where no
    /// config covers it (kohya's `lora_*` names carry their alphas as tensors).
    fn factor(&self, key: &str, rank: usize) -> Option<f64> {
        if key.starts_with("lora_") {
            return None;
        }
        let (model, module) = match key.split_once('.') {
            Some((m @ ("text_encoder" | "text_encoder_2"), rest)) => (m, rest),
            _ => ("transformer", key),
        };
        let c = self.0.get(model)?;
        let alpha = c
            .alpha_pattern
            .iter()
            .find(|(re, _)| re.is_match(module))
            .map(|(_, a)| *a)
            .or(c.alpha)?;
        let r = rank as f64;
        Some(if c.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        })
    }
}

impl Lora {
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Add the adapter in `path` at strength `strength` (1 = as trained).
    pub fn add_file(&mut self, path: &Path, strength: f64) -> Result<()> {
        if !strength.is_finite() {
            return Err(bad(
                path,
                format!("LoRA strength {strength} is not a number"),
            ));
        }
        let peft = PeftConfigs::read(path)?;
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(path, format!("not a readable safetensors LoRA file ({e})")))?;
        let mut parts: HashMap<String, Found> = HashMap::new();
        for (name, t) in tensors {
            let (key, role) = parse_name(&name).ok_or_else(|| {
                bad(
                    path,
                    format!(
                        "tensor {name} is not a LoRA tensor (expected *.lora_A/lora_B.weight, \
                         *.lora_down/lora_up.weight or *.alpha)"
                    ),
                )
            })?;
            let e = parts.entry(key).or_default();
            let t = t
                .to_dtype(DType::F32)
                .map_err(|e| bad(path, format!("{name}: {e}")))?;
            match role {
                "down" => e.0 = Some(t),
                "up" => e.1 = Some(t),
                _ => {
                    let v = t.flatten_all()?.to_vec1::<f32>()?;
                    match v.as_slice() {
                        [a] if a.is_finite() && *a > 0.0 => e.2 = Some(*a as f64),
                        _ => {
                            return Err(bad(
                                path,
                                format!("{name}: alpha is not one positive number ({v:?})"),
                            ))
                        }
                    }
                }
            }
        }
        if parts.is_empty() {
            return Err(bad(path, "holds no tensors"));
        }
        for (key, (down, up, alpha)) in parts {
            let (Some(down), Some(up)) = (down, up) else {
                return Err(bad(
                    path,
                    format!("layer {key} lacks its down (A) or up (B) matrix"),
                ));
            };
            let (rank, _) = down.dims2().map_err(|e| bad(path, format!("{key}: {e}")))?;
            let (_, up_rank) = up.dims2().map_err(|e| bad(path, format!("{key}: {e}")))?;
            if rank != up_rank || rank == 0 {
                return Err(bad(
                    path,
                    format!(
                        "layer {key}: down {:?} and up {:?} do not share a rank",
                        down.dims(),
                        up.dims()
                    ),
                ));
            }
            // Without an alpha tensor, the adapter config in the metadata gives the factor;
            // without either, alpha = rank (as diffusers reads such files): a factor of 1.
            let factor = match alpha {
                Some(a) => a / rank as f64,
                None => peft.factor(&key, rank).unwrap_or(1.0),
            };
            let scale = strength * factor;
            self.files.insert(key.clone(), path.to_path_buf());
            self.layers
                .entry(key)
                .or_default()
                .push(Pair { down, up, scale });
        }
        Ok(())
    }

    /// The pairs stored for BFL module `module` under any of its names (BFL dotted, kohya
    /// flattened), marking them used.
    fn lookup(&self, keys: &[String], used: &mut HashSet<String>) -> Vec<Pair> {
        let mut out = Vec::new();
        for k in keys {
            if let Some(p) = self.layers.get(k) {
                used.insert(k.clone());
                out.extend(p.iter().cloned());
            }
        }
        out
    }
}

/// The names a module goes by in adapter files: its path and kohya's flattening of it.
fn names_of(module: &str, kohya_prefix: &str) -> Vec<String> {
    vec![
        module.to_string(),
        format!("{kohya_prefix}{}", module.replace('.', "_")),
    ]
}

/// A low-rank update `up (out, R) · down (R, in)`, strengths folded into `up`.
#[derive(Debug, Clone)]
pub struct LowRank {
    pub up: Tensor,
    pub down: Tensor,
}

impl LowRank {
    /// Both updates at once: ranks stacked.
    fn join(a: Option<LowRank>, b: LowRank) -> candle_core::Result<LowRank> {
        Ok(match a {
            None => b,
            Some(a) => LowRank {
                up: Tensor::cat(&[a.up, b.up], 1)?,
                down: Tensor::cat(&[a.down, b.down], 0)?,
            },
        })
    }

    /// The update of `rows` output rows placed at row `offset` of `out` (zeros elsewhere).
    fn placed(self, offset: usize, out: usize) -> candle_core::Result<LowRank> {
        let (rows, r) = self.up.dims2()?;
        let mut parts = Vec::new();
        if offset > 0 {
            parts.push(Tensor::zeros((offset, r), DType::F32, &Device::Cpu)?);
        }
        parts.push(self.up);
        if offset + rows < out {
            parts.push(Tensor::zeros(
                (out - offset - rows, r),
                DType::F32,
                &Device::Cpu,
            )?);
        }
        Ok(LowRank {
            up: Tensor::cat(&parts, 0)?,
            down: self.down,
        })
    }

    /// The two halves of the output rows exchanged.
    fn swapped(self) -> candle_core::Result<LowRank> {
        let h = self.up.dim(0)? / 2;
        Ok(LowRank {
            up: Tensor::cat(&[self.up.narrow(0, h, h)?, self.up.narrow(0, 0, h)?], 0)?,
            down: self.down,
        })
    }

    /// The dense update `up · down`.
    pub fn dense(&self) -> candle_core::Result<Tensor> {
        self.up.matmul(&self.down)
    }
}

/// The pairs of one layer as one low-rank update of an (out, in) weight; None without pairs.
fn factors(
    pairs: &[Pair],
    out: usize,
    inp: usize,
    key: &str,
) -> candle_core::Result<Option<LowRank>> {
    let mut acc = None;
    for p in pairs {
        let (o, i) = (p.up.dim(0)?, p.down.dim(1)?);
        if (o, i) != (out, inp) {
            candle_core::bail!(
                "LoRA for {key} makes a {:?} update, the layer is {:?}",
                [o, i],
                [out, inp]
            );
        }
        let lr = LowRank {
            up: (&p.up * p.scale)?,
            down: p.down.clone(),
        };
        acc = Some(LowRank::join(acc, lr)?);
    }
    Ok(acc)
}

/// Which model a [`WithLora`] backend serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The transformer, by BFL names.
    Transformer,
    /// CLIP-L's text encoder (`text_model.*`; kohya's `lora_te1_*`).
    Clip,
}

/// A VarBuilder backend serving weights from `inner` with the adapters merged in.
pub struct WithLora<B> {
    inner: B,
    usage: LoraUsage,
    target: Target,
}

/// Which adapter layers the model has asked for, shared with the backend.
#[derive(Clone)]
pub struct LoraUsage {
    lora: Arc<Lora>,
    used: Arc<Mutex<HashSet<String>>>,
}

impl LoraUsage {
    /// Adapters to apply, none used yet (for weights that take them unmerged, see
    /// [`crate::weights::Weights::Adapted`]).
    pub fn new(lora: Lora) -> LoraUsage {
        LoraUsage {
            lora: Arc::new(lora),
            used: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The update of CLIP weight `name` (`text_model.…weight`, out × in) as low-rank factors,
    /// under its path, kohya's `lora_te1_*` or PEFT's `text_encoder.*` name.
    pub fn low_rank_clip(
        &self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> candle_core::Result<Option<LowRank>> {
        let Some(module) = name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let mut names = names_of(module, "lora_te1_");
        names.push(format!("text_encoder.{module}"));
        let mut used = self.used.lock().expect("not poisoned");
        factors(&self.lora.lookup(&names, &mut used), out, inp, module)
    }

    /// The update of BFL weight `name` (out, in) as low-rank factors, if any adapter touches
    /// it (marking the adapter layers used).
    pub fn low_rank(
        &self,
        name: &str,
        out: usize,
        inp: usize,
    ) -> candle_core::Result<Option<LowRank>> {
        let Some(module) = name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let lora = &self.lora;
        let mut used = self.used.lock().expect("not poisoned");
        let mut total = factors(
            &lora.lookup(&names_of(module, "lora_unet_"), &mut used),
            out,
            inp,
            module,
        )?;
        // The same layer under diffusers' names: one layer, or several fused along the rows.
        let diffusers = |k: &str, used: &mut HashSet<String>| {
            let m = k.strip_suffix(".weight").unwrap_or(k);
            lora.lookup(&names_of(m, "lora_transformer_"), used)
        };
        match transformer_source(name) {
            Some(Source::Key(k)) => {
                if let Some(lr) = factors(&diffusers(&k, &mut used), out, inp, &k)? {
                    total = Some(LowRank::join(total, lr)?);
                }
            }
            Some(Source::SwapHalves(k)) => {
                if let Some(lr) = factors(&diffusers(&k, &mut used), out, inp, &k)? {
                    total = Some(LowRank::join(total, lr.swapped()?)?);
                }
            }
            Some(Source::Cat(keys)) => {
                // Attention parts have as many rows as the layer has inputs; an MLP part
                // (single blocks' linear1) takes the rest.
                let n = keys.len();
                let Some(last) = out.checked_sub((n - 1) * inp) else {
                    candle_core::bail!("{name}: {out} rows cannot hold {n} fused layers of {inp}");
                };
                for (i, k) in keys.iter().enumerate() {
                    let rows = if i + 1 < n { inp } else { last };
                    if let Some(lr) = factors(&diffusers(k, &mut used), rows, inp, k)? {
                        total = Some(LowRank::join(total, lr.placed(i * inp, out)?)?);
                    }
                }
            }
            _ => {}
        }
        Ok(total)
    }

    /// Adapter layers that matched no weight the model loaded: an error naming them (after the
    /// model is built, every real layer has been asked for).
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().expect("not poisoned");
        let mut unused: Vec<&String> = self
            .lora
            .layers
            .keys()
            .filter(|k| !used.contains(*k))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        let file = self.lora.files[unused[0]].display().to_string();
        let t5 = |k: &str| k.starts_with("lora_te2") || k.starts_with("text_encoder_2");
        if let Some(k) = unused.iter().find(|k| t5(k)) {
            return Err(ModelError::Config(format!(
                "{file}: adapts T5 too ({k}), which Sprout does not apply; adapters are \
                 applied to the transformer and CLIP"
            )));
        }
        Err(ModelError::Config(format!(
            "{file}: {} LoRA layer(s) match no layer of this FLUX.1 transformer (first: {}); \
             is it an adapter for another model?",
            unused.len(),
            unused[0]
        )))
    }
}

impl<B: SimpleBackend> WithLora<B> {
    /// The backend, and a handle to check afterwards that every adapter layer was used.
    pub fn new(inner: B, lora: Lora) -> (Self, LoraUsage) {
        let usage = LoraUsage::new(lora);
        (
            Self::with_usage(inner, usage.clone(), Target::Transformer),
            usage,
        )
    }

    /// A backend for `target` sharing `usage` with the other parts' backends.
    pub fn with_usage(inner: B, usage: LoraUsage, target: Target) -> Self {
        WithLora {
            inner,
            usage,
            target,
        }
    }

    fn merged(&self, name: &str, t: Tensor) -> candle_core::Result<Tensor> {
        if t.rank() != 2 {
            return Ok(t);
        }
        let (out, inp) = t.dims2()?;
        let lr = match self.target {
            Target::Transformer => self.usage.low_rank(name, out, inp)?,
            Target::Clip => self.usage.low_rank_clip(name, out, inp)?,
        };
        match lr {
            None => Ok(t),
            Some(lr) => {
                let dtype = t.dtype();
                (t.to_dtype(DType::F32)? + lr.dense()?.to_device(t.device())?)?.to_dtype(dtype)
            }
        }
    }
}

impl<B: SimpleBackend> SimpleBackend for WithLora<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, init, dtype, dev)?;
        self.merged(name, t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get_unchecked(name, dtype, dev)?;
        self.merged(name, t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// Parse `FILE[:STRENGTH]` (strength 1 when absent).
pub fn parse_spec(spec: &str) -> std::result::Result<(PathBuf, f64), String> {
    if let Some((file, s)) = spec.rsplit_once(':') {
        if let Ok(v) = s.parse::<f64>() {
            if !v.is_finite() {
                return Err(format!("--lora {spec}: strength {s} is not a number"));
            }
            return Ok((PathBuf::from(file), v));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_three_schemes() {
        assert_eq!(
            parse_name("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight"),
            Some(("double_blocks.0.img_attn.qkv".into(), "down"))
        );
        assert_eq!(
            parse_name("transformer.transformer_blocks.3.attn.to_q.lora_B.weight"),
            Some(("transformer_blocks.3.attn.to_q".into(), "up"))
        );
        assert_eq!(
            parse_name("lora_unet_single_blocks_7_linear1.alpha"),
            Some(("lora_unet_single_blocks_7_linear1".into(), "alpha"))
        );
        assert_eq!(parse_name("double_blocks.0.img_attn.qkv.weight"), None);
        assert_eq!(
            names_of("single_blocks.7.linear1", "lora_unet_")[1],
            "lora_unet_single_blocks_7_linear1"
        );
        assert_eq!(parse_spec("a/b.safetensors:0.8").unwrap().1, 0.8);
        assert_eq!(
            parse_spec("C:/x.safetensors").unwrap(),
            (PathBuf::from("C:/x.safetensors"), 1.0)
        );
    }
}
