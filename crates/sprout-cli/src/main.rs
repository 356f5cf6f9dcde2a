//! `sprout`: the command-line front end.

mod bench_cmd;
mod eval_cmd;
mod generate_cmd;
mod progress;
mod train_cmd;
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
    /// The procedural world: render scenes with captions, list icons, re-render scene files.
    World(world_cmd::WorldArgs),
    /// WorldEval: score images against the prompt set (or self-check the reader).
    Eval(eval_cmd::EvalArgs),
    /// Train the autoencoder or the DiT from a TOML config (resumable).
    Train(train_cmd::TrainArgs),
    /// Measure step latency, throughput and MFU on this machine.
    Bench(bench_cmd::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate_cmd::run(a),
        Command::World(a) => world_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Train(a) => train_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
