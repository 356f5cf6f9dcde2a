//! WorldEval: a fixed prompt set over the Sprout world, a reader that parses images back into
//! objects with classical computer vision, and GenEval-style scoring.

pub mod degrade;
mod error;
pub mod prompts;
pub mod reader;
pub mod report;
pub mod run;
pub mod score;
pub mod truth;

pub use error::EvalError;
pub use prompts::{Category, Constraint, Prompt, PromptSet, Sel, Target};
pub use reader::{Detection, Reader, Reading};
pub use report::Report;
