//! `sprout worker --broker URL [--model default|DIR|flux-…] [--weights PATH] [--name NAME]`:
//! one model, jobs from a `sprout serve --broker` front end (see `sprout_server::remote_worker`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sprout_server::remote_worker::{self, WorkerOptions};

#[derive(Args)]
pub struct WorkerArgs {
    /// The Redis broker the front end queues jobs on (`redis://HOST:PORT[/DB]`).
    #[arg(long, value_name = "URL")]
    pub broker: String,
    #[command(flatten)]
    pub served: crate::served_model::ServedModelArgs,
    /// This worker's name among the live workers (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a job may stay pending on a stopped worker before this one claims it.
    #[arg(long, default_value_t = 10)]
    pub visibility_timeout: u64,
    /// Deliveries after which a job whose workers kept stopping while running it is marked
    /// failed.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u64,
    /// Skip the start-up run at the model's largest size.
    #[arg(long)]
    pub no_warmup: bool,
    /// The prefix of every key this deployment uses on the broker (as the front end's).
    #[arg(long, default_value = "sprout")]
    pub broker_prefix: String,
}

pub fn run(a: WorkerArgs) -> Result<()> {
    if a.max_attempts == 0 || a.visibility_timeout == 0 {
        anyhow::bail!("--max-attempts and --visibility-timeout must be at least 1");
    }
    let broker = sprout_server::broker::Broker::connect(&a.broker, &a.broker_prefix)
        .with_context(|| format!("--broker {}", a.broker))?;
    let (mut engine, model) = a.served.load()?;
    if !a.no_warmup {
        let (w, h) = engine.warmup_size();
        eprintln!("model {model} loaded; warming up with one step at {w}x{h}");
        sprout_server::warm_up(&mut engine)?;
    }
    let name = a.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        // SIGTERM or Ctrl-C: finish the running job, then leave.
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(sprout_server::shutdown_signal());
            eprintln!("stopping after the running job");
            stop.store(true, Ordering::SeqCst);
        });
    }
    // Tests and scripts read this line to know the worker takes jobs.
    println!("worker {name} serving {model} from {}", a.broker);
    remote_worker::run(
        engine,
        broker,
        WorkerOptions {
            name,
            model,
            visibility: Duration::from_secs(a.visibility_timeout),
            max_attempts: a.max_attempts,
        },
        stop,
    )
    .context("the broker")?;
    eprintln!("worker stopped");
    Ok(())
}
