//! `sprout train --config FILE.toml [--resume] [--stop-after N] [--time-limit T] [--export DIR]`
//!
//! Ctrl-C (or SIGTERM) ends a run after the step in progress, with a checkpoint; a second one
//! ends it at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sprout_train::{train, Options, TrainConfig};

#[derive(Args)]
pub struct TrainArgs {
    /// Training config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the latest checkpoint in the config's `out` directory.
    #[arg(long)]
    resume: bool,
    /// Stop after this global step (with a checkpoint).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Stop (with a checkpoint) after the first step that ends this long after the start:
    /// seconds, or a number with s, m or h (`90s`, `45m`, `2h`).
    #[arg(long, value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// Instead of training, export the latest checkpoint's EMA weights to this directory.
    #[arg(long)]
    export: Option<PathBuf>,
}

pub fn run(a: TrainArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cfg =
        TrainConfig::from_toml(&text).with_context(|| format!("config {}", a.config.display()))?;
    if let Some(to) = &a.export {
        let summary = sprout_train::export::export(&cfg, to)?;
        println!(
            "exported to {}: {}",
            to.display(),
            serde_json::json!({"steps": summary["steps"], "samples": summary["samples"]})
        );
        return Ok(());
    }
    let time_limit = match (a.time_limit, &cfg.time_limit) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => Some(
            parse_duration(t)
                .map_err(|e| anyhow::anyhow!("config {}: time_limit {e}", a.config.display()))?,
        ),
        (None, None) => None,
    };
    // A data-parallel DiT run keeps each core on its own half of a step (see
    // sprout_train::dit_task); candle's products must then not split themselves across the
    // cores too. It reads RAYON_NUM_THREADS at every product; a value the user set wins.
    let single_products = cfg.kind == sprout_train::config::Kind::Dit
        && cfg.dit.data_parallel
        && cfg.device == "cpu"
        && std::env::var_os("RAYON_NUM_THREADS").is_none();
    if single_products {
        // Set before any other thread of this process reads the environment.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    let total = cfg.total_steps();
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step, with a checkpoint (again to stop at once)");
    })
    .context("installing the Ctrl-C handler")?;
    let opts = Options {
        resume: a.resume,
        stop_after: a.stop_after,
        time_limit,
        stop: Some(stop.clone()),
    };
    let started = std::time::Instant::now();
    let summary = train(&cfg, &opts, |l| {
        pb.set_position(l.step);
        // Time left: the steps still to run at the current rate, or the time limit if it
        // comes first.
        let now = started.elapsed().as_secs_f64();
        let rate = l.samples_per_s.max(1e-9) * l.step.max(1) as f64 / l.samples.max(1) as f64;
        let by_steps = (l.total.saturating_sub(l.step)) as f64 / rate.max(1e-9);
        let by_time = time_limit.map(|t| (t.as_secs_f64() - now).max(0.0));
        let eta = by_time.map_or(by_steps, |t| t.min(by_steps));
        let extra: Vec<String> = l
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        pb.set_message(format!(
            "stage {} loss {:.4} {} | {:.1} samples/s | {} left",
            l.stage,
            l.loss,
            extra.join(" "),
            l.samples_per_s,
            clock(eta)
        ));
        if !pb.is_hidden() {
            return;
        }
        eprintln!(
            "step {}/{} stage {} loss {:.5} lr {:.2e} |g| {:.3} {} {:.1} samples/s, {} samples, {} elapsed, eta {}",
            l.step,
            l.total,
            l.stage,
            l.loss,
            l.lr,
            l.grad_norm,
            extra.join(" "),
            l.samples_per_s,
            l.samples,
            clock(l.elapsed_s),
            clock(eta)
        );
    })?;
    pb.finish_and_clear();
    if let Some(why) = summary.stopped_early {
        eprintln!(
            "{why}: stopped at step {} of {total}; `sprout train --config {} --resume` continues",
            summary.steps,
            a.config.display()
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    if single_products {
        std::env::remove_var("RAYON_NUM_THREADS");
    }
    let interrupted = summary.stopped_early == Some("interrupted");
    if cfg.eval_after && cfg.kind == sprout_train::config::Kind::Dit && !interrupted {
        let to = cfg.out.join("export");
        sprout_train::export::export(&cfg, &to)?;
        eprintln!(
            "exported the EMA weights to {}; scoring them on WorldEval",
            to.display()
        );
        let model = sprout_pipeline::bundle::Bundle::load_dir(&to, &candle_core::Device::Cpu)?;
        let set = sprout_eval::PromptSet::builtin();
        let prompts = set.select(cfg.eval_count, &[])?;
        let pb = crate::progress::bar(prompts.len() as u64, "eval");
        let tick = || pb.inc(1);
        let opts = crate::eval_cmd::ModelEval {
            steps: None,
            guidance: None,
            sampler: None,
            batch: 8,
            seed: 0,
            save: None,
        };
        let report = crate::eval_cmd::score_model(
            &model,
            &to.display().to_string(),
            &set,
            &prompts,
            &opts,
            &tick,
        )?;
        pb.finish_and_clear();
        std::fs::write(
            cfg.out.join("worldeval.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        print!("{}", report.markdown());
        println!("{}", report.summary());
    }
    Ok(())
}

/// Seconds as `1h02m`, `12m30s` or `45s`.
fn clock(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// `90`, `90s`, `45m` or `2h`.
fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c),
        _ => (t, 's'),
    };
    let scale = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!(
            "{s:?} is not a duration: give seconds, or a number with s, m or h (90s, 45m, 2h)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        for bad in ["", "m", "-5m", "10d", "abc", "NaNs"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
