//! Training data: batched tensors of world samples, produced on the fly by worker threads.
//!
//! Sample `i` of a stream depends only on (seed, i); batch `k`'s canvas (and, with a pixel
//! budget, its size) depends only on (seed, k). A stream position is (next batch, next
//! sample), so a run that saves it resumes at exactly the sample where it stopped, whatever
//! the number of workers.
//!
//! With `pixel_budget`, every batch holds as many samples of its canvas as fit the budget
//! (greedy packing: small canvases give large batches), so steps cost about the same whatever
//! the mix of shapes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sprout_world::sampler::{batch_canvas, sample_sized, SamplerConfig};
use sprout_world::seed::{purpose, rng_for};
use sprout_world::{CaptionLevel, Renderer, Scene};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("invalid stream config: {0}")]
    Config(String),
    #[error(transparent)]
    World(#[from] sprout_world::WorldError),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("a data worker stopped unexpectedly")]
    WorkerGone,
}

/// Where the stream's samples come from and how they are batched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamConfig {
    pub seed: u64,
    pub batch_size: usize,
    pub sampler: SamplerConfig,
    /// Relative weights of short, medium and long captions.
    pub caption_weights: [f32; 3],
    /// Worker threads producing batches.
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// When set, a batch holds `max(1, pixel_budget / (width·height))` samples instead of
    /// `batch_size`.
    pub pixel_budget: Option<u64>,
    /// When set, the stream is a finite data set of this many batches, repeated: batch
    /// `k + pool` holds the images of batch `k` (so a trainer can cache what it computes from
    /// them, e.g. autoencoder latents); captions are drawn anew each epoch.
    pub pool: Option<u64>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            seed: 0,
            batch_size: 32,
            sampler: SamplerConfig::default(),
            caption_weights: [0.4, 0.35, 0.25],
            workers: 2,
            prefetch: 2,
            pixel_budget: None,
            pool: None,
        }
    }
}

impl StreamConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        if self.batch_size == 0 || self.pixel_budget == Some(0) {
            return Err(DataError::Config(
                "batch_size and pixel_budget must be at least 1".into(),
            ));
        }
        if self.pool == Some(0) {
            return Err(DataError::Config("pool must be at least 1 batch".into()));
        }
        if self.workers == 0 || self.prefetch == 0 {
            return Err(DataError::Config(
                "workers and prefetch must be at least 1".into(),
            ));
        }
        if self.caption_weights.iter().any(|w| w.is_nan() || *w < 0.0)
            || self.caption_weights.iter().sum::<f32>() <= 0.0
        {
            return Err(DataError::Config(
                "caption_weights must be non-negative and not all zero".into(),
            ));
        }
        self.sampler.validate()?;
        Ok(())
    }
}

/// One batch: images as a `[B, 3, H, W]` f32 tensor scaled to [-1, 1], with their captions
/// and scenes.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Index of the batch's first sample in the stream.
    pub first_sample: u64,
    pub images: Tensor,
    pub captions: Vec<String>,
    pub scenes: Vec<Scene>,
}

fn pick_level(weights: [f32; 3], seed: u64, index: u64) -> CaptionLevel {
    let mut rng = rng_for(seed, purpose::CAPTION ^ 0xC0FFEE, index);
    let total: f32 = weights.iter().sum();
    let mut t = rng.random_range(0.0..total);
    for (w, level) in weights.iter().zip(CaptionLevel::ALL) {
        if t < *w {
            return level;
        }
        t -= w;
    }
    CaptionLevel::Long
}

/// Where a stream stands: the next batch's index and its first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StreamPos {
    pub batch: u64,
    pub sample: u64,
}

impl StreamConfig {
    /// Canvas and sample count of batch `k`.
    pub fn batch_shape(&self, k: u64) -> (u32, u32, usize) {
        let k = self.pool.map_or(k, |n| k % n);
        let (w, h) = batch_canvas(&self.sampler, self.seed, k);
        let n = match self.pixel_budget {
            Some(budget) => (budget / (w as u64 * h as u64)).max(1) as usize,
            None => self.batch_size,
        };
        (w, h, n)
    }

    /// The position after batch `pos.batch`.
    pub fn advance(&self, pos: StreamPos) -> StreamPos {
        let batch = pos.batch + 1;
        // A pooled stream starts its samples over with each epoch.
        let sample = match self.pool {
            Some(n) if batch.is_multiple_of(n) => 0,
            _ => pos.sample + self.batch_shape(pos.batch).2 as u64,
        };
        StreamPos { batch, sample }
    }
}

