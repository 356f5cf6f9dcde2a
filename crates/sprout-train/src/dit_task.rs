//! DiT training: rectified flow over frozen autoencoder latents, with the text encoder
//! trained jointly and captions dropped for classifier-free guidance.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
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
pub fn object_tokens(scene: &Scene, rows: usize, cols: usize) -> Vec<f32> {
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
    /// Semantic channels denoised with the latents (0 = none; see `DitSection::semantic`).
    pub semantic: usize,
    semantic_map: sprout_world::semantic::MapKind,
    semantic_weight: f64,
    /// The threads that run a step's halves (see `loss_and_grads`), when
    /// [`crate::config::DitSection::data_parallel`] is on and the device is the CPU.
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
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

/// The random draws of one training step: per sample, whether its caption is dropped, the
/// seed of its noise and its time. They depend only on (run seed, step, sample), so a resumed
/// run draws what the uninterrupted one did, and runs with different seeds (see
/// `TrainConfig::run_seed`) draw differently.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDraws {
    pub drop_caption: Vec<bool>,
    pub noise_seeds: Vec<u64>,
    pub times: Vec<f32>,
}

pub fn step_draws(seed: u64, step: u64, samples: usize, dropout: f64, mu: f64) -> StepDraws {
    let idx = |i: usize| mix64(step) ^ i as u64;
    StepDraws {
        drop_caption: (0..samples)
            .map(|i| rng_for(seed, DROPOUT, idx(i)).random_bool(dropout))
            .collect(),
        noise_seeds: (0..samples)
            .map(|i| mix64(mix64(seed ^ NOISE) ^ mix64(step)) ^ i as u64)
            .collect(),
        times: (0..samples)
            .map(|i| {
                let mut rng = rng_for(seed, TIMESTEP, idx(i));
                train_timestep(rng.sample::<f64, _>(StandardNormal), mu) as f32
            })
            .collect(),
    }
}

