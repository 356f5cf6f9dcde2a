//! `sprout serve --broker` in front of `sprout worker`s over a real Redis (`redis-server`,
//! installed by `.ci/run`; these tests are ignored by a plain `cargo test`): every process
//! is a real one, killed and restarted as an operator's machines would be.

mod common;
use common::http;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis server on a free loopback port, with its append-only file in `dir` (every write
/// synced, so a killed server loses nothing it acknowledged).
struct Redis {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: dir.to_path_buf(),
            proc: None,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package; .ci/run installs it)");
        self.proc = Some(Proc(child));
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn tiny_model(dir: &Path) {
    sprout_pipeline::testing::tiny_serving_bundle()
        .unwrap()
        .write_dir(dir)
        .unwrap();
}

/// A tiny model named `name` whose largest side is `max_side`.
fn named_tiny_model(dir: &Path, name: &str, max_side: u32) {
    let mut parts = sprout_pipeline::testing::tiny_serving_bundle().unwrap();
    parts.meta.name = name.into();
    parts.meta.max_side = max_side;
    parts.write_dir(dir).unwrap();
}

/// `sprout worker` named `name`; returns once it takes jobs.
fn worker(url: &str, model: &Path, name: &str) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args([
            "worker",
            "--broker",
            url,
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["--name", name, "--no-warmup", "--visibility-timeout", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with(&format!("worker {name} ")), "{line:?}");
    Proc(child)
}

/// `sprout serve --broker`; returns the process and its address.
fn front(url: &str, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args([
            "serve",
            "--broker",
            url,
            "--port",
            "0",
            "--wait-workers",
            "30",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (Proc(child), addr)
}

fn json(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (st, b) = http(addr, method, path, body).unwrap();
    (
        st,
        serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path} → {st}: {e}: {b:?}")),
    )
}

/// Polls a job until it ends; returns its final view.
fn wait_job(addr: &str, id: &str, limit: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        if let Ok((200, b)) = http(addr, "GET", &format!("/v1/jobs/{id}"), "") {
            let v: Value = serde_json::from_str(&b).unwrap();
            let s = v["status"].as_str().unwrap_or("").to_string();
            if matches!(s.as_str(), "succeeded" | "failed" | "cancelled") {
                return v;
            }
        }
        assert!(
            t0.elapsed() < limit,
            "job {id} did not end within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn submit(addr: &str, body: &str) -> String {
    let (st, v) = json(addr, "POST", "/v1/jobs", body);
    assert_eq!(st, 202, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// The live workers' `(name, current job, jobs done)` as the front end's health reports.
fn workers(addr: &str) -> Vec<(String, Option<String>, u64)> {
    let (_, v) = json(addr, "GET", "/health", "");
    v["workers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    (
                        w["name"].as_str().unwrap().to_string(),
                        w["current_job"].as_str().map(str::to_string),
                        w["jobs_done"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs redis-server (installed by .ci/run)"]
fn sixty_jobs_from_concurrent_clients_complete_once_on_three_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model);
    let redis = Redis::start(tmp.path());
    let url = redis.url();
    let _w: Vec<Proc> = (1..=3)
        .map(|k| worker(&url, &model, &format!("w{k}")))
        .collect();
    let (_f, addr) = front(&url, &["--workers-expected", "3", "--queue", "64"]);
    let (st, h) = json(&addr, "GET", "/health", "");
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["workers_live"], 3, "{h}");
    // 6 clients × 10 jobs, each with its own seed; seeds 0..60.
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let a = addr.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|k| {
                        let seed = c * 10 + k;
                        let id = submit(
                            &a,
                            &format!(r#"{{"prompt": "a red circle", "size": "64x64", "steps": 4, "seed": {seed}}}"#),
                        );
                        (seed, id)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let jobs: Vec<(u64, String)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(jobs.len(), 60);
    let mut images = std::collections::HashMap::new();
    for (seed, id) in &jobs {
        let v = wait_job(&addr, id, Duration::from_secs(120));
        assert_eq!(v["status"], "succeeded", "{v}");
        let data = v["result"]["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "{v}");
        assert_eq!(data[0]["seed"], *seed);
        images.insert(*seed, data[0]["b64_json"].as_str().unwrap().to_string());
    }
    // Each job ran exactly once: the workers' counts (advertised every second) add up to
    // 60, and every worker took some.
    let t0 = Instant::now();
    let ws = loop {
        let ws = workers(&addr);
        let done: u64 = ws.iter().map(|w| w.2).sum();
        assert!(done <= 60, "{ws:?}");
        if done == 60 {
            break ws;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{ws:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ws.iter().all(|w| w.2 > 0), "{ws:?}");
    // A seed gives the same image whichever worker ran it.
    let again = submit(
        &addr,
        r#"{"prompt": "a red circle", "size": "64x64", "steps": 4, "seed": 7}"#,
    );
    let v = wait_job(&addr, &again, Duration::from_secs(60));
    assert_eq!(
        v["result"]["data"][0]["b64_json"].as_str().unwrap(),
        images[&7]
    );
    // A sync generation through the same path.
    let (st, v) = json(
        &addr,
        "POST",
        "/v1/images/generations",
        r#"{"prompt": "a red circle", "size": "64x64", "steps": 4, "seed": 7, "n": 2}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["b64_json"].as_str().unwrap(), images[&7]);
    // Refusals are the pipeline's, before anything is queued.
    let (st, v) = json(
        &addr,
        "POST",
        "/v1/jobs",
        r#"{"prompt": "a red circle", "steps": 0}"#,
    );
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["param"], "steps", "{v}");
    // The front end's metrics carry the broker's and the workers' figures.
    let (_, m) = http(&addr, "GET", "/metrics", "").unwrap();
    assert!(m.contains("sprout_broker_up 1"), "{m}");
    assert!(m.contains("sprout_workers_live{model=\"tiny\"} 3"), "{m}");
    assert!(m.contains("sprout_worker_jobs_total{worker=\"w1\""), "{m}");
}

/// A job that takes several seconds on the tiny model (60 steps took 1.2 s here), longer
/// than the workers' and the front end's once-a-second looks at each other.
const LONG: &str =
    r#"{"prompt": "a red circle", "size": "512x512", "n": 2, "steps": 400, "seed": 3}"#;

/// The name of the worker running `id`, once one does.
fn runner(addr: &str, id: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(w) = workers(addr)
            .into_iter()
            .find(|w| w.1.as_deref() == Some(id))
        {
            return w.0;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {id} never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs redis-server (installed by .ci/run)"]
fn a_job_whose_worker_is_killed_completes_on_another_and_is_answered_once() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model);
    let redis = Redis::start(tmp.path());
    let url = redis.url();
    let mut ws = [
        Some(worker(&url, &model, "a")),
        Some(worker(&url, &model, "b")),
    ];
    let (_f, addr) = front(&url, &["--workers-expected", "2"]);
    // A sync request: its client waits on the front end while its worker dies.
    let a = addr.clone();
    let client = std::thread::spawn(move || {
        let (st, b) = http(&a, "POST", "/v1/images/generations", LONG).unwrap();
        (st, b)
    });
    // Its job id is the only job the workers run; find who runs it.
    let t0 = Instant::now();
    let (name, id) = loop {
        if let Some(w) = workers(&addr).into_iter().find(|w| w.1.is_some()) {
            break (w.0, w.1.unwrap());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_millis(300));
    let k = if name == "a" { 0 } else { 1 };
    ws[k].take().unwrap().kill9();
    let (st, b) = client.join().unwrap();
    assert_eq!(st, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(
        v["data"].as_array().unwrap().len(),
        2,
        "one result, both images"
    );
    // The other worker ran it to the end.
    let other = if k == 0 { "b" } else { "a" };
    let t0 = Instant::now();
    loop {
        let live = workers(&addr);
        if live.len() == 1 && live[0].2 == 1 {
            assert_eq!(live[0].0, other, "{live:?} (job {id})");
            break;
        }
        assert!(live.iter().all(|w| w.2 <= 1), "{live:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{live:?} (job {id})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same seed through a fresh job gives the same images as the recovered one.
    let again = submit(&addr, LONG);
    let j = wait_job(&addr, &again, Duration::from_secs(120));
    assert_eq!(j["result"]["data"][0]["b64_json"], v["data"][0]["b64_json"]);
}

#[test]
#[ignore = "needs redis-server (installed by .ci/run)"]
fn cancel_reaches_the_worker_and_jobs_survive_front_end_and_broker_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    tiny_model(&model);
    let mut redis = Redis::start(tmp.path());
    let url = redis.url();
    let _w = worker(&url, &model, "solo");
    let (mut f, addr) = front(&url, &["--queue", "32"]);

    // Cancel across processes: the worker stops before its next step.
    let id = submit(&addr, LONG);
    runner(&addr, &id);
    let t0 = Instant::now();
    loop {
        let (_, v) = json(&addr, "GET", &format!("/v1/jobs/{id}"), "");
        if v["progress"]["done"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{v}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (st, v) = json(&addr, "POST", &format!("/v1/jobs/{id}/cancel"), "");
    assert_eq!(st, 200, "{v}");
    let at_cancel = v["progress"]["done"].as_u64().unwrap();
    let v = wait_job(&addr, &id, Duration::from_secs(30));
    assert_eq!(v["status"], "cancelled", "{v}");
    let total = v["progress"]["total"].as_u64().unwrap();
    let done = v["progress"]["done"].as_u64().unwrap();
    assert!(done < total, "the job ran to its end: {v}");
    eprintln!("cancelled at step {at_cancel}, stopped at {done} of {total}");

    // Jobs queued through a front end that is then killed finish, and a new front end
    // answers for them.
    let ids: Vec<String> = (0..4)
        .map(|s| {
            submit(
                &addr,
                &format!(
                    r#"{{"prompt": "a blue square", "size": "64x64", "steps": 30, "seed": {s}}}"#
                ),
            )
        })
        .collect();
    f.kill9();
    let (_f2, addr2) = front(&url, &[]);
    for id in &ids {
        let v = wait_job(&addr2, id, Duration::from_secs(120));
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["result"]["data"].as_array().unwrap().len(), 1);
    }

    // The broker killed and restarted from its append-only file: the front end answers 503
    // while it is gone and no accepted job is lost.
    let ids: Vec<String> = (10..14)
        .map(|s| {
            submit(
                &addr2,
                &format!(
                    r#"{{"prompt": "a blue square", "size": "64x64", "steps": 30, "seed": {s}}}"#
                ),
            )
        })
        .collect();
    redis.kill();
    let t0 = Instant::now();
    loop {
        let (st, v) = json(&addr2, "GET", "/health", "");
        if st == 503 {
            assert_eq!(v["status"], "broker unreachable", "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (st, v) = json(
        &addr2,
        "POST",
        "/v1/jobs",
        r#"{"prompt": "a blue square", "size": "64x64"}"#,
    );
    assert_eq!(st, 503, "{v}");
    redis.restart();
    for id in &ids {
        let v = wait_job(&addr2, id, Duration::from_secs(120));
        assert_eq!(v["status"], "succeeded", "{v}");
    }
    let (st, _) = json(&addr2, "GET", "/health", "");
    assert_eq!(st, 200);
}

#[test]
#[ignore = "needs redis-server (installed by .ci/run)"]
fn one_front_end_serves_every_model_its_workers_advertise() {
    let tmp = tempfile::tempdir().unwrap();
    let (big, small) = (tmp.path().join("big"), tmp.path().join("small"));
    named_tiny_model(&big, "tiny-big", 512);
    named_tiny_model(&small, "tiny-small", 256);
    let redis = Redis::start(tmp.path());
    let url = redis.url();
    let _wb = worker(&url, &big, "wb");
    let mut ws = Some(worker(&url, &small, "ws"));
    let (_f, addr) = front(&url, &["--model", "tiny-big"]);
    // Both models are listed, the default first, each with its own limits (the small one's
    // advertisement may reach the front end's first look a moment late).
    let t0 = Instant::now();
    let list = loop {
        let (st, v) = json(&addr, "GET", "/v1/models", "");
        assert_eq!(st, 200, "{v}");
        if v["data"].as_array().unwrap().len() == 2 {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(list["data"][0]["id"], "tiny-big", "{list}");
    assert_eq!(list["data"][0]["sprout"]["max_side"], 512, "{list}");
    assert_eq!(list["data"][1]["id"], "tiny-small", "{list}");
    assert_eq!(list["data"][1]["sprout"]["max_side"], 256, "{list}");
    // A request is checked against the profile of the model it names.
    let body = |model: &str, size: u32| {
        format!(
            r#"{{"prompt": "a red circle", "model": "{model}", "size": "{size}x{size}", "steps": 2, "seed": 5}}"#
        )
    };
    let (st, v) = json(&addr, "POST", "/v1/jobs", &body("tiny-small", 320));
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["param"], "size", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 256"),
        "{v}"
    );
    // Each job runs on a worker of its model, and answers with that model's name.
    let small_job = submit(&addr, &body("tiny-small", 64));
    let big_job = submit(&addr, &body("tiny-big", 320));
    let default_job = submit(
        &addr,
        r#"{"prompt": "a red circle", "size": "256x256", "steps": 2, "seed": 5}"#,
    );
    for (id, model) in [
        (&small_job, "tiny-small"),
        (&big_job, "tiny-big"),
        (&default_job, "tiny-big"),
    ] {
        let v = wait_job(&addr, id, Duration::from_secs(60));
        assert_eq!(v["status"], "succeeded", "{v}");
        assert_eq!(v["model"], model, "{v}");
        assert_eq!(v["result"]["model"], model, "{v}");
        let size = if id == &small_job {
            "64x64"
        } else if id == &big_job {
            "320x320"
        } else {
            "256x256"
        };
        assert_eq!(v["size"], size, "{v}");
    }
    let t0 = Instant::now();
    loop {
        let done: Vec<_> = workers(&addr).into_iter().map(|w| (w.0, w.2)).collect();
        if done.contains(&("wb".into(), 2)) && done.contains(&("ws".into(), 1)) {
            // (The edit below is the small worker's second job.)
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{done:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // An inpainting edit crosses the processes with its image and mask: the half the mask
    // keeps has the input's pixels, the other is drawn.
    let base = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let mask = image::RgbaImage::from_fn(64, 64, |x, _| {
        image::Rgba([0, 0, 0, if x < 32 { 0 } else { 255 }])
    });
    let data_url = |img: image::DynamicImage| {
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        format!("data:image/png;base64,{}", B64.encode(png))
    };
    let edit = serde_json::json!({
        "prompt": "a red circle", "model": "tiny-small", "size": "64x64", "steps": 2, "seed": 4,
        "images": [{"image_url": data_url(image::DynamicImage::ImageRgb8(base.clone()))}],
        "mask": {"image_url": data_url(image::DynamicImage::ImageRgba8(mask))},
    });
    let (st, v) = json(&addr, "POST", "/v1/images/edits", &edit.to_string());
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"], "tiny-small", "{v}");
    let out = image::load_from_memory(
        &B64.decode(v["data"][0]["b64_json"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap()
    .to_rgb8();
    assert_eq!(
        sprout_pipeline::testing::halves_equal(&out, &base, 32),
        (true, false)
    );
    let (_, h) = json(&addr, "GET", "/health", "");
    assert_eq!(h["models"]["tiny-small"]["workers_live"], 1, "{h}");
    assert_eq!(h["models"]["tiny-big"]["workers_live"], 1, "{h}");
    let (_, m) = http(&addr, "GET", "/metrics", "").unwrap();
    assert!(
        m.contains("sprout_workers_live{model=\"tiny-small\"} 1"),
        "{m}"
    );
    // A model no live worker serves: 503 naming it.
    let (st, v) = json(
        &addr,
        "POST",
        "/v1/images/generations",
        &body("tiny-huge", 64),
    );
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["param"], "model", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"tiny-huge\""),
        "{v}"
    );
    // Once the small model's only worker is gone (its heartbeat expires), its requests are
    // answered the same way; the other model goes on.
    // (A job accepted before then waits on the model's stream for a worker to take it.)
    ws.take().unwrap().kill9();
    let t0 = Instant::now();
    while workers(&addr).iter().any(|w| w.0 == "ws") {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the killed worker stays live"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, v) = json(
        &addr,
        "POST",
        "/v1/images/generations",
        &body("tiny-small", 64),
    );
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"tiny-small\""),
        "{v}"
    );
    let (_, list) = json(&addr, "GET", "/v1/models", "");
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    let (st, v) = json(
        &addr,
        "POST",
        "/v1/images/generations",
        &body("tiny-big", 64),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["model"], "tiny-big", "{v}");
    let (st, h) = json(&addr, "GET", "/health", "");
    assert_eq!(st, 200, "{h}");
    assert_eq!(h["status"], "ok", "{h}");
}

#[test]
#[ignore = "needs redis-server (installed by .ci/run)"]
fn bad_or_absent_brokers_are_named() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sprout"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&["serve", "--broker", "http://127.0.0.1:1", "--port", "0"]);
    assert!(
        e.contains("--broker http://127.0.0.1:1") && e.contains("redis://"),
        "{e}"
    );
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let e = run(&["serve", "--broker", &url, "--port", "0"]);
    assert!(e.contains(&url) && e.contains("unreachable"), "{e}");
    let e = run(&["worker", "--broker", &url]);
    assert!(e.contains(&url) && e.contains("unreachable"), "{e}");
    // A front end with no worker gives up waiting, naming what it waited for.
    let tmp = tempfile::tempdir().unwrap();
    let redis = Redis::start(tmp.path());
    let e = run(&[
        "serve",
        "--broker",
        &redis.url(),
        "--port",
        "0",
        "--wait-workers",
        "1",
    ]);
    assert!(e.contains("no 1 live worker(s)"), "{e}");
}