/// Build the batch at `pos`.
pub fn make_batch(cfg: &StreamConfig, pos: StreamPos) -> Result<Batch, DataError> {
    let (w, h, b) = cfg.batch_shape(pos.batch);
    let first = pos.sample;
    // Captions vary by epoch in a pooled stream; images do not.
    let epoch = cfg.pool.map_or(0, |n| pos.batch / n);
    let plane = (w * h) as usize;
    let mut data = vec![0f32; b * 3 * plane];
    let mut captions = Vec::with_capacity(b);
    let mut scenes = Vec::with_capacity(b);
    let renderer = Renderer::new();
    for k in 0..b {
        let index = first + k as u64;
        let s = sample_sized(&cfg.sampler, cfg.seed, index, w, h);
        let img = renderer.render(&s.scene)?;
        sprout_world::render::write_planar(&img, &mut data[k * 3 * plane..(k + 1) * 3 * plane]);
        captions.push(
            s.captions
                .get(pick_level(
                    cfg.caption_weights,
                    cfg.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    index,
                ))
                .to_string(),
        );
        scenes.push(s.scene);
    }
    let images = Tensor::from_vec(data, (b, 3, h as usize, w as usize), &Device::Cpu)?;
    Ok(Batch {
        first_sample: first,
        images,
        captions,
        scenes,
    })
}

/// An endless, ordered, resumable stream of batches made by worker threads.
pub struct DataStream {
    cfg: StreamConfig,
    pos: StreamPos,
    next: u64,
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl DataStream {
    /// Start a stream at `pos` (`StreamPos::default()` for a fresh one).
    pub fn new(cfg: StreamConfig, pos: StreamPos) -> Result<DataStream, DataError> {
        cfg.validate()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..cfg.workers {
            let (tx, rx) = sync_channel(cfg.prefetch);
            let (cfg_w, stop_w) = (cfg.clone(), stop.clone());
            handles.push(std::thread::spawn(move || {
                // Walk the plan; build only this worker's batches (every workers-th one).
                let mut p = pos;
                let mut k = 0u64;
                while !stop_w.load(Ordering::Relaxed) {
                    if k % cfg_w.workers as u64 == w as u64
                        && tx.send(make_batch(&cfg_w, p)).is_err()
                    {
                        break;
                    }
                    p = cfg_w.advance(p);
                    k += 1;
                }
            }));
            receivers.push(rx);
        }
        Ok(DataStream {
            cfg,
            pos,
            next: 0,
            receivers,
            stop,
            handles,
        })
    }

    /// Where the next batch starts: save it to resume exactly here.
    pub fn position(&self) -> StreamPos {
        self.pos
    }

    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }
}

impl Iterator for DataStream {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let w = (self.next % self.cfg.workers as u64) as usize;
        let item = self.receivers[w]
            .recv()
            .unwrap_or(Err(DataError::WorkerGone));
        self.next += 1;
        self.pos = self.cfg.advance(self.pos);
        Some(item)
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sprout_world::sampler::{sample, CanvasChoice};

    fn cfg(workers: usize) -> StreamConfig {
        StreamConfig {
            seed: 11,
            batch_size: 3,
            workers,
            sampler: SamplerConfig {
                canvas: CanvasChoice::Fixed {
                    width: 64,
                    height: 64,
                },
                ..SamplerConfig::default()
            },
            ..StreamConfig::default()
        }
    }

    fn take(cfg: StreamConfig, pos: StreamPos, n: usize) -> Vec<Batch> {
        DataStream::new(cfg, pos)
            .unwrap()
            .take(n)
            .map(|b| b.unwrap())
            .collect()
    }

