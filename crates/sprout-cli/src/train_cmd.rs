//! `sprout train --config FILE.toml [--resume] [--stop-after N] [--export DIR]`

use std::path::PathBuf;

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
    let total = cfg.total_steps();
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    let opts = Options {
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let summary = train(&cfg, &opts, |l| {
        pb.set_position(l.step);
        let extra: Vec<String> = l
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} {v:.3}"))
            .collect();
        pb.set_message(format!(
            "stage {} loss {:.4} {} | {:.1} samples/s",
            l.stage,
            l.loss,
            extra.join(" "),
            l.samples_per_s
        ));
        if !pb.is_hidden() {
            return;
        }
        eprintln!(
            "step {}/{} stage {} loss {:.5} lr {:.2e} |g| {:.3} {} {:.1} samples/s",
            l.step,
            l.total,
            l.stage,
            l.loss,
            l.lr,
            l.grad_norm,
            extra.join(" "),
            l.samples_per_s
        );
    })?;
    pb.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
