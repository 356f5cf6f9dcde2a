//! The web page in headless Chromium, driven through chromedriver's WebDriver API: type a
//! prompt, click Generate, watch the progress bar move and the image appear.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `.ci/run` installs them and runs this
//! test with `--ignored`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sprout_server::ServerConfig;

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ending the session quits its Chromium; killing chromedriver alone would leave the
        // browser's processes running after the test. Plain HTTP: no runtime in a drop.
        if let Some(addr) = self.base.strip_prefix("http://") {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    s,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                    self.session
                );
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let r = self
            .http
            .request(method, url)
            .json(&body)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": js, "args": []}),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(std::env::var("CHROMEDRIVER").unwrap_or("chromedriver".into()))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian: apt-get install chromium chromium-driver)");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while http.get(format!("{base}/status")).send().await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
        "binary": std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1200,900"]}}}});
    let v: Value = http
        .post(format!("{base}/session"))
        .json(&caps)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session: {v}"))
        .to_string();
    Driver {
        child,
        base,
        session,
        http,
    }
}

/// The tiny native model served on a free port; the page's address.
async fn serve_tiny() -> String {
    let bundle = sprout_pipeline::testing::tiny_serving_bundle()
        .unwrap()
        .into_bundle(&candle_core::Device::Cpu)
        .unwrap();
    serve(
        sprout_server::Engine::Native(Box::new(bundle)),
        "tiny",
        ServerConfig::default(),
    )
    .await
}

