//! The routes: image generation, models, health and metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::edits::{self, DecodeLimits};
use crate::encode::{encode, OutputFormat};
use crate::error::ApiError;
use crate::generations::{check, parse_json, Generation, GenerationBody};
use crate::jobs::Outcome;
use crate::worker::{Job, JobCtl, JobResult, Previews};
use crate::AppState;
use sprout_pipeline::image_io::{mask_from_image, resized};
use sprout_pipeline::request::InitImage;

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/v1/images/generations", post(generations))
        .route("/v1/images/edits", post(edits))
        .route("/v1/images/files/{name}", get(stored_image))
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Counts a request in flight for as long as it is handled.
struct InFlight(Arc<AppState>);

impl InFlight {
    fn new(s: &Arc<AppState>) -> InFlight {
        s.metrics.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cancels its job when dropped before `disarm`: axum drops a handler whose client has
/// gone, and the worker then stops the job before its next step.
struct CancelOnDrop(Option<Arc<JobCtl>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.cancel.store(true, Ordering::SeqCst);
        }
    }
}

fn body_error(e: BytesRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge { limit }
    } else {
        ApiError::Invalid {
            message: format!("the request body could not be read: {e}"),
            param: None,
        }
    }
}

async fn generations(
    State(s): St,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let _flight = InFlight::new(&s);
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let host = host_of(&s, &headers);
    let result = generate_response(&s, &host, body).await;
    s.metrics.observe("total", t0.elapsed().as_secs_f64());
    answer(&s, result)
}

/// The response, or the error's (counted by type in the metrics).
fn answer(s: &AppState, result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|e| {
        s.metrics.error(e.label());
        e.into_response()
    })
}

async fn generate_response(
    s: &Arc<AppState>,
    host: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| body_error(e, s.cfg.max_body_bytes))?;
    let g = check(parse_json::<GenerationBody>(&body)?, s)?;
    respond(s, host, g).await
}

/// Run a checked generation (or edit) and answer: streamed, as base64 or as URLs.
async fn respond(s: &Arc<AppState>, host: &str, g: Generation) -> Result<Response, ApiError> {
    if g.stream {
        return stream_response(s, g);
    }
    if g.partial_images > 0 {
        return Err(ApiError::invalid(
            "partial_images",
            "partial_images needs stream: true (or use /v1/jobs and its events)",
        ));
    }
    let (seed, w, h, format) = (g.req.seed, g.req.width, g.req.height, g.format);
    let (_, ctl, rx) = submit(s, &g)?;
    let mut guard = CancelOnDrop(Some(ctl));
    let encoded = finish(s, rx, g.format, g.compression).await;
    guard.0 = None;
    let encoded = encoded?;
    let mut v = images_json(&encoded, seed, format, &g.model);
    v["size"] = json!(format!("{w}x{h}"));
    if g.url {
        for (item, bytes) in v["data"]
            .as_array_mut()
            .expect("data")
            .iter_mut()
            .zip(encoded)
        {
            let name = s.store.put(bytes, format);
            let o = item.as_object_mut().expect("item");
            o.remove("b64_json");
            o.insert(
                "url".into(),
                json!(format!("http://{host}/v1/images/files/{name}")),
            );
        }
        v["expires_in"] = json!(s.store.ttl().as_secs());
    }
    Ok(Json(v).into_response())
}

/// Queue a checked generation.
/// A queued job: its id, its control and where its outcome arrives.
type Submitted = (String, Arc<JobCtl>, oneshot::Receiver<JobResult>);

fn submit(s: &AppState, g: &Generation) -> Result<Submitted, ApiError> {
    submit_with_previews(s, g, None)
}

