//! AdamW with decoupled weight decay, global-norm gradient clipping, warm-up then cosine or
//! warm-up / constant / linear cool-down (WSD) learning rate, and an exponential moving average of the weights. All state is named
//! tensors, so checkpoints restore it exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine decay to `lr · min_lr_ratio` over the rest of the run.
    Cosine,
    /// Constant, then a linear cool-down to `lr · min_lr_ratio` over the last `cooldown`
    /// share of the run. A run that ends by a time limit cools down before the limit.
    Wsd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not biases or norm scales).
    pub weight_decay: f64,
    pub warmup: u64,
    /// The cosine ends at `lr · min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    pub ema_decay: f64,
    pub schedule: Schedule,
    /// With `schedule = "wsd"`: the share of the run (after warm-up) that cools down.
    pub cooldown: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            warmup: 100,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            ema_decay: 0.999,
            schedule: Schedule::Cosine,
            cooldown: 0.2,
        }
    }
}

impl OptimConfig {
    /// Learning rate at `step` (0-based) of `total`: linear warm-up, then cosine decay.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        self.lr_at_progress(self.progress(step, total))
    }

    /// How far past warm-up `step` of `total` is, in 0..=1.
    pub fn progress(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup {
            return 0.0;
        }
        let span = total.saturating_sub(self.warmup).max(1) as f64;
        ((step - self.warmup) as f64 / span).min(1.0)
    }

    /// Learning rate after warm-up at progress `p` (0..=1) of the schedule.
    pub fn lr_at_progress(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        let min = self.lr * self.min_lr_ratio;
        match self.schedule {
            Schedule::Cosine => {
                min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Schedule::Wsd => {
                let start = 1.0 - self.cooldown;
                if p <= start || self.cooldown <= 0.0 {
                    self.lr
                } else {
                    self.lr - (self.lr - min) * ((p - start) / self.cooldown).min(1.0)
                }
            }
        }
    }
}

pub struct AdamW {
    pub cfg: OptimConfig,
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates applied so far.
    pub t: u64,
}

impl AdamW {
    pub fn new(cfg: OptimConfig, mut params: Vec<(String, Var)>) -> Result<AdamW> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = params
            .iter()
            .map(|(_, p)| p.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            params,
            m,
            v,
            t: 0,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; returns the global gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<f64> {
        let mut sq = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            candle_core::bail!("gradient norm is {norm}: the loss diverged");
        }
        let clip = if self.cfg.grad_clip > 0.0 && norm > self.cfg.grad_clip {
            self.cfg.grad_clip / norm
        } else {
            1.0
        };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            // Detach everything kept across steps: candle records the ops of any tensor
            // derived from a variable, so stored state would otherwise chain every step's graph.
            let g = (g.detach() * clip)?;
            let m = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + self.cfg.eps)?)?;
            let mut w = p.as_tensor().detach();
            if self.cfg.weight_decay > 0.0 && p.rank() >= 2 {
                w = (w * (1.0 - lr * self.cfg.weight_decay))?;
            }
            p.set(&(w - (update * lr)?)?.detach())?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(norm)
    }

    /// Moments as named tensors (`m.NAME`, `v.NAME`).
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (n, _)) in self.params.iter().enumerate() {
            out.insert(format!("m.{n}"), self.m[i].clone());
            out.insert(format!("v.{n}"), self.v[i].clone());
        }
        out
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            for (key, slot) in [
                (format!("m.{n}"), &mut self.m[i]),
                (format!("v.{n}"), &mut self.v[i]),
            ] {
                let s = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks {key}"))
                })?;
                if s.dims() != p.dims() {
                    candle_core::bail!(
                        "optimizer state {key} has shape {:?}, parameter has {:?}",
                        s.dims(),
                        p.dims()
                    );
                }
                *slot = s.clone();
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Exponential moving average of parameters; the decay warms up as min(d, (1+n)/(10+n)).
pub struct Ema {
    pub decay: f64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    pub fn new(decay: f64, params: &[(String, Var)]) -> Ema {
        Ema {
            decay,
            shadow: params
                .iter()
                .map(|(n, p)| (n.clone(), p.as_tensor().detach().copy().expect("copy")))
                .collect(),
        }
    }