/// The timestep shift of a run: a constant factor `s` (`mu = ln s`) when the config gives one,
/// else FLUX.1's resolution-dependent shift.
pub fn shift_config(factor: Option<f64>) -> ShiftConfig {
    match factor {
        None => ShiftConfig::default(),
        Some(s) => ShiftConfig {
            base_shift: s.ln(),
            max_shift: s.ln(),
            ..ShiftConfig::default()
        },
    }
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
        if ae.cfg.semantic_channels > 0 {
            let decoder_map = crate::ae_eval::ae_map_kind(&ae.cfg)?;
            if !cfg.dit.semantic || decoder_map != cfg.dit.semantic_map {
                return Err(TrainError::Config(format!(
                    "the autoencoder in {} reads the {} map, so the DiT must denoise it: set dit.semantic = true and dit.semantic_map = \"{}\"",
                    cfg.dit.ae.display(),
                    decoder_map.name(),
                    decoder_map.name()
                )));
            }
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
        let semantic = cfg.dit.semantic_channels();
        let dit_cfg = DitConfig {
            context_in_dim: tcfg.dim,
            vec_in_dim: tcfg.dim,
            latent_channels: dit_cfg.latent_channels + semantic,
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
            shift: shift_config(cfg.dit.shift),
            semantic,
            semantic_map: cfg.dit.semantic_map,
            semantic_weight: cfg.dit.semantic_weight,
            pool: if cfg.dit.data_parallel && dev.is_cpu() {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                (threads > 1)
                    .then(|| rayon::ThreadPoolBuilder::new().num_threads(2).build())
                    .transpose()
                    .map_err(|e| TrainError::Config(format!("data-parallel threads: {e}")))?
                    .map(std::sync::Arc::new)
            } else {
                None
            },
            text_group: cfg.dit.text_group,
            dropout: cfg.dit.caption_dropout,
            object_weight: cfg.dit.object_weight,
            seed: cfg.run_seed(),
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
        let prep = self.prepare(batch, step)?;
        let mut loss = Tensor::zeros((), DType::F32, &self.device)?;
        for group in &prep.groups {
            loss = (loss + self.part(&prep, group)?)?;
        }
        Ok((loss, BTreeMap::new()))
    }

    fn loss_and_grads(
        &mut self,
        batch: &Batch,
        step: u64,
    ) -> Result<(f64, GradStore, BTreeMap<String, f64>), TrainError> {
        let prep = self.prepare(batch, step)?;
        // The batch's groups are split in two halves of about equal samples, run as two
        // forward and backward passes at once on the task's own two-thread pool, and their
        // gradients summed: a step's matrix products are small enough that splitting each
        // across the cores wastes much of the second one (measured: two single-threaded
        // processes train 1.6× the samples per second of one two-threaded one), while two
        // independent halves keep both busy. The result is the gradient of the same loss as
        // `loss` (up to float summation order), and deterministic: the split depends only on
        // the batch. `sprout train` sets RAYON_NUM_THREADS=1 so that candle's products do
        // not split themselves again (it reads that variable at every product).
        let parallel = prep.groups.len() > 1 && self.pool.is_some();
        let half = |gs: &[Vec<usize>]| -> Result<(Tensor, GradStore), TrainError> {
            let mut loss = Tensor::zeros((), DType::F32, &self.device)?;
            for g in gs {
                loss = (loss + self.part(&prep, g)?)?;
            }
            let grads = loss.backward()?;
            Ok((loss, grads))
        };
        let (loss, grads) = if parallel {
            let total: usize = prep.groups.iter().map(|g| g.len()).sum();
            let mut acc = 0;
            let cut = prep
                .groups
                .iter()
                .position(|g| {
                    acc += g.len();
                    2 * acc >= total
                })
                .map_or(1, |i| (i + 1).min(prep.groups.len() - 1));
            let pool = self.pool.as_ref().expect("parallel");
            let (a, b) = pool.install(|| {
                rayon::join(|| half(&prep.groups[..cut]), || half(&prep.groups[cut..]))
            });
            let ((la, mut ga), (lb, gb)) = (a?, b?);
            for (_, var) in self.params() {
                let t = var.as_tensor();
                if let Some(g2) = gb.get(t) {
                    let sum = match ga.get(t) {
                        Some(g1) => (g1 + g2)?,
                        None => g2.clone(),
                    };
                    ga.insert(t, sum);
                }
            }
            ((la + lb)?, ga)
        } else {
            half(&prep.groups)?
        };
        Ok((loss.to_scalar::<f32>()? as f64, grads, BTreeMap::new()))
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

/// What one step's forward passes share: noised latents, targets, times, tokens and weights.
struct Prepared {
    xt: Tensor,
    v: Tensor,
    t: Tensor,
    img_ids: Tensor,
    ids: Vec<Vec<u32>>,
    lens: Vec<usize>,
    groups: Vec<Vec<usize>>,
    /// Token weights (B, tokens, 1), channel weights (1, 1, C) and their total, when used.
    weights: Option<(Tensor, Tensor, f64)>,
    b: usize,
}

impl DitTask {
    fn prepare(&mut self, batch: &Batch, step: u64) -> Result<Prepared, TrainError> {
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
                let images = batch.images.to_device(&dev)?;
                let z = match &self.pool {
                    // Two halves at once, as the DiT's passes are run (see `loss_and_grads`).
                    Some(pool) if n > 1 => {
                        let (a, b) = pool.install(|| {
                            rayon::join(
                                || self.ae.encode(&images.narrow(0, 0, n / 2)?),
                                || self.ae.encode(&images.narrow(0, n / 2, n - n / 2)?),
                            )
                        });
                        Tensor::cat(&[a?, b?], 0)?
                    }
                    _ => self.ae.encode(&images)?,
                }
                .detach();
                if let Some(c) = self.latents.as_mut() {
                    c.insert(key, &z)?;
                }
                z
            }
        };
        let z = if self.semantic > 0 {
            let (_, _, h, _) = z.dims4()?;
            Tensor::cat(
                &[
                    &z,
                    &crate::semantic_maps::semantic_batch(batch, self.semantic_map, ih / h, &dev)?,
                ],
                1,
            )?
        } else {
            z
        };
        let (b, c, h, w) = z.dims4()?;
        let p = self.dit.config().patch_size;
        let mu = self.shift.mu((h / p) * (w / p));
        let draws = step_draws(self.seed, step, b, self.dropout, mu);
        let captions: Vec<String> = batch
            .captions
            .iter()
            .zip(&draws.drop_caption)
            .map(|(cap, &drop)| if drop { String::new() } else { cap.clone() })
            .collect();
        let eps = noise_batch(&draws.noise_seeds, &[c, h, w], &dev)?;
        let ts = draws.times;
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
        let weights = if self.object_weight > 0.0 || self.semantic > 0 {
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
            // Channel weights: 1 for a latent channel, `semantic_weight` for a semantic one
            // (after patchify a token's channels are (channel, py, px), channel-major).
            let latent = c - self.semantic;
            let pp = p * p;
            let chw: Vec<f32> = (0..c * pp)
                .map(|i| {
                    if i / pp < latent {
                        1.0
                    } else {
                        self.semantic_weight as f32
                    }
                })
                .collect();
            let chan_total: f64 = chw.iter().map(|&x| x as f64).sum();
            Some((
                Tensor::from_vec(all, (b, rows * cols, 1), &dev)?,
                Tensor::from_vec(chw, (1, 1, c * pp), &dev)?,
                total * chan_total,
            ))
        } else {
            None
        };
        Ok(Prepared {
            xt,
            v,
            t,
            img_ids,
            groups: length_groups(&lens, self.text_group),
            ids,
            lens,
            weights,
            b,
        })
    }

    /// The loss of one group of samples, as its share of the batch's mean.
    fn part(&self, prep: &Prepared, group: &[usize]) -> Result<Tensor, TrainError> {
        let dev = &self.device;
        let Prepared {
            xt,
            v,
            t,
            img_ids,
            ids,
            lens,
            weights,
            b,
            ..
        } = prep;
        let (b, p) = (*b, self.dit.config().patch_size);
        {
            let idx = Tensor::from_vec(
                group.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                group.len(),
                dev,
            )?;
            let group_ids: Vec<Vec<u32>> = group.iter().map(|&i| ids[i].clone()).collect();
            let len = group.iter().map(|&i| lens[i]).max().unwrap_or(0).max(1);
            let emb = self.text.forward_ids(&group_ids, len, dev)?;
            let txt_ids = text_ids(emb.states.dim(1)?, dev)?;
            let img = patchify(&xt.index_select(&idx, 0)?, p)?;
            let tg = t.index_select(&idx, 0)?;
            let pred = self.dit.forward(&DitInput {
                txt_mask: Some(&emb.mask),
                ..DitInput::new(&img, img_ids, &emb.states, &txt_ids, &tg, &emb.pooled)
            })?;
            let target = patchify(&v.index_select(&idx, 0)?, p)?;
            let part = match &weights {
                None => (flow_loss(&pred, &target)? * (group.len() as f64 / b as f64))?,
                Some((wt, chw, total)) => {
                    let sq = (pred - target)?.sqr()?.broadcast_mul(chw)?;
                    (sq.broadcast_mul(&wt.index_select(&idx, 0)?)?.sum_all()? / *total)?
                }
            };
            Ok(part)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{length_groups, object_tokens, shift_config, step_draws};

    #[test]
    fn draws_follow_the_seed_and_the_step() {
        let a = step_draws(1, 40, 16, 0.1, 1.1);
        // The same seed and step draw the same, whatever else ran before.
        assert_eq!(a, step_draws(1, 40, 16, 0.1, 1.1));
        // Another seed draws other noise, times and dropouts at the same step; so does
        // another step with the same seed.
        for b in [
            step_draws(2, 40, 16, 0.1, 1.1),
            step_draws(1, 41, 16, 0.1, 1.1),
        ] {
            assert!(a
                .noise_seeds
                .iter()
                .zip(&b.noise_seeds)
                .all(|(x, y)| x != y));
            assert!(a.times.iter().zip(&b.times).filter(|(x, y)| x == y).count() == 0);
        }
        let many = step_draws(3, 0, 10_000, 0.1, 0.0);
        let dropped = many.drop_caption.iter().filter(|d| **d).count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        assert!(many.times.iter().all(|t| (0.0..=1.0).contains(t)));
    }

    #[test]
    fn a_constant_shift_moves_times_towards_noise() {
        // mu = ln 3: the median time (logit-normal median 0.5) becomes 3·0.5 / (1 + 2·0.5).
        let s = shift_config(Some(3.0));
        assert!((s.mu(64) - 3f64.ln()).abs() < 1e-12);
        assert!((s.mu(4096) - 3f64.ln()).abs() < 1e-12);
        let t = sprout_pipeline::flow::train_timestep(0.0, s.mu(64));
        assert!((t - 0.75).abs() < 1e-12, "{t}");
        let median = |mu: f64| {
            let mut ts = step_draws(5, 0, 4001, 0.0, mu).times;
            ts.sort_by(f32::total_cmp);
            ts[2000]
        };
        assert!(median(3f64.ln()) > median(0.0) + 0.15);
    }
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
            scale: 1.0,
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
