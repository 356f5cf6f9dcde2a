use thiserror::Error;

/// Everything that can go wrong while building, validating or rendering a scene.
#[derive(Debug, Error)]
pub enum WorldError {
    #[error("invalid scene: {0}")]
    InvalidScene(String),
    #[error("malformed scene JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown icon {0:?} (see `sprout world icons` for the list)")]
    UnknownIcon(String),
    #[error("invalid canvas size {width}x{height}: {why}")]
    InvalidSize {
        width: u32,
        height: u32,
        why: String,
    },
    #[error(
        "unknown aspect ratio {0:?}: expected one of 1:1, 4:3, 3:4, 3:2, 2:3, 16:9, 9:16, 2:1, 1:2"
    )]
    UnknownAspect(String),
    #[error("could not rasterise icon {0}: {1}")]
    IconRaster(String, String),
}