/// FLUX.2 [klein] from the tiny parity snapshot (its 6-layer Qwen3 read at layers 2, 4, 6),
/// served without the start-up run (its default canvas, 1024², is far too large for it).
async fn serve_flux2() -> String {
    let snap = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sprout-models/tests/fixtures/flux2/snapshot");
    let mut m = sprout_pipeline::flux2::Flux2Model::load_with_taps(
        &snap,
        &[2, 4, 6],
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    m.text.max_len = 40;
    let cfg = ServerConfig {
        warmup: false,
        ..ServerConfig::default()
    };
    serve(
        sprout_server::Engine::Flux2(Box::new(m)),
        "flux2-klein",
        cfg,
    )
    .await
}

async fn serve(engine: sprout_server::Engine, name: &str, cfg: ServerConfig) -> String {
    let state = Arc::new(sprout_server::start(engine, name, cfg).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(sprout_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    url
}

impl Driver {
    /// Poll `js` (which returns a value or null) until it gives a value.
    async fn wait_for(&self, what: &str, js: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.script(js).await;
            if !v.is_null() {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{what}: nothing after 120 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send `text` as keystrokes to the element (a file input takes a path this way).
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({"text": text}),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run installs them and runs it"]
async fn uploading_an_image_and_painting_a_mask_edits_it() {
    let url = serve_tiny().await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.png");
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 90])
    })
    .save(&input)
    .unwrap();
    let d = start_driver().await;
    d.call(reqwest::Method::POST, "/url", json!({"url": url}))
        .await;
    d.click("#tabEdit").await;
    d.type_into("#files", input.to_str().unwrap()).await;
    d.wait_for(
        "the upload on the canvas",
        "return document.getElementById('base').width === 64 ? true : null;",
    )
    .await;
    d.type_into("#prompt", "a red circle").await;
    d.script("document.getElementById('steps').value = '2';")
        .await;
    // Without a painted mask the tiny text-only model cannot edit: the page shows why.
    d.click("#go").await;
    let err = d
        .wait_for(
            "the error",
            "const s = document.getElementById('status').textContent; return s.includes('mask') ? s : null;",
        )
        .await;
    assert!(
        err.as_str()
            .unwrap()
            .contains("cannot edit images by instruction"),
        "{err}"
    );
    // Paint the left half of the mask with the brush, as a pointer would.
    d.script(
        "const m = document.getElementById('mask'), r = m.getBoundingClientRect();
         const at = (type, fx, fy) => m.dispatchEvent(new PointerEvent(type, {bubbles: true,
             clientX: r.left + fx * r.width, clientY: r.top + fy * r.height}));
         at('pointerdown', 0.1, 0.1);
         for (let y = 0.05; y < 1; y += 0.1) for (let x = 0.05; x < 0.5; x += 0.1) at('pointermove', x, y);
         window.dispatchEvent(new PointerEvent('pointerup'));",
    )
    .await;
    d.click("#go").await;
    let width = d
        .wait_for(
            "the edited image",
            "const img = document.querySelector('#gallery img');
             return img && img.naturalWidth > 0 ? img.naturalWidth : null;",
        )
        .await;
    assert_eq!(width, 256, "the default canvas of the tiny model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run installs them and runs it"]
async fn typing_a_prompt_and_clicking_generate_shows_progress_and_the_image() {
    let url = serve_tiny().await;
    let d = start_driver().await;
    d.call(reqwest::Method::POST, "/url", json!({"url": url}))
        .await;
    d.type_into("#prompt", "a red circle").await;
    // Enough steps at the largest size that the job runs for a visible while.
    d.script("document.getElementById('steps').value = '400'; document.getElementById('size').value = '512x512';")
        .await;
    let go = d.element("#go").await;
    d.call(
        reqwest::Method::POST,
        &format!("/element/{go}/click"),
        json!({}),
    )
    .await;
    let mut seen = Vec::new();
    let mut preview_seen = false;
    let t0 = Instant::now();
    loop {
        let v = d
            .script(
                "const b = document.getElementById('bar'); const img = document.querySelector('#gallery img');
                 const live = document.getElementById('live');
                 return [b.value, b.max, img ? img.naturalWidth : 0, document.getElementById('status').textContent,
                         !live.hidden && live.naturalWidth > 0];",
            )
            .await;
        let (value, max) = (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
        seen.push(value / max);
        preview_seen |= v[4].as_bool().unwrap_or(false);
        if v[2].as_u64().unwrap() > 0 {
            assert_eq!(v[2], 512, "{v}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no image after 120 s; status {:?}",
            v[3]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The bar passed through values strictly between empty and full while the job ran.
    assert!(
        seen.iter().any(|f| *f > 0.0 && *f < 1.0),
        "the progress bar never moved: {seen:?}"
    );
    assert!(preview_seen, "no live preview was shown");
    let caption = d
        .script("return document.querySelector('#gallery figcaption').textContent;")
        .await;
    assert!(
        caption.as_str().unwrap().contains("a red circle"),
        "{caption}"
    );
}

/// FLUX.2's edit mode on the page: the label says what the model takes, several chosen
/// images are all sent, the canvas ("auto") is the first image's, and the result is the
/// image the API gives for the same request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver; .ci/run installs them and runs it"]
async fn a_flux2_edit_on_the_page_sends_every_chosen_image() {
    let url = serve_flux2().await;
    let dir = tempfile::tempdir().unwrap();
    let pic = |w: u32, h: u32, k: u32| {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 3 + k * 70) as u8,
                (y * 5) as u8,
                ((x + y) * 2 + k * 40) as u8,
            ])
        })
    };
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    pic(96, 80, 0).save(&a).unwrap();
    pic(64, 64, 1).save(&b).unwrap();
    let d = start_driver().await;
    d.call(reqwest::Method::POST, "/url", json!({"url": url}))
        .await;
    let label = d
        .wait_for(
            "the model's image rule",
            "const t = document.getElementById('filesLabel').textContent; return t.includes('up to') ? t : null;",
        )
        .await;
    assert!(label.as_str().unwrap().contains("up to 4"), "{label}");
    d.click("#tabEdit").await;
    let size = d
        .script("return document.getElementById('size').value;")
        .await;
    assert_eq!(size, "auto");
    d.type_into("#files", &format!("{}\n{}", a.display(), b.display()))
        .await;
    let chosen = d
        .script("return document.getElementById('files').files.length;")
        .await;
    assert_eq!(chosen, 2);
    d.type_into("#prompt", "make it red").await;
    d.script(
        "document.getElementById('steps').value = '2'; document.getElementById('seed').value = '5';",
    )
    .await;
    d.click("#go").await;
    let src = d
        .wait_for(
            "the edited image",
            "const img = document.querySelector('#gallery img');
             return img && img.naturalWidth > 0 ? img.src : null;",
        )
        .await;
    let b64 = src.as_str().unwrap().split(',').nth(1).unwrap().to_string();
    use base64::Engine as _;
    let page_png = base64::engine::general_purpose::STANDARD
        .decode(&b64)
        .unwrap();
    let page_img = image::load_from_memory(&page_png).unwrap().to_rgb8();
    assert_eq!(
        page_img.dimensions(),
        (96, 80),
        "the first image's own size"
    );
    // The same request straight to the API, with both images and with the first alone.
    let api = |images: &[&std::path::Path]| {
        let mut form = reqwest::multipart::Form::new()
            .text("prompt", "make it red")
            .text("steps", "2")
            .text("seed", "5");
        for p in images {
            form = form.part(
                "image[]",
                reqwest::multipart::Part::bytes(std::fs::read(p).unwrap()).file_name("in.png"),
            );
        }
        let url = format!("{url}v1/images/edits");
        async move {
            let v: Value = reqwest::Client::new()
                .post(url)
                .multipart(form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(
                    v["data"][0]["b64_json"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{v}")),
                )
                .unwrap();
            image::load_from_memory(&png).unwrap().to_rgb8()
        }
    };
    assert_eq!(page_img, api(&[&a, &b]).await);
    // With the first image alone the model draws another image: the second was sent.
    let alone = api(&[&a]).await;
    assert_ne!(alone, page_img);
}
