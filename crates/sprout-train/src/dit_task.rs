//! DiT training: rectified flow over frozen autoencoder latents, with the text encoder
//! trained jointly and captions dropped for classifier-free guidance.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::Rng;
use rand_distr::StandardNormal;
use sprout_data::Batch;
use sprout_models::ae::Autoencoder;
use sprout_models::dit::embed::{grid_ids, patchify, text_ids};
use sprout_models::dit::{Dit, DitConfig, DitInput};
use sprout_models::init::seeded_varbuilder;
use sprout_models::text::{build_tokenizer, SmallTextEncoder, TextConfig};
use sprout_pipeline::bundle::load_ae;
use sprout_pipeline::flow::{flow_loss, interpolate, train_timestep, ShiftConfig};
use sprout_pipeline::noise::noise_batch;
use sprout_world::render::object_half_extent;
use sprout_world::seed::{mix64, rng_for};
use sprout_world::Scene;
use tokenizers::Tokenizer;

use crate::config::TrainConfig;
use crate::latent_cache::LatentCache;
use crate::run::Task;
use crate::vocab::world_vocabulary;
use crate::TrainError;

const TIMESTEP: u64 = 0x7135;
const DROPOUT: u64 = 0xD209;
const NOISE: u64 = 0x9015;

/// Which tokens of a `rows`×`cols` token grid over `scene` an object's box touches (1) and
/// which are background (0), row-major as `patchify` orders tokens.
fn object_tokens(scene: &Scene, rows: usize, cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; rows * cols];
    let (sw, sh) = (scene.width as f32, scene.height as f32);
    for o in &scene.objects {
        let (hw, hh) = object_half_extent(scene, o);
        let (cx, cy) = (o.center[0] * sw, o.center[1] * sh);
        // Token index ranges whose pixel cells the box overlaps.
        let span = |lo: f32, hi: f32, side: f32, n: usize| {
            let cell = side / n as f32;
            let a = (lo / cell).floor().max(0.0) as usize;
            let b = ((hi / cell).ceil().max(0.0) as usize).min(n);
            a..b
        };
        for r in span(cy - hh, cy + hh, sh, rows) {
            for c in span(cx - hw, cx + hw, sw, cols) {
                m[r * cols + c] = 1.0;
            }
        }
    }
    m
}

/// Sample indices sorted by caption length (stable), cut into groups of `size`.
fn length_groups(lens: &[usize], size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    order.chunks(size.max(1)).map(|c| c.to_vec()).collect()
}

pub struct DitTask {
    pub ae: Autoencoder,
    pub dit: Dit,
    pub text: SmallTextEncoder,
    pub dit_vars: VarMap,
    pub text_vars: VarMap,
    pub tokenizer: Tokenizer,
    pub shift: ShiftConfig,
    /// Samples per forward pass, grouped by caption length (see `loss`).
    pub text_group: usize,
    dropout: f64,
    /// See [`crate::config::DitSection::object_weight`].
    object_weight: f64,
    seed: u64,
    device: Device,
    /// Latents of a pooled stream's batches (in memory and in the run directory): each
    /// epoch after the first, and every resume, skips the autoencoder. Values equal what
    /// encoding computes, so caching never changes a run.
    latents: Option<LatentCache>,
}

/// What identifies the autoencoder of `dir`: its config and weight files.
fn ae_identity(dir: &std::path::Path) -> Result<Vec<u8>, TrainError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "json" || e == "safetensors")
        })
        .collect();
    files.sort();
    let mut bytes = Vec::new();
    for f in files {
        bytes.extend(f.file_name().unwrap_or_default().as_encoded_bytes());
        bytes.extend(std::fs::read(&f)?);
    }
    Ok(bytes)
}