    pub fn update(&mut self, params: &[(String, Var)], updates: u64) -> Result<()> {
        let d = self
            .decay
            .min((1.0 + updates as f64) / (10.0 + updates as f64));
        for ((_, s), (_, p)) in self.shadow.iter_mut().zip(params) {
            *s = ((&*s * d)? + (p.as_tensor().detach() * (1.0 - d))?)?.detach();
        }
        Ok(())
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.shadow.iter().cloned().collect()
    }

    pub fn load(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        for (n, s) in self.shadow.iter_mut() {
            *s = t
                .get(n)
                .ok_or_else(|| candle_core::Error::Msg(format!("EMA state lacks {n}")))?
                .clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{backprop::GradStore, Device};

    #[test]
    fn schedule_shape() {
        let c = OptimConfig {
            lr: 1.0,
            warmup: 10,
            min_lr_ratio: 0.1,
            ..OptimConfig::default()
        };
        assert!((c.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60, 110) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(110, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn wsd_is_constant_then_cools_down_linearly() {
        let c = OptimConfig {
            lr: 1.0,
            warmup: 10,
            min_lr_ratio: 0.1,
            schedule: Schedule::Wsd,
            cooldown: 0.25,
            ..OptimConfig::default()
        };
        assert!((c.lr_at(4, 110) - 0.5).abs() < 1e-12);
        assert_eq!(c.lr_at(10, 110), 1.0);
        assert_eq!(c.lr_at(85, 110), 1.0);
        // Cool-down over the last 25 of 100 steps: halfway at 97.5, the floor at the end.
        assert!((c.lr_at(98, 110) - (1.0 - 0.9 * 13.0 / 25.0)).abs() < 1e-12);
        assert!((c.lr_at(110, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at_progress(0.875) - 0.55).abs() < 1e-12);
        assert!((c.lr_at_progress(2.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn first_adamw_step_by_hand() {
        // With bias correction the first step moves each weight by lr·sign(g) (|g| ≫ eps),
        // after decoupled decay of matrices.
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[1f32, -2.], [3., 4.]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.5f32, 0.5], &dev).unwrap()).unwrap();
        let loss = ((w.as_tensor().sum_all().unwrap() * 3.0).unwrap()
            - b.as_tensor().sum_all().unwrap())
        .unwrap();
        let grads: GradStore = loss.backward().unwrap();
        let cfg = OptimConfig {
            weight_decay: 0.1,
            grad_clip: 0.0,
            ..OptimConfig::default()
        };
        let mut opt =
            AdamW::new(cfg, vec![("w".into(), w.clone()), ("b".into(), b.clone())]).unwrap();
        let norm = opt.step(&grads, 0.01).unwrap();
        assert!((norm - (4.0 * 9.0 + 2.0f64).sqrt()).abs() < 1e-5);
        let wv = w.as_tensor().to_vec2::<f32>().unwrap();
        assert!((wv[0][0] - (1.0 * 0.999 - 0.01)).abs() < 1e-6, "{wv:?}");
        assert!((wv[0][1] - (-2.0 * 0.999 - 0.01)).abs() < 1e-6);
        let bv = b.as_tensor().to_vec1::<f32>().unwrap();
        assert!((bv[0] - 0.51).abs() < 1e-6, "{bv:?}");
    }

    #[test]
    fn clipping_scales_the_gradient() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[0f32], &dev).unwrap()).unwrap();
        let grads = (w.as_tensor() * 10.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut opt = AdamW::new(
            OptimConfig {
                grad_clip: 1.0,
                weight_decay: 0.0,
                ..OptimConfig::default()
            },
            vec![("w".into(), w.clone())],
        )
        .unwrap();
        assert!((opt.step(&grads, 0.1).unwrap() - 10.0).abs() < 1e-6);
        // The clipped moment is 0.1·g_clipped = 0.1·1.
        let m = opt.state()["m.w"].to_vec1::<f32>().unwrap()[0];
        assert!((m - 0.1).abs() < 1e-6, "{m}");
    }
}
