use thiserror::Error;

/// Errors of the evaluator.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("unknown category {0:?}; categories: {1}")]
    UnknownCategory(String, String),
    #[error("unknown prompt id {0:?}")]
    UnknownPrompt(String),
    #[error("cannot read image {path}: {why}")]
    UnreadableImage { path: String, why: String },
    #[error("--count {got} is out of range: the prompt set has {max} prompts (use 1..={max})")]
    CountOutOfRange { got: usize, max: usize },
    #[error("{missing} of {total} prompts have no image in {dir} (first missing: {first})")]
    MissingImages {
        dir: String,
        missing: usize,
        total: usize,
        first: String,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    World(#[from] sprout_world::WorldError),
    #[error("malformed prompt set: {0}")]
    PromptSet(String),
}
