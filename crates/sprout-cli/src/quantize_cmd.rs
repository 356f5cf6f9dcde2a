//! `sprout quantize --model flux-dev|flux-schnell|flux-kontext|flux2-klein|flux2-dev|t5|qwen3|mistral
//! --weights PATH --type q8_0 [--lora FILE[:S] …] -o OUT.gguf`: a FLUX.1 or FLUX.2 transformer
//! (or a T5, Qwen3 or Mistral text encoder) as a GGUF file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use sprout_models::flux::components::Components;
use sprout_models::flux::files::Variant;
use sprout_pipeline::flux_quantize::{
    quantize_flux2_transformer, quantize_t5, quantize_text_encoder, quantize_transformer,
};

use crate::progress::bar;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// flux-schnell | flux-dev | flux-kontext (the transformer of --weights), flux2-klein |
    /// flux2-dev (the transformer of a FLUX.2 snapshot, for --transformer), t5 (the T5
    /// encoder at --weights), or qwen3 | mistral (FLUX.2 [klein]'s / [dev]'s text encoder at
    /// --weights, e.g. a snapshot's text_encoder/, written with llama.cpp's names for
    /// --text-encoder).
    #[arg(long)]
    pub model: String,
    /// FLUX.1 weights (a Black Forest Labs file or folder, or a diffusers snapshot), or with
    /// --model t5 a T5 encoder's safetensors file or folder.
    #[arg(long)]
    pub weights: PathBuf,
    /// Block format of the linear weights: q8_0, q4_0, q4_k or f16.
    #[arg(long = "type", default_value = "q8_0")]
    pub quant: String,
    /// LoRA adapter FILE[:STRENGTH] merged into the transformer before it is quantized
    /// (repeatable).
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]", value_parser = sprout_models::flux::lora::parse_spec)]
    pub loras: Vec<(PathBuf, f64)>,
    /// The GGUF file to write (never overwritten).
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let q = sprout_models::gguf::parse_quant(&a.quant)?;
    if a.out.exists() {
        bail!("{} exists; remove it or choose another -o", a.out.display());
    }
    // Written beside the target and renamed when complete, so a stopped run leaves no
    // truncated file under the asked name.
    let partial = a.out.with_extension("gguf.partial");
    let t0 = Instant::now();
    let written = if a.model == "qwen3" || a.model == "mistral" {
        if !a.loras.is_empty() {
            bail!(
                "--lora applies to the FLUX transformer, not to --model {}",
                a.model
            );
        }
        quantize_text_encoder(&a.weights, a.model == "mistral", q, &partial)
    } else if a.model == "flux2-klein" || a.model == "flux2-dev" {
        if !a.loras.is_empty() {
            bail!(
                "--lora applies to the FLUX.1 transformer, not to --model {}",
                a.model
            );
        }
        let pb = bar(0, "tensors");
        let r = quantize_flux2_transformer(&a.weights, q, &partial, |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        });
        pb.finish_and_clear();
        r
    } else if a.model == "t5" {
        if !a.loras.is_empty() {
            bail!("--lora applies to the FLUX transformer, not to --model t5");
        }
        quantize_t5(&a.weights, q, &partial)
    } else {
        let variant = Variant::parse(&a.model)?;
        let parts = Components {
            loras: a.loras.clone(),
            ..Default::default()
        };
        let pb = bar(0, "tensors");
        let r = quantize_transformer(&a.weights, &parts, variant, q, &partial, |done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        });
        pb.finish_and_clear();
        r
    };
    let written = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    std::fs::rename(&partial, &a.out)?;
    eprintln!(
        "wrote {}: {} tensors ({} as {}), {:.2} GB in {:.1} s",
        a.out.display(),
        written.tensors,
        written.quantized,
        a.quant.to_ascii_lowercase(),
        written.bytes as f64 / 1e9,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