impl DitTask {
    pub fn new(cfg: &TrainConfig) -> Result<DitTask, TrainError> {
        let dev = cfg.device()?;
        let ae = load_ae(&cfg.dit.ae, &dev)?;
        let dit_cfg = DitConfig::by_name(&cfg.dit.preset)?;
        if dit_cfg.latent_channels != ae.cfg.latent_channels {
            return Err(TrainError::Config(format!(
                "DiT preset {} expects {} latent channels, the autoencoder in {} has {}",
                cfg.dit.preset,
                dit_cfg.latent_channels,
                cfg.dit.ae.display(),
                ae.cfg.latent_channels
            )));
        }
        let vocab = world_vocabulary(cfg.dit.vocab_samples);
        let tokenizer = build_tokenizer(vocab.iter().map(|s| s.as_str()))?;
        let tcfg = TextConfig {
            vocab_size: tokenizer.get_vocab_size(true),
            dim: cfg.dit.text_dim,
            layers: cfg.dit.text_layers,
            heads: cfg.dit.text_heads,
            max_len: cfg.dit.text_max_len,
        };
        let dit_cfg = DitConfig {
            context_in_dim: tcfg.dim,
            vec_in_dim: tcfg.dim,
            ..dit_cfg
        };
        let dit_vars = VarMap::new();
        let text_vars = VarMap::new();
        let dit = Dit::new(
            &dit_cfg,
            seeded_varbuilder(&dit_vars, cfg.seed, DType::F32, &dev),
        )?;
        let text = SmallTextEncoder::new(
            &tcfg,
            tokenizer.clone(),
            seeded_varbuilder(&text_vars, cfg.seed ^ 0x7E47, DType::F32, &dev),
        )?;
        Ok(DitTask {
            ae,
            dit,
            text,
            dit_vars,
            text_vars,
            tokenizer,
            shift: ShiftConfig::default(),
            text_group: cfg.dit.text_group,
            dropout: cfg.dit.caption_dropout,
            object_weight: cfg.dit.object_weight,
            seed: cfg.seed,
            device: dev,
            latents: match cfg.data.pool {
                Some(_) => Some(LatentCache::on_disk(&cfg.out, &ae_identity(&cfg.dit.ae)?)?),
                None => None,
            },
        })
    }
}

fn vars(prefix: &str, vm: &VarMap) -> Vec<(String, Var)> {
    vm.data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(k, v)| (format!("{prefix}.{k}"), v.clone()))
        .collect()
}

impl Task for DitTask {
    fn params(&self) -> Vec<(String, Var)> {
        let mut p = vars("dit", &self.dit_vars);
        p.extend(vars("text", &self.text_vars));
        p
    }

