//! `sprout serve`: an OpenAI-compatible image server. One worker thread runs jobs in order
//! from a bounded queue; requests are checked before they are queued; errors take OpenAI's
//! shape with the status chosen in one place ([`error::ApiError`]).

pub mod api;
pub mod config;
pub mod edits;
pub mod encode;
pub mod error;
pub mod generations;
pub mod jobs;
pub mod metrics;
pub mod store;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use sprout_pipeline::bundle::Bundle;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::generate::{generate, Request};

pub use config::ServerConfig;
pub use error::ApiError;

use metrics::Metrics;
use worker::Worker;

/// What every handler sees.
pub struct AppState {
    pub cfg: ServerConfig,
    /// The name clients use for the served model (`/v1/models`).
    pub model: String,
    pub max_side: u32,
    pub default_steps: usize,
    pub default_guidance: f64,
    pub sampler: Sampler,
    pub worker: Worker,
    pub metrics: Arc<Metrics>,
    pub jobs: jobs::Jobs,
    /// Images answered by URL.
    pub store: store::Store,
}

impl AppState {
    /// Whether `name` refers to the served model (its name, or `default` for it).
    pub fn serves(&self, name: &str) -> bool {
        name == self.model || name == "default"
    }
}

/// Check the model at its largest size (one step) so memory problems show at start, then
/// start the worker.
pub fn start(bundle: Bundle, model: &str, cfg: ServerConfig) -> Result<AppState, ApiError> {
    let meta = &bundle.meta;
    if cfg.warmup {
        let side = meta.max_side / sprout_models::ae::DOWNSCALE as u32
            * sprout_models::ae::DOWNSCALE as u32;
        generate(
            &bundle,
            &Request {
                prompt: "warm-up".into(),
                n: 1,
                seed: 0,
                steps: 1,
                guidance: meta.default_guidance,
                width: side,
                height: side,
                sampler: meta.sampler,
                init: None,
            },
            |_, _| {},
        )
        .map_err(|e| ApiError::Internal(format!("warm-up at {side}x{side} failed: {e}")))?;
    }
    let metrics = Arc::new(Metrics::default());
    let (max_side, default_steps, default_guidance, sampler) = (
        meta.max_side,
        meta.default_steps,
        meta.default_guidance,
        meta.sampler,
    );
    let worker = Worker::spawn(
        Arc::new(bundle),
        cfg.queue_capacity,
        cfg.deadline,
        metrics.clone(),
    );
    Ok(AppState {
        cfg,
        model: model.to_string(),
        max_side,
        default_steps,
        default_guidance,
        sampler,
        worker,
        metrics,
        jobs: jobs::Jobs::new(std::time::Duration::from_secs(3600)),
        store: store::Store::new(std::time::Duration::from_secs(3600), 512 << 20),
    })
}

/// Serve on `listener` until `shutdown` resolves; then refuse new jobs, let the running one
/// finish and answer the rest, and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state.clone());
    let s = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            s.worker.shut_down();
        })
        .await
}

/// Seconds since the Unix epoch (the `created` fields).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
