//! Asynchronous jobs: `POST /v1/jobs` answers 202 with an id at once; the job's state,
//! progress, queue position and result are read with `GET /v1/jobs/{id}`, followed live
//! with `GET /v1/jobs/{id}/events` (server-sent events) and stopped with
//! `POST /v1/jobs/{id}/cancel`. Finished jobs are kept for a while, then forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::encode::OutputFormat;
use crate::error::ApiError;
use crate::worker::{JobCtl, Queue};

/// How a job ended.
pub enum Outcome {
    /// The encoded images.
    Images(Vec<Vec<u8>>),
    Failed(ApiError),
}

/// What a job's view reports besides its state: its first seed, canvas, output format and
/// the model that runs it.
pub struct JobInfo {
    pub seed: u64,
    pub size: (u32, u32),
    pub format: OutputFormat,
    pub model: String,
}

pub struct Entry {
    pub id: String,
    pub ctl: Arc<JobCtl>,
    pub created: u64,
    pub seed: u64,
    pub size: (u32, u32),
    pub format: OutputFormat,
    /// The name of the model that runs it.
    pub model: String,
    outcome: Mutex<Option<(Outcome, Instant)>>,
    /// The latest preview (index, encoded images), when previews were asked for.
    preview: Mutex<Option<(usize, Vec<Vec<u8>>)>>,
}

impl Entry {
    pub fn finish(&self, outcome: Outcome) {
        *self.outcome.lock().expect("job") = Some((outcome, Instant::now()));
    }

    pub fn set_preview(&self, index: usize, images: Vec<Vec<u8>>) {
        *self.preview.lock().expect("job") = Some((index, images));
    }

    /// Index of the latest preview, if any.
    pub fn preview_index(&self) -> Option<usize> {
        self.preview.lock().expect("job").as_ref().map(|(k, _)| *k)
    }

    /// The latest preview as `{"index", "data": [{"b64_json"}]}`.
    pub fn preview(&self) -> Option<Value> {
        let p = self.preview.lock().expect("job");
        let (k, images) = p.as_ref()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Some(json!({
            "index": k,
            "output_format": self.format.name(),
            "data": images.iter().map(|b| json!({"b64_json": b64.encode(b)})).collect::<Vec<_>>(),
        }))
    }

    pub fn finished(&self) -> bool {
        self.outcome.lock().expect("job").is_some()
    }

    /// The job as JSON: status, progress, queue position, and the result or error once done.
    pub fn view(&self, worker: &Queue) -> Value {
        let model = self.model.as_str();
        let done = self.ctl.done.load(Ordering::SeqCst);
        let total = self.ctl.total.load(Ordering::SeqCst);
        let mut v = json!({
            "id": self.id,
            "object": "image.job",
            "created": self.created,
            "model": model,
            "seed": self.seed,
            "size": format!("{}x{}", self.size.0, self.size.1),
            "progress": {"done": done, "total": total},
        });
        let outcome = self.outcome.lock().expect("job");
        let status = match &*outcome {
            None if self.ctl.started.load(Ordering::SeqCst) => "running",
            None => {
                v["queue_position"] = json!(worker.position(&self.ctl));
                "queued"
            }
            Some((Outcome::Images(images), _)) => {
                v["result"] = crate::api::images_json(images, self.seed, self.format, model);
                "succeeded"
            }
            Some((Outcome::Failed(ApiError::Cancelled), _)) => "cancelled",
            Some((Outcome::Failed(e), _)) => {
                v["error"] = json!({"message": e.to_string(), "code": e.label()});
                "failed"
            }
        };
        v["status"] = json!(status);
        v
    }
}

pub struct Jobs {
    map: Mutex<HashMap<String, Arc<Entry>>>,
    next: AtomicU64,
    /// Finished jobs are forgotten this long after they end.
    keep: Duration,
}

impl Jobs {
    pub fn new(keep: Duration) -> Jobs {
        Jobs {
            map: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            keep,
        }
    }

    /// A fresh job id, unique across processes and restarts (distributed front ends share
    /// the broker's job names): the time in milliseconds and a random part.
    pub fn new_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let ms = crate::broker::now_ms();
        let r = sprout_world::seed::mix64(crate::generations::fresh_seed() ^ n.rotate_left(40));
        format!("job_{ms:011x}{:010x}", r >> 24)
    }

    /// Keeps a job under `id`, created now.
    pub fn insert(&self, id: String, ctl: Arc<JobCtl>, info: JobInfo) -> Arc<Entry> {
        self.insert_created(id, ctl, info, crate::unix_now())
    }

    /// [`Jobs::insert`] of a job created at `created` (Unix seconds): one adopted from
    /// the broker.
    pub fn insert_created(
        &self,
        id: String,
        ctl: Arc<JobCtl>,
        info: JobInfo,
        created: u64,
    ) -> Arc<Entry> {
        let JobInfo {
            seed,
            size,
            format,
            model,
        } = info;
        let e = Arc::new(Entry {
            id,
            ctl,
            created,
            seed,
            size,
            format,
            model,
            outcome: Mutex::new(None),
            preview: Mutex::new(None),
        });
        let mut m = self.map.lock().expect("jobs");
        let keep = self.keep;
        m.retain(|_, e| {
            e.outcome
                .lock()
                .expect("job")
                .as_ref()
                .is_none_or(|(_, t)| t.elapsed() < keep)
        });
        m.insert(e.id.clone(), e.clone());
        e
    }

    /// The job, if this process knows it.
    pub fn find(&self, id: &str) -> Option<Arc<Entry>> {
        self.map.lock().expect("jobs").get(id).cloned()
    }

    pub fn not_found(&self, id: &str) -> ApiError {
        ApiError::NotFound(format!(
            "no job {id:?} (finished jobs are kept for {} s)",
            self.keep.as_secs()
        ))
    }

    pub fn get(&self, id: &str) -> Result<Arc<Entry>, ApiError> {
        self.map
            .lock()
            .expect("jobs")
            .get(id)
            .cloned()
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no job {id:?} (finished jobs are kept for {} s)",
                    self.keep.as_secs()
                ))
            })
    }
}
