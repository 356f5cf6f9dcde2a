//! The one denoising loop every model family runs: the sampler's steps over a schedule
//! ([`crate::flow::sample`]), inpainting's blend after each step, cancellation before each
//! network evaluation, progress, previews of the current prediction, and a check that the
//! latents stay finite.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use image::RgbImage;

use crate::flow::{sample, Blend, Sampler};
use crate::PipelineError;

/// What a caller can do while a generation runs.
pub struct Hooks<'a> {
    /// Once set, sampling stops with [`PipelineError::Cancelled`] before the next network
    /// evaluation (a server cancels a job whose client went away).
    pub cancel: &'a AtomicBool,
    /// `(done, total)` network evaluations.
    pub on_step: &'a mut dyn FnMut(usize, usize),
    /// How many previews to decode during sampling, evenly spaced over the steps (the last
    /// step excluded): each is the current prediction of the final images.
    pub previews: usize,
    /// `(preview index from 0, images in request order)`.
    pub on_preview: &'a mut dyn FnMut(usize, Vec<RgbImage>),
}

impl Hooks<'_> {
    /// Run `f` with hooks that never cancel, report progress to `on_step` and take no
    /// previews.
    pub fn progress<T>(on_step: &mut dyn FnMut(usize, usize), f: impl FnOnce(Hooks<'_>) -> T) -> T {
        let never = AtomicBool::new(false);
        f(Hooks {
            cancel: &never,
            on_step,
            previews: 0,
            on_preview: &mut |_, _| {},
        })
    }
}

/// Steps (0-based) after which `n` previews of an `steps`-step run are decoded.
pub fn preview_steps(steps: usize, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n)
        .map(|k| (k * steps / (n + 1)).max(1) - 1)
        .filter(|&i| i + 1 < steps)
        .collect();
    v.dedup();
    v
}

/// Network evaluations of a run of `steps` steps with `sampler` (Heun's last step is an
/// Euler step).
pub fn evaluations(sampler: Sampler, steps: usize) -> usize {
    match sampler {
        Sampler::Euler => steps,
        Sampler::Heun => (2 * steps).saturating_sub(1),
    }
}

/// Integrate `x` along `times` (from its first time to its last) with `velocity(x, t)`.
/// With `blend`, the kept region is put back after each step. `preview(x0)` decodes the
/// current prediction of the data (`x0 = x_t − t·v`) into images for `hooks.previews`.
pub fn denoise(
    x: Tensor,
    times: &[f64],
    sampler: Sampler,
    blend: Option<&Blend>,
    hooks: Hooks<'_>,
    mut velocity: impl FnMut(&Tensor, f64) -> Result<Tensor, PipelineError>,
    preview: impl Fn(&Tensor) -> Result<Vec<RgbImage>, PipelineError>,
) -> Result<Tensor, PipelineError> {
    let Hooks {
        cancel,
        on_step,
        previews,
        on_preview,
    } = hooks;
    let steps = times.len().saturating_sub(1);
    let evals = evaluations(sampler, steps);
    let at = preview_steps(steps, previews);
    let last_v = RefCell::new(None::<Tensor>);
    // The first error of the callbacks, kept as it was (the sampler's own errors are
    // candle's).
    let failed = RefCell::new(None::<PipelineError>);
    let keep = |e: PipelineError| {
        let msg = e.to_string();
        failed.borrow_mut().get_or_insert(e);
        candle_core::Error::Msg(msg)
    };
    let (mut done, mut shown) = (0, 0);
    let out = sample(
        x,
        times,
        sampler,
        blend,
        |x, t| {
            if cancel.load(Ordering::Relaxed) {
                return Err(keep(PipelineError::Cancelled));
            }
            let v = velocity(x, t).map_err(keep)?;
            done += 1;
            on_step(done.min(evals), evals);
            *last_v.borrow_mut() = Some(v.clone());
            Ok(v)
        },
        |i, x| {
            if !x
                .abs()?
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?
                .is_finite()
            {
                return Err(keep(PipelineError::Weights(
                    "latents became NaN during sampling".into(),
                )));
            }
            if at.contains(&i) {
                if let Some(v) = last_v.borrow().as_ref() {
                    let x0 = (x - (v * times[i + 1])?)?;
                    on_preview(shown, preview(&x0).map_err(keep)?);
                    shown += 1;
                }
            }
            Ok(())
        },
    );
    match out {
        Ok(x) => Ok(x),
        Err(e) => Err(failed.into_inner().unwrap_or(PipelineError::Candle(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::schedule;
    use candle_core::Device;

    #[test]
    fn progress_previews_and_cancellation() {
        // Exact velocity towards x0: the loop lands on it, counts every evaluation and
        // decodes previews of the exact prediction.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -0.25], &dev).unwrap();
        let noise = Tensor::new(&[1f32, 2.], &dev).unwrap();
        let times = schedule(6, 0.0);
        let (mut seen, mut shown) = (Vec::new(), Vec::new());
        let never = AtomicBool::new(false);
        let out = denoise(
            noise.clone(),
            &times,
            Sampler::Heun,
            None,
            Hooks {
                cancel: &never,
                on_step: &mut |d, t| seen.push((d, t)),
                previews: 2,
                on_preview: &mut |k, imgs| shown.push((k, imgs.len())),
            },
            |x, t| Ok(((x - &x0)? / t)?),
            |x0| {
                let d = sprout_models::ops::max_abs_diff(
                    x0,
                    &Tensor::new(&[0.5f32, -0.25], &Device::Cpu)?,
                )?;
                assert!(d < 1e-5, "{d}");
                Ok(vec![RgbImage::new(1, 1)])
            },
        )
        .unwrap();
        assert!(sprout_models::ops::max_abs_diff(&out, &x0).unwrap() < 1e-5);
        assert_eq!(seen.len(), 11);
        assert_eq!(seen.last(), Some(&(11, 11)));
        assert_eq!(shown, vec![(0, 1), (1, 1)]);
        // A set flag stops before the first evaluation; the caller's own error is kept.
        let stop = AtomicBool::new(true);
        let e = denoise(
            noise.clone(),
            &times,
            Sampler::Euler,
            None,
            Hooks {
                cancel: &stop,
                on_step: &mut |_, _| panic!("no evaluation may run"),
                previews: 0,
                on_preview: &mut |_, _| {},
            },
            |x, _| Ok(x.clone()),
            |_| Ok(vec![]),
        )
        .unwrap_err();
        assert!(matches!(e, PipelineError::Cancelled), "{e:?}");
        let e = Hooks::progress(&mut |_, _| {}, |h| {
            denoise(
                noise,
                &times,
                Sampler::Euler,
                None,
                h,
                |_, _| Err(PipelineError::Request("bad".into())),
                |_| Ok(vec![]),
            )
        })
        .unwrap_err();
        assert!(
            matches!(e, PipelineError::Request(ref m) if m == "bad"),
            "{e:?}"
        );
    }

    #[test]
    fn non_finite_latents_are_refused() {
        let dev = Device::Cpu;
        let e = Hooks::progress(&mut |_, _| {}, |h| {
            denoise(
                Tensor::new(&[1f32], &dev).unwrap(),
                &schedule(2, 0.0),
                Sampler::Euler,
                None,
                h,
                |x, _| Ok((x * f64::NAN)?),
                |_| Ok(vec![]),
            )
        })
        .unwrap_err();
        assert!(e.to_string().contains("NaN"), "{e}");
    }
}
