//! One worker thread per device runs jobs in order from a bounded queue; a full queue
//! refuses new jobs at once (429) instead of accepting work it cannot start soon.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use sprout_pipeline::denoise::Hooks;
use sprout_pipeline::request::Request;
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::Engine;

/// What a job's owner and the worker share: cancellation and progress.
#[derive(Debug)]
pub struct JobCtl {
    pub cancel: AtomicBool,
    pub started: AtomicBool,
    pub done: AtomicUsize,
    pub total: AtomicUsize,
    /// Order of submission (1, 2, …), for queue positions.
    pub seq: AtomicU64,
    timed_out: AtomicBool,
    accepted: Instant,
}

impl JobCtl {
    pub fn new() -> Arc<JobCtl> {
        Arc::new(JobCtl {
            cancel: AtomicBool::new(false),
            started: AtomicBool::new(false),
            done: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            accepted: Instant::now(),
        })
    }
}

pub type JobResult = Result<Vec<RgbImage>, ApiError>;

pub struct Job {
    pub req: Request,
    pub ctl: Arc<JobCtl>,
    pub reply: oneshot::Sender<JobResult>,
    pub previews: Option<Previews>,
}

/// How many previews a job wants, and where they go as (index, images).
pub struct Previews {
    pub count: usize,
    pub tx: tokio::sync::mpsc::UnboundedSender<(usize, Vec<RgbImage>)>,
}

pub struct Worker {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
    /// Mean seconds per finished job (exponentially weighted), in milliseconds.
    job_ms: Arc<AtomicU64>,
    /// Sequence number of the last submitted job, and of the last one the worker took.
    /// Held while a job is numbered and sent, so numbers follow the queue's order without
    /// gaps.
    submitted: std::sync::Mutex<u64>,
    taken: Arc<AtomicU64>,
}

/// Clears `alive` when the worker thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Worker {
    pub fn spawn(
        mut engine: Engine,
        capacity: usize,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Worker {
        let (tx, rx) = sync_channel::<Job>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let shutting_down = Arc::new(AtomicBool::new(false));
        let job_ms = Arc::new(AtomicU64::new(1000));
        let taken = Arc::new(AtomicU64::new(0));
        let (d, a, s, j, tk) = (
            depth.clone(),
            alive.clone(),
            shutting_down.clone(),
            job_ms.clone(),
            taken.clone(),
        );
        std::thread::Builder::new()
            .name("sprout-worker".into())
            .spawn(move || {
                let _guard = AliveGuard(a);
                while let Ok(job) = rx.recv() {
                    tk.store(job.ctl.seq.load(Ordering::SeqCst), Ordering::SeqCst);
                    d.fetch_sub(1, Ordering::SeqCst);
                    let t0 = Instant::now();
                    let result = if s.load(Ordering::SeqCst) {
                        Err(ApiError::ShuttingDown)
                    } else if job.ctl.cancel.load(Ordering::SeqCst) {
                        Err(ApiError::Cancelled)
                    } else {
                        metrics.observe("queue", job.ctl.accepted.elapsed().as_secs_f64());
                        run(&mut engine, &job, deadline)
                    };
                    if job.ctl.started.load(Ordering::SeqCst) {
                        let s = t0.elapsed().as_secs_f64();
                        metrics.observe("generate", s);
                        let old = j.load(Ordering::Relaxed) as f64;
                        j.store((0.8 * old + 0.2 * s * 1000.0) as u64, Ordering::Relaxed);
                    }
                    if let Err(ApiError::Cancelled) = &result {
                        let when = if job.ctl.started.load(Ordering::SeqCst) {
                            "running"
                        } else {
                            "queued"
                        };
                        metrics.cancelled(when);
                    }
                    // The owner may have gone; its job is then simply dropped.
                    let _ = job.reply.send(result);
                }
            })
            .expect("spawning the worker thread");
        Worker {
            tx,
            depth,
            alive,
            shutting_down,
            job_ms,
            submitted: std::sync::Mutex::new(0),
            taken,
        }
    }

    /// Queue a job, or refuse it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let mut last = self.submitted.lock().expect("submit lock");
        self.depth.fetch_add(1, Ordering::SeqCst);
        job.ctl.seq.store(*last + 1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => {
                *last += 1;
                Ok(())
            }
            Err(e) => {
                drop(last);
                self.depth.fetch_sub(1, Ordering::SeqCst);
                match e {
                    TrySendError::Full(_) => {
                        let depth = self.depth();
                        let per_job = self.job_ms.load(Ordering::Relaxed) as f64 / 1000.0;
                        Err(ApiError::Overloaded {
                            depth,
                            retry_after: (per_job * (depth + 1) as f64).ceil().max(1.0) as u64,
                        })
                    }
                    TrySendError::Disconnected(_) => {
                        Err(ApiError::Internal("the worker thread has stopped".into()))
                    }
                }
            }
        }
    }

    /// Jobs ahead of this one plus one (1 = next), or 0 once it has started.
    pub fn position(&self, ctl: &JobCtl) -> u64 {
        if ctl.started.load(Ordering::SeqCst) {
            return 0;
        }
        ctl.seq
            .load(Ordering::SeqCst)
            .saturating_sub(self.taken.load(Ordering::SeqCst))
            .max(1)
    }

    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::SeqCst)
    }

    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Refuse new jobs; jobs still queued are answered 503, the running one finishes.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

