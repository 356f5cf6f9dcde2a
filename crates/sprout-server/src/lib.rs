//! `sprout serve`: an OpenAI-compatible image server. One worker thread runs jobs in order
//! from a bounded queue; requests are checked before they are queued; errors take OpenAI's
//! shape with the status chosen in one place ([`error::ApiError`]).

pub mod api;
pub mod broker;
pub mod config;
pub mod edits;
pub mod encode;
pub mod error;
pub mod generations;
pub mod jobs;
pub mod metrics;
pub mod remote;
pub mod remote_worker;
pub mod store;
pub mod wire;
pub mod worker;

use std::future::Future;
use std::sync::Arc;

use sprout_pipeline::denoise::Hooks;

pub use config::ServerConfig;
pub use error::ApiError;
/// The served model: the pipeline's one entry point ([`sprout_pipeline::model::Model`]).
pub use sprout_pipeline::model::Model as Engine;
pub use sprout_pipeline::request::Profile;

use metrics::Metrics;
use worker::{Queue, Worker};

/// What every handler sees.
pub struct AppState {
    pub cfg: ServerConfig,
    /// The name clients use for the served model (`/v1/models`); behind a broker, the
    /// model of requests that name none (`default`), among those live workers advertise.
    pub model: String,
    /// That model's limits and defaults (behind a broker, as its workers advertised them at
    /// start; the latest advertisement wins).
    pub profile: Profile,
    pub worker: Queue,
    pub metrics: Arc<Metrics>,
    pub jobs: jobs::Jobs,
    /// Images answered by URL.
    pub store: store::Store,
}

impl AppState {
    /// The model a request names (`None` or `default`: the default one) and its profile.
    /// In one process that is the loaded model, and any other name is unknown (404); behind
    /// a broker it is any model a live worker advertises, and a name no live worker serves
    /// is answered 503 naming it.
    pub fn served(&self, name: Option<&str>) -> Result<(String, Profile), ApiError> {
        let name = name.unwrap_or("default");
        let remote = match &self.worker {
            worker::Queue::Local(_) if serves(&self.model, name) => {
                return Ok((self.model.clone(), self.profile.clone()))
            }
            worker::Queue::Local(_) => return Err(ApiError::UnknownModel(name.to_string())),
            worker::Queue::Remote(r) => r,
        };
        let model = if name == "default" { &self.model } else { name };
        match remote.profile_of(model) {
            Some(p) => Ok((model.to_string(), p)),
            None if model == self.model => Ok((model.to_string(), self.profile.clone())),
            None => Err(ApiError::NoWorker(model.to_string())),
        }
    }

    /// Every model served, with its profile, the default first.
    pub fn models(&self) -> Vec<(String, Profile)> {
        let mut out = vec![(self.model.clone(), self.profile.clone())];
        if let Some(r) = self.worker.remote() {
            for (m, p) in r.models() {
                if m == self.model {
                    out[0].1 = p;
                } else {
                    out.push((m, p));
                }
            }
        }
        out
    }
}

/// Whether a request's `name` refers to the served `model` (its name, or `default` for it).
pub fn serves(model: &str, name: &str) -> bool {
    name == model || name == "default"
}

/// Run the model once (one step, at [`Engine::warmup_size`]) so memory problems show at
/// start: what `sprout serve` and `sprout worker` do before taking jobs.
pub fn warm_up(engine: &mut Engine) -> Result<(), ApiError> {
    let (w, h) = engine.warmup_size();
    let never = std::sync::atomic::AtomicBool::new(false);
    let req = engine
        .warmup_request((w, h))
        .map_err(|e| ApiError::Internal(format!("warm-up at {w}x{h}: {e}")))?;
    engine
        .generate(
            &req,
            Hooks {
                cancel: &never,
                on_step: &mut |_, _| {},
                previews: 0,
                on_preview: &mut |_, _| {},
            },
        )
        .map_err(|e| ApiError::Internal(format!("warm-up at {w}x{h} failed: {e}")))?;
    Ok(())
}

/// Warm the model up ([`warm_up`]) when the config asks, then start the worker.
pub fn start(mut engine: Engine, model: &str, cfg: ServerConfig) -> Result<AppState, ApiError> {
    let profile = engine.profile();
    if cfg.warmup {
        warm_up(&mut engine)?;
    }
    let metrics = Arc::new(Metrics::default());
    let worker = Queue::Local(Worker::spawn(
        engine,
        cfg.queue_capacity,
        cfg.deadline,
        metrics.clone(),
    ));
    Ok(AppState {
        cfg,
        model: model.to_string(),
        profile,
        worker,
        metrics,
        jobs: jobs::Jobs::new(std::time::Duration::from_secs(3600)),
        store: store::Store::new(std::time::Duration::from_secs(3600), 512 << 20),
    })
}

/// A front end that holds no model: jobs go to `sprout worker`s through `broker`, for the
/// model `model` whose workers advertise `profile`.
pub fn start_remote(
    broker: broker::Broker,
    model: &str,
    profile: Profile,
    cfg: ServerConfig,
) -> AppState {
    let metrics = Arc::new(Metrics::default());
    let ttl = broker.ttl;
    let queue = remote::RemoteQueue::start(broker, model, cfg.queue_capacity, cfg.deadline);
    AppState {
        cfg,
        model: model.to_string(),
        profile,
        worker: Queue::Remote(queue),
        metrics,
        jobs: jobs::Jobs::new(ttl),
        store: store::Store::new(std::time::Duration::from_secs(3600), 512 << 20),
    }
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
