//! `distill`: turn a large language model into small, fast domain models.

mod cli;
mod report;
mod run;

use anyhow::Result;
use clap::{Parser, Subcommand};
use distill_model::device::DeviceChoice;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "distill",
    version,
    about = "Distil a large language model into small, fast domain models"
)]
struct Cli {
    /// Compute backend: flex (CPU) or wgpu (any GPU, or a software Vulkan adapter).
    #[arg(long, global = true, default_value = "flex")]
    device: DeviceChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, parameters, bytes and dtype per tensor of a model.
    Info {
        /// An HF model directory or a GGUF file.
        model: PathBuf,
    },
    /// Generate text from a prompt, or answer it as a chat turn (--chat).
    Generate(cli::generate::GenerateArgs),
    /// Perplexity on a fixed set of non-overlapping windows of a data file.
    Eval(cli::eval::EvalArgs),
    /// Convert between an HF model directory and a GGUF file, either way.
    Convert(cli::convert::ConvertArgs),
    /// Prefill and decode tokens/s and peak memory of models, as one table.
    Bench(cli::bench::BenchArgs),
    /// Render a benchmark report's Markdown, HTML and chart from its JSON; update a README.
    Report(cli::report::ReportArgs),
    /// Quantize every decoder linear layer (RTN, GPTQ, AWQ or AWQ+GPTQ) into a packed format.
    Quantize(cli::quantize::QuantizeArgs),
    /// Run a recipe: teacher stages, students (prune, distil, quantize), evaluation, speed,
    /// export and a benchmark report, each stage skipped when done and resumable.
    Run(cli::run::RunArgs),
    /// Teacher stages.
    #[command(subcommand)]
    Teacher(cli::teacher::TeacherCommand),
    /// Student stages: pruning and distillation.
    #[command(subcommand)]
    Student(cli::student::StudentCommand),
}

fn main() -> ExitCode {
    distill_model::memory::keep_freed_memory();
    distill_model::device::pin_default_device_to_cpu();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("DISTILL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Info { model } => cli::info::run(&model),
        Command::Generate(args) => cli::generate::run(&args, cli.device),
        Command::Eval(args) => cli::eval::run(&args, cli.device),
        Command::Convert(args) => cli::convert::run(&args),
        Command::Bench(args) => cli::bench::run(&args, cli.device),
        Command::Report(args) => cli::report::run(&args),
        Command::Quantize(args) => cli::quantize::run(&args, cli.device),
        Command::Run(args) => cli::run::run(&args, cli.device),
        Command::Teacher(command) => cli::teacher::run(command, cli.device),
        Command::Student(command) => cli::student::run(command, cli.device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line, without a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
