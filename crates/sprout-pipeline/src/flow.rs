//! Rectified flow: the interpolation, the velocity target, timestep sampling and shifting,
//! the sampling schedule, and the Euler and Heun samplers.
//!
//! Convention (FLUX / SD3): `x_t = (1 − t)·x₀ + t·ε`, t = 1 is pure noise, and the network
//! predicts the velocity `v = ε − x₀`, so `dx/dt = v` and sampling integrates from t = 1 to 0.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// The resolution-dependent shift: `mu` grows linearly with the number of image tokens,
/// through (base_len, base_shift) and (max_len, max_shift), as FLUX does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShiftConfig {
    pub base_len: f64,
    pub base_shift: f64,
    pub max_len: f64,
    pub max_shift: f64,
}

impl Default for ShiftConfig {
    fn default() -> Self {
        // FLUX.1's values.
        ShiftConfig {
            base_len: 256.0,
            base_shift: 0.5,
            max_len: 4096.0,
            max_shift: 1.15,
        }
    }
}

impl ShiftConfig {
    pub fn mu(&self, image_tokens: usize) -> f64 {
        let m = (self.max_shift - self.base_shift) / (self.max_len - self.base_len);
        let b = self.base_shift - m * self.base_len;
        m * image_tokens as f64 + b
    }
}

/// How a FLUX.1 snapshot's sampling times are shifted, as its
/// `scheduler/scheduler_config.json` (diffusers' FlowMatchEulerDiscreteScheduler) says:
/// with `use_dynamic_shifting` by `mu` from the image's token count (dev, Kontext, Fill,
/// Canny, Depth), otherwise by the fixed `shift` (schnell: 1, no shift).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FluxShift {
    Dynamic(ShiftConfig),
    Fixed(f64),
}

impl FluxShift {
    /// `mu` for `image_tokens`: a fixed shift s is `time_shift` with e^mu = s
    /// (`s·t / (1 + (s − 1)·t)`, the scheduler's static formula).
    pub fn mu(&self, image_tokens: usize) -> f64 {
        match self {
            FluxShift::Dynamic(c) => c.mu(image_tokens),
            FluxShift::Fixed(s) => s.ln(),
        }
    }

    /// The shift a scheduler config gives, FLUX.1's values where a field is absent. Fields
    /// that would sample on other times (another time-shift formula, a terminal shift,
    /// Karras / exponential / beta sigmas, inverted or stochastic sampling, another
    /// scheduler class) are refused by name; `what` names the file in errors.
    pub fn from_scheduler_config(
        v: &serde_json::Value,
        what: &str,
    ) -> std::result::Result<FluxShift, String> {
        let class = v["_class_name"]
            .as_str()
            .unwrap_or("FlowMatchEulerDiscreteScheduler");
        if class != "FlowMatchEulerDiscreteScheduler" {
            return Err(format!(
                "{what}: scheduler {class} is not supported (FLUX samples with \
                 FlowMatchEulerDiscreteScheduler)"
            ));
        }
        if let Some(t) = v["time_shift_type"]
            .as_str()
            .filter(|t| *t != "exponential")
        {
            return Err(format!(
                "{what}: time_shift_type = {t:?} is not supported (only \"exponential\")"
            ));
        }
        for flag in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
            "stochastic_sampling",
        ] {
            if v[flag].as_bool() == Some(true) {
                return Err(format!("{what}: {flag} = true is not supported"));
            }
        }
        if let Some(t) = v.get("shift_terminal").filter(|t| !t.is_null()) {
            return Err(format!("{what}: shift_terminal = {t} is not supported"));
        }
        let num = |k: &str, d: f64| -> std::result::Result<f64, String> {
            match v.get(k).filter(|x| !x.is_null()) {
                None => Ok(d),
                Some(x) => x
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("{what}: {k} = {x} is not a number")),
            }
        };
        if v["use_dynamic_shifting"].as_bool().unwrap_or(false) {
            let d = ShiftConfig::default();
            let c = ShiftConfig {
                base_len: num("base_image_seq_len", d.base_len)?,
                base_shift: num("base_shift", d.base_shift)?,
                max_len: num("max_image_seq_len", d.max_len)?,
                max_shift: num("max_shift", d.max_shift)?,
            };
            if c.max_len <= c.base_len {
                return Err(format!(
                    "{what}: max_image_seq_len ({}) must exceed base_image_seq_len ({})",
                    c.max_len, c.base_len
                ));
            }
            Ok(FluxShift::Dynamic(c))
        } else {
            let s = num("shift", 1.0)?;
            if s <= 0.0 {
                return Err(format!("{what}: shift = {s} must be positive"));
            }
            Ok(FluxShift::Fixed(s))
        }
    }
}

