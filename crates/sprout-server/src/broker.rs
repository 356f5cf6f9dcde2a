//! The broker: Redis, shared by the front end (`sprout serve --broker`) and the workers
//! (`sprout worker`). Jobs go through one Redis stream per model with one consumer group, so
//! each job is delivered to one worker and stays pending until that worker acknowledges it
//! (after its result is stored); a job whose worker stopped is claimed by another.
//!
//! Keys (all under a prefix, `sprout` by default):
//! - `{p}:jobs:{model}`: the stream; an entry holds only the job id;
//! - `{p}:job:{id}`: a hash with the job's state (`status`, `done`, `total`, `worker`,
//!   `attempts`, `error`, `preview_index`, `created`, `seed`, `width`, `height`, `format`,
//!   `compression`, `model`, `entry`);
//! - `{p}:payload:{id}`: the request ([`crate::wire::WireJob`]) until the job ends;
//! - `{p}:result:{id}` and `{p}:preview:{id}`: images ([`crate::wire::images_to_json`]);
//! - `{p}:cancel:{id}`: present once a client cancelled the job;
//! - `{p}:worker:{name}`: a live worker's advertisement (JSON), expiring unless renewed;
//! - `{p}:workers`: the set of worker names ever seen (pruned of dead ones by readers).
//!
//! Every key but the stream and the set expires (`ttl`), so Redis does not grow without
//! bound.

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sprout_pipeline::request::Profile;

use crate::error::ApiError;

/// The consumer group every worker of a model joins.
pub const GROUP: &str = "workers";

/// How long a worker's advertisement lives unless renewed; a worker renews it every second,
/// so one that stopped is known dead within this.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(5);

/// A connection to the broker: a URL, a key prefix and a small pool of connections.
pub struct Broker {
    client: redis::Client,
    url: String,
    prefix: String,
    pool: Mutex<Vec<redis::Connection>>,
    /// Results, previews, payloads and job states expire this long after they are written.
    pub ttl: Duration,
    timeout: Duration,
}

/// A broker operation that failed: the broker is unreachable or answered an error.
#[derive(Debug, thiserror::Error)]
#[error("broker {url}: {message}")]
pub struct BrokerError {
    pub url: String,
    pub message: String,
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        ApiError::BrokerDown(e.to_string())
    }
}

/// What a worker tells the front ends about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Advert {
    pub name: String,
    /// The model's name as clients give it.
    pub model: String,
    pub profile: Profile,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// The job it runs now, if any.
    pub current: Option<String>,
    /// Resident memory in bytes, where the system tells.
    pub rss_bytes: Option<u64>,
}

impl Broker {
    /// Parses `url` (`redis://HOST:PORT[/DB]`) and checks that the broker answers.
    pub fn connect(url: &str, prefix: &str) -> Result<Broker, BrokerError> {
        let err = |m: String| BrokerError {
            url: url.to_string(),
            message: m,
        };
        if !url.starts_with("redis://") && !url.starts_with("rediss://") {
            return Err(err("not a redis:// URL (redis://HOST:PORT[/DB])".into()));
        }
        let client = redis::Client::open(url).map_err(|e| err(format!("not a broker URL: {e}")))?;
        let b = Broker {
            client,
            url: url.to_string(),
            prefix: prefix.to_string(),
            pool: Mutex::new(Vec::new()),
            ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
        };
        b.ping()?;
        Ok(b)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the broker answers now.
    pub fn ping(&self) -> Result<(), BrokerError> {
        self.with(|c| redis::cmd("PING").query::<String>(c).map(|_| ()))
    }

    /// Runs `f` on a pooled connection (a new one when none is free). A connection that saw
    /// an error is dropped, so a broker that restarted is reconnected on the next call.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, BrokerError> {
        let err = |m: String| BrokerError {
            url: self.url.clone(),
            message: m,
        };
        let pooled = self.pool.lock().expect("broker pool").pop();
        let mut con = match pooled {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(self.timeout)
                    .map_err(|e| err(format!("unreachable: {e}")))?;
                c.set_read_timeout(Some(self.timeout))
                    .and_then(|_| c.set_write_timeout(Some(self.timeout)))
                    .map_err(|e| err(e.to_string()))?;
                c
            }
        };
        match f(&mut con) {
            Ok(v) => {
                let mut pool = self.pool.lock().expect("broker pool");
                if pool.len() < 8 {
                    pool.push(con);
                }
                Ok(v)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// A fresh connection of its own, for blocking reads (`XREADGROUP … BLOCK`) that must
    /// not hold a pooled one; its read timeout is `block` plus the usual margin.
    pub fn dedicated(&self, block: Duration) -> Result<redis::Connection, BrokerError> {
        let err = |m: String| BrokerError {
            url: self.url.clone(),
            message: m,
        };
        let c = self
            .client
            .get_connection_with_timeout(self.timeout)
            .map_err(|e| err(format!("unreachable: {e}")))?;
        c.set_read_timeout(Some(block + self.timeout))
            .map_err(|e| err(e.to_string()))?;
        Ok(c)
    }

    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    pub fn stream(&self, model: &str) -> String {
        self.key("jobs", model)
    }

    pub fn workers_set(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Creates the model's stream and consumer group if they do not exist. The group starts
    /// at the stream's beginning, so jobs queued before any worker joined are delivered.
    pub fn ensure_group(&self, model: &str) -> Result<(), BrokerError> {
        let stream = self.stream(model);
        self.with(|c| {
            match redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query::<()>(c)
            {
                Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
                other => other,
            }
        })
    }

    /// The live workers' advertisements (those whose advertisement has not expired).
    pub fn live_workers(&self) -> Result<Vec<Advert>, BrokerError> {
        let set = self.workers_set();
        let names: Vec<String> = self.with(|c| redis::cmd("SMEMBERS").arg(&set).query(c))?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.key("worker", n)).collect();
        let values: Vec<Option<String>> = self.with(|c| redis::cmd("MGET").arg(&keys).query(c))?;
        let mut out = Vec::new();
        for (name, v) in names.iter().zip(values) {
            match v.and_then(|s| serde_json::from_str::<Advert>(&s).ok()) {
                Some(a) => out.push(a),
                None => {
                    // Gone for longer than its advertisement lives: forget it.
                    let _ = self.with(|c| redis::cmd("SREM").arg(&set).arg(name).query::<()>(c));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Whether the worker `name` is alive.
    pub fn worker_alive(&self, name: &str) -> Result<bool, BrokerError> {
        let k = self.key("worker", name);
        self.with(|c| redis::cmd("EXISTS").arg(&k).query::<bool>(c))
    }

    /// Entries in the model's stream: jobs queued or running.
    pub fn stream_len(&self, model: &str) -> Result<usize, BrokerError> {
        let s = self.stream(model);
        self.with(|c| redis::cmd("XLEN").arg(&s).query(c))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The job states a job ends in.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}
