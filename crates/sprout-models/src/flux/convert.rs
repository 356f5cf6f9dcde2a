//! diffusers → Black Forest Labs weight names. Sprout's MMDiT uses the BFL module paths
//! (`double_blocks.N.img_attn.qkv`), so a diffusers snapshot is renamed on load: separate
//! q/k/v projections are concatenated, and the final norm's (scale, shift) halves swapped to
//! BFL's (shift, scale). The autoencoder's diffusers names map to BFL's `ae.safetensors`.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::Deserialize;

use crate::dit::DitConfig;
use crate::error::{ModelError, Result};

/// The fields of a diffusers `FluxTransformer2DModel` config.json that fix the shapes.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusersTransformerConfig {
    pub in_channels: usize,
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
        if self.patch_size != 1 || !self.in_channels.is_multiple_of(4) {
            return Err(ModelError::Config(format!(
                "transformer config: patch_size {} with in_channels {} is not FLUX's packed 2×2 layout",
                self.patch_size, self.in_channels
            )));
        }
        let cfg = DitConfig {
            latent_channels: self.in_channels / 4,
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
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Moves and concatenations from one naming to the other; every source tensor must be used
/// exactly once, so a file with unexpected keys is refused by name rather than half-loaded.
struct Renamer {
    src: HashMap<String, Tensor>,
    out: HashMap<String, Tensor>,
}

impl Renamer {
    fn take(&mut self, key: &str) -> Result<Tensor> {
        self.src
            .remove(key)
            .ok_or_else(|| ModelError::Config(format!("missing tensor {key}")))
    }

    /// `src.{weight,bias}` → `dst.{weight,bias}` (the bias only where present).
    fn mv(&mut self, src: &str, dst: &str) -> Result<()> {
        let w = self.take(&format!("{src}.weight"))?;
        self.out.insert(format!("{dst}.weight"), w);
        if let Some(b) = self.src.remove(&format!("{src}.bias")) {
            self.out.insert(format!("{dst}.bias"), b);
        }
        Ok(())
    }

    /// Concatenate the outputs of several linear layers into one (`q`, `k`, `v`[, `mlp`]).
    fn cat(&mut self, srcs: &[String], dst: &str) -> Result<()> {
        for suffix in ["weight", "bias"] {
            if suffix == "bias" && !self.src.contains_key(&format!("{}.bias", srcs[0])) {
                continue;
            }
            let parts = srcs
                .iter()
                .map(|s| self.take(&format!("{s}.{suffix}")))
                .collect::<Result<Vec<_>>>()?;
            self.out
                .insert(format!("{dst}.{suffix}"), Tensor::cat(&parts, 0)?);
        }
        Ok(())
    }

    fn finish(self) -> Result<HashMap<String, Tensor>> {
        if let Some(k) = self.src.keys().min() {
            return Err(ModelError::Config(format!(
                "unexpected tensor {k} ({} left unconverted)",
                self.src.len()
            )));
        }
        Ok(self.out)
    }
}

/// A diffusers `FluxTransformer2DModel` state dict → BFL names for `cfg`'s block counts.
pub fn transformer_from_diffusers(
    src: HashMap<String, Tensor>,
    cfg: &DitConfig,
) -> Result<HashMap<String, Tensor>> {
    let mut r = Renamer {
        src,
        out: HashMap::new(),
    };
    r.mv("x_embedder", "img_in")?;
    r.mv("context_embedder", "txt_in")?;
    let embed = "time_text_embed";
    r.mv(
        &format!("{embed}.timestep_embedder.linear_1"),
        "time_in.in_layer",
    )?;
    r.mv(
        &format!("{embed}.timestep_embedder.linear_2"),
        "time_in.out_layer",
    )?;
    r.mv(
        &format!("{embed}.text_embedder.linear_1"),
        "vector_in.in_layer",
    )?;
    r.mv(
        &format!("{embed}.text_embedder.linear_2"),
        "vector_in.out_layer",
    )?;
    if cfg.guidance_embed {
        r.mv(
            &format!("{embed}.guidance_embedder.linear_1"),
            "guidance_in.in_layer",
        )?;
        r.mv(
            &format!("{embed}.guidance_embedder.linear_2"),
            "guidance_in.out_layer",
        )?;
    }
    for i in 0..cfg.depth {
        let (d, b) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        let a = format!("{d}.attn");
        r.mv(&format!("{d}.norm1.linear"), &format!("{b}.img_mod.lin"))?;
        r.mv(
            &format!("{d}.norm1_context.linear"),
            &format!("{b}.txt_mod.lin"),
        )?;
        let qkv = |p: &str| ["q", "k", "v"].map(|x| format!("{a}.{}", p.replace('X', x)));
        r.cat(&qkv("to_X"), &format!("{b}.img_attn.qkv"))?;
        r.cat(&qkv("add_X_proj"), &format!("{b}.txt_attn.qkv"))?;
        for (src, dst) in [
            ("norm_q", "img_attn.norm.query_norm"),
            ("norm_k", "img_attn.norm.key_norm"),
            ("norm_added_q", "txt_attn.norm.query_norm"),
            ("norm_added_k", "txt_attn.norm.key_norm"),
        ] {
            let t = r.take(&format!("{a}.{src}.weight"))?;
            r.out.insert(format!("{b}.{dst}.scale"), t);
        }
        r.mv(&format!("{a}.to_out.0"), &format!("{b}.img_attn.proj"))?;
        r.mv(&format!("{a}.to_add_out"), &format!("{b}.txt_attn.proj"))?;
        r.mv(&format!("{d}.ff.net.0.proj"), &format!("{b}.img_mlp.0"))?;
        r.mv(&format!("{d}.ff.net.2"), &format!("{b}.img_mlp.2"))?;
        r.mv(
            &format!("{d}.ff_context.net.0.proj"),
            &format!("{b}.txt_mlp.0"),
        )?;
        r.mv(&format!("{d}.ff_context.net.2"), &format!("{b}.txt_mlp.2"))?;
    }
    for i in 0..cfg.depth_single_blocks {
        let (d, b) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        r.mv(&format!("{d}.norm.linear"), &format!("{b}.modulation.lin"))?;
        let parts = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"].map(|x| format!("{d}.{x}"));
        r.cat(&parts, &format!("{b}.linear1"))?;
        r.mv(&format!("{d}.proj_out"), &format!("{b}.linear2"))?;
        for (src, dst) in [("norm_q", "query_norm"), ("norm_k", "key_norm")] {
            let t = r.take(&format!("{d}.attn.{src}.weight"))?;
            r.out.insert(format!("{b}.norm.{dst}.scale"), t);
        }
    }
    // diffusers' AdaLayerNormContinuous emits (scale, shift); BFL's last layer (shift, scale).
    for suffix in ["weight", "bias"] {
        let t = r.take(&format!("norm_out.linear.{suffix}"))?;
        let half = t.dim(0)? / 2;
        let swapped = Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?;
        r.out
            .insert(format!("final_layer.adaLN_modulation.1.{suffix}"), swapped);
    }
    r.mv("proj_out", "final_layer.linear")?;
    r.finish()
}

/// Whether a transformer state dict uses diffusers names (else BFL's).
pub fn is_diffusers_transformer(keys: &[&str]) -> bool {
    keys.iter().any(|k| k.starts_with("transformer_blocks."))
}

/// A diffusers `AutoencoderKL` state dict → BFL `ae.safetensors` names, for `levels`
/// resolution levels of `layers` residual blocks each (FLUX: 4 and 2). The mid-block
/// attention's linear projections become BFL's 1×1 convolutions.
pub fn vae_from_diffusers(
    src: HashMap<String, Tensor>,
    levels: usize,
    layers: usize,
) -> Result<HashMap<String, Tensor>> {
    let mut r = Renamer {
        src,
        out: HashMap::new(),
    };
    fn resnet(r: &mut Renamer, src: &str, dst: &str) -> Result<()> {
        for a in ["norm1", "conv1", "norm2", "conv2"] {
            r.mv(&format!("{src}.{a}"), &format!("{dst}.{a}"))?;
        }
        if r.src.contains_key(&format!("{src}.conv_shortcut.weight")) {
            r.mv(
                &format!("{src}.conv_shortcut"),
                &format!("{dst}.nin_shortcut"),
            )?;
        }
        Ok(())
    }
    fn mid(r: &mut Renamer, side: &str) -> Result<()> {
        resnet(
            r,
            &format!("{side}.mid_block.resnets.0"),
            &format!("{side}.mid.block_1"),
        )?;
        resnet(
            r,
            &format!("{side}.mid_block.resnets.1"),
            &format!("{side}.mid.block_2"),
        )?;
        let a = format!("{side}.mid_block.attentions.0");
        r.mv(
            &format!("{a}.group_norm"),
            &format!("{side}.mid.attn_1.norm"),
        )?;
        for (src, dst) in [
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "proj_out"),
        ] {
            let w = r.take(&format!("{a}.{src}.weight"))?;
            let w = if w.rank() == 2 {
                w.unsqueeze(2)?.unsqueeze(3)?
            } else {
                w
            };
            r.out.insert(format!("{side}.mid.attn_1.{dst}.weight"), w);
            let b = r.take(&format!("{a}.{src}.bias"))?;
            r.out.insert(format!("{side}.mid.attn_1.{dst}.bias"), b);
        }
        Ok(())
    }
    r.mv("encoder.conv_in", "encoder.conv_in")?;
    for i in 0..levels {
        for j in 0..layers {
            resnet(
                &mut r,
                &format!("encoder.down_blocks.{i}.resnets.{j}"),
                &format!("encoder.down.{i}.block.{j}"),
            )?;
        }
        if i + 1 < levels {
            r.mv(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                &format!("encoder.down.{i}.downsample.conv"),
            )?;
        }
    }
    mid(&mut r, "encoder")?;
    r.mv("encoder.conv_norm_out", "encoder.norm_out")?;
    r.mv("encoder.conv_out", "encoder.conv_out")?;
    r.mv("decoder.conv_in", "decoder.conv_in")?;
    mid(&mut r, "decoder")?;
    // diffusers counts decoder levels from the latent side, BFL from the image side.
    for i in 0..levels {
        let up = levels - 1 - i;
        for j in 0..=layers {
            resnet(
                &mut r,
                &format!("decoder.up_blocks.{i}.resnets.{j}"),
                &format!("decoder.up.{up}.block.{j}"),
            )?;
        }
        if i + 1 < levels {
            r.mv(
                &format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
                &format!("decoder.up.{up}.upsample.conv"),
            )?;
        }
    }
    r.mv("decoder.conv_norm_out", "decoder.norm_out")?;
    r.mv("decoder.conv_out", "decoder.conv_out")?;
    r.finish()
}
