//! One function per target; [`run`] dispatches by name.

use std::path::PathBuf;
use std::sync::OnceLock;

use axum::extract::{FromRequest, Multipart};
use candle_core::Device;
use sprout_models::flux::files::Variant;
use sprout_pipeline::flow::Sampler;
use sprout_pipeline::request::{self, Profile};
use sprout_server::edits::{self, DecodeLimits, EditInputs, JsonEdit};
use sprout_server::generations::{self, GenerationBody};
use sprout_server::ServerConfig;
use sprout_world::scene::Scene;
use sprout_world::semantic::MapKind;

/// Run target `name` on `data`. Returns whether the input was accepted (parsed and
/// checked), which the tests use to see that the seeds reach past the first check.
/// Panics on an unknown target name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "generation" => generation(data),
        "edit_json" => edit_json(data),
        "multipart" => multipart(data),
        "image" => image(data),
        "safetensors" => safetensors(data),
        "gguf" => gguf(data),
        "scene" => scene(data),
        "train_config" => train_config(data),
        other => panic!(
            "unknown fuzz target {other:?} (one of {:?})",
            crate::TARGETS
        ),
    }
}

/// The profiles requests are checked against: the native model's and FLUX.1 Kontext's.
fn profiles() -> &'static [Profile] {
    static P: OnceLock<Vec<Profile>> = OnceLock::new();
    P.get_or_init(|| {
        vec![
            sprout_pipeline::model::native_profile(512, 20, 4.0, Sampler::Heun),
            sprout_pipeline::model::flux_profile(Variant::Kontext, 16),
        ]
    })
}

/// Limits small enough that a fuzz run stays fast; the code paths are the server's.
const LIMITS: DecodeLimits = DecodeLimits {
    max_side: 256,
    max_alloc: 4 << 20,
};

/// A generation body through the server's checks and then the pipeline's one check, as a
/// request is before it is queued.
fn check_body(make: impl Fn() -> Option<GenerationBody>) -> bool {
    let cfg = ServerConfig::default();
    let mut ok = false;
    for p in profiles() {
        let Some(body) = make() else { return false };
        if let Ok(g) = generations::check_with(body, &cfg, "native", p) {
            ok |= request::check(&g.req, p).is_ok();
        }
    }
    ok
}

fn generation(data: &[u8]) -> bool {
    check_body(|| generations::parse_json::<GenerationBody>(data).ok())
}

fn edit_inputs(inputs: EditInputs) -> bool {
    check_body(|| inputs.generation_body().ok())
}

fn edit_json(data: &[u8]) -> bool {
    let Ok(j) = generations::parse_json::<JsonEdit>(data) else {
        return false;
    };
    match edits::from_json(j, LIMITS) {
        Ok(inputs) => edit_inputs(inputs),
        Err(_) => false,
    }
}

/// The boundary of the multipart bodies the target reads (the seeds use it).
pub const BOUNDARY: &str = "sproutfuzz";

fn multipart(data: &[u8]) -> bool {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime starts")
    });
    let req = axum::http::Request::builder()
        .method("POST")
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(axum::body::Body::from(data.to_vec()))
        .expect("a request with a fixed header builds");
    let inputs = rt.block_on(async {
        let mp = Multipart::from_request(req, &()).await.ok()?;
        edits::from_multipart(mp, LIMITS, 32 << 20).await.ok()
    });
    inputs.is_some_and(edit_inputs)
}

fn image(data: &[u8]) -> bool {
    edits::decode_image(data, "image", LIMITS).is_ok()
}

/// A scratch file for the readers that take a path, one per process and thread.
fn scratch(ext: &str, data: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "sprout-fuzz-{}-{:?}.{ext}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&p, data).expect("the temporary folder is writable");
    p
}

fn safetensors(data: &[u8]) -> bool {
    let p = scratch("safetensors", data);
    let a = sprout_models::flux::inspect::safetensors_header(&p).is_ok();
    let b = sprout_models::flux::inspect::safetensors_metadata(&p).is_ok();
    let c = sprout_pipeline::bundle::parse_tensors("fuzz", data, &Device::Cpu).is_ok();
    let _ = std::fs::remove_file(&p);
    a && b && c
}

fn gguf(data: &[u8]) -> bool {
    let p = scratch("gguf", data);
    let a = sprout_models::flux::inspect::gguf_header(&p).is_ok();
    let b = sprout_models::flux::inspect::gguf_metadata_string(
        &p,
        sprout_models::flux::inspect::GGUF_CONFIG_KEY,
    )
    .is_ok();
    let _ = std::fs::remove_file(&p);
    a && b
}

/// Scenes are parsed and validated; small ones are also rendered and mapped, as the data
/// pipeline does (large canvases would only make each run slow).
fn scene(data: &[u8]) -> bool {
    let Ok(scene) = Scene::from_json(&String::from_utf8_lossy(data)) else {
        return false;
    };
    if scene.width as u64 * scene.height as u64 > 256 * 256 {
        return true;
    }
    let Ok(img) = sprout_world::render::Renderer::new().render(&scene) else {
        return false;
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let rgb = sprout_world::render::planar(&img);
    [MapKind::Occupancy, MapKind::Centres].iter().all(|k| {
        let est = k.estimate(w, h, &rgb, 32);
        k.map(&scene, &rgb, 32)
            .is_ok_and(|m| m.len() == est.len() && m.iter().all(|v| v.is_finite()))
    })
}

fn train_config(data: &[u8]) -> bool {
    sprout_train::config::TrainConfig::from_toml(&String::from_utf8_lossy(data)).is_ok()
}
