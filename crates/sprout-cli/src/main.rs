//! `sprout`: the command-line front end.

mod bench_cmd;
mod bench_dit;
mod eval_cmd;
mod flux_cmd;
mod flux_parts;
mod generate_cmd;
mod inputs;
mod progress;
mod quantize_cmd;
mod serve_cmd;
mod served_model;
mod train_cmd;
mod worker_cmd;
mod world_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sprout",
    version,
    about = "Sprout: image generation over a procedural world, with its own evaluator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt (embedded default model unless --model says otherwise).
    Generate(generate_cmd::GenerateArgs),
    /// Edit images with an instruction (FLUX.1 Kontext; several -i give reference images).
    Edit(flux_cmd::EditArgs),
    /// The procedural world: render scenes with captions, list icons, re-render scene files.
    World(world_cmd::WorldArgs),
    /// WorldEval: score images against the prompt set (or self-check the reader).
    Eval(eval_cmd::EvalArgs),
    /// Train the autoencoder or the DiT from a TOML config (resumable).
    Train(train_cmd::TrainArgs),
    /// Measure step latency, throughput and MFU on this machine.
    Bench(bench_cmd::BenchArgs),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve_cmd::ServeArgs),
    /// Run jobs for a `sprout serve --broker` front end: load a model, take jobs from the
    /// broker, store their results.
    Worker(worker_cmd::WorkerArgs),
    /// Write FLUX.1 weights (LoRA adapters merged) or a T5 encoder as a quantized GGUF file.
    Quantize(quantize_cmd::QuantizeArgs),
}

/// Keep freed tensor buffers in the heap instead of returning them to the kernel.
///
/// Training allocates and frees many multi-megabyte tensors per step; with glibc's default
/// thresholds each one is a fresh `mmap` whose pages fault in again, which cost a third of a
/// DiT step's time here (`sprout bench --train`: 2.0 s → 1.5 s with this).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate_cmd::run(a),
        Command::Edit(a) => flux_cmd::edit(a),
        Command::World(a) => world_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Train(a) => train_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::Serve(a) => serve_cmd::run(a),
        Command::Worker(a) => worker_cmd::run(a),
        Command::Quantize(a) => quantize_cmd::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
