//! `sprout worker`: loads one model, joins its stream's consumer group on the broker and
//! runs jobs one at a time, at least once each:
//! - a job is acknowledged only after its result (or its error) is stored, so a worker that
//!   dies (SIGKILL, out of memory, power) leaves it pending;
//! - every worker also looks for jobs pending on workers whose advertisement has expired
//!   (dead) for longer than the visibility timeout, claims them and runs them again;
//! - a job delivered more than `max_attempts` times (its workers died each time) is marked
//!   failed with that reason instead of being retried forever;
//! - a job that already ended (another worker stored its result) is only acknowledged, so
//!   a client sees one result;
//! - progress goes to the job's state at every step, previews as they are drawn, and a
//!   cancellation stops the job before its next step.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image::RgbImage;
use sprout_pipeline::denoise::Hooks;

use crate::broker::{is_terminal, now_ms, Advert, Broker, BrokerError, GROUP, HEARTBEAT_TTL};
use crate::error::ApiError;
use crate::wire::{images_to_json, WireError, WireJob};
use crate::Engine;

/// How a worker behaves on the broker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This worker's consumer name (unique among live workers).
    pub name: String,
    /// The model's name as clients give it (and the stream it reads).
    pub model: String,
    /// A job pending on a dead worker for this long is claimed by another.
    pub visibility: Duration,
    /// Deliveries after which a job whose workers kept dying is marked failed.
    pub max_attempts: u64,
}

/// What the worker's threads share.
struct Shared {
    current: Mutex<Option<(String, Arc<AtomicBool>)>>,
    done: AtomicU64,
    failed: AtomicU64,
}

