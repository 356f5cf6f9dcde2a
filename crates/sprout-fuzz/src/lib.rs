//! Fuzz targets: each takes arbitrary bytes and runs one of Sprout's parsers of untrusted
//! input the way Sprout runs it (the server's request bodies and uploads, weight file
//! headers, scenes, training configs). A target must return, never panic, abort or hang:
//! errors are the expected outcome for almost every input.
//!
//! `tools/fuzz/run.sh` drives the targets with AFL++ (through `cargo afl`, from the separate
//! crate in `tools/fuzz/afl`, which only forwards its input to [`run`]); the tests in
//! `tests/` replay every committed seed and regression input and run a short deterministic
//! mutation budget of each target (see [`mutate`]).

pub mod mutate;
mod targets;

pub use targets::run;

/// The targets, by the names `run`, the seed folders and the scripts use.
pub const TARGETS: &[&str] = &[
    "generation",
    "edit_json",
    "multipart",
    "image",
    "safetensors",
    "gguf",
    "scene",
    "train_config",
];

/// The folder of a target's committed inputs: `seeds/TARGET` (starting points, kept small)
/// and `regressions/TARGET` (inputs that once failed), under this crate.
pub fn inputs_dir(kind: &str, target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(kind)
        .join(target)
}
