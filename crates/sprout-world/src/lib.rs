//! The Sprout world: procedural scenes with exact captions.
//!
//! A [`Scene`] is data (serialisable, editable, re-renderable); the [`Renderer`] turns it into
//! pixels, the [`sampler`] draws random scenes from a controllable distribution and
//! [`captions`] describes them at three levels of detail.

pub mod assets;
pub mod canvas;
pub mod captions;
pub mod centres;
pub mod colors;
mod error;
pub mod render;
pub mod sampler;
pub mod scene;
pub mod seed;
pub mod semantic;
pub mod shapes;
pub mod text;

pub use canvas::{AspectRatio, Region};
pub use captions::{CaptionLevel, Captions};
pub use colors::{BgColor, Color};
pub use error::WorldError;
pub use render::Renderer;
pub use sampler::{Sample, SamplerConfig};
pub use scene::{Background, Object, ObjectKind, Scene, ShapeKind, SizeClass};