    fn same(a: &Batch, b: &Batch) -> bool {
        a.first_sample == b.first_sample
            && a.captions == b.captions
            && a.scenes == b.scenes
            && a.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn resumes_exactly_and_ignores_worker_count() {
        let full = take(cfg(2), StreamPos::default(), 5);
        let mut s = DataStream::new(cfg(3), StreamPos::default()).unwrap();
        for b in full.iter().take(2) {
            assert!(same(b, &s.next().unwrap().unwrap()));
        }
        let pos = s.position();
        assert_eq!(
            pos,
            StreamPos {
                batch: 2,
                sample: 6
            }
        );
        drop(s);
        let resumed = take(cfg(1), pos, 3);
        for (a, b) in full[2..].iter().zip(&resumed) {
            assert!(
                same(a, b),
                "batch at {} differs after resume",
                a.first_sample
            );
        }
    }

    #[test]
    fn batches_hold_the_rendered_samples() {
        let c = cfg(2);
        let b = &take(c.clone(), StreamPos::default(), 1)[0];
        assert_eq!(b.images.dims(), &[3, 3, 64, 64]);
        let v = b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
        let s = sample(&c.sampler, c.seed, 1);
        assert_eq!(b.scenes[1], s.scene);
        assert!([&s.captions.short, &s.captions.medium, &s.captions.long].contains(&&b.captions[1]));
        let img = Renderer::new().render(&s.scene).unwrap();
        let px = img.get_pixel(10, 20).0;
        let plane = 64 * 64;
        for ch in 0..3 {
            let got = v[3 * plane + ch * plane + 20 * 64 + 10];
            assert!((got - (px[ch] as f32 / 127.5 - 1.0)).abs() < 1e-6);
        }
    }

    #[test]
    fn any_aspect_batches_share_a_canvas_and_vary_across_batches() {
        let mut c = cfg(2);
        c.sampler.canvas = CanvasChoice::AnyAspect;
        c.sampler.base_side = 64;
        let bs = take(c, StreamPos::default(), 8);
        let shapes: std::collections::HashSet<_> =
            bs.iter().map(|b| b.images.dims().to_vec()).collect();
        assert!(shapes.len() > 1);
        for b in &bs {
            let d = b.images.dims();
            assert!(b
                .scenes
                .iter()
                .all(|s| s.width as usize == d[3] && s.height as usize == d[2]));
        }
    }

    #[test]
    fn pixel_budget_packs_batches_and_resumes() {
        let mut c = cfg(2);
        c.sampler.canvas = CanvasChoice::AnyAspect;
        c.sampler.base_side = 64;
        c.pixel_budget = Some(6 * 64 * 64);
        let full = take(c.clone(), StreamPos::default(), 6);
        let mut next = 0;
        for b in &full {
            let d = b.images.dims();
            let px = (d[2] * d[3]) as u64;
            assert_eq!(d[0] as u64, (6 * 64 * 64 / px).max(1));
            assert!(d[0] as u64 * px <= 6 * 64 * 64);
            assert_eq!(b.first_sample, next);
            next += d[0] as u64;
        }
        let mut s = DataStream::new(c.clone(), StreamPos::default()).unwrap();
        s.next();
        s.next();
        s.next();
        let resumed = take(c, s.position(), 3);
        for (a, b) in full[3..].iter().zip(&resumed) {
            assert!(same(a, b));
        }
    }

    #[test]
    fn a_pooled_stream_repeats_its_images_and_redraws_captions() {
        let mut c = cfg(2);
        c.sampler.canvas = CanvasChoice::AnyAspect;
        c.sampler.base_side = 64;
        c.pixel_budget = Some(6 * 64 * 64);
        c.pool = Some(3);
        let full = take(c.clone(), StreamPos::default(), 8);
        let pixels = |b: &Batch| b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for k in 0..5 {
            let (a, b) = (&full[k], &full[k + 3]);
            assert_eq!(a.first_sample, b.first_sample);
            assert_eq!(a.scenes, b.scenes);
            assert_eq!(pixels(a), pixels(b));
        }
        assert_eq!(full[3].first_sample, 0);
        assert_ne!(pixels(&full[0]), pixels(&full[1]));
        let captions = |r: std::ops::Range<usize>| -> Vec<String> {
            full[r].iter().flat_map(|b| b.captions.clone()).collect()
        };
        assert_ne!(
            captions(0..3),
            captions(3..6),
            "captions are drawn anew each epoch"
        );
        // Resuming inside the second epoch continues the same batches.
        let mut s = DataStream::new(c.clone(), StreamPos::default()).unwrap();
        for _ in 0..4 {
            s.next();
        }
        for (a, b) in full[4..].iter().zip(&take(c, s.position(), 4)) {
            assert!(same(a, b));
        }
    }

    #[test]
    fn bad_config_is_refused() {
        let mut c = cfg(1);
        c.batch_size = 0;
        assert!(DataStream::new(c, StreamPos::default()).is_err());
        let mut c = cfg(1);
        c.caption_weights = [0.0; 3];
        assert!(DataStream::new(c, StreamPos::default()).is_err());
        let mut c = cfg(1);
        c.pool = Some(0);
        assert!(DataStream::new(c, StreamPos::default()).is_err());
    }
}