/// Runs jobs until `stop` is set (between jobs: a running job finishes first).
pub fn run(
    mut engine: Engine,
    broker: Broker,
    opts: WorkerOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), BrokerError> {
    let broker = Arc::new(broker);
    let shared = Arc::new(Shared {
        current: Mutex::new(None),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let profile = engine.profile();
    if broker.worker_alive(&opts.name)? {
        return Err(BrokerError {
            url: broker.url().to_string(),
            message: format!(
                "a live worker is already named {:?}; give this one another --name",
                opts.name
            ),
        });
    }
    broker.ensure_group(&opts.model)?;
    let beat_stop = Arc::new(AtomicBool::new(false));
    let heart = {
        let (b, s, o, p, st) = (
            broker.clone(),
            shared.clone(),
            opts.clone(),
            profile.clone(),
            beat_stop.clone(),
        );
        std::thread::Builder::new()
            .name("sprout-heartbeat".into())
            .spawn(move || heartbeat(&b, &s, &o, &p, &st))
            .expect("spawning the heartbeat")
    };
    // The advertisement must exist before the first job is taken, so a peer never judges
    // this worker dead.
    advertise(&broker, &shared, &opts, &profile)?;
    let mut outage: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        match next_job(&broker, &opts) {
            Ok(Some((entry, id, deliveries))) => {
                if let Some(t) = outage.take() {
                    eprintln!(
                        "broker {} is back after {:.1} s",
                        broker.url(),
                        t.elapsed().as_secs_f64()
                    );
                }
                run_job(
                    &mut engine,
                    &broker,
                    &shared,
                    &opts,
                    &entry,
                    &id,
                    deliveries,
                );
            }
            Ok(None) => {
                if let Some(t) = outage.take() {
                    eprintln!(
                        "broker {} is back after {:.1} s",
                        broker.url(),
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                if outage.is_none() {
                    eprintln!("{e}; retrying");
                    outage = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(250));
                // A broker that lost its data lost the group too.
                let _ = broker.ensure_group(&opts.model);
            }
        }
    }
    beat_stop.store(true, Ordering::SeqCst);
    let _ = heart.join();
    // Leave at once rather than when the advertisement expires.
    let k = broker.key("worker", &opts.name);
    let _ = broker.with(|c| redis::cmd("DEL").arg(&k).query::<()>(c));
    Ok(())
}

fn advertise(
    b: &Broker,
    s: &Shared,
    o: &WorkerOptions,
    profile: &sprout_pipeline::request::Profile,
) -> Result<(), BrokerError> {
    let ad = Advert {
        name: o.name.clone(),
        model: o.model.clone(),
        profile: profile.clone(),
        jobs_done: s.done.load(Ordering::SeqCst),
        jobs_failed: s.failed.load(Ordering::SeqCst),
        current: s
            .current
            .lock()
            .expect("current")
            .as_ref()
            .map(|c| c.0.clone()),
        rss_bytes: rss_bytes(),
    };
    let (k, set) = (b.key("worker", &o.name), b.workers_set());
    let json = serde_json::to_string(&ad).expect("advert serialises");
    b.with(|c| {
        redis::pipe()
            .cmd("SET")
            .arg(&k)
            .arg(&json)
            .arg("PX")
            .arg(HEARTBEAT_TTL.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(&set)
            .arg(&o.name)
            .ignore()
            .query::<()>(c)
    })
}

/// Every 250 ms: whether the running job was cancelled; every second: the advertisement.
fn heartbeat(
    b: &Broker,
    s: &Shared,
    o: &WorkerOptions,
    profile: &sprout_pipeline::request::Profile,
    stop: &AtomicBool,
) {
    let mut last = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::SeqCst) {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let _ = advertise(b, s, o, profile);
        }
        let cur = s.current.lock().expect("current").clone();
        if let Some((id, flag)) = cur {
            let k = b.key("cancel", &id);
            if let Ok(true) = b.with(|c| redis::cmd("EXISTS").arg(&k).query::<bool>(c)) {
                flag.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The next job to run: first one pending on a dead worker (claimed), else a new one
/// (waiting up to a second). `(entry id, job id, deliveries)`.
fn next_job(b: &Broker, o: &WorkerOptions) -> Result<Option<(String, String, u64)>, BrokerError> {
    let stream = b.stream(&o.model);
    let vis = o.visibility.as_millis() as u64;
    // XPENDING's extended form with IDLE: (entry, consumer, idle ms, deliveries).
    let pending: Vec<(String, String, u64, u64)> = b.with(|c| {
        redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(vis)
            .arg("-")
            .arg("+")
            .arg(16)
            .query(c)
    })?;
    for (entry, consumer, _, deliveries) in pending {
        // Between jobs nothing is pending on this worker: an entry still pending on its
        // name was delivered to it when it (or the broker) stopped before it could run it.
        if consumer != o.name && b.worker_alive(&consumer)? {
            continue;
        }
        let claimed: Vec<(String, std::collections::HashMap<String, String>)> = b.with(|c| {
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&o.name)
                .arg(vis)
                .arg(&entry)
                .query(c)
        })?;
        if let Some((e, fields)) = claimed.into_iter().next() {
            eprintln!("claimed job entry {e} from worker {consumer}, which stopped");
            let id = fields.get("job").cloned().unwrap_or_default();
            return Ok(Some((e, id, deliveries + 1)));
        }
    }
    let mut con = b.dedicated(Duration::from_secs(1))?;
    let read: Option<StreamRead> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(&o.name)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(1000)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut con)
        .map_err(|e| BrokerError {
            url: b.url().to_string(),
            message: e.to_string(),
        })?;
    Ok(read
        .and_then(|r| r.into_iter().next())
        .and_then(|(_, entries)| entries.into_iter().next())
        .map(|(e, fields)| {
            let id = fields.get("job").cloned().unwrap_or_default();
            (e, id, 1)
        }))
}

/// `XREADGROUP`'s answer: per stream, its entries.
type StreamRead = Vec<(
    String,
    Vec<(String, std::collections::HashMap<String, String>)>,
)>;

/// Runs one delivered job to its end and acknowledges it. Broker errors while storing the
/// outcome are retried until they succeed: the job must not be acknowledged without it.
fn run_job(
    engine: &mut Engine,
    b: &Broker,
    s: &Shared,
    o: &WorkerOptions,
    entry: &str,
    id: &str,
    deliveries: u64,
) {
    let jk = b.key("job", id);
    let status: Option<String> = retry(b, |c| redis::cmd("HGET").arg(&jk).arg("status").query(c));
    let outcome: Option<Result<Vec<RgbImage>, ApiError>> = match status.as_deref() {
        // Its state expired, or another worker finished it: only acknowledge.
        None => None,
        Some(st) if is_terminal(st) => None,
        Some(_) if deliveries > o.max_attempts => Some(Err(ApiError::Internal(format!(
            "the job was delivered {deliveries} times and its worker stopped while running it each time (limit {})",
            o.max_attempts
        )))),
        Some(_) => Some(execute(engine, b, s, o, id, deliveries)),
    };
    if let Some(out) = outcome {
        let ttl = b.ttl.as_secs();
        let (rk, pk) = (b.key("result", id), b.key("payload", id));
        match &out {
            Ok(images) => {
                let json = images_to_json(images);
                retry(b, |c| {
                    redis::pipe()
                        .atomic()
                        .cmd("SET")
                        .arg(&rk)
                        .arg(&json)
                        .arg("EX")
                        .arg(ttl)
                        .ignore()
                        .cmd("HSET")
                        .arg(&jk)
                        .arg("status")
                        .arg("succeeded")
                        .arg("finished")
                        .arg(now_ms())
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&jk)
                        .arg(ttl)
                        .ignore()
                        .cmd("DEL")
                        .arg(&pk)
                        .ignore()
                        .query::<()>(c)
                });
                s.done.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                let status = if matches!(e, ApiError::Cancelled) {
                    "cancelled"
                } else {
                    "failed"
                };
                let err = serde_json::to_string(&WireError::from_error(e)).expect("error json");
                retry(b, |c| {
                    redis::pipe()
                        .atomic()
                        .cmd("HSET")
                        .arg(&jk)
                        .arg("status")
                        .arg(status)
                        .arg("error")
                        .arg(&err)
                        .arg("finished")
                        .arg(now_ms())
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&jk)
                        .arg(ttl)
                        .ignore()
                        .cmd("DEL")
                        .arg(&pk)
                        .ignore()
                        .query::<()>(c)
                });
                s.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    let stream = b.stream(&o.model);
    retry(b, |c| {
        redis::pipe()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(entry)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(entry)
            .ignore()
            .query::<()>(c)
    });
}

/// Runs the job's request on the engine, reporting progress and previews.
fn execute(
    engine: &mut Engine,
    b: &Broker,
    s: &Shared,
    o: &WorkerOptions,
    id: &str,
    deliveries: u64,
) -> Result<Vec<RgbImage>, ApiError> {
    let (jk, pk, ck) = (b.key("job", id), b.key("payload", id), b.key("cancel", id));
    if b.with(|c| redis::cmd("EXISTS").arg(&ck).query::<bool>(c))? {
        return Err(ApiError::Cancelled);
    }
    let payload: Option<String> = b.with(|c| redis::cmd("GET").arg(&pk).query(c))?;
    let Some(payload) = payload else {
        return Err(ApiError::Internal(format!(
            "the request of job {id} has expired from the broker"
        )));
    };
    let wire: WireJob = serde_json::from_str(&payload)
        .map_err(|e| ApiError::Internal(format!("job {id}: its request does not parse: {e}")))?;
    let req = wire.request(&candle_core::Device::Cpu)?;
    let deadline_ms = wire.accepted_ms + wire.deadline_s * 1000;
    if now_ms() > deadline_ms {
        return Err(ApiError::Deadline(wire.deadline_s));
    }
    b.with(|c| {
        redis::cmd("HSET")
            .arg(&jk)
            .arg("status")
            .arg("running")
            .arg("worker")
            .arg(&o.name)
            .arg("attempts")
            .arg(deliveries)
            .arg("started")
            .arg(now_ms())
            .query::<()>(c)
    })?;
    let cancel = Arc::new(AtomicBool::new(false));
    *s.current.lock().expect("current") = Some((id.to_string(), cancel.clone()));
    let timed_out = AtomicBool::new(false);
    let ttl = b.ttl.as_secs();
    let prk = b.key("preview", id);
    let out = std::panic::catch_unwind(AssertUnwindSafe(|| {
        engine.generate(
            &req,
            Hooks {
                cancel: &cancel,
                on_step: &mut |done, total| {
                    let _ = b.with(|c| {
                        redis::cmd("HSET")
                            .arg(&jk)
                            .arg("done")
                            .arg(done)
                            .arg("total")
                            .arg(total)
                            .query::<()>(c)
                    });
                    if now_ms() > deadline_ms {
                        timed_out.store(true, Ordering::SeqCst);
                        cancel.store(true, Ordering::SeqCst);
                    }
                },
                previews: wire.previews,
                on_preview: &mut |k, images| {
                    let json = images_to_json(&images);
                    let _ = b.with(|c| {
                        redis::pipe()
                            .cmd("SET")
                            .arg(&prk)
                            .arg(&json)
                            .arg("EX")
                            .arg(ttl)
                            .ignore()
                            .cmd("HSET")
                            .arg(&jk)
                            .arg("preview_index")
                            .arg(k)
                            .ignore()
                            .query::<()>(c)
                    });
                },
            },
        )
    }));
    *s.current.lock().expect("current") = None;
    match out {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(sprout_pipeline::PipelineError::Cancelled)) if timed_out.load(Ordering::SeqCst) => {
            Err(ApiError::Deadline(wire.deadline_s))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ApiError::Internal("generation panicked".into())),
    }
}

/// Runs a broker operation until it succeeds (the broker may be restarting), waiting a
/// little longer each time.
fn retry<T>(b: &Broker, f: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>) -> T {
    let mut wait = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match b.with(&f) {
            Ok(v) => return v,
            Err(e) => {
                if !warned {
                    eprintln!("{e}; retrying until the broker answers");
                    warned = true;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// This process's resident memory, from `/proc/self/statm` where there is one.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
