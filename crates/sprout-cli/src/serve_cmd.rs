//! `sprout serve [--model default|DIR|flux-schnell|flux-dev|flux-kontext|flux-fill|flux-canny|flux-depth] [--weights PATH]
//! [--host H] [--port P] [--queue N] [--deadline S]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sprout_server::ServerConfig;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub served: crate::served_model::ServedModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Jobs that may wait behind the running one; more get HTTP 429.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Seconds a job may take from acceptance before it is stopped (HTTP 504).
    #[arg(long, default_value_t = 600)]
    pub deadline: u64,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Longest prompt in characters.
    #[arg(long, default_value_t = 4000)]
    pub max_prompt_chars: usize,
    /// Most images per request.
    #[arg(long, default_value_t = 10)]
    pub max_n: usize,
    /// Largest side of an uploaded image in pixels (larger uploads are refused from their
    /// header, before decoding).
    #[arg(long, default_value_t = 4096)]
    pub max_input_side: u32,
    /// Skip the start-up run at the model's largest size.
    #[arg(long)]
    pub no_warmup: bool,
    /// Distributed mode: hold no model; queue jobs on this Redis broker
    /// (`redis://HOST:PORT[/DB]`) for `sprout worker`s. `--model` then names the served
    /// model as its workers advertise it (`default`: whichever live worker's model is found
    /// first); `--queue` bounds the jobs queued or running on the broker.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// With --broker: wait at start until this many live workers serve the model.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub workers_expected: usize,
    /// With --broker: give up waiting for the workers after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "S")]
    pub wait_workers: u64,
    /// With --broker: the prefix of every key this deployment uses on the broker.
    #[arg(long, default_value = "sprout")]
    pub broker_prefix: String,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", a.host, a.port)
        .parse()
        .with_context(|| format!("--host {:?} --port {}: not an address", a.host, a.port))?;
    if a.queue == 0 {
        anyhow::bail!("--queue must be at least 1");
    }
    if a.max_n == 0 || a.max_prompt_chars == 0 || a.max_input_side == 0 || a.max_body_mib == 0 {
        anyhow::bail!(
            "--max-n, --max-prompt-chars, --max-input-side and --max-body-mib must be at least 1"
        );
    }
    let cfg = ServerConfig {
        addr,
        queue_capacity: a.queue,
        deadline: Duration::from_secs(a.deadline),
        max_body_bytes: a.max_body_mib << 20,
        max_prompt_chars: a.max_prompt_chars,
        max_n: a.max_n,
        max_input_side: a.max_input_side,
        warmup: !a.no_warmup,
        ..ServerConfig::default()
    };
    if let Some(url) = &a.broker {
        return run_remote(&a, url, cfg);
    }
    let (engine, name) = a.served.load()?;
    if cfg.warmup {
        let (w, h) = engine.warmup_size();
        eprintln!("model {name} loaded; warming up with one step at {w}x{h}");
    } else {
        eprintln!("model {name} loaded");
    }
    let state = Arc::new(sprout_server::start(engine, &name, cfg)?);
    listen(addr, state)
}

/// Bind `addr`, print the address and serve until SIGTERM or Ctrl-C.
fn listen(addr: SocketAddr, state: Arc<sprout_server::AppState>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        // Tests and scripts read this line to find the port.
        println!("listening on http://{}", listener.local_addr()?);
        sprout_server::serve(listener, state, sprout_server::shutdown_signal()).await?;
        eprintln!("shut down");
        Ok(())
    })
}

/// `sprout serve --broker`: a front end with no model of its own.
fn run_remote(a: &ServeArgs, url: &str, cfg: ServerConfig) -> Result<()> {
    if a.served.weights.is_some() {
        anyhow::bail!("--weights: a front end with --broker loads no model; give the weights to `sprout worker`");
    }
    if a.workers_expected == 0 {
        anyhow::bail!("--workers-expected must be at least 1");
    }
    let broker = sprout_server::broker::Broker::connect(url, &a.broker_prefix)
        .with_context(|| format!("--broker {url}"))?;
    let want = (a.served.model != "default").then(|| a.served.model.clone());
    let t0 = std::time::Instant::now();
    let mut said = false;
    let (model, profile) = loop {
        let live = broker.live_workers().context("reading the live workers")?;
        let model = want
            .clone()
            .or_else(|| live.first().map(|w| w.model.clone()));
        if let Some(m) = model {
            let serving: Vec<_> = live.iter().filter(|w| w.model == m).collect();
            if serving.len() >= a.workers_expected {
                break (m, serving[0].profile.clone());
            }
        }
        if t0.elapsed().as_secs() >= a.wait_workers {
            anyhow::bail!(
                "no {} live worker(s) serving {} after {} s on {url} (start them with `sprout worker --broker {url} --model …`)",
                a.workers_expected,
                want.as_deref().unwrap_or("any model"),
                a.wait_workers
            );
        }
        if !said {
            eprintln!(
                "waiting for {} worker(s) serving {} on {url}",
                a.workers_expected,
                want.as_deref().unwrap_or("any model")
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("serving {model} through broker {url}");
    let addr = cfg.addr;
    let state = Arc::new(sprout_server::start_remote(broker, &model, profile, cfg));
    listen(addr, state)
}
