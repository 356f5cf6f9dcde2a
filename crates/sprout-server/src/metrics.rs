//! Counters and latency histograms, rendered in Prometheus' text format at `/metrics`.
//! Written here because the server needs only a few series and their text rendering.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    pub images: AtomicU64,
    pub requests: AtomicU64,
    pub in_flight: AtomicUsize,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Jobs cancelled (their client left), by whether they had started.
    cancelled: Mutex<BTreeMap<&'static str, u64>>,
    /// Latency per stage: queue (accepted → started), generate, encode, total.
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn error(&self, label: &'static str) {
        *self
            .errors
            .lock()
            .expect("metrics")
            .entry(label)
            .or_default() += 1;
    }

    pub fn cancelled(&self, when: &'static str) {
        *self
            .cancelled
            .lock()
            .expect("metrics")
            .entry(when)
            .or_default() += 1;
    }

    pub fn observe(&self, stage: &'static str, seconds: f64) {
        let mut l = self.latency.lock().expect("metrics");
        let h = l.entry(stage).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// Prometheus text exposition of every series, with the queue depth given.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut s = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            "sprout_queue_depth",
            "Jobs waiting for the worker.",
            "gauge",
            queue_depth.to_string(),
        );
        gauge(
            "sprout_in_flight",
            "Requests being handled.",
            "gauge",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "sprout_images_generated_total",
            "Images generated.",
            "counter",
            self.images.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "sprout_requests_total",
            "Image requests received.",
            "counter",
            self.requests.load(Ordering::Relaxed).to_string(),
        );
        let _ = writeln!(
            s,
            "# HELP sprout_errors_total Failed requests by error type.\n# TYPE sprout_errors_total counter"
        );
        for (k, v) in self.errors.lock().expect("metrics").iter() {
            let _ = writeln!(s, "sprout_errors_total{{type=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP sprout_jobs_cancelled_total Jobs stopped because their client left, by state.\n# TYPE sprout_jobs_cancelled_total counter"
        );
        for (k, v) in self.cancelled.lock().expect("metrics").iter() {
            let _ = writeln!(s, "sprout_jobs_cancelled_total{{state=\"{k}\"}} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP sprout_latency_seconds Latency by stage.\n# TYPE sprout_latency_seconds histogram"
        );
        for (stage, h) in self.latency.lock().expect("metrics").iter() {
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    s,
                    "sprout_latency_seconds_bucket{{stage=\"{stage}\",le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(
                s,
                "sprout_latency_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}} {}\nsprout_latency_seconds_sum{{stage=\"{stage}\"}} {}\nsprout_latency_seconds_count{{stage=\"{stage}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        s
    }
}

/// The broker's and the workers' figures, for a front end behind a broker.
pub fn render_remote(r: &crate::remote::RemoteQueue) -> String {
    let mut s = String::new();
    let up = u8::from(r.broker_up());
    let live = r.live_workers();
    let _ = writeln!(
        s,
        "# HELP sprout_broker_up Whether the broker answered at the last look.\n# TYPE sprout_broker_up gauge\nsprout_broker_up {up}"
    );
    let _ = writeln!(
        s,
        "# HELP sprout_workers_live Live workers, by the model they serve.\n# TYPE sprout_workers_live gauge"
    );
    let depths = r.depths();
    let mut models: Vec<&str> = live.iter().map(|a| a.model.as_str()).collect();
    models.extend(depths.iter().map(|d| d.0.as_str()));
    models.sort();
    models.dedup();
    for m in &models {
        let n = live.iter().filter(|a| a.model == *m).count();
        let _ = writeln!(s, "sprout_workers_live{{model=\"{m}\"}} {n}");
    }
    let _ = writeln!(
        s,
        "# HELP sprout_broker_jobs Jobs queued or running on the broker, by model.\n# TYPE sprout_broker_jobs gauge"
    );
    for (m, d) in &depths {
        let _ = writeln!(s, "sprout_broker_jobs{{model=\"{m}\"}} {d}");
    }
    let _ = writeln!(
        s,
        "# HELP sprout_worker_jobs_total Jobs each live worker ended, by outcome.\n# TYPE sprout_worker_jobs_total counter"
    );
    for a in &live {
        let _ = writeln!(
            s,
            "sprout_worker_jobs_total{{worker=\"{}\",model=\"{}\",outcome=\"done\"}} {}\nsprout_worker_jobs_total{{worker=\"{}\",model=\"{}\",outcome=\"failed\"}} {}",
            a.name, a.model, a.jobs_done, a.name, a.model, a.jobs_failed
        );
    }
    let _ = writeln!(
        s,
        "# HELP sprout_worker_rss_bytes Resident memory of each live worker.\n# TYPE sprout_worker_rss_bytes gauge"
    );
    for a in &live {
        if let Some(b) = a.rss_bytes {
            let _ = writeln!(s, "sprout_worker_rss_bytes{{worker=\"{}\"}} {b}", a.name);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe("generate", 0.07);
        m.observe("generate", 3.0);
        m.error("invalid");
        m.error("invalid");
        let t = m.render(2);
        assert!(t.contains("sprout_queue_depth 2"));
        assert!(t.contains("sprout_errors_total{type=\"invalid\"} 2"));
        assert!(t.contains("stage=\"generate\",le=\"0.05\"} 0"));
        assert!(t.contains("stage=\"generate\",le=\"0.1\"} 1"));
        assert!(t.contains("stage=\"generate\",le=\"5\"} 2"));
        assert!(t.contains("sprout_latency_seconds_count{stage=\"generate\"} 2"));
    }
}
