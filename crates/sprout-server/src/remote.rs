//! The front end's side of distributed serving (`sprout serve --broker`): jobs are checked
//! here as in one process, then queued on the broker instead of a local worker; one thread
//! follows every job this front end waits for (its state, progress, previews, result) and
//! hands the outcome to the handler that waits, exactly as the local worker does. A job's
//! state lives in the broker, so a front end that restarts can still answer for jobs queued
//! through the one before it ([`RemoteQueue::adopt`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::broker::{is_terminal, now_ms, Advert, Broker};
use crate::encode::OutputFormat;
use crate::error::ApiError;
use crate::wire::{images_from_json, WireError, WireJob};
use crate::worker::{Job, JobCtl, JobResult, Previews};

/// How often the follower thread reads the state of the jobs it follows.
const POLL: Duration = Duration::from_millis(40);

/// A job this front end waits for.
struct Followed {
    ctl: Arc<JobCtl>,
    reply: Option<oneshot::Sender<JobResult>>,
    previews: Option<Previews>,
    shown: Option<usize>,
    cancel_sent: bool,
    /// The model whose stream holds it, and its entry there.
    model: String,
    entry: String,
    accepted: Instant,
    started: Option<Instant>,
}

/// What the follower thread last read about the broker as a whole.
#[derive(Default)]
struct Seen {
    up: AtomicBool,
    depth: AtomicUsize,
    /// Entries in each model's stream (queued or running), by model.
    depths: Mutex<Vec<(String, usize)>>,
    live: Mutex<Vec<Advert>>,
    /// Mean seconds per finished job (exponentially weighted), in milliseconds.
    job_ms: AtomicU64,
}

/// The front end's queue when jobs go through a broker: jobs for any model a live worker
/// advertises, each on its model's stream.
pub struct RemoteQueue {
    broker: Arc<Broker>,
    /// The model of requests that name none.
    model: String,
    capacity: usize,
    deadline: Duration,
    followed: Arc<Mutex<HashMap<String, Followed>>>,
    seen: Arc<Seen>,
    shutting_down: AtomicBool,
    stop: Arc<AtomicBool>,
}

/// A job this front end adopted from the broker: what it needs to answer for it.
pub struct Adopted {
    pub ctl: Arc<JobCtl>,
    pub rx: oneshot::Receiver<JobResult>,
    pub previews: mpsc::UnboundedReceiver<(usize, Vec<image::RgbImage>)>,
    pub seed: u64,
    pub size: (u32, u32),
    pub format: OutputFormat,
    pub compression: u8,
    pub created: u64,
    pub model: String,
}

