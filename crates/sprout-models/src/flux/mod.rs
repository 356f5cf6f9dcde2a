//! FLUX.1 on Sprout's MMDiT: the weight layouts users have (Black Forest Labs single files,
//! diffusers snapshot directories), converted to the module paths of [`crate::dit`], and the
//! FLUX autoencoder.

pub mod components;
pub mod configs;
pub mod convert;
pub mod files;
pub mod inspect;
pub mod lora;
pub mod tokenize;
pub mod vae;
pub mod vae2;