    fn loss(
        &mut self,
        batch: &Batch,
        step: u64,
    ) -> Result<(Tensor, BTreeMap<String, f64>), TrainError> {
        let dev = self.device.clone();
        let (n, _, ih, iw) = batch.images.dims4()?;
        let scene = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&batch.scenes[0])
                .expect("scene serialises")
                .hash(&mut h);
            h.finish()
        };
        let key = (batch.first_sample, n, ih, iw, scene);
        let z = match self.latents.as_mut().and_then(|c| c.get(&key, &dev)) {
            Some(z) => z,
            None => {
                let z = self.ae.encode(&batch.images.to_device(&dev)?)?.detach();
                if let Some(c) = self.latents.as_mut() {
                    c.insert(key, &z)?;
                }
                z
            }
        };
        let (b, c, h, w) = z.dims4()?;
        let captions: Vec<String> = batch
            .captions
            .iter()
            .enumerate()
            .map(|(i, cap)| {
                let mut rng = rng_for(self.seed, DROPOUT, mix64(step) ^ i as u64);
                if rng.random_bool(self.dropout) {
                    String::new()
                } else {
                    cap.clone()
                }
            })
            .collect();
        let seeds: Vec<u64> = (0..b)
            .map(|i| mix64(mix64(self.seed ^ NOISE) ^ mix64(step)) ^ i as u64)
            .collect();
        let eps = noise_batch(&seeds, &[c, h, w], &dev)?;
        let p = self.dit.config().patch_size;
        let mu = self.shift.mu((h / p) * (w / p));
        let ts: Vec<f32> = (0..b)
            .map(|i| {
                let mut rng = rng_for(self.seed, TIMESTEP, mix64(step) ^ i as u64);
                train_timestep(rng.sample::<f64, _>(StandardNormal), mu) as f32
            })
            .collect();
        let t = Tensor::from_vec(ts, b, &dev)?;
        let (xt, v) = interpolate(&z, &eps, &t)?;
        let img_ids = grid_ids(0, h / p, w / p, &dev)?;
        // Text is padded to the longest caption of a forward pass, and a batch's longest
        // caption is several times its typical one; in one pass, padding would be most of the
        // text tokens the DiT and the text encoder process. Samples are therefore run in
        // groups of similar caption length. The loss is the same mean over the whole batch.
        let (ids, _) = self.text.tokenize(&captions)?;
        let lens: Vec<usize> = ids.iter().map(|v| v.len()).collect();
        // Per-token loss weights (b, tokens, 1) and the total weight of the batch, when
        // object tokens weigh more; the loss is then Σ w·(pred − v)² / (Σ w · channels).
        let weights = if self.object_weight > 0.0 {
            let (rows, cols) = (h / p, w / p);
            let mut all = Vec::with_capacity(b * rows * cols);
            for sc in &batch.scenes {
                all.extend(
                    object_tokens(sc, rows, cols)
                        .into_iter()
                        .map(|m| 1.0 + self.object_weight as f32 * m),
                );
            }
            let total: f64 = all.iter().map(|&x| x as f64).sum();
            Some((Tensor::from_vec(all, (b, rows * cols, 1), &dev)?, total))
        } else {
            None
        };
        let mut loss = Tensor::zeros((), DType::F32, &dev)?;
        for group in length_groups(&lens, self.text_group) {
            let idx = Tensor::from_vec(
                group.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                group.len(),
                &dev,
            )?;
            let group_ids: Vec<Vec<u32>> = group.iter().map(|&i| ids[i].clone()).collect();
            let len = group.iter().map(|&i| lens[i]).max().unwrap_or(0).max(1);
            let emb = self.text.forward_ids(&group_ids, len, &dev)?;
            let txt_ids = text_ids(emb.states.dim(1)?, &dev)?;
            let img = patchify(&xt.index_select(&idx, 0)?, p)?;
            let tg = t.index_select(&idx, 0)?;
            let pred = self.dit.forward(&DitInput {
                txt_mask: Some(&emb.mask),
                ..DitInput::new(&img, &img_ids, &emb.states, &txt_ids, &tg, &emb.pooled)
            })?;
            let target = patchify(&v.index_select(&idx, 0)?, p)?;
            let part = match &weights {
                None => (flow_loss(&pred, &target)? * (group.len() as f64 / b as f64))?,
                Some((wt, total)) => {
                    let sq = (pred - target)?.sqr()?;
                    let chans = sq.dim(2)? as f64;
                    (sq.broadcast_mul(&wt.index_select(&idx, 0)?)?.sum_all()? / (total * chans))?
                }
            };
            loss = (loss + part)?;
        }
        Ok((loss, BTreeMap::new()))
    }

    fn extra_files(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "dit.json",
                serde_json::to_string_pretty(self.dit.config()).expect("json"),
            ),
            (
                "text.json",
                serde_json::to_string_pretty(&self.text.cfg).expect("json"),
            ),
            (
                "tokenizer.json",
                self.tokenizer
                    .to_string(false)
                    .expect("tokenizer serialises"),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::{length_groups, object_tokens};
    use sprout_world::{
        Background, BgColor, Color, Object, ObjectKind, Scene, ShapeKind, SizeClass,
    };

    #[test]
    fn object_tokens_cover_each_box_and_nothing_else() {
        // 256² canvas, 8×8 tokens of 32 px. A medium shape (diameter 0.25·256 = 64 px)
        // centred at (80, 48) spans x 48..112, y 16..80: columns 1..=3, rows 0..=2.
        let shape = |center| Object {
            kind: ObjectKind::Shape {
                shape: ShapeKind::Circle,
                color: Color::Red,
            },
            size: SizeClass::Medium,
            center,
            rotation: 0.0,
        };
        let scene = Scene {
            width: 256,
            height: 256,
            background: Background::Solid {
                color: BgColor::White,
            },
            objects: vec![shape([80.0 / 256.0, 48.0 / 256.0])],
        };
        let m = object_tokens(&scene, 8, 8);
        for r in 0..8 {
            for c in 0..8 {
                let want = (r <= 2 && (1..=3).contains(&c)) as u8 as f32;
                assert_eq!(m[r * 8 + c], want, "row {r} col {c}");
            }
        }
        // A box at the canvas corner is clipped to the grid, not wrapped.
        let corner = Scene {
            objects: vec![shape([1.0, 1.0])],
            ..scene
        };
        let m = object_tokens(&corner, 8, 8);
        assert_eq!(m.iter().sum::<f32>(), 1.0);
        assert_eq!(m[63], 1.0);
        assert_eq!(m[0], 0.0);
    }

    #[test]
    fn groups_follow_caption_length_and_cover_the_batch_once() {
        let lens = [5, 1, 9, 1, 3, 7, 2];
        let g = length_groups(&lens, 3);
        assert_eq!(g, vec![vec![1, 3, 6], vec![4, 0, 5], vec![2]]);
        let mut all: Vec<usize> = g.concat();
        all.sort();
        assert_eq!(all, (0..lens.len()).collect::<Vec<_>>());
        assert_eq!(length_groups(&[], 8), Vec::<Vec<usize>>::new());
    }
}
