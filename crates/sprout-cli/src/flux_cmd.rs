//! FLUX.1's own arguments: `sprout edit --model flux-kontext`, and `--latents` files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sprout_models::dit::embed::patchify;

use crate::generate_cmd::GenerateArgs;

/// The one tensor of a `--latents` file, as f32.
fn one_tensor(path: &Path) -> Result<Tensor> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("--latents {}", path.display()))?;
    if t.len() != 1 {
        bail!(
            "--latents {}: expected one tensor, found {}",
            path.display(),
            t.len()
        );
    }
    Ok(t.into_values()
        .next()
        .expect("one tensor")
        .to_dtype(DType::F32)?)
}

/// Initial latents from a file: one tensor, packed (n, L, 4C) or unpacked (n, C, h, w).
pub fn read_latents(path: &Path, channels: usize) -> Result<Tensor> {
    let x = one_tensor(path)?;
    match x.rank() {
        3 => Ok(x),
        4 if x.dim(1)? == channels => Ok(patchify(&x, 2)?),
        _ => bail!(
            "--latents {}: shape {:?} is neither packed (n, tokens, {}) nor (n, {channels}, h, w)",
            path.display(),
            x.dims(),
            4 * channels
        ),
    }
}

/// FLUX.2's initial latents from a file: one tensor, as tokens (n, L, C) or as diffusers'
/// `latents=` argument (n, C, h, w) with C = 128.
pub fn read_tokens(path: &Path, channels: usize) -> Result<Tensor> {
    let x = one_tensor(path)?;
    match x.rank() {
        3 => Ok(x),
        4 if x.dim(1)? == channels => Ok(sprout_pipeline::flux2::pack(&x)?),
        _ => bail!(
            "--latents {}: shape {:?} is neither tokens (n, L, {channels}) nor (n, {channels}, h, w)",
            path.display(),
            x.dims()
        ),
    }
}

/// `sprout edit --model flux-kontext --weights PATH -i IN.png [-i REF.png …] INSTRUCTION -o OUT.png`
#[derive(clap::Args)]
pub struct EditArgs {
    /// Input image, and further reference images (repeatable; up to 4 for Kontext and FLUX.2
    /// [klein], 10 for FLUX.2 [dev]).
    #[arg(short = 'i', long = "image", required = true)]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub gen: GenerateArgs,
}

pub fn edit(e: EditArgs) -> Result<()> {
    if !matches!(
        e.gen.model.as_str(),
        "flux-kontext" | "flux2-klein" | "flux2-klein-base" | "flux2-dev"
    ) {
        bail!(
            "model {} cannot edit images; editing needs --model flux-kontext, flux2-klein or flux2-dev (with --weights)",
            e.gen.model
        );
    }
    crate::generate_cmd::run_with(e.gen, &e.images)
}
