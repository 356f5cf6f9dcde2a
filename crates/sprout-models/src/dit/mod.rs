//! The MMDiT: FLUX.1's architecture, one implementation for every preset. FLUX.2 is the
//! same network with a few switches of [`DitConfig`]: no biases, SwiGLU MLPs, one
//! modulation shared by all blocks, no pooled text vector, four rotary axes.
//!
//! Token sequence: text tokens, then the target image's latent tokens, then any number of
//! reference images' latent tokens (image index 1..K on the first rotary axis). The output
//! is the velocity for the target tokens only.

pub mod adaln;
pub mod blocks;
pub mod config;
pub mod embed;
pub mod heads;
mod views;

use crate::ops::Linear;
use crate::weights::Weights;
use candle_core::{Result, Tensor, D};
use candle_nn::Module;

use crate::flash::Precision;
use blocks::{DoubleStreamBlock, LastLayer, Modulation, Rope, SharedModulation, SingleStreamBlock};
pub use config::DitConfig;
use embed::{rope_tables, MlpEmbedder};

use crate::ops::timestep_embedding;

#[derive(Debug, Clone)]
pub struct Dit {
    cfg: DitConfig,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    /// None for presets without a pooled text vector (`vec_in_dim` 0).
    vector_in: Option<MlpEmbedder>,
    guidance_in: Option<MlpEmbedder>,
    /// The modulations of a preset with `shared_modulation`: double blocks' image and text
    /// streams, single blocks.
    shared: Option<[Modulation; 3]>,
    double_blocks: Vec<DoubleStreamBlock>,
    single_blocks: Vec<SingleStreamBlock>,
    final_layer: LastLayer,
    attention: Precision,
}

/// Reference images for in-context conditioning: their tokens and position ids.
pub struct References<'a> {
    pub tokens: &'a Tensor,
    pub ids: &'a Tensor,
}

/// One forward pass's inputs.
pub struct DitInput<'a> {
    /// Target latent tokens (B, L_img, in_channels).
    pub img: &'a Tensor,
    /// Their position ids (B or 1, L_img, axes): one coordinate per rotary axis.
    pub img_ids: &'a Tensor,
    /// Text token states (B, L_txt, context_in_dim).
    pub txt: &'a Tensor,
    /// Their position ids (B or 1, L_txt, axes).
    pub txt_ids: &'a Tensor,
    /// Flow time in [0, 1] (B,).
    pub timesteps: &'a Tensor,
    /// Pooled text vector (B, vec_in_dim); not read by presets without one (`vec_in_dim`
    /// 0, FLUX.2).
    pub y: &'a Tensor,
    /// Guidance scale (B,), for guidance-distilled presets.
    pub guidance: Option<&'a Tensor>,
    /// Text mask (B, L_txt): 1 for real tokens, 0 for padding that attention must ignore.
    /// FLUX attends to every text token (None).
    pub txt_mask: Option<&'a Tensor>,
    pub references: Option<References<'a>>,
}

impl<'a> DitInput<'a> {
    /// An input with no guidance, no text mask and no reference images.
    pub fn new(
        img: &'a Tensor,
        img_ids: &'a Tensor,
        txt: &'a Tensor,
        txt_ids: &'a Tensor,
        timesteps: &'a Tensor,
        y: &'a Tensor,
    ) -> Self {
        DitInput {
            img,
            img_ids,
            txt,
            txt_ids,
            timesteps,
            y,
            guidance: None,
            txt_mask: None,
            references: None,
        }
    }
}

