//! The server over real HTTP on loopback, with a tiny random model: generation, every kind
//! of bad input, overload and cancellation.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use sprout_server::ServerConfig;

mod common;
use common::{decode, Server};

async fn start(cfg: ServerConfig) -> Server {
    let bundle = sprout_pipeline::testing::tiny_serving_bundle()
        .unwrap()
        .into_bundle(&candle_core::Device::Cpu)
        .unwrap();
    Server::start(sprout_server::Engine::Native(Box::new(bundle)), "tiny", cfg).await
}

fn quick() -> ServerConfig {
    ServerConfig {
        warmup: true,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_images_with_their_seeds() {
    let s = start(quick()).await;
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a red circle", "n": 2, "size": "320x224", "seed": 7, "steps": 2})
                .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seed"], 7);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["seed"], 8);
    let second = decode(&data[1]);
    assert_eq!(second.dimensions(), (320, 224));
    // Image 1 of seed 7 is image 0 of seed 8, and formats other than PNG work.
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a red circle", "size": "320x224", "seed": 8, "steps": 2,
                   "output_format": "webp"})
            .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["output_format"], "webp");
    assert_eq!(decode(&v["data"][0]), second);
    // By URL: the stored file is the same image.
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a red circle", "size": "320x224", "seed": 8, "steps": 2,
                   "response_format": "url"})
            .to_string(),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert!(v["data"][0]["b64_json"].is_null() && v["expires_in"].as_u64() > Some(0));
    let url = v["data"][0]["url"].as_str().unwrap();
    assert!(url.starts_with(&s.base), "{url}");
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), second);
    let (st, _) = s.get("/v1/images/files/0123.png").await;
    assert_eq!(st, 404);
    let (st, models) = s.get("/v1/models").await;
    assert_eq!(st, 200);
    assert!(models.contains("\"id\":\"tiny\""), "{models}");
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("sprout_images_generated_total 4"),
        "{metrics}"
    );
    // The sizes the model offers (the web page's choices) are all accepted.
    let models: Value = serde_json::from_str(&models).unwrap();
    let p = &models["data"][0]["sprout"];
    assert_eq!(
        (p["default_size"].as_str(), p["edits"].as_bool()),
        (Some("256x256"), Some(false))
    );
    let sizes: Vec<&str> = p["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        sizes.contains(&"256x256") && sizes.contains(&"512x512"),
        "{sizes:?}"
    );
    for size in sizes {
        let (st, v) = s
            .post(
                "/v1/images/generations",
                json!({"prompt": "a", "size": size, "steps": 1}).to_string(),
            )
            .await;
        assert_eq!(st, 200, "{size}: {v}");
        assert_eq!(v["size"], size);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_4xx_and_the_server_stays_healthy() {
    let s = start(ServerConfig {
        max_body_bytes: 4096,
        ..quick()
    })
    .await;
    let p = "/v1/images/generations";
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{\"prompt\": ".into(), 400, None),
        (json!({"prompt": 5}).to_string(), 400, Some("prompt")),
        (
            json!({"prompt": "a", "n": "two"}).to_string(),
            400,
            Some("n"),
        ),
        (json!({"prompt": "a", "n": 0}).to_string(), 400, Some("n")),
        (json!({"prompt": "a", "n": 11}).to_string(), 400, Some("n")),
        (
            json!({"prompt": "a", "size": "7x7"}).to_string(),
            400,
            Some("size"),
        ),
        (
            json!({"prompt": "a", "size": "4096x4096"}).to_string(),
            400,
            Some("size"),
        ),
        (json!({"prompt": ""}).to_string(), 400, Some("prompt")),
        (json!({"n": 1}).to_string(), 400, Some("prompt")),
        (
            json!({"prompt": "a", "model": "dall-e-3"}).to_string(),
            404,
            Some("model"),
        ),
        (
            json!({"prompt": "a", "output_format": "gif"}).to_string(),
            400,
            Some("output_format"),
        ),
        (
            json!({"prompt": "a", "steps": 0}).to_string(),
            400,
            Some("steps"),
        ),
        (
            json!({"prompt": "a", "guidance": -1}).to_string(),
            400,
            Some("guidance"),
        ),
        (
            json!({"prompt": "a", "wings": true}).to_string(),
            400,
            Some("wings"),
        ),
        (json!({"prompt": "x".repeat(5000)}).to_string(), 413, None),
    ];
    for (body, want, param) in cases {
        let (st, v) = s.post(p, body.clone()).await;
        let short: String = body.chars().take(60).collect();
        assert_eq!(st, want, "{short}: {v}");
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        if let Some(param) = param {
            assert_eq!(e["param"], param, "{short}: {v}");
        }
    }
    let (st, v) = s.get("/no/such/route").await;
    assert_eq!(st, 404, "{v}");
    let (st, h) = s.get("/health").await;
    assert_eq!(st, 200, "{h}");
    let (st, v) = s
        .post(p, json!({"prompt": "a red circle", "steps": 1}).to_string())
        .await;
    assert_eq!(st, 200, "{v}");
    s.stop().await;
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_a_client_that_leaves_cancels_its_job() {
    let s = start(ServerConfig {
        queue_capacity: 1,
        ..quick()
    })
    .await;
    let url = format!("{}/v1/images/generations", s.base);
    // A long job: many steps at the largest size.
    let long = json!({"prompt": "a red circle", "size": "512x512", "n": 4, "steps": 1000});
    let send = |body: Value| {
        let url = url.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(url)
                .body(body.to_string())
                .send()
                .await
        })
    };
    let metrics = s.state.metrics.clone();
    let in_flight = || metrics.in_flight.load(std::sync::atomic::Ordering::SeqCst);
    let a = send(long.clone());
    wait_until("the first job to start", || {
        in_flight() == 1 && s.state.worker.depth() == 0
    })
    .await;
    let b = send(long.clone());
    wait_until("the second job to queue", || s.state.worker.depth() == 1).await;
    let r = reqwest::Client::new()
        .post(&url)
        .body(json!({"prompt": "a red circle"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    // Both clients leave: the running job stops between two steps and the queued one is
    // never started, so the worker is soon free for a new request.
    a.abort();
    b.abort();
    wait_until("both handlers to end and the queue to empty", || {
        in_flight() == 0 && s.state.worker.depth() == 0
    })
    .await;
    let r = reqwest::Client::new()
        .post(&url)
        .body(json!({"prompt": "a red circle", "steps": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, metrics) = s.get("/metrics").await;
    assert!(
        metrics.contains("sprout_errors_total{type=\"overloaded\"} 1"),
        "{metrics}"
    );
    s.stop().await;
}

/// A PNG that only claims a `w`×`h` canvas (signature, header, end): a decompression bomb's
/// first bytes.
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    for (kind, data) in [(&b"IHDR"[..], ihdr), (&b"IEND"[..], Vec::new())] {
        out.extend((data.len() as u32).to_be_bytes());
        let body = [kind, &data].concat();
        out.extend(&body);
        out.extend(crc(&body).to_be_bytes());
    }
    out
}

fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    let img = if alpha {
        image::DynamicImage::ImageRgba8(image::RgbaImage::new(w, h))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h))
    };
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_edit_redraws_only_the_transparent_area() {
    let s = start(quick()).await;
    let base = image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, ((x + y) * 2) as u8])
    });
    let rgba = |f: &dyn Fn(u32) -> u8| {
        let m = image::RgbaImage::from_fn(64, 64, |x, _| image::Rgba([0, 0, 0, f(x)]));
        common::png_bytes(&image::DynamicImage::ImageRgba8(m))
    };
    let part = |bytes: Vec<u8>| reqwest::multipart::Part::bytes(bytes).file_name("x.png");
    let form = |mask: Vec<u8>| {
        reqwest::multipart::Form::new()
            .text("prompt", "a red circle")
            .text("seed", "4")
            .text("steps", "2")
            .text("size", "64x64")
            .part(
                "image",
                part(common::png_bytes(&image::DynamicImage::ImageRgb8(
                    base.clone(),
                ))),
            )
            .part("mask", part(mask))
    };
    // Transparent left half: redrawn; the right half keeps the input's pixels.
    let (st, v) = s
        .post_form(
            "/v1/images/edits",
            form(rgba(&|x| if x < 32 { 0 } else { 255 })),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let out = decode(&v["data"][0]);
    assert_eq!(out.dimensions(), (64, 64));
    let (kept_same, drawn_same) = sprout_pipeline::testing::halves_equal(&out, &base, 32);
    assert!(kept_same && !drawn_same);
    // The same request again gives the same image (seeded), another seed another one.
    let (_, again) = s
        .post_form(
            "/v1/images/edits",
            form(rgba(&|x| if x < 32 { 0 } else { 255 })),
        )
        .await;
    assert_eq!(decode(&again["data"][0]), out);
    // A mask with nothing transparent would redraw nothing.
    let (st, v) = s.post_form("/v1/images/edits", form(rgba(&|_| 255))).await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("mask")), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_check_every_upload_and_name_the_model_that_cannot_edit() {
    let s = start(ServerConfig {
        max_body_bytes: 1 << 20,
        ..quick()
    })
    .await;
    let url = format!("{}/v1/images/edits", s.base);
    let part = |bytes: Vec<u8>| reqwest::multipart::Part::bytes(bytes).file_name("x.png");
    let send = |form: reqwest::multipart::Form| {
        let url = url.clone();
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .multipart(form)
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.unwrap())
        }
    };
    let form = || reqwest::multipart::Form::new().text("prompt", "make it blue");
    let cases = vec![
        (
            form().part("image", part(png(64, 64, false))),
            400,
            "model",
            "cannot edit images",
        ),
        (
            form().part("image", part(b"just text".to_vec())),
            400,
            "image[0]",
            "not an image",
        ),
        (
            form().part("image", part(png_header_only(20000, 20000))),
            400,
            "image[0]",
            "larger than this server accepts",
        ),
        (
            form()
                .part("image[]", part(png(64, 64, false)))
                .part("mask", part(png(32, 32, true))),
            400,
            "mask",
            "must have the first image's size",
        ),
        (form(), 400, "image", "no image given"),
        (
            // Just over the limit, so the client has sent it all before the server answers.
            form().part("image", part(vec![7u8; (1 << 20) + (16 << 10)])),
            413,
            "",
            "larger than the limit",
        ),
    ];
    for (f, want, param, msg) in cases {
        let (st, v) = send(f).await;
        assert_eq!(st, want, "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(msg), "{m}");
        if !param.is_empty() {
            assert_eq!(v["error"]["param"], param, "{v}");
        }
    }
    // The JSON form with a data URL reaches the same model check.
    let data = base64::engine::general_purpose::STANDARD.encode(png(64, 64, false));
    let (st, v) = s
        .post(
            "/v1/images/edits",
            json!({"prompt": "make it blue",
                   "images": [{"image_url": format!("data:image/png;base64,{data}")}]})
            .to_string(),
        )
        .await;
    assert_eq!((st, &v["error"]["param"]), (400, &json!("model")), "{v}");
    let (st, v) = s
        .post(
            "/v1/images/edits",
            json!({"prompt": "x", "images": [{"image_url": "https://example.com/a.png"}]})
                .to_string(),
        )
        .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (400, &json!("images[0]")),
        "{v}"
    );
    let (st, _) = s.get("/health").await;
    assert_eq!(st, 200);
    s.stop().await;
}

