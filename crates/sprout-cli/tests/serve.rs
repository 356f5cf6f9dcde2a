//! `sprout serve` as a process: it prints its address, serves, and on SIGTERM lets the
//! running job finish, refuses new connections and exits 0.

mod common;
use common::http;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[cfg(unix)]
#[test]
fn sigterm_finishes_the_running_job_then_exits() {
    let model = tempfile::tempdir().unwrap();
    sprout_pipeline::testing::tiny_serving_bundle()
        .unwrap()
        .write_dir(model.path())
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args([
            "serve",
            "--model",
            model.path().to_str().unwrap(),
            "--port",
            "0",
        ])
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
    let (st, h) = http(&addr, "GET", "/health", "").unwrap();
    assert_eq!(st, 200, "{h}");
    // A job that takes a while, then SIGTERM while it runs.
    let a = addr.clone();
    let job = std::thread::spawn(move || {
        http(
            &a,
            "POST",
            "/v1/images/generations",
            r#"{"prompt": "a red circle", "size": "512x512", "n": 2, "steps": 150}"#,
        )
    });
    let t0 = Instant::now();
    loop {
        let (_, m) = http(&addr, "GET", "/metrics", "").unwrap();
        if m.contains("sprout_in_flight 1") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (st, body) = job.join().unwrap().unwrap();
    assert_eq!(st, 200, "the running job must finish: {body}");
    assert!(body.contains("b64_json"));
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        http(&addr, "GET", "/health", "").is_err(),
        "still accepting after exit"
    );
}
