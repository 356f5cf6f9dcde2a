//! The training loop shared by every task.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::Serialize;
use serde_json::json;
use sprout_data::{Batch, DataStream, StreamConfig, StreamPos};
use sprout_world::sampler::{CanvasChoice, SamplerConfig};
use sprout_world::AspectRatio;

use crate::ckpt;
use crate::config::{Kind, Stage, TrainConfig};
use crate::optim::{AdamW, Ema};
use crate::TrainError;

/// What a model being trained provides to the loop.
pub trait Task {
    /// Trainable parameters, named `component.module.path`.
    fn params(&self) -> Vec<(String, Var)>;
    /// Loss of one batch at global step `step`, plus metrics to log.
    fn loss(
        &mut self,
        batch: &Batch,
        step: u64,
    ) -> Result<(Tensor, BTreeMap<String, f64>), TrainError>;
    /// The loss value of one batch and its gradients (by default the backward pass of
    /// [`Task::loss`]; a task may compute them another way, e.g. in parallel parts).
    fn loss_and_grads(
        &mut self,
        batch: &Batch,
        step: u64,
    ) -> Result<(f64, GradStore, BTreeMap<String, f64>), TrainError> {
        let (loss, metrics) = self.loss(batch, step)?;
        let v = loss.to_scalar::<f32>()? as f64;
        if !v.is_finite() {
            return Err(TrainError::Diverged { step, loss: v });
        }
        Ok((v, loss.backward()?, metrics))
    }
    /// Files (name, content) saved with each checkpoint: configs, tokenizer.
    fn extra_files(&self) -> Vec<(&'static str, String)>;
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub resume: bool,
    /// Stop (with a checkpoint) after this global step, before the configured end.
    pub stop_after: Option<u64>,
    /// Stop (with a checkpoint) after the first step that ends this long after the start, for
    /// runs that must fit a fixed stretch of machine time.
    pub time_limit: Option<Duration>,
    /// Stop (with a checkpoint) after the step in progress once this is set, e.g. by Ctrl-C.
    pub stop: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub step: u64,
    pub total: u64,
    pub stage: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples: u64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub samples: u64,
    pub last_loss: f64,
    pub checkpoint: String,
    /// Why the run ended before its end step (`"time limit"`, `"interrupted"`), if it did.
    pub stopped_early: Option<&'static str>,
}

/// The stream for stage `i`: its own seed, canvas choice and batching.
pub fn stream_config(cfg: &TrainConfig, i: usize, stage: &Stage) -> StreamConfig {
    let sampler = SamplerConfig {
        canvas: match (stage.aspect.as_str(), stage.square_share) {
            ("any", Some(square)) => CanvasChoice::MostlySquare { square },
            ("any", None) => CanvasChoice::AnyAspect,
            _ => CanvasChoice::Aspect {
                ratio: AspectRatio::Square,
            },
        },
        base_side: stage.side,
        ..cfg.data.scenes()
    };
    StreamConfig {
        seed: cfg.run_seed().wrapping_add(1000 * i as u64),
        batch_size: stage.batch.unwrap_or(1),
        pixel_budget: stage.pixel_budget,
        sampler,
        caption_weights: cfg.data.caption_weights,
        workers: cfg.data.workers.max(1),
        prefetch: 2,
        pool: cfg.data.pool,
    }
}

/// Named tensors on the CPU (checkpoints are written from host memory).
fn named(params: &[(String, Var)]) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(params
        .iter()
        .map(|(n, v)| {
            Ok((
                n.clone(),
                v.as_tensor().to_device(&candle_core::Device::Cpu)?,
            ))
        })
        .collect::<candle_core::Result<_>>()?)
}

fn on_cpu(t: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, TrainError> {
    on_device(t, &candle_core::Device::Cpu)
}

/// Checkpoint tensors moved to `dev`.
fn on_device(
    t: HashMap<String, Tensor>,
    dev: &candle_core::Device,
) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(t.into_iter()
        .map(|(n, v)| Ok((n, v.to_device(dev)?)))
        .collect::<candle_core::Result<_>>()?)
}

/// Whether a run may resume under `cfg`: the stages must be those it was started with,
/// except that the last stage may be lengthened or shortened (the learning-rate schedule
/// then follows the new total).
fn same_stages(saved: &TrainConfig, cfg: &TrainConfig) -> bool {
    let (a, b) = (&saved.stages, &cfg.stages);
    let Some((last_a, head_a)) = a.split_last() else {
        return b.is_empty();
    };
    let Some((last_b, head_b)) = b.split_last() else {
        return false;
    };
    head_a == head_b
        && crate::config::Stage {
            steps: last_b.steps,
            ..last_a.clone()
        } == *last_b
}