async fn job(s: &Server, id: &str) -> Value {
    let (st, v) = s.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(st, 200, "{v}");
    serde_json::from_str(&v).unwrap()
}

async fn wait_for_status(s: &Server, id: &str, want: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = job(s, id).await;
        if v["status"] == want {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {id} never reached {want}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_report_progress_position_and_results_and_can_be_cancelled() {
    let s = start(quick()).await;
    // A job followed through its event stream, with previews.
    let (st, v) = s
        .post(
            "/v1/jobs",
            json!({"prompt": "a red circle", "steps": 300, "seed": 3, "partial_images": 2})
                .to_string(),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let events = reqwest::get(format!("{}/v1/jobs/{id}/events", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.last(), Some(&"succeeded"), "{events}");
    let body = &names[..names.len() - 1];
    assert!(body.iter().all(|n| *n == "progress" || *n == "preview"));
    assert!(body.contains(&"progress"), "{names:?}");
    let first_preview = events
        .lines()
        .find_map(|l| l.strip_prefix("data: ").filter(|d| d.contains("\"index\"")))
        .unwrap_or_else(|| panic!("no preview event: {names:?}"));
    let p: Value = serde_json::from_str(first_preview).unwrap();
    assert_eq!(decode(&p["data"][0]).dimensions(), (256, 256));
    let done = wait_for_status(&s, &id, "succeeded").await;
    assert_eq!(done["progress"]["done"], done["progress"]["total"]);
    assert_eq!(decode(&done["result"]["data"][0]).dimensions(), (256, 256));
    // The same request through the synchronous endpoint gives the same image.
    let (_, sync) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a red circle", "steps": 300, "seed": 3}).to_string(),
        )
        .await;
    assert_eq!(decode(&sync["data"][0]), decode(&done["result"]["data"][0]));

    // Two long jobs: the second waits at position 1; cancelling stops the first mid-way.
    let long = json!({"prompt": "a red circle", "size": "512x512", "n": 4, "steps": 1000});
    let (_, a) = s.post("/v1/jobs", long.to_string()).await;
    let a = a["id"].as_str().unwrap().to_string();
    wait_for_status(&s, &a, "running").await;
    // Running, and past its set-up: its steps are counted (a cancel before the first step
    // would leave nothing to compare "stopped mid-way" with).
    let t0 = Instant::now();
    while job(&s, &a).await["progress"]["total"].as_u64().unwrap_or(0) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {a} never counted its steps"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, b) = s.post("/v1/jobs", long.to_string()).await;
    assert_eq!(b["status"], "queued", "{b}");
    assert_eq!(b["queue_position"], 1, "{b}");
    let b = b["id"].as_str().unwrap().to_string();
    for id in [&a, &b] {
        let (st, _) = s.post(&format!("/v1/jobs/{id}/cancel"), "").await;
        assert_eq!(st, 200);
    }
    let ca = wait_for_status(&s, &a, "cancelled").await;
    let total = ca["progress"]["total"].as_u64().unwrap();
    assert!(ca["progress"]["done"].as_u64().unwrap() < total, "{ca}");
    let cb = wait_for_status(&s, &b, "cancelled").await;
    assert_eq!(cb["progress"]["done"], 0, "{cb}");
    let (st, v) = s.get("/v1/jobs/job_nope").await;
    assert_eq!(st, 404, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_generation_sends_previews_then_the_images() {
    let s = start(quick()).await;
    let body = json!({"prompt": "a red circle", "n": 2, "steps": 8, "seed": 4,
                      "stream": true, "partial_images": 2});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/images/generations", s.base))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let kind = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((kind.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    // Two previews of two images each, then two completed images.
    assert_eq!(
        kinds,
        vec![
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.partial_image",
            "image_generation.completed",
            "image_generation.completed"
        ],
        "{text}"
    );
    assert_eq!(events[2].1["partial_image_index"], 1);
    // The completed images are the ones the plain request gives.
    let mut plain = body.clone();
    plain.as_object_mut().unwrap().remove("stream");
    plain.as_object_mut().unwrap().remove("partial_images");
    let (_, v) = s.post("/v1/images/generations", plain.to_string()).await;
    for i in 0..2 {
        assert_eq!(decode(&events[4 + i].1), decode(&v["data"][i]));
    }
    assert_eq!(decode(&events[0].1).dimensions(), (256, 256));
    let (st, v) = s
        .post(
            "/v1/images/generations",
            json!({"prompt": "a", "partial_images": 2}).to_string(),
        )
        .await;
    assert_eq!(
        (st, &v["error"]["param"]),
        (400, &json!("partial_images")),
        "{v}"
    );
    s.stop().await;
}
