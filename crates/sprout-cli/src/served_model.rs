//! `--model`, `--weights`, the FLUX.1 parts and `--device`: how `sprout serve` and
//! `sprout worker` name and load the one model they run, and the name clients use for it.

use anyhow::Result;
use clap::Args;
use sprout_server::Engine;

#[derive(Args)]
pub struct ServedModelArgs {
    /// `default` (embedded), a model bundle directory, or flux-schnell, flux-dev,
    /// flux-kontext, flux-fill, flux-canny, flux-depth, flux2-klein, flux2-klein-base,
    /// flux2-dev (with --weights;
    /// flux-kontext and the FLUX.2 models also serve /v1/images/edits). Behind a broker (`serve --broker`): the model of requests
    /// that name none, as its workers advertise it (`default`: the first one found).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// FLUX weights: a Black Forest Labs file or folder, or a diffusers snapshot (FLUX.2: a
    /// diffusers snapshot, or the transformer's own file).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
    /// FLUX.2: the text encoder's layers whose states condition the transformer (klein:
    /// 9,18,27, dev: 10,20,30).
    #[arg(long, value_delimiter = ',')]
    pub text_layers: Option<Vec<usize>>,
    /// FLUX.2: the text encoder from this file (a llama.cpp GGUF of Qwen3 or Mistral, or
    /// safetensors) instead of the snapshot's text_encoder/.
    #[arg(long)]
    pub text_encoder: Option<std::path::PathBuf>,
    /// FLUX.2: the transformer from this file (a GGUF of `sprout quantize --model
    /// flux2-klein|flux2-dev`, or safetensors) instead of the snapshot's transformer/.
    #[arg(long)]
    pub transformer: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub parts: crate::flux_parts::FluxPartsArgs,
    /// Where the model computes: cpu, cuda or cuda:N (CUDA needs a build with `--features
    /// cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ServedModelArgs {
    /// Loads the model; returns it with the name clients use for it (`sprout-default` for
    /// the embedded model, else the model's own name).
    pub fn load(&self) -> Result<(Engine, String)> {
        let engine = crate::generate_cmd::load(
            &self.model,
            self.weights.as_deref(),
            &self.parts,
            &[],
            None,
            crate::generate_cmd::Flux2Flags {
                layers: self.text_layers.as_deref(),
                encoder: self.text_encoder.as_deref(),
                transformer: self.transformer.as_deref(),
            },
            &self.device,
        )?;
        let name = match &engine {
            Engine::Native(_) if self.model == "default" => "sprout-default".to_string(),
            other => other.name(),
        };
        Ok((engine, name))
    }
}
