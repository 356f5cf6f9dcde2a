//! Training configuration, read from TOML.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use sprout_world::sampler::SamplerConfig;

use crate::optim::OptimConfig;
use crate::TrainError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The autoencoder (reconstruction).
    Ae,
    /// The DiT and text encoder (rectified flow over frozen autoencoder latents).
    Dit,
}

/// A training stage: a number of steps at a canvas size (the report trains at low
/// resolution first, then higher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub steps: u64,
    /// Shorter-side scale of the canvas (about side² pixels).
    pub side: u32,
    /// `square` or `any` (all named aspect ratios, bucketed per step).
    #[serde(default = "square")]
    pub aspect: String,
    /// Samples per step (fixed batches) ...
    #[serde(default)]
    pub batch: Option<usize>,
    /// ... or a pixel budget per step (greedy packing: batch = budget / canvas pixels).
    #[serde(default)]
    pub pixel_budget: Option<u64>,
    /// With `aspect = "any"`: the share of batches that are square (the rest spread over the
    /// other ratios); without it every ratio is equally likely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub square_share: Option<f32>,
}

fn square() -> String {
    "square".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AeSection {
    pub preset: String,
    /// Train on random crops of this side (0 = whole images).
    pub crop: u32,
    /// L1 weight added to the MSE reconstruction loss.
    pub l1: f64,
    /// Start from this trained autoencoder (a directory with `ae.json` and `ae.safetensors`,
    /// e.g. `models/ae-native`) instead of `preset`: its architecture, latent statistics and
    /// weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Give the decoder the world's semantic map beside the latent
    /// (`AeConfig::semantic_channels`), as a DiT with semantic channels produces it.
    pub semantic: bool,
    /// Which map the decoder reads: `occupancy` or `centres` (`sprout_world::semantic::MapKind`).
    pub semantic_map: sprout_world::semantic::MapKind,
    /// Train the encoder too (false: only the decoder learns, so the latents, and every DiT
    /// trained on them, stay valid; needs `from`).
    pub train_encoder: bool,
    /// Gaussian noise of a standard deviation drawn per image from U(0, latent_noise) is
    /// added to the normalised latent before decoding, so the decoder learns to draw from
    /// imperfect latents (a DiT's) and to lean on the semantic map where they fail.
    pub latent_noise: f64,
    /// The same for the semantic map, from U(0, semantic_noise).
    pub semantic_noise: f64,
}

impl Default for AeSection {
    fn default() -> Self {
        AeSection {
            preset: "native".into(),
            crop: 128,
            l1: 0.5,
            from: None,
            semantic: false,
            semantic_map: Default::default(),
            train_encoder: true,
            latent_noise: 0.0,
            semantic_noise: 0.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DitSection {
    pub preset: String,
    /// A trained autoencoder: an exported bundle directory or an AE run's checkpoint directory.
    pub ae: PathBuf,
    pub text_dim: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_max_len: usize,
    /// Probability of training on the empty caption (classifier-free guidance).
    pub caption_dropout: f64,
    /// Captions sampled to build the tokenizer's vocabulary.
    pub vocab_samples: u64,
    /// Extra loss weight of the latent tokens that objects cover: such a token weighs
    /// `1 + object_weight`, a background token 1 (0 = the plain mean over tokens). Objects
    /// cover about a tenth of a 256² canvas's tokens, so without it most of the gradient
    /// goes to backgrounds while what a prompt asks for lives in the objects.
    pub object_weight: f64,
    /// Samples per forward pass: a batch runs in groups of this many samples of similar
    /// caption length, each padded to its own longest caption. Small groups waste the least
    /// on padding (the CPU's choice); a GPU wants fewer, larger passes.
    pub text_group: usize,
    /// Denoise the scene's semantic map (`sprout_world::semantic`: per latent cell, object
    /// occupancy of 4×4 sub-cells, colour and a code of the kind) jointly with the latents,
    /// as extra channels of every image token. The image still comes from the prompt alone;
    /// the channels are dropped before decoding.
    pub semantic: bool,
    /// Which map: `occupancy` (the default) or `centres` (`sprout_world::centres`: per cell,
    /// the object whose centre lies in it, its kind, colour, size and rotation).
    pub semantic_map: sprout_world::semantic::MapKind,
    /// Loss weight of each semantic channel relative to a latent channel.
    pub semantic_weight: f64,
    /// A constant timestep shift factor `s` (SD3's shift: `t ↦ s·t / (1 + (s − 1)·t)`) for
    /// training and sampling, instead of FLUX.1's resolution-dependent one. Values above 1
    /// spend more of training at high noise, where a layout is decided.
    pub shift: Option<f64>,
    /// On the CPU, run a step's batch as two halves at once, one per core, and sum their
    /// gradients (the same loss). Off by default since attention became one fused kernel:
    /// the plain step is then the faster (`sprout bench --train` times both).
    pub data_parallel: bool,
}

impl DitSection {
    /// Semantic channels the DiT denoises beside the latents (0 without them).
    pub fn semantic_channels(&self) -> usize {
        if self.semantic {
            self.semantic_map.channels()
        } else {
            0
        }
    }
}

impl Default for DitSection {
    fn default() -> Self {
        DitSection {
            preset: "native-small".into(),
            ae: PathBuf::new(),
            text_dim: 256,
            text_layers: 4,
            text_heads: 4,
            text_max_len: 48,
            caption_dropout: 0.1,
            vocab_samples: 20_000,
            object_weight: 0.0,
            text_group: 8,
            semantic: false,
            semantic_map: Default::default(),
            semantic_weight: 1.0,
            shift: None,
            data_parallel: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    pub workers: usize,
    /// A finite data set of this many batches per stage, repeated (see
    /// `sprout_data::StreamConfig::pool`); the DiT then caches autoencoder latents.
    pub pool: Option<u64>,
    pub caption_weights: [f32; 3],
    pub text_prob: f32,
    pub icon_prob: f32,
    pub min_objects: usize,
    pub max_objects: usize,
    /// Relative weights of solid, gradient, stripes and checker backgrounds.
    pub background_weights: [f32; 4],
    /// Probability that an object repeats an earlier one's kind and colour (counting).
    pub repeat_prob: f32,
    /// Probability that a second object is laid out in a clear relation to the first.
    pub relation_prob: f32,
    /// Probability that a shape is rotated.
    pub rotate_prob: f32,
    /// Probability of a counting scene (2–4 identical objects and nothing else).
    pub count_prob: f32,
    /// Multiplier on shapes' and icons' sizes (see `SamplerConfig::size_scale`).
    pub size_scale: f32,
    /// Object centres on the multiples of this many pixels, 0 for anywhere (see
    /// `SamplerConfig::grid`).
    pub grid: u32,
}

impl DataSection {
    /// The scene distribution this section sets (canvas choice and size left at their
    /// defaults; each stage sets its own).
    pub fn scenes(&self) -> SamplerConfig {
        SamplerConfig {
            text_prob: self.text_prob,
            icon_prob: self.icon_prob,
            min_objects: self.min_objects,
            max_objects: self.max_objects,
            background_weights: self.background_weights,
            repeat_prob: self.repeat_prob,
            relation_prob: self.relation_prob,
            rotate_prob: self.rotate_prob,
            count_prob: self.count_prob,
            size_scale: self.size_scale,
            grid: self.grid,
            ..SamplerConfig::default()
        }
    }
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            workers: 1,
            pool: None,
            caption_weights: [0.5, 0.35, 0.15],
            text_prob: 0.3,
            icon_prob: 0.35,
            min_objects: 1,
            max_objects: 4,
            background_weights: SamplerConfig::default().background_weights,
            repeat_prob: SamplerConfig::default().repeat_prob,
            relation_prob: SamplerConfig::default().relation_prob,
            rotate_prob: SamplerConfig::default().rotate_prob,
            count_prob: 0.0,
            size_scale: 1.0,
            grid: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub kind: Kind,
    /// Checkpoint directory (outside the repository for long runs).
    pub out: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// Start from another run's EMA weights (its `out` directory) instead of a fresh
    /// initialisation; optimizer and schedule start anew. Ignored by `--resume`.
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// `cpu`, or `cuda` (`cuda:N`) in a build with the `cuda` feature.
    #[serde(default = "cpu")]
    pub device: String,
    #[serde(default = "log_every")]
    pub log_every: u64,
    #[serde(default = "ckpt_every")]
    pub ckpt_every: u64,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub ae: AeSection,
    #[serde(default)]
    pub dit: DitSection,
    #[serde(default)]
    pub data: DataSection,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
    /// The run's wall-clock limit when `--time-limit` is not given (`90s`, `45m`, `2h`).
    #[serde(default)]
    pub time_limit: Option<String>,
    /// After a DiT run ends (at its last step or its time limit), export its EMA weights to
    /// `out/export` and score them on WorldEval (`eval_count` prompts, all when absent).
    #[serde(default)]
    pub eval_after: bool,
    #[serde(default)]
    pub eval_count: Option<usize>,
}

fn cpu() -> String {
    "cpu".into()
}

fn log_every() -> u64 {
    10
}

fn ckpt_every() -> u64 {
    200
}

impl TrainConfig {
    pub fn from_toml(text: &str) -> Result<TrainConfig, TrainError> {
        let cfg: TrainConfig =
            toml::from_str(text).map_err(|e| TrainError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.log_every == 0 || self.ckpt_every == 0 {
            return bad("log_every and ckpt_every must be at least 1".into());
        }
        if self.stages.is_empty() {
            return bad("at least one [[stage]] is needed".into());
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.steps == 0 {
                return bad(format!("stage {i}: steps must be positive"));
            }
            if s.batch.is_some() == s.pixel_budget.is_some() {
                return bad(format!(
                    "stage {i}: give exactly one of batch and pixel_budget"
                ));
            }
            if s.aspect != "square" && s.aspect != "any" {
                return bad(format!(
                    "stage {i}: aspect {:?} must be \"square\" or \"any\"",
                    s.aspect
                ));
            }
            if let Some(q) = s.square_share {
                if s.aspect != "any" || !(0.0..=1.0).contains(&q) {
                    return bad(format!(
                        "stage {i}: square_share {q} needs aspect = \"any\" and a value in 0..=1"
                    ));
                }
            }
            if !s.side.is_multiple_of(32) || s.side == 0 {
                return bad(format!(
                    "stage {i}: side {} must be a positive multiple of 32",
                    s.side
                ));
            }
        }
        if self.kind == Kind::Ae && !self.ae.crop.is_multiple_of(32) {
            return bad(format!("ae.crop {} must be a multiple of 32", self.ae.crop));
        }
        if !self.ae.train_encoder && self.ae.from.is_none() {
            return bad("ae.train_encoder = false needs ae.from (a trained autoencoder whose encoder stays)".into());
        }
        for (name, v) in [
            ("ae.latent_noise", self.ae.latent_noise),
            ("ae.semantic_noise", self.ae.semantic_noise),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} {v} must be finite and at least 0"));
            }
        }
        if self.kind == Kind::Dit && self.dit.ae.as_os_str().is_empty() {
            return bad("dit.ae must name a trained autoencoder directory".into());
        }
        if !(0.0..1.0).contains(&self.dit.caption_dropout) {
            return bad(format!(
                "dit.caption_dropout {} must be in [0, 1)",
                self.dit.caption_dropout
            ));
        }
        if !(self.dit.object_weight.is_finite() && self.dit.object_weight >= 0.0) {
            return bad(format!(
                "dit.object_weight {} must be a finite number ≥ 0",
                self.dit.object_weight
            ));
        }
        for (key, on, kind) in [
            ("dit", self.dit.semantic, self.dit.semantic_map),
            ("ae", self.ae.semantic, self.ae.semantic_map),
        ] {
            if !on && kind != sprout_world::semantic::MapKind::default() {
                return bad(format!(
                    "{key}.semantic_map = \"{}\" needs {key}.semantic = true",
                    kind.name()
                ));
            }
        }
        if !(self.dit.semantic_weight.is_finite() && self.dit.semantic_weight >= 0.0) {
            return bad(format!(
                "dit.semantic_weight {} must be a finite number ≥ 0",
                self.dit.semantic_weight
            ));
        }
        if let Some(s) = self.dit.shift {
            if !(s.is_finite() && s > 0.0) {
                return bad(format!("dit.shift {s} must be a finite number > 0"));
            }
        }
        if self.dit.text_group == 0 {
            return bad("dit.text_group must be at least 1".into());
        }
        // The scene distribution is checked here, before a run starts, not when its stream opens.
        if let Err(e) = self.data.scenes().validate() {
            return bad(format!("[data]: {e}"));
        }
        Ok(())
    }

    /// The device the config asks for.
    pub fn device(&self) -> Result<candle_core::Device, TrainError> {
        match self.device.as_str() {
            "cpu" => Ok(candle_core::Device::Cpu),
            d if d == "cuda" || d.starts_with("cuda:") => {
                let idx = d
                    .strip_prefix("cuda:")
                    .map(|n| n.parse::<usize>())
                    .transpose()
                    .map_err(|_| TrainError::Config(format!("bad device {d:?}")))?;
                candle_core::Device::new_cuda(idx.unwrap_or(0))
                    .map_err(|e| TrainError::Config(format!("device {d:?} is not available ({e}); build with --features cuda on a machine with a GPU")))
            }
            d => Err(TrainError::Config(format!(
                "unknown device {d:?}; use \"cpu\" or \"cuda\""
            ))),
        }
    }

    /// The seed of this run's random draws (data, noise, timesteps, caption dropout): the
    /// config's seed, salted with the run it starts from, so that a warm-started run with the
    /// same seed as its parent does not replay the parent's examples.
    pub fn run_seed(&self) -> u64 {
        match &self.init_from {
            None => self.seed,
            Some(p) => {
                let mut h: u64 = 0xCBF2_9CE4_8422_2325;
                for b in p.as_os_str().as_encoded_bytes() {
                    h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01B3);
                }
                sprout_world::seed::mix64(self.seed ^ sprout_world::seed::mix64(h))
            }
        }
    }

    pub fn total_steps(&self) -> u64 {
        self.stages.iter().map(|s| s.steps).sum()
    }

    /// The stage of global step `step` and the step it starts at.
    pub fn stage_at(&self, step: u64) -> (usize, u64) {
        let mut start = 0;
        for (i, s) in self.stages.iter().enumerate() {
            if step < start + s.steps {
                return (i, start);
            }
            start += s.steps;
        }
        (
            self.stages.len() - 1,
            start - self.stages.last().map(|s| s.steps).unwrap_or(0),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let text = r#"
            kind = "ae"
            out = "/tmp/x"
            [optim]
            lr = 0.001
            [[stage]]
            steps = 10
            side = 128
            batch = 4
            [[stage]]
            steps = 5
            side = 256
            aspect = "any"
            pixel_budget = 65536
        "#;
        let c = TrainConfig::from_toml(text).unwrap();
        assert_eq!(c.total_steps(), 15);
        assert_eq!(c.stage_at(9), (0, 0));
        assert_eq!(c.stage_at(10), (1, 10));
        assert_eq!(c.optim.lr, 0.001);
        assert_eq!(c.optim.beta1, 0.9);
        let e = TrainConfig::from_toml(&text.replace("batch = 4", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stage 0"), "{e}");
        assert!(TrainConfig::from_toml(&text.replace("side = 128", "side = 100")).is_err());
        assert!(TrainConfig::from_toml("kind = \"gan\"").is_err());
        assert_eq!(c.data.background_weights, [0.4, 0.2, 0.2, 0.2]);
        let solid = format!("{text}\n[data]\nbackground_weights = [1.0, 0.0, 0.0, 0.0]\n");
        let solid = TrainConfig::from_toml(&solid).unwrap();
        assert_eq!(solid.data.background_weights, [1.0, 0.0, 0.0, 0.0]);
        let none = format!("{text}\n[data]\nbackground_weights = [0.0, 0.0, 0.0, 0.0]\n");
        let e = TrainConfig::from_toml(&none).unwrap_err().to_string();
        assert!(
            e.contains("[data]") && e.contains("background_weights"),
            "{e}"
        );
        let c0 = TrainConfig::from_toml(&format!("{text}\n[dit]\nae = \"x\"\ntext_group = 0\n"));
        assert!(c0.unwrap_err().to_string().contains("text_group"));
        let crowd = format!("{text}\n[data]\nmin_objects = 5\nmax_objects = 2\n");
        let e = TrainConfig::from_toml(&crowd).unwrap_err().to_string();
        assert!(e.contains("min_objects"), "{e}");
        // A key that does not exist is refused by name, in every section.
        let misspelt = [
            text.replacen("[optim]", "sede = 1\n[optim]", 1),
            text.replacen("[optim]", "[optim]\nlr_max = 1.0", 1),
            format!("{text}\n[data]\nmax_objets = 2\n"),
            format!("{text}\n[dit]\nsemantik = true\n"),
            text.replacen("steps = 10", "steps = 10\nside_len = 3", 1),
        ];
        for (t, name) in
            misspelt
                .iter()
                .zip(["sede", "lr_max", "max_objets", "semantik", "side_len"])
        {
            let e = TrainConfig::from_toml(t).unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
        // The shipped recipes parse.
        for f in [
            "default.toml",
            "ae-native.toml",
            "ae-semantic.toml",
            "dit-native.toml",
            "dit-native-r4.toml",
            "dit-native-gpu.toml",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs")
                .join(f);
            TrainConfig::from_toml(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{f}: {e}"));
        }
        // The run seed is the seed for a fresh run and salted by the run it starts from.
        let warm = TrainConfig {
            init_from: Some("/runs/a".into()),
            ..c.clone()
        };
        assert_eq!(c.run_seed(), c.seed);
        assert_ne!(warm.run_seed(), c.seed);
        let other = TrainConfig {
            init_from: Some("/runs/b".into()),
            ..c.clone()
        };
        assert_ne!(warm.run_seed(), other.run_seed());
        assert!(matches!(c.device(), Ok(candle_core::Device::Cpu)));
        let gpu = TrainConfig {
            device: "cuda".into(),
            ..c.clone()
        };
        if !candle_core::utils::cuda_is_available() {
            assert!(gpu
                .device()
                .unwrap_err()
                .to_string()
                .contains("not available"));
        }
        let bad = TrainConfig {
            device: "tpu".into(),
            ..c
        };
        assert!(bad
            .device()
            .unwrap_err()
            .to_string()
            .contains("unknown device"));
    }
}
