//! DiT configuration with named presets: Sprout's native model, FLUX.1 and FLUX.2.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The MLP of every block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `fc2(gelu_tanh(fc1(x)))` (FLUX.1, the native model).
    #[default]
    Gelu,
    /// `fc2(silu(a) · b)` where `fc1(x)` is `[a, b]`, twice the hidden width (FLUX.2).
    SwiGlu,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitConfig {
    /// Channels of the autoencoder's latent.
    pub latent_channels: usize,
    /// Side of the square latent patch that becomes one token (FLUX: 2, native: 1).
    pub patch_size: usize,
    /// Width of the pooled text vector (FLUX.1: CLIP-L pooled, 768); 0 for models that take
    /// none (FLUX.2), whose [`crate::dit::DitInput::y`] is not read.
    pub vec_in_dim: usize,
    /// Width of the text token states (FLUX: T5-XXL, 4096).
    pub context_in_dim: usize,
    pub hidden_size: usize,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    /// Double-stream blocks.
    pub depth: usize,
    /// Single-stream blocks.
    pub depth_single_blocks: usize,
    /// Rotary dimensions per position axis (FLUX.1: image index, row, column; FLUX.2: time,
    /// row, column, text position); sums to the head dim. Position ids have one coordinate
    /// per axis.
    pub axes_dim: Vec<usize>,
    pub theta: usize,
    pub qkv_bias: bool,
    /// Guidance-distilled models take the guidance scale as an input (FLUX.1 dev).
    pub guidance_embed: bool,
    /// Conditioning channels concatenated to each target token before the input projection
    /// (FLUX.1 Fill: the masked image's latents and the mask, 320; FLUX.1 Canny / Depth: the
    /// control image's latents, 64); 0 for models that take none.
    #[serde(default)]
    pub cond_channels: usize,
    /// Biases in the linear layers other than q/k/v (whose bias is `qkv_bias`): FLUX.1 and
    /// the native model have them, FLUX.2 has none anywhere.
    #[serde(default = "yes")]
    pub linear_bias: bool,
    /// One adaLN modulation shared by all blocks, computed once per forward
    /// (`double_stream_modulation_img`, `double_stream_modulation_txt`,
    /// `single_stream_modulation`: FLUX.2), instead of one in every block (FLUX.1).
    #[serde(default)]
    pub shared_modulation: bool,
    #[serde(default)]
    pub mlp: MlpKind,
}

impl DitConfig {
    /// FLUX.1 [schnell].
    pub fn flux_schnell() -> DitConfig {
        DitConfig {
            latent_channels: 16,
            patch_size: 2,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: false,
            cond_channels: 0,
            linear_bias: true,
            shared_modulation: false,
            mlp: MlpKind::Gelu,
        }
    }

    /// FLUX.1 [dev] (and Kontext [dev]): schnell's shape plus the guidance embedding.
    pub fn flux_dev() -> DitConfig {
        DitConfig {
            guidance_embed: true,
            ..DitConfig::flux_schnell()
        }
    }

    /// FLUX.2 [dev] (diffusers' `Flux2Transformer2DModel` defaults): 32-channel latents
    /// packed 2×2, Mistral Small 3.2's three stacked hidden states (3 × 5120) as text, no
    /// pooled vector, SwiGLU MLPs at ratio 3, shared modulation, no biases, four rotary axes
    /// at θ = 2000, guidance-distilled.
    pub fn flux2_dev() -> DitConfig {
        DitConfig {
            latent_channels: 32,
            patch_size: 2,
            vec_in_dim: 0,
            context_in_dim: 15_360,
            hidden_size: 6144,
            mlp_ratio: 3.0,
            num_heads: 48,
            depth: 8,
            depth_single_blocks: 48,
            axes_dim: vec![32, 32, 32, 32],
            theta: 2000,
            qkv_bias: false,
            guidance_embed: true,
            cond_channels: 0,
            linear_bias: false,
            shared_modulation: true,
            mlp: MlpKind::SwiGlu,
        }
    }

    /// FLUX.2 [klein] 4B: Qwen3-4B's three stacked hidden states (3 × 2560), no guidance
    /// input.
    pub fn flux2_klein_4b() -> DitConfig {
        DitConfig {
            context_in_dim: 7680,
            hidden_size: 3072,
            num_heads: 24,
            depth: 5,
            depth_single_blocks: 20,
            guidance_embed: false,
            ..DitConfig::flux2_dev()
        }
    }

    /// FLUX.2 [klein] 9B: Qwen3-8B's three stacked hidden states (3 × 4096).
    pub fn flux2_klein_9b() -> DitConfig {
        DitConfig {
            context_in_dim: 12_288,
            hidden_size: 4096,
            num_heads: 32,
            depth: 8,
            depth_single_blocks: 24,
            guidance_embed: false,
            ..DitConfig::flux2_dev()
        }
    }

    /// Sprout's small native model over its 32-channel f32 autoencoder.
    pub fn native_small() -> DitConfig {
        DitConfig {
            latent_channels: 32,
            patch_size: 1,
            vec_in_dim: 256,
            context_in_dim: 256,
            hidden_size: 256,
            mlp_ratio: 4.0,
            num_heads: 4,
            depth: 2,
            depth_single_blocks: 6,
            axes_dim: vec![8, 28, 28],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: false,
            cond_channels: 0,
            linear_bias: true,
            shared_modulation: false,
            mlp: MlpKind::Gelu,
        }
    }