/// Run (or resume) training; `on_log` sees every `log_every`-th step.
pub fn run_task<T: Task>(
    cfg: &TrainConfig,
    task: &mut T,
    opts: &Options,
    mut on_log: impl FnMut(&LogLine),
) -> Result<Summary, TrainError> {
    let params = task.params();
    let dev = params
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(candle_core::Device::Cpu);
    if let (Some(from), false) = (&cfg.init_from, opts.resume) {
        let dir = ckpt::find(from).ok_or_else(|| {
            TrainError::Checkpoint(format!("init_from: no checkpoint in {}", from.display()))
        })?;
        let ema = on_device(ckpt::load_tensors(&dir, "ema")?, &dev)?;
        for (n, v) in &params {
            let t = ema.get(n).ok_or_else(|| {
                TrainError::Checkpoint(format!("init_from {}: lacks {n}", dir.display()))
            })?;
            if t.dims() != v.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "init_from {}: {n} has shape {:?}, model {:?}",
                    dir.display(),
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(t)?;
        }
    }
    let mut opt = AdamW::new(cfg.optim.clone(), params.clone())?;
    let mut ema = Ema::new(cfg.optim.ema_decay, opt.params());
    let total = cfg.total_steps();
    let mut step = 0u64;
    let mut pos = StreamPos::default();
    let mut samples = 0u64;
    let mut prior_elapsed = 0f64;
    let mut progress = 0f64;
    if opts.resume {
        let Some(dir) = ckpt::find(&cfg.out) else {
            return Err(TrainError::Checkpoint(format!(
                "--resume: no checkpoint in {}",
                cfg.out.display()
            )));
        };
        let state = ckpt::load_state(&dir)?;
        let saved: TrainConfig = serde_json::from_value(state["config"].clone())
            .map_err(|e| TrainError::Checkpoint(format!("state.json config: {e}")))?;
        if saved.kind != cfg.kind || saved.seed != cfg.seed || !same_stages(&saved, cfg) {
            return Err(TrainError::Checkpoint("the checkpoint was made with a different kind, seed or stages (only the last stage's step count may change); start a new run in another directory".into()));
        }
        let model = on_device(ckpt::load_tensors(&dir, "model")?, &dev)?;
        for (n, v) in opt.params() {
            let t = model
                .get(n)
                .ok_or_else(|| TrainError::Checkpoint(format!("model.safetensors lacks {n}")))?;
            if t.dims() != v.dims() {
                return Err(TrainError::Checkpoint(format!(
                    "{n}: checkpoint shape {:?}, model {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(t)?;
        }
        ema.load(&on_device(ckpt::load_tensors(&dir, "ema")?, &dev)?)?;
        let t = state["optim_t"].as_u64().unwrap_or(0);
        opt.load_state(&on_device(ckpt::load_tensors(&dir, "optim")?, &dev)?, t)?;
        step = state["step"].as_u64().unwrap_or(0);
        pos = serde_json::from_value(state["stream"].clone())
            .map_err(|e| TrainError::Checkpoint(format!("stream position: {e}")))?;
        samples = state["samples"].as_u64().unwrap_or(0);
        prior_elapsed = state["elapsed_s"].as_f64().unwrap_or(0.0);
        progress = state["progress"].as_f64().unwrap_or(0.0);
    }
    // A time limit counts from this invocation; the schedule's time horizon is the time
    // already trained plus that limit.
    let time_base = prior_elapsed;
    std::fs::create_dir_all(&cfg.out)?;
    let mut metrics_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.out.join("metrics.jsonl"))?;
    let start = Instant::now();
    let mut last_loss = f64::NAN;
    let save = |step: u64,
                pos: StreamPos,
                samples: u64,
                opt: &AdamW,
                ema: &Ema,
                task: &T,
                elapsed: f64,
                progress: f64|
     -> Result<(), TrainError> {
        let state = json!({"step": step, "stream": pos, "samples": samples, "optim_t": opt.t, "elapsed_s": elapsed, "progress": progress, "config": cfg});
        ckpt::save(
            &cfg.out,
            &[
                ("model", named(opt.params())?),
                ("ema", on_cpu(ema.tensors())?),
                ("optim", on_cpu(opt.state())?),
            ],
            &task.extra_files(),
            &state,
        )
    };
    let end = opts.stop_after.map(|s| s.min(total)).unwrap_or(total);
    let mut stopped_early = None;
    let (mut window_samples, mut window_start) = (0u64, Instant::now());
    while step < end {
        let (si, sstart) = cfg.stage_at(step);
        let stage = &cfg.stages[si];
        let stage_end = (sstart + stage.steps).min(end);
        let mut stream = DataStream::new(stream_config(cfg, si, stage), pos)?;
        while step < stage_end {
            let batch = stream.next().expect("endless stream")?;
            // Progress through the schedule: by steps, or by time when a time limit ends the
            // run sooner, so that the cool-down ends at the limit; never backwards, so that a
            // schedule lengthened on resume keeps its learning rate instead of jumping up.
            let by_time = opts.time_limit.map(|l| {
                let done = prior_elapsed + start.elapsed().as_secs_f64();
                done / (time_base + l.as_secs_f64()).max(1e-9)
            });
            progress =
                progress
                    .max(cfg.optim.progress(step, total))
                    .max(if step < cfg.optim.warmup {
                        0.0
                    } else {
                        by_time.unwrap_or(0.0)
                    });
            let lr = if step < cfg.optim.warmup {
                cfg.optim.lr_at(step, total)
            } else {
                cfg.optim.lr_at_progress(progress)
            };
            let (lv, grads, metrics) = task.loss_and_grads(&batch, step)?;
            if !lv.is_finite() {
                return Err(TrainError::Diverged { step, loss: lv });
            }
            let grad_norm = opt.step(&grads, lr)?;
            ema.update(opt.params(), opt.t)?;
            step += 1;
            pos = stream.position();
            let b = batch.images.dim(0)? as u64;
            samples += b;
            window_samples += b;
            last_loss = lv;
            if step.is_multiple_of(cfg.log_every) || step == end {
                let line = LogLine {
                    step,
                    total,
                    stage: si,
                    loss: lv,
                    lr,
                    grad_norm,
                    samples,
                    samples_per_s: window_samples as f64 / window_start.elapsed().as_secs_f64(),
                    elapsed_s: prior_elapsed + start.elapsed().as_secs_f64(),
                    metrics,
                };
                writeln!(
                    metrics_file,
                    "{}",
                    serde_json::to_string(&line).expect("json")
                )?;
                on_log(&line);
                (window_samples, window_start) = (0, Instant::now());
            }
            let halt = if opts.time_limit.is_some_and(|l| start.elapsed() >= l) {
                Some("time limit")
            } else if opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
                Some("interrupted")
            } else {
                None
            };
            if step.is_multiple_of(cfg.ckpt_every) || step == stage_end || halt.is_some() {
                save(
                    step,
                    if step == sstart + stage.steps {
                        StreamPos::default()
                    } else {
                        pos
                    },
                    samples,
                    &opt,
                    &ema,
                    task,
                    prior_elapsed + start.elapsed().as_secs_f64(),
                    progress,
                )?;
            }
            if halt.is_some() && step < end {
                stopped_early = halt;
                break;
            }
        }
        if stopped_early.is_some() {
            break;
        }
        // A new stage starts its own stream from the beginning.
        if step == sstart + stage.steps {
            pos = StreamPos::default();
        }
    }
    Ok(Summary {
        steps: step,
        samples,
        last_loss,
        checkpoint: ckpt::latest(&cfg.out).display().to_string(),
        stopped_early,
    })
}

/// Train (or resume) the model a config describes.
pub fn train(
    cfg: &TrainConfig,
    opts: &Options,
    on_log: impl FnMut(&LogLine),
) -> Result<Summary, TrainError> {
    match cfg.kind {
        Kind::Ae => run_task(cfg, &mut crate::ae_task::AeTask::new(cfg)?, opts, on_log),
        Kind::Dit => run_task(cfg, &mut crate::dit_task::DitTask::new(cfg)?, opts, on_log),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(stages: &str) -> TrainConfig {
        TrainConfig::from_toml(&format!("kind = \"ae\"\nout = \"/tmp/x\"\n{stages}")).unwrap()
    }

    #[test]
    fn only_the_last_stage_may_change_its_length_on_resume() {
        let s = |a: u64, b: u64, side: u32| {
            format!("[[stage]]\nsteps = {a}\nside = 64\nbatch = 2\n[[stage]]\nsteps = {b}\nside = {side}\nbatch = 2\n")
        };
        let base = cfg(&s(10, 20, 128));
        assert!(same_stages(&base, &cfg(&s(10, 20, 128))));
        assert!(same_stages(&base, &cfg(&s(10, 5, 128))));
        assert!(same_stages(&base, &cfg(&s(10, 90, 128))));
        assert!(!same_stages(&base, &cfg(&s(11, 20, 128))));
        assert!(!same_stages(&base, &cfg(&s(10, 20, 96))));
    }
}
