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

/// How a command uses memory, for [`tune_allocator`].
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// Computes with tensors (every command but a broker front end).
    Tensors,
    /// `serve --broker`: holds no model; each job passes a few buffers of a few hundred
    /// kilobytes (the result read from the broker, its image, its encoding) between threads.
    FrontEnd,
}

/// Sets glibc's allocator for the workload.
///
/// Tensors: keep freed tensor buffers in the heap instead of returning them to the kernel.
/// Training allocates and frees many multi-megabyte tensors per step; with glibc's default
/// thresholds each one is a fresh `mmap` whose pages fault in again, which cost a third of a
/// DiT step's time here (`sprout bench --train`: 2.0 s → 1.5 s with this). glibc caps the
/// mmap threshold at 32 MiB, so larger buffers (a FLUX.1 block's activations at 1024² are
/// 53–214 MB) were still mapped fresh for every op: zeroing their pages took a fifth of a
/// FLUX.1-width forward (`perf`: `clear_page_erms` 21 %). No mmap at all keeps them in the
/// heap too (`sprout bench --dit flux-schnell --dtype bf16`: 8.1 → 7.2 s).
///
/// Front end: the opposite. Under the tensor settings its heap was never trimmed and grew
/// 8–9 % over a 64-client soak though its live heap stayed under 7 MB (heaptrack); with a
/// fixed 128 KiB mmap threshold every per-job buffer above it goes back to the kernel when
/// freed, and two arenas bound what the threads' free lists hold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator(w: Workload) {
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread
    // starts (argument parsing runs on the main thread alone).
    unsafe {
        match w {
            Workload::Tensors => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_MMAP_MAX, 0);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TOP_PAD, 256 << 20);
            }
            Workload::FrontEnd => {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator(_: Workload) {}

/// A command whose output is piped into one that stops reading (`sprout eval --list | head`)
/// ends as command-line tools do, by SIGPIPE, instead of panicking in `println!` (Rust
/// ignores SIGPIPE by default). The server and worker keep ignoring it: a client that hangs
/// up must not end them.
fn quiet_on_closed_output() {
    #[cfg(unix)]
    // SAFETY: restores the signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        quiet_on_closed_output();
    }
    tune_allocator(match &cli.command {
        Command::Serve(a) if a.broker.is_some() => Workload::FrontEnd,
        _ => Workload::Tensors,
    });
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
