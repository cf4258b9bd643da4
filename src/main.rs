//! The `hone` command line.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "hone",
    version,
    about = "Test-time compute scaling: TPO and best-of-N under a per-query budget"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate completions of a prompt with a policy model.
    Generate(cli::generate::GenerateArgs),
    /// Score a response with a configured reward model.
    Score(cli::score::ScoreArgs),
    /// Measure the engine, a reward model, TPO against a naive loop, or the service overhead.
    Bench(cli::bench::BenchArgs),
    /// Spend a compute budget on one prompt with TPO, best-of-N or plain decoding.
    Optimize(cli::optimize::OptimizeArgs),
    /// Serve the optimization loops over HTTP (with an OpenAI-compatible endpoint).
    Serve(cli::serve::ServeArgs),
    /// Measure answer quality: judges on labelled pairs.
    Eval(cli::eval::EvalArgs),
    /// Check the GPU engine against the CPU engine and its exactness; non-zero exit on failure.
    Check(cli::check::CheckArgs),
}

fn main() {
    let args = Args::parse();
    let result: Result<()> = match args.command {
        Command::Generate(a) => cli::generate::run(a),
        Command::Score(a) => cli::score::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Optimize(a) => cli::optimize::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Check(a) => cli::check::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
