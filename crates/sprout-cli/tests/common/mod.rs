//! What the process tests share: running the binary, a plain HTTP/1.1 client (no client
//! library, so that a test reads exactly what the server wrote), and comparing written
//! images with reference tensors.
// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use candle_core::Tensor;

/// The `sprout` binary run to completion with `args`.
pub fn sprout(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sprout"))
        .args(args)
        .output()
        .expect("runs")
}

/// A finished process's standard error, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write one tensor as a safetensors file (latents or noise for `--latents`).
pub fn save_one(path: &Path, t: &Tensor) {
    candle_core::safetensors::save(
        &[("latents".to_string(), t.clone())].into_iter().collect(),
        path,
    )
    .unwrap();
}

/// Absolute differences, in 8-bit levels, between a written PNG and a reference image
/// (1, 3, H, W) in [0, 1] rounded to 8 bits.
pub fn pixel_diffs(png: &Path, reference: &Tensor) -> Vec<f32> {
    let got = image::open(png).unwrap().to_rgb8();
    let (_, _, h, w) = reference.dims4().unwrap();
    assert_eq!(got.dimensions(), (w as u32, h as u32));
    let want: Vec<f32> = (reference * 255.0)
        .unwrap()
        .round()
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    got.as_raw()
        .iter()
        .zip(&want)
        .map(|(a, b)| (*a as f32 - b).abs())
        .collect()
}

/// One HTTP/1.1 request with `Connection: close` (giving up after two minutes without an
/// answer); returns the status and body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Ok((status, body.to_string()))
}