/// `e^mu / (e^mu + (1/t − 1))`: moves t towards 1 (more noise) for larger images.
pub fn time_shift(mu: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    if t >= 1.0 {
        return 1.0;
    }
    mu.exp() / (mu.exp() + (1.0 / t - 1.0))
}

/// Training timestep from a standard normal draw `n`: logit-normal `sigmoid(n)`, then shifted.
pub fn train_timestep(n: f64, mu: f64) -> f64 {
    time_shift(mu, 1.0 / (1.0 + (-n).exp()))
}

/// The sampling schedule: `steps + 1` times from 1 to 0, evenly spaced then shifted.
pub fn schedule(steps: usize, mu: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| time_shift(mu, 1.0 - i as f64 / steps as f64))
        .collect()
}

/// `x_t` and the velocity target for data `x0`, noise `eps` and times `t` (B,).
pub fn interpolate(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor)> {
    let shape: Vec<usize> = std::iter::once(x0.dim(0)?)
        .chain(std::iter::repeat_n(1, x0.rank() - 1))
        .collect();
    let t = t.reshape(shape)?;
    let xt = (x0.broadcast_mul(&(1.0 - &t)?)? + eps.broadcast_mul(&t)?)?;
    let v = (eps - x0)?;
    Ok((xt, v))
}

/// Mean squared error between predicted and target velocity.
pub fn flow_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    (pred - target)?.sqr()?.mean_all()
}

/// One Euler step from `t` to `t_next` with velocity `v`.
pub fn euler_step(x: &Tensor, v: &Tensor, t: f64, t_next: f64) -> Result<Tensor> {
    x + (v * (t_next - t))?
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    Euler,
    /// Heun's second-order method (one extra evaluation per step, except the last).
    Heun,
}

impl Sampler {
    pub fn parse(s: &str) -> std::result::Result<Sampler, String> {
        match s {
            "euler" => Ok(Sampler::Euler),
            "heun" => Ok(Sampler::Heun),
            _ => Err(format!("unknown sampler {s:?}; samplers: euler, heun")),
        }
    }
}

/// Inpainting by latent blending, as diffusers' inpainting pipelines do it: after each step
/// to time `t`, the region to keep is put back at the image's latents noised to `t`
/// (`t·noise + (1 − t)·latents`), so only the masked region is drawn and it is drawn to fit
/// what surrounds it. At `t = 0` the kept region is the image's latents exactly.
#[derive(Debug, Clone)]
pub struct Blend {
    /// The image's latents.
    pub latents: Tensor,
    /// The noise the sampling started from.
    pub noise: Tensor,
    /// 1 where the image is redrawn, 0 where it is kept; broadcast against the latents.
    pub mask: Tensor,
}

impl Blend {
    pub fn apply(&self, x: &Tensor, t: f64) -> Result<Tensor> {
        let known = ((&self.noise * t)? + (&self.latents * (1.0 - t))?)?;
        let m = self.mask.broadcast_as(x.shape())?;
        (x * &m)? + (known * (1.0 - m)?)?
    }
}