fn submit_with_previews(
    s: &AppState,
    g: &Generation,
    previews: Option<mpsc::UnboundedSender<(usize, Vec<image::RgbImage>)>>,
) -> Result<Submitted, ApiError> {
    // The pipeline's one check, against the model's profile, before the job queues.
    sprout_pipeline::request::check(&g.req, &g.profile)?;
    let ctl = JobCtl::new();
    let (tx, rx) = oneshot::channel();
    let id = s.jobs.new_id();
    s.worker.submit(
        Job {
            req: g.req.clone(),
            ctl: ctl.clone(),
            reply: tx,
            previews: previews
                .filter(|_| g.partial_images > 0)
                .map(|tx| Previews {
                    count: g.partial_images,
                    tx,
                }),
        },
        &id,
        &g.model,
        g.format,
        g.compression,
    )?;
    Ok((id, ctl, rx))
}

/// A streamed generation: `image_generation.partial_image` events with previews, then one
/// `image_generation.completed` event per image (or one `error` event). The stream holds
/// the job's cancel guard, so a client that disconnects cancels the job.
fn stream_response(s: &Arc<AppState>, g: Generation) -> Result<Response, ApiError> {
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let (_, ctl, rx) = submit_with_previews(s, &g, Some(ptx))?;
    let (etx, erx) = mpsc::unbounded_channel::<Event>();
    let st = s.clone();
    let (format, compression) = (g.format, g.compression);
    let size = format!("{}x{}", g.req.width, g.req.height);
    tokio::spawn(async move {
        let b64 = base64::engine::general_purpose::STANDARD;
        let event = |kind: &str, body: Value| Event::default().event(kind).data(body.to_string());
        while let Some((k, imgs)) = prx.recv().await {
            for img in imgs {
                let Ok(bytes) = encode(&img, format, compression) else {
                    continue;
                };
                let body = json!({"type": "image_generation.partial_image", "b64_json": b64.encode(bytes),
                    "partial_image_index": k, "created_at": crate::unix_now(), "size": size,
                    "output_format": format.name()});
                let _ = etx.send(event("image_generation.partial_image", body));
            }
        }
        // The preview sender is dropped when the job ends; its result is ready.
        match finish(&st, rx, format, compression).await {
            Ok(images) => {
                for (i, bytes) in images.iter().enumerate() {
                    let body = json!({"type": "image_generation.completed", "b64_json": b64.encode(bytes),
                        "created_at": crate::unix_now(), "size": size, "output_format": format.name(),
                        "seed": g.req.seed.wrapping_add(i as u64)});
                    let _ = etx.send(event("image_generation.completed", body));
                }
            }
            Err(e) => {
                st.metrics.error(e.label());
                let body = json!({"type": "error", "error": {"message": e.to_string(), "code": e.label()}});
                let _ = etx.send(event("error", body));
            }
        }
    });
    let stream = futures_util::stream::unfold(
        (erx, CancelOnDrop(Some(ctl))),
        |(mut erx, mut guard)| async move {
            match erx.recv().await {
                Some(ev) => Some((Ok::<_, std::convert::Infallible>(ev), (erx, guard))),
                None => {
                    // The job has ended: nothing left to cancel.
                    guard.0.take();
                    None
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Wait for a job's images and encode them.
async fn finish(
    s: &AppState,
    rx: oneshot::Receiver<JobResult>,
    format: OutputFormat,
    compression: u8,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let images = rx
        .await
        .map_err(|_| ApiError::Internal("the worker dropped the job".into()))??;
    let t = Instant::now();
    let encoded = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|img| encode(img, format, compression))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("encoding task: {e}")))??;
    s.metrics.observe("encode", t.elapsed().as_secs_f64());
    if encoded.is_empty() {
        return Err(ApiError::Internal("the model returned no images".into()));
    }
    s.metrics
        .images
        .fetch_add(encoded.len() as u64, Ordering::Relaxed);
    Ok(encoded)
}

async fn create_job(State(s): St, body: Result<Bytes, BytesRejection>) -> Response {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let r = async {
        let body = body.map_err(|e| body_error(e, s.cfg.max_body_bytes))?;
        let g = check(parse_json::<GenerationBody>(&body)?, &s)?;
        if g.stream {
            return Err(ApiError::invalid(
                "stream",
                "a job is followed with GET /v1/jobs/{id}/events (previews with partial_images); stream applies to /v1/images/generations",
            ));
        }
        let (ptx, prx) = mpsc::unbounded_channel::<(usize, Vec<image::RgbImage>)>();
        let (id, ctl, rx) = submit_with_previews(&s, &g, Some(ptx))?;
        let info = crate::jobs::JobInfo {
            seed: g.req.seed,
            size: (g.req.width, g.req.height),
            format: g.format,
            model: g.model.clone(),
        };
        let entry = s.jobs.insert(id, ctl, info);
        await_outcome(&s, &entry, prx, rx, g.format, g.compression);
        Ok::<_, ApiError>((StatusCode::ACCEPTED, Json(entry.view(&s.worker))).into_response())
    }
    .await;
    answer(&s, r)
}

/// Fills a job's entry with its previews and then its outcome, as they arrive.
fn await_outcome(
    s: &Arc<AppState>,
    entry: &Arc<crate::jobs::Entry>,
    mut prx: mpsc::UnboundedReceiver<(usize, Vec<image::RgbImage>)>,
    rx: oneshot::Receiver<JobResult>,
    format: OutputFormat,
    compression: u8,
) {
    let (st, e) = (s.clone(), entry.clone());
    tokio::spawn(async move {
        // Previews until the job ends (the worker drops the sender with the job).
        while let Some((k, imgs)) = prx.recv().await {
            let encoded: Result<Vec<_>, _> = imgs
                .iter()
                .map(|img| encode(img, format, compression))
                .collect();
            if let Ok(encoded) = encoded {
                e.set_preview(k, encoded);
            }
        }
        let out = match finish(&st, rx, format, compression).await {
            Ok(images) => Outcome::Images(images),
            Err(err) => {
                st.metrics.error(err.label());
                Outcome::Failed(err)
            }
        };
        e.finish(out);
    });
}

/// A job this process knows, or, behind a broker, one another front end queued (this one
/// then follows it like its own).
async fn lookup(s: &Arc<AppState>, id: &str) -> Result<Arc<crate::jobs::Entry>, ApiError> {
    if let Some(e) = s.jobs.find(id) {
        return Ok(e);
    }
    if s.worker.remote().is_none() {
        return Err(s.jobs.not_found(id));
    }
    let (st, id2) = (s.clone(), id.to_string());
    let adopted =
        tokio::task::spawn_blocking(move || st.worker.remote().expect("remote").adopt(&id2))
            .await
            .map_err(|e| ApiError::Internal(format!("adopting a job: {e}")))??;
    match adopted {
        None => s.jobs.find(id).ok_or_else(|| s.jobs.not_found(id)),
        Some(a) => {
            let info = crate::jobs::JobInfo {
                seed: a.seed,
                size: a.size,
                format: a.format,
                model: a.model,
            };
            let entry = s
                .jobs
                .insert_created(id.to_string(), a.ctl, info, a.created);
            await_outcome(s, &entry, a.previews, a.rx, a.format, a.compression);
            Ok(entry)
        }
    }
}

async fn get_job(State(s): St, Path(id): Path<String>) -> Response {
    match lookup(&s, &id).await {
        Ok(e) => Json(e.view(&s.worker)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cancel_job(State(s): St, Path(id): Path<String>) -> Response {
    match lookup(&s, &id).await {
        Ok(e) => {
            e.ctl.cancel.store(true, Ordering::SeqCst);
            Json(e.view(&s.worker)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Server-sent events: `progress` whenever the status or step count changes, `preview` with
/// each new preview (jobs created with `partial_images`), then one final event named after
/// the outcome (`succeeded`, `failed`, `cancelled`) with the job.
async fn job_events(State(s): St, Path(id): Path<String>) -> Response {
    let entry = match lookup(&s, &id).await {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let stream = futures_util::stream::unfold(
        (entry, s, String::new(), false, None::<usize>),
        |(entry, s, last, ended, shown)| async move {
            if ended {
                return None;
            }
            loop {
                // A preview is encoded for the stream only when it is new.
                let k = entry.preview_index();
                if k.is_some() && k != shown && !entry.finished() {
                    if let Some(p) = entry.preview() {
                        let ev = Event::default().event("preview").data(p.to_string());
                        return Some((Ok(ev), (entry, s, last, false, k)));
                    }
                }
                let finished = entry.finished();
                let mut v = entry.view(&s.worker);
                let status = v["status"].as_str().unwrap_or("").to_string();
                let key = format!("{status}/{}", v["progress"]["done"]);
                if finished {
                    let ev = Event::default().event(status).data(v.to_string());
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (entry, s, key, true, shown),
                    ));
                }
                if key != last {
                    v.as_object_mut().map(|o| o.remove("result"));
                    let ev = Event::default().event("progress").data(v.to_string());
                    return Some((Ok(ev), (entry, s, key, false, shown)));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The OpenAI images response for encoded images whose first seed is `seed`.
pub fn images_json(encoded: &[Vec<u8>], seed: u64, format: OutputFormat, model: &str) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<_> = encoded
        .iter()
        .enumerate()
        .map(|(i, bytes)| json!({"b64_json": b64.encode(bytes), "seed": seed.wrapping_add(i as u64)}))
        .collect();
    json!({
        "created": crate::unix_now(),
        "data": data,
        "seed": seed,
        "output_format": format.name(),
        "model": model,
    })
}

async fn edits(State(s): St, req: axum::extract::Request) -> Response {
    let _flight = InFlight::new(&s);
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let host = host_of(&s, req.headers());
    let result = edit_response(&s, &host, req).await;
    s.metrics.observe("total", t0.elapsed().as_secs_f64());
    answer(&s, result)
}

/// The Host the client used (for URLs of stored images).
fn host_of(s: &AppState, headers: &axum::http::HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| s.cfg.addr.to_string())
}

async fn edit_response(
    s: &Arc<AppState>,
    host: &str,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequest;
    let lim = DecodeLimits {
        max_side: s.cfg.max_input_side,
        max_alloc: s.cfg.max_input_alloc,
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let inputs = if ct.starts_with("multipart/form-data") {
        let mp = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::Invalid {
                message: format!("the multipart body could not be read: {}", e.body_text()),
                param: None,
            })?;
        edits::from_multipart(mp, lim, s.cfg.max_body_bytes).await?
    } else {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| body_error(e, s.cfg.max_body_bytes))?;
        edits::from_json(parse_json::<edits::JsonEdit>(&body)?, lim)?
    };
    let (model, profile) = s.served(inputs.model.as_deref())?;
    if inputs.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        return Err(ApiError::invalid("prompt", "prompt is empty"));
    }
    if !profile.edits && inputs.mask.is_none() {
        return Err(ApiError::invalid(
            "model",
            format!(
                "the model {model} cannot edit images by instruction (it draws from text only); send a mask to redraw part of the image, or serve flux-kontext",
            ),
        ));
    }
    let body = inputs.generation_body()?;
    let auto = body.size.as_deref().is_none_or(|z| z == "auto");
    let mut g = check(body, s)?;
    if auto {
        // An edit keeps its first image's aspect ratio, at the default canvas's area.
        (g.req.width, g.req.height) = {
            let first = &inputs.images[0];
            profile.edit_canvas((first.width(), first.height()))
        };
    }
    if let Some(mask) = &inputs.mask {
        // Inpainting: the first image, redrawn where the mask is transparent.
        let (w, h) = (g.req.width, g.req.height);
        // A mask that marks nothing is refused by the pipeline's check when the job is
        // submitted (param `mask`).
        let m = mask_from_image(mask, w, h).map_err(|e| ApiError::Internal(e.to_string()))?;
        let image = resized(&inputs.images[0].to_rgb8(), w as usize, h as usize)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        g.req.init = Some(InitImage {
            image,
            strength: 1.0,
            mask: Some(m),
        });
    }
    if profile.edits {
        g.req.images = inputs.images.iter().map(|i| i.to_rgb8()).collect();
    }
    respond(s, host, g).await
}

async fn stored_image(State(s): St, Path(name): Path<String>) -> Response {
    match s.store.get(&name) {
        Some((bytes, format)) => (
            [(header::CONTENT_TYPE, format!("image/{}", format.name()))],
            bytes,
        )
            .into_response(),
        None => ApiError::NotFound(format!(
            "no image {name:?} (stored images expire after {} s)",
            s.store.ttl().as_secs()
        ))
        .into_response(),
    }
}

/// The web page: plain HTML, CSS and JavaScript in one file, compiled into the binary.
async fn page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("page.html"),
    )
        .into_response()
}

/// What a client needs to build valid requests (an extension of the model object).
fn profile_json(p: &crate::Profile) -> Value {
    let size = |(w, h): (u32, u32)| format!("{w}x{h}");
    json!({
        "default_size": size(p.default_size),
        "sizes": p.sizes().into_iter().map(size).collect::<Vec<_>>(),
        "size_multiple": p.multiple,
        "max_side": p.max_side,
        "default_steps": p.default_steps,
        "default_guidance": p.default_guidance,
        "edits": p.edits,
        "images_are": p.images_are,
        "min_images": p.images.0,
        "max_images": p.images.1,
        "takes_mask": p.takes_mask,
    })
}

/// The models served (behind a broker: those live workers serve, and the default one),
/// the default first.
async fn models(State(s): St) -> Response {
    let data: Vec<Value> = s
        .models()
        .iter()
        .map(|(m, p)| {
            json!({"id": m, "object": "model", "created": 0, "owned_by": "sprout",
                   "sprout": profile_json(p)})
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Ready when a model is loaded (it is, once the server listens) and the worker is alive;
/// behind a broker, when the broker answers and a live worker serves some model (`models`
/// counts the live workers of each).
async fn health(State(s): St) -> Response {
    let alive = s.worker.alive();
    let body = match s.worker.remote() {
        None => Json(json!({
            "status": if alive { "ok" } else { "worker stopped" },
            "model": s.model,
            "worker_alive": alive,
            "queue_depth": s.worker.depth(),
        })),
        Some(r) => {
            let up = r.broker_up();
            // One snapshot of the live workers and queue depths for the whole answer.
            let (live, depths) = (r.live_workers(), r.depths());
            let workers: Vec<Value> = live
                .iter()
                .map(|a| {
                    json!({"name": a.name, "model": a.model, "current_job": a.current,
                    "jobs_done": a.jobs_done, "jobs_failed": a.jobs_failed})
                })
                .collect();
            let mut models = serde_json::Map::new();
            for (m, _) in s.models() {
                let n = live.iter().filter(|a| a.model == m).count();
                let depth = depths.iter().find(|d| d.0 == m).map_or(0, |d| d.1);
                models.insert(m, json!({"workers_live": n, "queue_depth": depth}));
            }
            Json(json!({
                "status": if !up { "broker unreachable" } else if workers.is_empty() { "no live worker" } else { "ok" },
                "model": s.model,
                "models": models,
                "broker": {"url": r.broker().url(), "reachable": up},
                "workers_live": workers.len(),
                "workers": workers,
                "worker_alive": alive,
                "queue_depth": s.worker.depth(),
            }))
        }
    };
    if alive {
        body.into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(s): St) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = s.metrics.render(s.worker.depth());
        if let Some(r) = s.worker.remote() {
            text.push_str(&crate::metrics::render_remote(r));
        }
        text
    })
        .into_response()
}