    /// A tiny config for tests.
    pub fn tiny() -> DitConfig {
        DitConfig {
            latent_channels: 4,
            patch_size: 1,
            vec_in_dim: 16,
            context_in_dim: 16,
            hidden_size: 32,
            mlp_ratio: 2.0,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 1,
            axes_dim: vec![4, 6, 6],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: false,
            cond_channels: 0,
            linear_bias: true,
            shared_modulation: false,
            mlp: MlpKind::Gelu,
        }
    }

    pub fn by_name(name: &str) -> Result<DitConfig> {
        match name {
            "flux-schnell" => Ok(DitConfig::flux_schnell()),
            "flux-dev" | "flux-kontext" => Ok(DitConfig::flux_dev()),
            "flux2-dev" => Ok(DitConfig::flux2_dev()),
            "flux2-klein-4b" => Ok(DitConfig::flux2_klein_4b()),
            "flux2-klein-9b" => Ok(DitConfig::flux2_klein_9b()),
            "native-small" => Ok(DitConfig::native_small()),
            "tiny" => Ok(DitConfig::tiny()),
            _ => Err(ModelError::Config(format!(
                "unknown DiT preset {name:?}; presets: flux-schnell, flux-dev, flux-kontext, flux2-dev, flux2-klein-4b, flux2-klein-9b, native-small, tiny"
            ))),
        }
    }

    /// Channels of one token: latent channels times the patch area.
    pub fn in_channels(&self) -> usize {
        self.latent_channels * self.patch_size * self.patch_size
    }

    /// Channels the input projection takes per target token: the token plus its conditioning.
    pub fn embed_channels(&self) -> usize {
        self.in_channels() + self.cond_channels
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Width of an MLP's input projection: the hidden width, twice it for SwiGLU (gate and
    /// value).
    pub fn mlp_in(&self) -> usize {
        match self.mlp {
            MlpKind::Gelu => self.mlp_hidden(),
            MlpKind::SwiGlu => 2 * self.mlp_hidden(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if !(3..=4).contains(&self.axes_dim.len())
            || self.axes_dim.iter().sum::<usize>() != self.head_dim()
        {
            return bad(format!(
                "axes_dim {:?} must have 3 or 4 entries summing to the head dim {}",
                self.axes_dim,
                self.head_dim()
            ));
        }
        if self.axes_dim.iter().any(|d| !d.is_multiple_of(2)) {
            return bad(format!("axes_dim {:?} must be even", self.axes_dim));
        }
        if self.patch_size == 0 || self.latent_channels == 0 {
            return bad("patch_size and latent_channels must be positive".into());
        }
        Ok(())
    }

    /// Forward FLOPs for `batch` samples of `img` image tokens and `txt` text tokens
    /// (matmuls and attention; norms and activations are negligible).
    pub fn forward_flops(&self, batch: usize, img: usize, txt: usize) -> f64 {
        let (h, m) = (self.hidden_size as f64, self.mlp_hidden() as f64);
        let mi = self.mlp_in() as f64;
        let (li, lt, b) = (img as f64, txt as f64, batch as f64);
        let l = li + lt;
        // Per token of one stream in a double block: modulation excluded (per sample), qkv 3h²,
        // proj h², mlp h·(in + hidden).
        let per_token_double = 2.0 * (3.0 * h * h + h * h + h * (mi + m));
        let per_token_single = 2.0 * (h * (3.0 * h + mi) + (h + m) * h);
        let attn = 4.0 * l * l * h;
        let double = per_token_double * l + attn;
        let single = per_token_single * l + attn;
        let embed = 2.0
            * (li * self.embed_channels() as f64 * h
                + lt * self.context_in_dim as f64 * h
                + li * self.in_channels() as f64 * h);
        b * (self.depth as f64 * double + self.depth_single_blocks as f64 * single + embed)
    }

    /// Parameter count (for MFU and model cards).
    pub fn num_params(&self) -> usize {
        let h = self.hidden_size;
        let (m, mi) = (self.mlp_hidden(), self.mlp_in());
        let b = usize::from(self.linear_bias);
        let lin = |i: usize, o: usize| i * o + b * o;
        let qkv = 3 * h * h + usize::from(self.qkv_bias) * 3 * h;
        let mlp_emb = |i: usize| lin(i, h) + lin(h, h);
        let attn = qkv + 2 * self.head_dim() + lin(h, h);
        let (double_mod, single_mod) = (lin(h, 6 * h), lin(h, 3 * h));
        let own_mod = usize::from(!self.shared_modulation);
        let double = 2 * (own_mod * double_mod + attn + lin(h, mi) + lin(m, h));
        let single =
            lin(h, 3 * h + mi) + lin(h + m, h) + 2 * self.head_dim() + own_mod * single_mod;
        let shared = if self.shared_modulation {
            2 * double_mod + single_mod
        } else {
            0
        };
        lin(self.embed_channels(), h)
            + mlp_emb(256)
            + if self.vec_in_dim > 0 {
                mlp_emb(self.vec_in_dim)
            } else {
                0
            }
            + if self.guidance_embed { mlp_emb(256) } else { 0 }
            + lin(self.context_in_dim, h)
            + self.depth * double
            + self.depth_single_blocks * single
            + shared
            + lin(h, 2 * h)
            + lin(h, self.in_channels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_flux_has_its_known_size() {
        for c in [
            DitConfig::flux_schnell(),
            DitConfig::flux_dev(),
            DitConfig::native_small(),
            DitConfig::tiny(),
        ] {
            c.validate().unwrap();
        }
        // FLUX.1 has about 11.9 B parameters.
        let n = DitConfig::flux_dev().num_params() as f64 / 1e9;
        assert!((11.8..12.0).contains(&n), "{n}");
        assert!(DitConfig::by_name("flux-pro").is_err());
    }
}
