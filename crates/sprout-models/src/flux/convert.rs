//! diffusers → Black Forest Labs weight names. Sprout's MMDiT and the FLUX autoencoder use
//! BFL's module paths (`double_blocks.N.img_attn.qkv`, `encoder.down.0.block.0.conv1`), so a
//! diffusers snapshot is read through [`Renamed`], a VarBuilder backend that builds each BFL
//! tensor on request from its diffusers sources: separate q/k/v projections concatenated,
//! the final norm's (scale, shift) halves swapped to BFL's (shift, scale), attention
//! projections reshaped to 1×1 convolutions. Tensors are converted one at a time, as the
//! model asks for them, so a memory-mapped snapshot is never copied whole.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use serde::Deserialize;

use crate::dit::DitConfig;
use crate::error::{ModelError, Result};

/// The fields of a diffusers `FluxTransformer2DModel` config.json that fix the shapes.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusersTransformerConfig {
    pub in_channels: usize,
    /// Set where the model takes more channels than it predicts (FLUX.1 Fill: 384 in, 64
    /// out; Canny / Depth: 128 in): the rest are conditioning.
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "one")]
    pub patch_size: usize,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}

impl DiffusersTransformerConfig {
    /// The DiT config: FLUX packs 2×2 latent patches into one token, so a diffusers model with
    /// `in_channels` 64 runs on 16-channel latents with patch size 2.
    pub fn to_dit(&self) -> Result<DitConfig> {
        let out = self.out_channels.unwrap_or(self.in_channels);
        if self.patch_size != 1 || !out.is_multiple_of(4) || out > self.in_channels {
            return Err(ModelError::Config(format!(
                "transformer config: patch_size {} with in_channels {} and out_channels {out} is not FLUX's packed 2×2 layout",
                self.patch_size, self.in_channels
            )));
        }
        let cfg = DitConfig {
            latent_channels: out / 4,
            cond_channels: self.in_channels - out,
            patch_size: 2,
            vec_in_dim: self.pooled_projection_dim,
            context_in_dim: self.joint_attention_dim,
            hidden_size: self.num_attention_heads * self.attention_head_dim,
            mlp_ratio: 4.0,
            num_heads: self.num_attention_heads,
            depth: self.num_layers,
            depth_single_blocks: self.num_single_layers,
            axes_dim: self.axes_dims_rope.clone(),
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: self.guidance_embeds,
            linear_bias: true,
            shared_modulation: false,
            mlp: crate::dit::config::MlpKind::Gelu,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Every field of a diffusers `Flux2Transformer2DModel` config.json (the constructor's
/// arguments): each is read, and those Sprout's DiT does not take in another value are
/// refused by name.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusersFlux2Config {
    #[serde(default = "one")]
    pub patch_size: usize,
    #[serde(default = "flux2_in_channels")]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default = "flux2_layers")]
    pub num_layers: usize,
    #[serde(default = "flux2_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "flux2_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "flux2_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "flux2_joint_dim")]
    pub joint_attention_dim: usize,
    #[serde(default = "flux2_time_channels")]
    pub timestep_guidance_channels: usize,
    #[serde(default = "flux2_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "flux2_axes")]
    pub axes_dims_rope: Vec<usize>,
    #[serde(default = "flux2_theta")]
    pub rope_theta: usize,
    #[serde(default = "flux2_eps")]
    pub eps: f64,
    #[serde(default = "yes")]
    pub guidance_embeds: bool,
}

// diffusers' defaults for the fields a config.json may leave out (FLUX.2 [dev]'s shape).
fn flux2_in_channels() -> usize {
    128
}
fn flux2_layers() -> usize {
    8
}
fn flux2_single_layers() -> usize {
    48
}
fn flux2_head_dim() -> usize {
    128
}
fn flux2_heads() -> usize {
    48
}
fn flux2_joint_dim() -> usize {
    15_360
}
fn flux2_time_channels() -> usize {
    256
}
fn flux2_mlp_ratio() -> f64 {
    3.0
}
fn flux2_axes() -> Vec<usize> {
    vec![32, 32, 32, 32]
}
fn flux2_theta() -> usize {
    2000
}
fn flux2_eps() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}

impl DiffusersFlux2Config {
    /// The DiT config: FLUX.2's pipelines pack 2×2 latent patches into one token, so
    /// `in_channels` 128 runs on 32-channel latents with patch size 2.
    pub fn to_dit(&self) -> Result<DitConfig> {
        let refuse = |field: &str, value: String, takes: &str| {
            Err(ModelError::Config(format!(
                "FLUX.2 transformer config: {field} = {value} is not supported (Sprout's DiT takes {takes})"
            )))
        };
        let out = self.out_channels.unwrap_or(self.in_channels);
        if self.patch_size != 1 {
            return refuse("patch_size", self.patch_size.to_string(), "1");
        }
        if out != self.in_channels || !out.is_multiple_of(4) {
            return refuse(
                "out_channels",
                format!("{out} with in_channels {}", self.in_channels),
                "out_channels equal to in_channels, a multiple of 4",
            );
        }
        if self.timestep_guidance_channels != 256 {
            return refuse(
                "timestep_guidance_channels",
                self.timestep_guidance_channels.to_string(),
                "256",
            );
        }
        if (self.eps - 1e-6).abs() > 1e-12 {
            return refuse("eps", self.eps.to_string(), "1e-6");
        }
        let cfg = DitConfig {
            latent_channels: out / 4,
            patch_size: 2,
            vec_in_dim: 0,
            context_in_dim: self.joint_attention_dim,
            hidden_size: self.num_attention_heads * self.attention_head_dim,
            mlp_ratio: self.mlp_ratio,
            num_heads: self.num_attention_heads,
            depth: self.num_layers,
            depth_single_blocks: self.num_single_layers,
            axes_dim: self.axes_dims_rope.clone(),
            theta: self.rope_theta,
            qkv_bias: false,
            guidance_embed: self.guidance_embeds,
            cond_channels: 0,
            linear_bias: false,
            shared_modulation: true,
            mlp: crate::dit::config::MlpKind::SwiGlu,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// How one BFL tensor is made from diffusers tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Key(String),
    /// Concatenated along the output dimension (fused q/k/v[/mlp] projections).
    Cat(Vec<String>),
    /// The two halves of the output dimension exchanged.
    SwapHalves(String),
    /// A linear weight (out, in) used as a 1×1 convolution (out, in, 1, 1).
    Conv1x1(String),
}

/// Split `module.param` at the last dot.
fn split(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.')
}

/// `double_blocks.7.rest` → (7, "rest").
fn indexed<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (i, rest) = rest.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Where FLUX.1's and FLUX.2's diffusers transformers differ in naming; the attention, the
/// norms, the input and output layers are named alike.
struct Names {
    /// diffusers' module of the time / guidance / pooled-text embedders.
    embedders: &'static str,
    /// A double block's MLP layers (BFL `img_mlp.0`, `img_mlp.2`) under `ff` / `ff_context`.
    mlp: [&'static str; 2],
    /// FLUX.1: per-block modulation (`norm1.linear`, …) and the single block's separate
    /// q/k/v/MLP projections; FLUX.2: shared modulation and fused projections.
    flux2: bool,
}

const FLUX1: Names = Names {
    embedders: "time_text_embed",
    mlp: ["net.0.proj", "net.2"],
    flux2: false,
};

const FLUX2: Names = Names {
    embedders: "time_guidance_embed",
    mlp: ["linear_in", "linear_out"],
    flux2: true,
};

/// The diffusers source of a BFL FLUX.1 transformer tensor, or None for a name FLUX.1 does
/// not have.
pub fn transformer_source(bfl: &str) -> Option<Source> {
    source(&FLUX1, bfl)
}

/// The diffusers source of a BFL FLUX.2 transformer tensor, or None for a name FLUX.2 does
/// not have (the inverse of diffusers' `convert_flux2_transformer_checkpoint_to_diffusers`).
pub fn flux2_transformer_source(bfl: &str) -> Option<Source> {
    source(&FLUX2, bfl)
}

fn source(n: &Names, bfl: &str) -> Option<Source> {
    let (module, param) = split(bfl)?;
    let key = |m: String| Some(Source::Key(format!("{m}.{param}")));
    let cat = |parts: &[String]| {
        Some(Source::Cat(
            parts.iter().map(|p| format!("{p}.{param}")).collect(),
        ))
    };
    if let Some((i, m)) = indexed(module, "double_blocks") {
        let d = format!("transformer_blocks.{i}");
        let attn = |p: [&str; 3]| cat(&p.map(|x| format!("{d}.attn.{x}")));
        let norm =
            |x: &str| (param == "scale").then(|| Source::Key(format!("{d}.attn.{x}.weight")));
        let [mlp_in, mlp_out] = n.mlp;
        return match m {
            "img_mod.lin" if !n.flux2 => key(format!("{d}.norm1.linear")),
            "txt_mod.lin" if !n.flux2 => key(format!("{d}.norm1_context.linear")),
            "img_attn.qkv" => attn(["to_q", "to_k", "to_v"]),
            "txt_attn.qkv" => attn(["add_q_proj", "add_k_proj", "add_v_proj"]),
            "img_attn.norm.query_norm" => norm("norm_q"),
            "img_attn.norm.key_norm" => norm("norm_k"),
            "txt_attn.norm.query_norm" => norm("norm_added_q"),
            "txt_attn.norm.key_norm" => norm("norm_added_k"),
            "img_attn.proj" => key(format!("{d}.attn.to_out.0")),
            "txt_attn.proj" => key(format!("{d}.attn.to_add_out")),
            "img_mlp.0" => key(format!("{d}.ff.{mlp_in}")),
            "img_mlp.2" => key(format!("{d}.ff.{mlp_out}")),
            "txt_mlp.0" => key(format!("{d}.ff_context.{mlp_in}")),
            "txt_mlp.2" => key(format!("{d}.ff_context.{mlp_out}")),
            _ => None,
        };
    }
    if let Some((i, m)) = indexed(module, "single_blocks") {
        let d = format!("single_transformer_blocks.{i}");
        let norm =
            |x: &str| (param == "scale").then(|| Source::Key(format!("{d}.attn.{x}.weight")));
        return match m {
            "modulation.lin" if !n.flux2 => key(format!("{d}.norm.linear")),
            "linear1" if n.flux2 => key(format!("{d}.attn.to_qkv_mlp_proj")),
            "linear1" => {
                cat(&["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
                    .map(|x| format!("{d}.{x}")))
            }
            "linear2" if n.flux2 => key(format!("{d}.attn.to_out")),
            "linear2" => key(format!("{d}.proj_out")),
            "norm.query_norm" => norm("norm_q"),
            "norm.key_norm" => norm("norm_k"),
            _ => None,
        };
    }
    match module {
        "img_in" => key("x_embedder".into()),
        "txt_in" => key("context_embedder".into()),
        "final_layer.linear" => key("proj_out".into()),
        // diffusers' AdaLayerNormContinuous emits (scale, shift); BFL's last layer (shift, scale).
        "final_layer.adaLN_modulation.1" => {
            Some(Source::SwapHalves(format!("norm_out.linear.{param}")))
        }
        "double_stream_modulation_img.lin"
        | "double_stream_modulation_txt.lin"
        | "single_stream_modulation.lin"
            if n.flux2 =>
        {
            key(format!("{}.linear", module.trim_end_matches(".lin")))
        }
        _ => {
            let (e, layer) = module.split_once('.')?;
            let l = match layer {
                "in_layer" => "linear_1",
                "out_layer" => "linear_2",
                _ => return None,
            };
            let embedder = match e {
                "time_in" => "timestep_embedder",
                "guidance_in" => "guidance_embedder",
                "vector_in" if !n.flux2 => "text_embedder",
                _ => return None,
            };
            key(format!("{}.{embedder}.{l}", n.embedders))
        }
    }
}

/// The diffusers source of a BFL autoencoder tensor for a VAE of `levels` resolution levels
/// (FLUX: 4). diffusers counts decoder levels from the latent side, BFL from the image side.
pub fn vae_source(bfl: &str, levels: usize) -> Option<Source> {
    let (module, param) = split(bfl)?;
    // FLUX.2's latent batch norm keeps its name.
    if module == "bn" {
        return Some(Source::Key(bfl.to_string()));
    }
    let (side, rest) = module.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let resnet = |base: String, r: &str| -> Option<Source> {
        let r = match r {
            "nin_shortcut" => "conv_shortcut",
            "norm1" | "conv1" | "norm2" | "conv2" => r,
            _ => return None,
        };
        Some(Source::Key(format!("{side}.{base}.{r}.{param}")))
    };
    let up_index = |u: usize| levels.checked_sub(u + 1);
    if let Some(m) = rest.strip_prefix("mid.") {
        let (part, r) = m.split_once('.')?;
        return match part {
            "block_1" => resnet("mid_block.resnets.0".into(), r),
            "block_2" => resnet("mid_block.resnets.1".into(), r),
            "attn_1" => {
                let a = format!("{side}.mid_block.attentions.0");
                let to = match r {
                    "norm" => return Some(Source::Key(format!("{a}.group_norm.{param}"))),
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => return None,
                };
                let k = format!("{a}.{to}.{param}");
                Some(if param == "weight" {
                    Source::Conv1x1(k)
                } else {
                    Source::Key(k)
                })
            }
            _ => None,
        };
    }
    if let Some((i, m)) = indexed(rest, "down") {
        if m == "downsample.conv" {
            return Some(Source::Key(format!(
                "{side}.down_blocks.{i}.downsamplers.0.conv.{param}"
            )));
        }
        let (j, r) = indexed(m, "block")?;
        return resnet(format!("down_blocks.{i}.resnets.{j}"), r);
    }
    if let Some((u, m)) = indexed(rest, "up") {
        let i = up_index(u)?;
        if m == "upsample.conv" {
            return Some(Source::Key(format!(
                "{side}.up_blocks.{i}.upsamplers.0.conv.{param}"
            )));
        }
        let (j, r) = indexed(m, "block")?;
        return resnet(format!("up_blocks.{i}.resnets.{j}"), r);
    }
    let m = match (side, rest) {
        (_, "conv_in" | "conv_out") => rest,
        (_, "norm_out") => "conv_norm_out",
        // FLUX.2's 1×1 convolutions sit beside the networks in diffusers' layout.
        ("encoder", "quant_conv") | ("decoder", "post_quant_conv") => {
            return Some(Source::Key(format!("{rest}.{param}")))
        }
        _ => return None,
    };
    Some(Source::Key(format!("{side}.{m}.{param}")))
}

/// A VarBuilder backend that serves BFL names from a backend holding diffusers names, with
/// every result's shape checked against what the model expects (the error names both).
pub struct Renamed<B> {
    inner: B,
    source: SourceFn,
}

type SourceFn = Box<dyn Fn(&str) -> Option<Source> + Send + Sync>;

impl<B: SimpleBackend> Renamed<B> {
    pub fn transformer(inner: B) -> Self {
        Renamed {
            inner,
            source: Box::new(transformer_source),
        }
    }

    /// A FLUX.2 transformer snapshot ([`flux2_transformer_source`]).
    pub fn flux2_transformer(inner: B) -> Self {
        Renamed {
            inner,
            source: Box::new(flux2_transformer_source),
        }
    }

    /// Tensors the model names `prefix` + key, stored under key alone: a CLIP text encoder
    /// saved by current transformers as a bare `CLIPTextModel` body (no `text_model.`).
    pub fn without_prefix(inner: B, prefix: &'static str) -> Self {
        Renamed::replace_prefix(inner, prefix, String::new())
    }

    /// Tensors the model names `from` + key, stored under `to` + key: a text encoder's body
    /// saved inside a multimodal model (Mistral3's `language_model.model.`).
    pub fn replace_prefix(inner: B, from: &'static str, to: String) -> Self {
        Renamed {
            inner,
            source: Box::new(move |n| {
                n.strip_prefix(from)
                    .map(|k| Source::Key(format!("{to}{k}")))
            }),
        }
    }

    /// Tensors the model names key, stored under `prefix` + key: a transformer saved inside
    /// a whole checkpoint (ComfyUI's `model.diffusion_model.`).
    pub fn with_prefix(inner: B, prefix: String) -> Self {
        Renamed {
            inner,
            source: Box::new(move |n| Some(Source::Key(format!("{prefix}{n}")))),
        }
    }

    pub fn vae(inner: B, levels: usize) -> Self {
        Renamed {
            inner,
            source: Box::new(move |n| vae_source(n, levels)),
        }
    }

    fn build(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let src = (self.source)(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("no diffusers tensor corresponds to {name}"))
        })?;
        let get = |k: &str| {
            if !self.inner.contains_tensor(k) {
                candle_core::bail!("missing tensor {k} (for {name})");
            }
            self.inner.get_unchecked(k, dtype, dev)
        };
        match src {
            Source::Key(k) => get(&k),
            Source::Cat(keys) => {
                let parts = keys
                    .iter()
                    .map(|k| get(k))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            }
            Source::SwapHalves(k) => {
                let t = get(&k)?;
                let half = t.dim(0)? / 2;
                Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)
            }
            Source::Conv1x1(k) => {
                let t = get(&k)?;
                if t.rank() == 2 {
                    t.unsqueeze(2)?.unsqueeze(3)
                } else {
                    Ok(t)
                }
            }
        }
    }
}

impl<B: SimpleBackend> SimpleBackend for Renamed<B> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.build(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor {name} (from {:?}) has shape {:?}, the model expects {:?}",
                (self.source)(name),
                t.dims(),
                s.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.build(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match (self.source)(name) {
            Some(Source::Key(k) | Source::SwapHalves(k) | Source::Conv1x1(k)) => {
                self.inner.contains_tensor(&k)
            }
            Some(Source::Cat(keys)) => keys.iter().all(|k| self.inner.contains_tensor(k)),
            None => false,
        }
    }
}

/// Whether a transformer state dict uses diffusers names (else BFL's).
pub fn is_diffusers_transformer<'a>(mut keys: impl Iterator<Item = &'a str>) -> bool {
    keys.any(|k| k.starts_with("transformer_blocks.") || k.starts_with("x_embedder."))
}