impl Dit {
    /// Build from weights (a VarBuilder or GGUF tensors) whose keys are FLUX's module paths
    /// (`img_in.weight`, `double_blocks.0.img_attn.qkv.weight`, …); every tensor's shape is
    /// checked on load.
    pub fn new<'a>(cfg: &DitConfig, vb: impl Into<Weights<'a>>) -> crate::error::Result<Self> {
        let vb = vb.into();
        cfg.validate()?;
        let (h, bias) = (cfg.hidden_size, cfg.linear_bias);
        let double_blocks = (0..cfg.depth)
            .map(|i| DoubleStreamBlock::new(cfg, vb.pp(format!("double_blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let single_blocks = (0..cfg.depth_single_blocks)
            .map(|i| SingleStreamBlock::new(cfg, vb.pp(format!("single_blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let shared = if cfg.shared_modulation {
            let m = |double, name| Modulation::new(h, double, bias, vb.pp(name));
            Some([
                m(true, "double_stream_modulation_img")?,
                m(true, "double_stream_modulation_txt")?,
                m(false, "single_stream_modulation")?,
            ])
        } else {
            None
        };
        Ok(Dit {
            img_in: crate::ops::linear_b(cfg.embed_channels(), h, bias, vb.pp("img_in"))?,
            txt_in: crate::ops::linear_b(cfg.context_in_dim, h, bias, vb.pp("txt_in"))?,
            time_in: MlpEmbedder::new(256, h, bias, vb.pp("time_in"))?,
            vector_in: if cfg.vec_in_dim > 0 {
                Some(MlpEmbedder::new(
                    cfg.vec_in_dim,
                    h,
                    bias,
                    vb.pp("vector_in"),
                )?)
            } else {
                None
            },
            guidance_in: if cfg.guidance_embed {
                Some(MlpEmbedder::new(256, h, bias, vb.pp("guidance_in"))?)
            } else {
                None
            },
            shared,
            double_blocks,
            single_blocks,
            final_layer: LastLayer::new(h, cfg.in_channels(), bias, vb.pp("final_layer"))?,
            cfg: cfg.clone(),
            attention: Precision::F32,
        })
    }

    /// This model's attention multiplying at `precision` ([`Precision::Bf16`] for weights
    /// whose linear layers multiply in bf16, as PyTorch's bf16 attention does).
    pub fn with_attention(mut self, precision: Precision) -> Self {
        self.attention = precision;
        self
    }

    /// The attention precision asked for ([`Precision::effective`] says what runs here).
    pub fn attention(&self) -> Precision {
        self.attention
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    pub fn forward(&self, x: &DitInput) -> Result<Tensor> {
        let (b, l_img, _) = x.img.dims3()?;
        let mut img = self.img_in.forward(x.img)?;
        let mut ids = vec![x.txt_ids.clone(), x.img_ids.clone()];
        if let Some(r) = &x.references {
            img = Tensor::cat(&[img, self.img_in.forward(r.tokens)?], 1)?;
            ids.push(r.ids.clone());
        }
        let axes = self.cfg.axes_dim.len();
        let ids: Vec<Tensor> = ids
            .iter()
            .map(|t| {
                if t.dim(D::Minus1)? != axes {
                    candle_core::bail!(
                        "position ids {:?} need {axes} coordinates per token, one per rotary axis",
                        t.shape()
                    );
                }
                t.broadcast_as((b, t.dim(1)?, axes))
            })
            .collect::<Result<_>>()?;
        let ids = Tensor::cat(&ids, 1)?;
        // Times and guidance are embedded from f32 values (bf16 would move t·1000 by whole
        // radians), then cast to the weights' dtype.
        let dtype = self.img_in.dtype();
        let embed = |t: &Tensor| -> Result<Tensor> {
            timestep_embedding(&t.to_dtype(candle_core::DType::F32)?, 256, 1000.0)?.to_dtype(dtype)
        };
        let mut vec = self.time_in.forward(&embed(x.timesteps)?)?;
        if let Some(g_in) = &self.guidance_in {
            let g = x.guidance.ok_or_else(|| {
                candle_core::Error::Msg("this model needs a guidance value".into())
            })?;
            vec = (vec + g_in.forward(&embed(g)?)?)?;
        }
        let vec = match &self.vector_in {
            Some(v_in) => (vec + v_in.forward(x.y)?)?,
            None => vec,
        };
        let shared = match &self.shared {
            Some([img, txt, single]) => Some(SharedModulation {
                img: img.forward(&vec)?,
                txt: txt.forward(&vec)?,
                single: single.forward(&vec)?,
            }),
            None => None,
        };
        let mut txt = self.txt_in.forward(x.txt)?;
        let (cos, sin) = rope_tables(&ids, &self.cfg.axes_dim, self.cfg.theta)?;
        let mask = match x.txt_mask {
            Some(m) => {
                let rest = ids.dim(1)? - m.dim(1)?;
                let full = Tensor::cat(
                    &[
                        m.to_dtype(img.dtype())?,
                        Tensor::ones((b, rest), img.dtype(), img.device())?,
                    ],
                    1,
                )?;
                Some(((full - 1.0)? * 1e9)?.unsqueeze(1)?.unsqueeze(1)?)
            }
            None => None,
        };
        let rope = Rope {
            cos,
            sin,
            mask,
            precision: self.attention,
        };
        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &vec, &rope, shared.as_ref())?;
        }
        let l_txt = txt.dim(1)?;
        let mut joint = Tensor::cat(&[txt, img], 1)?;
        for block in &self.single_blocks {
            joint = block.forward(&joint, &vec, &rope, shared.as_ref())?;
        }
        let img = joint.narrow(1, l_txt, l_img)?;
        self.final_layer.forward(&img, &vec)
    }
}

#[cfg(test)]
mod tests {
    use super::embed::{grid_ids, patchify, text_ids, unpatchify};
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    fn tiny() -> (Dit, VarMap) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        (Dit::new(&DitConfig::tiny(), vb).unwrap(), vm)
    }

    fn inputs(b: usize, dev: &Device) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor) {
        let cfg = DitConfig::tiny();
        let lat = Tensor::randn(0f32, 1.0, (b, cfg.latent_channels, 4, 6), dev).unwrap();
        let img = patchify(&lat, cfg.patch_size).unwrap();
        let img_ids = grid_ids(0, 4, 6, dev).unwrap();
        let txt = Tensor::randn(0f32, 1.0, (b, 5, cfg.context_in_dim), dev).unwrap();
        let txt_ids = text_ids(5, dev).unwrap();
        let t = Tensor::rand(0f32, 1.0, b, dev).unwrap();
        let y = Tensor::randn(0f32, 1.0, (b, cfg.vec_in_dim), dev).unwrap();
        (img, img_ids, txt, txt_ids, t, y)
    }

    #[test]
    fn adaln_zero_starts_at_zero_output() {
        let dev = Device::Cpu;
        let (dit, _) = tiny();
        let (img, img_ids, txt, txt_ids, t, y) = inputs(2, &dev);
        let out = dit
            .forward(&DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y))
            .unwrap();
        assert_eq!(crate::ops::max_abs(&out).unwrap(), 0.0);
    }

    #[test]
    fn forward_shapes_and_weight_keys() {
        let dev = Device::Cpu;
        let (dit, vm) = tiny();
        let (img, img_ids, txt, txt_ids, t, y) = inputs(2, &dev);
        let input = DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y);
        let out = dit.forward(&input).unwrap();
        assert_eq!(out.dims(), img.dims());
        assert_eq!(unpatchify(&out, 1, 4, 6).unwrap().dims(), &[2, 4, 4, 6]);
        let keys: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        for k in [
            "img_in.weight",
            "double_blocks.0.img_attn.qkv.weight",
            "double_blocks.0.txt_attn.norm.key_norm.scale",
            "double_blocks.0.img_mlp.2.bias",
            "single_blocks.0.linear1.weight",
            "single_blocks.0.modulation.lin.weight",
            "final_layer.adaLN_modulation.1.weight",
            "time_in.in_layer.weight",
            "vector_in.out_layer.bias",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k}");
        }
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, DitConfig::tiny().num_params());
    }

    #[test]
    fn samples_do_not_depend_on_their_batch() {
        let dev = Device::Cpu;
        let (dit, vm) = tiny();
        // Zero-initialised adaLN gates would make every output zero; use random weights.
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap())
                .unwrap();
        }
        let (img, img_ids, txt, txt_ids, t, y) = inputs(3, &dev);
        let full = dit
            .forward(&DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y))
            .unwrap();
        let one = |i: usize| {
            let n = |x: &Tensor| x.narrow(0, i, 1).unwrap();
            dit.forward(&DitInput::new(
                &n(&img),
                &img_ids,
                &n(&txt),
                &txt_ids,
                &n(&t),
                &n(&y),
            ))
            .unwrap()
        };
        // Batched and single matmuls may block their sums differently (the gemm kernel
        // depends on the CPU and the row count), so allow f32 rounding relative to the
        // output's magnitude; a real dependence on other samples is orders larger.
        let scale = crate::ops::max_abs(&full).unwrap().max(1.0);
        for i in 0..3 {
            let d = crate::ops::max_abs_diff(&full.narrow(0, i, 1).unwrap(), &one(i)).unwrap();
            assert!(
                d < 1e-4 * scale,
                "sample {i} differs by {d} (scale {scale})"
            );
        }
    }

    #[test]
    fn reference_tokens_are_accepted_and_change_the_output() {
        let dev = Device::Cpu;
        let (dit, vm) = tiny();
        // Zero-initialised adaLN gates would hide any effect; give every weight a random value.
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap())
                .unwrap();
        }
        let (img, img_ids, txt, txt_ids, t, y) = inputs(2, &dev);
        let base = DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y);
        let plain = dit.forward(&base).unwrap();
        // Two references of different sizes, image indices 1 and 2.
        let r1 = patchify(&Tensor::randn(0f32, 1.0, (2, 4, 2, 2), &dev).unwrap(), 1).unwrap();
        let r2 = patchify(&Tensor::randn(0f32, 1.0, (2, 4, 4, 2), &dev).unwrap(), 1).unwrap();
        let tokens = Tensor::cat(&[r1, r2], 1).unwrap();
        let ids = Tensor::cat(
            &[
                grid_ids(1, 2, 2, &dev).unwrap(),
                grid_ids(2, 4, 2, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        let with = dit
            .forward(&DitInput {
                references: Some(References {
                    tokens: &tokens,
                    ids: &ids,
                }),
                ..base
            })
            .unwrap();
        assert_eq!(with.dims(), plain.dims());
        let d = crate::ops::max_abs_diff(&with, &plain).unwrap();
        assert!(d > 1e-4, "references had no effect");
    }

    #[test]
    fn masked_text_padding_changes_nothing() {
        let dev = Device::Cpu;
        let (dit, vm) = tiny();
        for v in vm.all_vars() {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &dev).unwrap())
                .unwrap();
        }
        let (img, img_ids, txt, txt_ids, t, y) = inputs(1, &dev);
        let base = DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y);
        let plain = dit.forward(&base).unwrap();
        // Three junk padding tokens, masked out.
        let pad = Tensor::randn(0f32, 1.0, (1, 3, 16), &dev).unwrap();
        let txt2 = Tensor::cat(&[&txt, &pad], 1).unwrap();
        let ids2 = text_ids(8, &dev).unwrap();
        let mask = Tensor::cat(
            &[
                Tensor::ones((1, 5), DType::F32, &dev).unwrap(),
                Tensor::zeros((1, 3), DType::F32, &dev).unwrap(),
            ],
            1,
        )
        .unwrap();
        let padded = dit
            .forward(&DitInput {
                txt: &txt2,
                txt_ids: &ids2,
                txt_mask: Some(&mask),
                ..base
            })
            .unwrap();
        let d = crate::ops::max_abs_diff(&plain, &padded).unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn guidance_presets_require_guidance() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = DitConfig {
            guidance_embed: true,
            ..DitConfig::tiny()
        };
        let dit = Dit::new(&cfg, vb).unwrap();
        let (img, img_ids, txt, txt_ids, t, y) = inputs(1, &Device::Cpu);
        let input = DitInput::new(&img, &img_ids, &txt, &txt_ids, &t, &y);
        assert!(dit
            .forward(&input)
            .unwrap_err()
            .to_string()
            .contains("guidance"));
    }

    #[test]
    fn wrong_weight_shapes_name_the_tensor() {
        let dev = Device::Cpu;
        let (_, vm) = tiny();
        let mut ts: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        ts.insert(
            "img_in.weight".to_string(),
            Tensor::zeros((32, 5), DType::F32, &dev).unwrap(),
        );
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        let e = Dit::new(&DitConfig::tiny(), vb).unwrap_err().to_string();
        assert!(e.contains("img_in.weight"), "{e}");
    }
}