impl RemoteQueue {
    /// Follows jobs on `broker`, `model` being the default one; `capacity` bounds the jobs
    /// queued or running for each model (more get 429).
    pub fn start(broker: Broker, model: &str, capacity: usize, deadline: Duration) -> RemoteQueue {
        let q = RemoteQueue {
            broker: Arc::new(broker),
            model: model.to_string(),
            capacity,
            deadline,
            followed: Arc::new(Mutex::new(HashMap::new())),
            seen: Arc::new(Seen {
                up: AtomicBool::new(true),
                job_ms: AtomicU64::new(1000),
                ..Seen::default()
            }),
            shutting_down: AtomicBool::new(false),
            stop: Arc::new(AtomicBool::new(false)),
        };
        // The first look before serving, so health and metrics read the broker from the
        // first request on.
        look(&q.broker, &q.followed, &q.seen, &q.model);
        let (b, f, s, stop, model, deadline) = (
            q.broker.clone(),
            q.followed.clone(),
            q.seen.clone(),
            q.stop.clone(),
            q.model.clone(),
            q.deadline,
        );
        std::thread::Builder::new()
            .name("sprout-follower".into())
            .spawn(move || follow(&b, &f, &s, &stop, &model, deadline))
            .expect("spawning the job follower");
        q
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// The profile the live workers of `model` advertise, as last read.
    pub fn profile_of(&self, model: &str) -> Option<sprout_pipeline::request::Profile> {
        let live = self.seen.live.lock().expect("seen");
        live.iter()
            .find(|a| a.model == model)
            .map(|a| a.profile.clone())
    }

    /// The models live workers serve, each with its advertised profile, sorted by name.
    pub fn models(&self) -> Vec<(String, sprout_pipeline::request::Profile)> {
        let mut out: Vec<(String, sprout_pipeline::request::Profile)> = Vec::new();
        for a in self.seen.live.lock().expect("seen").iter() {
            if !out.iter().any(|(m, _)| *m == a.model) {
                out.push((a.model.clone(), a.profile.clone()));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Queue a checked job for `model` on the broker, or refuse it at once: 503 when the
    /// broker is unreachable or no live worker serves the model, 429 when its queue is
    /// full.
    pub fn submit(
        &self,
        job: Job,
        id: &str,
        model: &str,
        format: OutputFormat,
        compression: u8,
    ) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let b = &self.broker;
        let live = b.live_workers()?;
        let workers = live.iter().filter(|a| a.model == model).count();
        if workers == 0 {
            return Err(ApiError::NoWorker(model.to_string()));
        }
        let depth = b.stream_len(model)?;
        if depth >= self.capacity {
            let per_job = self.seen.job_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            return Err(ApiError::Overloaded {
                depth,
                retry_after: (per_job * (depth + 1) as f64 / workers as f64)
                    .ceil()
                    .max(1.0) as u64,
            });
        }
        let wire = WireJob::new(
            &job.req,
            job.previews.as_ref().map_or(0, |p| p.count),
            now_ms(),
            self.deadline.as_secs(),
        )?;
        let payload = serde_json::to_string(&wire).expect("a job serialises");
        b.ensure_group(model)?;
        let ttl = b.ttl.as_secs();
        let (jk, pk, stream) = (b.key("job", id), b.key("payload", id), b.stream(model));
        let r = &job.req;
        let entry: String = b.with(|c| {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&pk)
                .arg(&payload)
                .arg("EX")
                .arg(ttl)
                .ignore()
                .cmd("HSET")
                .arg(&jk)
                .arg("status")
                .arg("queued")
                .arg("model")
                .arg(model)
                .arg("created")
                .arg(crate::unix_now())
                .arg("seed")
                .arg(r.seed)
                .arg("width")
                .arg(r.width)
                .arg("height")
                .arg(r.height)
                .arg("format")
                .arg(format.name())
                .arg("compression")
                .arg(compression)
                .arg("done")
                .arg(0)
                .arg("total")
                .arg(0)
                .ignore()
                .cmd("EXPIRE")
                .arg(&jk)
                .arg(ttl)
                .ignore()
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("job")
                .arg(id)
                .query::<(String,)>(c)
                .map(|(e,)| e)
        })?;
        let _ = b.with(|c| {
            redis::cmd("HSET")
                .arg(&jk)
                .arg("entry")
                .arg(&entry)
                .query::<()>(c)
        });
        job.ctl.seq.store(depth as u64 + 1, Ordering::SeqCst);
        self.followed.lock().expect("followed").insert(
            id.to_string(),
            Followed {
                ctl: job.ctl,
                reply: Some(job.reply),
                previews: job.previews,
                shown: None,
                cancel_sent: false,
                model: model.to_string(),
                entry,
                accepted: Instant::now(),
                started: None,
            },
        );
        Ok(())
    }

    /// Follow a job that another front end queued (one that restarted): `None` when the
    /// broker knows no such job.
    pub fn adopt(&self, id: &str) -> Result<Option<Adopted>, ApiError> {
        let jk = self.broker.key("job", id);
        let h: HashMap<String, String> = self
            .broker
            .with(|c| redis::cmd("HGETALL").arg(&jk).query(c))?;
        let Some(model) = h.get("model").cloned() else {
            return Ok(None);
        };
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let format = h
            .get("format")
            .and_then(|f| OutputFormat::parse(Some(f)).ok())
            .unwrap_or(OutputFormat::Png);
        let ctl = JobCtl::new();
        let (tx, rx) = oneshot::channel();
        let (ptx, prx) = mpsc::unbounded_channel();
        let mut f = self.followed.lock().expect("followed");
        if f.contains_key(id) {
            return Ok(None);
        }
        f.insert(
            id.to_string(),
            Followed {
                ctl: ctl.clone(),
                reply: Some(tx),
                previews: Some(Previews {
                    count: usize::MAX,
                    tx: ptx,
                }),
                shown: None,
                cancel_sent: false,
                model: model.clone(),
                entry: h.get("entry").cloned().unwrap_or_default(),
                accepted: Instant::now(),
                started: None,
            },
        );
        Ok(Some(Adopted {
            ctl,
            rx,
            previews: prx,
            seed: num("seed"),
            size: (num("width") as u32, num("height") as u32),
            format,
            compression: num("compression").min(100) as u8,
            created: num("created"),
            model,
        }))
    }

    /// Jobs ahead of this one plus one (1 = next), or 0 once it has started, as last read
    /// from the broker.
    pub fn position(&self, ctl: &JobCtl) -> u64 {
        if ctl.started.load(Ordering::SeqCst) {
            0
        } else {
            ctl.seq.load(Ordering::SeqCst).max(1)
        }
    }

    /// Jobs queued or running for every model, as last read.
    pub fn depth(&self) -> usize {
        self.seen.depth.load(Ordering::SeqCst)
    }

    /// Jobs queued or running, by model, as last read.
    pub fn depths(&self) -> Vec<(String, usize)> {
        self.seen.depths.lock().expect("seen").clone()
    }

    /// Whether the broker answered at the last look.
    pub fn broker_up(&self) -> bool {
        self.seen.up.load(Ordering::SeqCst)
    }

    /// The live workers, as last read.
    pub fn live_workers(&self) -> Vec<Advert> {
        self.seen.live.lock().expect("seen").clone()
    }

    /// Ready: the broker answers and a live worker serves some model.
    pub fn alive(&self) -> bool {
        self.broker_up() && !self.seen.live.lock().expect("seen").is_empty()
    }

    /// Refuse new jobs. Jobs already queued stay on the broker (other front ends, or this
    /// one restarted, answer for them).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

impl Drop for RemoteQueue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The follower thread: reads the state of every followed job, passes cancellations on,
/// and hands each outcome over; every second also the broker's health, queue and workers.
fn follow(
    b: &Broker,
    followed: &Mutex<HashMap<String, Followed>>,
    seen: &Seen,
    stop: &AtomicBool,
    model: &str,
    deadline: Duration,
) {
    let mut last_look = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::SeqCst) {
        if last_look.elapsed() >= Duration::from_secs(1) {
            last_look = Instant::now();
            look(b, followed, seen, model);
        }
        let ids: Vec<String> = followed.lock().expect("followed").keys().cloned().collect();
        if ids.is_empty() {
            std::thread::sleep(POLL);
            continue;
        }
        match poll(b, &ids) {
            Ok(states) => {
                seen.up.store(true, Ordering::SeqCst);
                for (id, st) in ids.iter().zip(states) {
                    step(b, followed, seen, id, st, deadline);
                }
            }
            Err(_) => {
                seen.up.store(false, Ordering::SeqCst);
                // Jobs stay followed: they live in the broker, which may come back; a
                // job whose deadline passes meanwhile is answered 504.
                expire(followed, deadline);
            }
        }
        std::thread::sleep(POLL);
    }
}

/// A job's state as read: status, done, total, preview index, error.
type State = (
    Option<String>,
    Option<usize>,
    Option<usize>,
    Option<usize>,
    Option<String>,
);

fn poll(b: &Broker, ids: &[String]) -> Result<Vec<State>, crate::broker::BrokerError> {
    b.with(|c| {
        let mut p = redis::pipe();
        for id in ids {
            p.cmd("HMGET")
                .arg(b.key("job", id))
                .arg("status")
                .arg("done")
                .arg("total")
                .arg("preview_index")
                .arg("error");
        }
        p.query::<Vec<State>>(c)
    })
}

/// Acts on one followed job's state.
fn step(
    b: &Broker,
    followed: &Mutex<HashMap<String, Followed>>,
    seen: &Seen,
    id: &str,
    (status, done, total, preview, error): State,
    deadline: Duration,
) {
    let mut map = followed.lock().expect("followed");
    let Some(f) = map.get_mut(id) else {
        return;
    };
    let status = status.unwrap_or_else(|| "expired".into());
    if let (Some(d), Some(t)) = (done, total) {
        f.ctl.done.store(d, Ordering::SeqCst);
        f.ctl.total.store(t, Ordering::SeqCst);
    }
    if status == "running" && f.started.is_none() {
        f.started = Some(Instant::now());
        f.ctl.started.store(true, Ordering::SeqCst);
    }
    let timed_out = f.accepted.elapsed() > deadline;
    if (f.ctl.cancel.load(Ordering::SeqCst) || timed_out) && !f.cancel_sent {
        let k = b.key("cancel", id);
        let ttl = b.ttl.as_secs();
        if b.with(|c| {
            redis::cmd("SET")
                .arg(&k)
                .arg(1)
                .arg("EX")
                .arg(ttl)
                .query::<()>(c)
        })
        .is_ok()
        {
            f.cancel_sent = true;
        }
    }
    if let (Some(k), Some(p)) = (preview, &f.previews) {
        if f.shown != Some(k) && !is_terminal(&status) {
            f.shown = Some(k);
            let pk = b.key("preview", id);
            if let Ok(Some(s)) = b.with(|c| redis::cmd("GET").arg(&pk).query::<Option<String>>(c)) {
                if let Ok(images) = images_from_json(&s) {
                    let _ = p.tx.send((k, images));
                }
            }
        }
    }
    let outcome: Option<JobResult> = match status.as_str() {
        "succeeded" => {
            let rk = b.key("result", id);
            match b.with(|c| redis::cmd("GET").arg(&rk).query::<Option<String>>(c)) {
                Ok(Some(s)) => Some(images_from_json(&s)),
                Ok(None) => Some(Err(ApiError::Internal(format!(
                    "the result of job {id} has expired from the broker"
                )))),
                // Read it at the next poll.
                Err(_) => None,
            }
        }
        "failed" => Some(Err(error
            .and_then(|e| serde_json::from_str::<WireError>(&e).ok())
            .map(|e| e.to_error())
            .unwrap_or_else(|| ApiError::Internal("the job failed".into())))),
        "cancelled" if timed_out => Some(Err(ApiError::Deadline(deadline.as_secs()))),
        "cancelled" => Some(Err(ApiError::Cancelled)),
        "expired" => Some(Err(ApiError::Internal(format!(
            "job {id} is no longer known to the broker (its state expired)"
        )))),
        // Nobody took it before its deadline (no worker, or all busy).
        _ if timed_out && f.started.is_none() && f.accepted.elapsed() > deadline * 2 => {
            Some(Err(ApiError::Deadline(deadline.as_secs())))
        }
        _ => None,
    };
    if let Some(out) = outcome {
        if let Some(t) = f.started {
            let s = t.elapsed().as_secs_f64();
            let old = seen.job_ms.load(Ordering::Relaxed) as f64;
            seen.job_ms
                .store((0.8 * old + 0.2 * s * 1000.0) as u64, Ordering::Relaxed);
        }
        let mut f = map.remove(id).expect("followed");
        if let Some(r) = f.reply.take() {
            let _ = r.send(out);
        }
    }
}

/// With the broker unreachable: answers jobs past twice their deadline with 504.
fn expire(followed: &Mutex<HashMap<String, Followed>>, deadline: Duration) {
    let mut map = followed.lock().expect("followed");
    let late: Vec<String> = map
        .iter()
        .filter(|(_, f)| f.accepted.elapsed() > deadline * 2)
        .map(|(k, _)| k.clone())
        .collect();
    for id in late {
        if let Some(mut f) = map.remove(&id) {
            if let Some(r) = f.reply.take() {
                let _ = r.send(Err(ApiError::Deadline(deadline.as_secs())));
            }
        }
    }
}

/// The broker's health, live workers, each model's queue length and the queue positions
/// of followed jobs (models: the default one, those live workers serve and those of
/// followed jobs).
fn look(b: &Broker, followed: &Mutex<HashMap<String, Followed>>, seen: &Seen, model: &str) {
    let r = (|| -> Result<(), crate::broker::BrokerError> {
        b.ping()?;
        let live = b.live_workers()?;
        let mut models: Vec<String> = vec![model.to_string()];
        models.extend(live.iter().map(|a| a.model.clone()));
        models.extend(
            followed
                .lock()
                .expect("followed")
                .values()
                .map(|f| f.model.clone()),
        );
        models.sort();
        models.dedup();
        *seen.live.lock().expect("seen") = live;
        let mut depths = Vec::with_capacity(models.len());
        // Entry ids are unique within a stream only.
        let mut positions: HashMap<(&str, String), u64> = HashMap::new();
        for m in &models {
            let stream = b.stream(m);
            // The entry ids only (an entry holds just the job id).
            let entries: Vec<(String, HashMap<String, String>)> =
                b.with(|c| redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(c))?;
            let pending: usize = match b.with(|c| {
                redis::cmd("XPENDING")
                    .arg(&stream)
                    .arg(crate::broker::GROUP)
                    .query::<(usize, Option<String>, Option<String>, redis::Value)>(c)
            }) {
                Ok((n, ..)) => n,
                Err(_) => 0,
            };
            for (k, (e, _)) in entries.iter().enumerate() {
                positions.insert(
                    (m.as_str(), e.clone()),
                    (k + 1).saturating_sub(pending).max(1) as u64,
                );
            }
            depths.push((m.clone(), entries.len()));
        }
        seen.depth
            .store(depths.iter().map(|d| d.1).sum(), Ordering::SeqCst);
        *seen.depths.lock().expect("seen") = depths;
        let map = followed.lock().expect("followed");
        for f in map.values() {
            if let Some(k) = positions.get(&(f.model.as_str(), f.entry.clone())) {
                f.ctl.seq.store(*k, Ordering::SeqCst);
            }
        }
        Ok(())
    })();
    seen.up.store(r.is_ok(), Ordering::SeqCst);
}