fn run(engine: &mut Engine, job: &Job, deadline: Duration) -> JobResult {
    let ctl = &job.ctl;
    ctl.started.store(true, Ordering::SeqCst);
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut preview = |k: usize, imgs: Vec<RgbImage>| {
            if let Some(p) = &job.previews {
                let _ = p.tx.send((k, imgs));
            }
        };
        engine.generate(
            &job.req,
            Hooks {
                cancel: &ctl.cancel,
                on_step: &mut |done, total| {
                    ctl.done.store(done, Ordering::SeqCst);
                    ctl.total.store(total, Ordering::SeqCst);
                    if ctl.accepted.elapsed() > deadline {
                        ctl.timed_out.store(true, Ordering::SeqCst);
                        ctl.cancel.store(true, Ordering::SeqCst);
                    }
                },
                previews: job.previews.as_ref().map_or(0, |p| p.count),
                on_preview: &mut preview,
            },
        )
    }));
    match out {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(sprout_pipeline::PipelineError::Cancelled))
            if ctl.timed_out.load(Ordering::SeqCst) =>
        {
            Err(ApiError::Deadline(deadline.as_secs()))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Internal("generation panicked".into())),
    }
}

/// Where a front end's jobs run: its own worker thread, or workers behind a broker
/// (`sprout serve --broker`). Handlers see one interface.
pub enum Queue {
    Local(Worker),
    Remote(crate::remote::RemoteQueue),
}

impl Queue {
    /// Queue a checked job for `model` under `id`, or refuse it at once (429 when full, 503
    /// when it cannot run). One process runs its one model (the name was resolved by
    /// [`crate::AppState::served`]).
    pub fn submit(
        &self,
        job: Job,
        id: &str,
        model: &str,
        format: crate::encode::OutputFormat,
        compression: u8,
    ) -> Result<(), ApiError> {
        match self {
            Queue::Local(w) => w.submit(job),
            Queue::Remote(r) => r.submit(job, id, model, format, compression),
        }
    }

    /// Jobs ahead of this one plus one (1 = next), or 0 once it has started.
    pub fn position(&self, ctl: &JobCtl) -> u64 {
        match self {
            Queue::Local(w) => w.position(ctl),
            Queue::Remote(r) => r.position(ctl),
        }
    }

    pub fn depth(&self) -> usize {
        match self {
            Queue::Local(w) => w.depth(),
            Queue::Remote(r) => r.depth(),
        }
    }

    /// Whether jobs can run: the worker thread is alive, or the broker answers and a live
    /// worker serves some model.
    pub fn alive(&self) -> bool {
        match self {
            Queue::Local(w) => w.alive(),
            Queue::Remote(r) => r.alive(),
        }
    }

    pub fn shut_down(&self) {
        match self {
            Queue::Local(w) => w.shut_down(),
            Queue::Remote(r) => r.shut_down(),
        }
    }

    pub fn remote(&self) -> Option<&crate::remote::RemoteQueue> {
        match self {
            Queue::Local(_) => None,
            Queue::Remote(r) => Some(r),
        }
    }
}