/// Integrate from noise `x` along `times` with velocity function `f(x, t)`; `on_step` is
/// called after each step with (step index, current x). With `blend`, the kept region is
/// put back after each step (inpainting).
pub fn sample(
    x: Tensor,
    times: &[f64],
    sampler: Sampler,
    blend: Option<&Blend>,
    mut f: impl FnMut(&Tensor, f64) -> Result<Tensor>,
    mut on_step: impl FnMut(usize, &Tensor) -> Result<()>,
) -> Result<Tensor> {
    let mut x = x;
    for (i, w) in times.windows(2).enumerate() {
        let (t, tn) = (w[0], w[1]);
        let v = f(&x, t)?;
        x = match sampler {
            Sampler::Euler => euler_step(&x, &v, t, tn)?,
            Sampler::Heun if tn > 0.0 => {
                let x1 = euler_step(&x, &v, t, tn)?;
                let v1 = f(&x1, tn)?;
                euler_step(&x, &((v + v1)? * 0.5)?, t, tn)?
            }
            Sampler::Heun => euler_step(&x, &v, t, tn)?,
        };
        // Sampling never needs gradients; without this, weights that are trainable
        // variables would chain every step into one graph, and dropping a graph of
        // hundreds of steps recurses deep enough to overflow a thread's stack.
        x = x.detach();
        if let Some(b) = blend {
            x = b.apply(&x, tn)?;
        }
        on_step(i, &x)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn scheduler_configs_give_their_shift_and_refuse_other_samplers_by_name() {
        let dev = serde_json::json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": true,
            "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
            "max_shift": 1.15, "shift": 3.0, "time_shift_type": "exponential",
        });
        let d = FluxShift::from_scheduler_config(&dev, "s").unwrap();
        assert_eq!(d, FluxShift::Dynamic(ShiftConfig::default()));
        assert!((d.mu(256) - 0.5).abs() < 1e-12 && (d.mu(4096) - 1.15).abs() < 1e-12);
        let mut other = dev.clone();
        other["max_shift"] = serde_json::json!(1.5);
        assert!(
            (FluxShift::from_scheduler_config(&other, "s")
                .unwrap()
                .mu(4096)
                - 1.5)
                .abs()
                < 1e-12
        );
        // schnell: no dynamic shifting, shift 1 — no shift at all.
        let schnell = serde_json::json!({"use_dynamic_shifting": false, "shift": 1.0});
        let s = FluxShift::from_scheduler_config(&schnell, "s").unwrap();
        assert_eq!(s.mu(1024), 0.0);
        // A fixed shift of 3 is the static formula s·t / (1 + (s − 1)·t).
        let f = FluxShift::from_scheduler_config(&serde_json::json!({"shift": 3.0}), "s").unwrap();
        let t = 0.4;
        assert!((time_shift(f.mu(64), t) - 3.0 * t / (1.0 + 2.0 * t)).abs() < 1e-12);
        for (field, value) in [
            ("time_shift_type", serde_json::json!("linear")),
            ("use_karras_sigmas", serde_json::json!(true)),
            ("invert_sigmas", serde_json::json!(true)),
            ("shift_terminal", serde_json::json!(0.1)),
            ("_class_name", serde_json::json!("EulerDiscreteScheduler")),
            ("max_shift", serde_json::json!("big")),
        ] {
            let mut v = dev.clone();
            v[field] = value;
            let e = FluxShift::from_scheduler_config(&v, "s").unwrap_err();
            assert!(
                e.contains(field) || e.contains("EulerDiscreteScheduler"),
                "{field}: {e}"
            );
        }
    }

    #[test]
    fn shift_closed_form() {
        let s = ShiftConfig::default();
        assert!((s.mu(256) - 0.5).abs() < 1e-12 && (s.mu(4096) - 1.15).abs() < 1e-12);
        // mu = ln 3: t = 0.5 → 3 / (3 + 1) = 0.75.
        assert!((time_shift(3f64.ln(), 0.5) - 0.75).abs() < 1e-12);
        assert_eq!(time_shift(1.0, 0.0), 0.0);
        assert_eq!(time_shift(1.0, 1.0), 1.0);
        // n = 0 → sigmoid 0.5 → unshifted 0.5.
        assert!((train_timestep(0.0, 0.0) - 0.5).abs() < 1e-12);
        let sch = schedule(4, 0.0);
        assert_eq!(sch, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn interpolation_loss_and_euler_by_hand() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let eps = Tensor::new(&[[0f32, 0.], [1., -1.]], &dev).unwrap();
        let t = Tensor::new(&[0.25f32, 0.5], &dev).unwrap();
        let (xt, v) = interpolate(&x0, &eps, &t).unwrap();
        // Row 0: 0.75·[1,2]; row 1: 0.5·[3,4] + 0.5·[1,-1] = [2, 1.5].
        assert_eq!(
            xt.to_vec2::<f32>().unwrap(),
            vec![vec![0.75, 1.5], vec![2.0, 1.5]]
        );
        assert_eq!(
            v.to_vec2::<f32>().unwrap(),
            vec![vec![-1., -2.], vec![-2., -5.]]
        );
        let pred = Tensor::new(&[[0f32, -2.], [-2., -1.]], &dev).unwrap();
        // Errors 1, 0, 0, 4 → squares 1, 0, 0, 16 → mean 4.25.
        assert_eq!(
            flow_loss(&pred, &v).unwrap().to_scalar::<f32>().unwrap(),
            4.25
        );
        // Euler from t = 0.5 to 0.25 with v: x + (−0.25)·v.
        let x = euler_step(&xt, &v, 0.5, 0.25)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(x, vec![vec![1.0, 2.0], vec![2.5, 2.75]]);
    }

    #[test]
    fn exact_velocity_recovers_the_data_with_any_sampler() {
        // For a single data point x0 the exact velocity field is (x − x0)/t; both samplers
        // must land on x0 from any noise.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.3f32, -1.2, 2.0], &dev).unwrap();
        let noise = Tensor::new(&[1.0f32, 0.5, -0.7], &dev).unwrap();
        for sampler in [Sampler::Euler, Sampler::Heun] {
            let out = sample(
                noise.clone(),
                &schedule(8, 0.5),
                sampler,
                None,
                |x, t| (x - &x0)? / t,
                |_, _| Ok(()),
            )
            .unwrap();
            let d = sprout_models::ops::max_abs_diff(&out, &x0).unwrap();
            assert!(d < 1e-5, "{sampler:?}: {d}");
        }
    }

    #[test]
    fn blending_keeps_the_image_where_the_mask_is_zero() {
        // Exact velocity towards x0 (elementwise): masked entries land on x0 as without
        // blending; kept entries are the image's latents exactly at t = 0 and its noised
        // latents in between.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.3f32, -1.2, 2.0, 0.7], &dev).unwrap();
        let noise = Tensor::new(&[1.0f32, 0.5, -0.7, 0.2], &dev).unwrap();
        let image = Tensor::new(&[5f32, 6., 7., 8.], &dev).unwrap();
        let blend = Blend {
            latents: image.clone(),
            noise: noise.clone(),
            mask: Tensor::new(&[1f32, 1., 0., 0.], &dev).unwrap(),
        };
        let times = schedule(6, 0.5);
        for sampler in [Sampler::Euler, Sampler::Heun] {
            let mut seen = Vec::new();
            let out = sample(
                noise.clone(),
                &times,
                sampler,
                Some(&blend),
                |x, t| (x - &x0)? / t,
                |i, x| {
                    seen.push((i, x.to_vec1::<f32>()?));
                    Ok(())
                },
            )
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            assert!(
                (out[0] - 0.3).abs() < 1e-5 && (out[1] + 1.2).abs() < 1e-5,
                "{out:?}"
            );
            assert_eq!(&out[2..], &[7., 8.]);
            // After step 0 (to times[1]) the kept entries are t·noise + (1 − t)·image.
            let t = times[1] as f32;
            let (i, x) = &seen[0];
            assert_eq!(*i, 0);
            assert!((x[3] - (t * 0.2 + (1.0 - t) * 8.0)).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn long_sampling_with_trainable_weights_keeps_no_graph() {
        // A velocity through a Var records ops; thousands of steps must not build one graph
        // (whose drop would recurse through every step) even on a small stack.
        let t = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let dev = Device::Cpu;
                let w = candle_core::Var::new(&[0.5f32, -0.25], &dev).unwrap();
                let x = Tensor::new(&[1f32, 2.], &dev).unwrap();
                let out = sample(
                    x,
                    &schedule(5000, 0.0),
                    Sampler::Euler,
                    None,
                    |x, _| x.mul(w.as_tensor()),
                    |_, _| Ok(()),
                )
                .unwrap();
                out.to_vec1::<f32>().unwrap()
            })
            .unwrap();
        let v = t.join().expect("no stack overflow");
        assert!(v.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn heun_is_second_order() {
        // dx/dt = x from t = 1 to 0 (x(0) = x(1)/e): Heun's error shrinks ~4x when steps double.
        let dev = Device::Cpu;
        let err = |sampler, steps| {
            let x = Tensor::new(&[1f64], &dev).unwrap();
            let out = sample(
                x,
                &schedule(steps, 0.0),
                sampler,
                None,
                |x, _| Ok(x.clone()),
                |_, _| Ok(()),
            )
            .unwrap();
            (out.to_vec1::<f64>().unwrap()[0] - (-1f64).exp()).abs()
        };
        let (e1, e2) = (err(Sampler::Heun, 8), err(Sampler::Heun, 16));
        assert!(e1 / e2 > 3.5, "{e1} {e2}");
        let (f1, f2) = (err(Sampler::Euler, 8), err(Sampler::Euler, 16));
        assert!((1.7..2.3).contains(&(f1 / f2)), "{f1} {f2}");
        assert!(e2 < f2);
    }
}
