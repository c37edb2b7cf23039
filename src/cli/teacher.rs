//! `distill teacher ...`: the teacher's stages.

use anyhow::Result;
use clap::{Args, Subcommand};
use distill_model::device::DeviceChoice;
use distill_model::train::TrainControl;
use distill_teacher::pretrain::{self, PretrainConfig};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TeacherCommand {
    /// Pretrain from scratch or continue training a model on text.
    Pretrain(PretrainArgs),
}

#[derive(Args)]
pub struct PretrainArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue training this HF model directory.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Training text (.jsonl of {"text"} lines, or plain text).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation text.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Continue from the last checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
}

pub fn run(command: TeacherCommand, device: DeviceChoice) -> Result<()> {
    match command {
        TeacherCommand::Pretrain(args) => run_pretrain(args, device),
    }
}

fn run_pretrain(args: PretrainArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => PretrainConfig::from_toml_file(path)?,
        None => PretrainConfig::default(),
    };
    if let Some(init) = args.init {
        config.init = Some(init);
    }
    if let Some(data) = args.data {
        config.train_data = data;
    }
    if let Some(valid) = args.valid {
        config.valid_data = Some(valid);
    }
    if let Some(out) = args.out {
        config.out = out;
    }
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    let device = device.open()?;
    let control = TrainControl {
        resume: args.resume,
        ..TrainControl::default()
    };
    let s = pretrain::run(&config, &device, &control)?;
    let last = s.history.last();
    println!(
        "pretraining finished: {} steps in {:.1}s",
        s.steps, s.seconds
    );
    println!(
        "  parameters {}, training tokens {}, {} tokens/step, {:.0} tokens/s over the whole run (loading and tokenizing included)",
        s.parameters,
        s.train_tokens,
        s.tokens_per_step,
        s.tokens_per_step as f64 * s.history.len() as f64 / s.seconds.max(1e-9)
    );
    if let Some(p) = last {
        println!("  final train loss {:.4}", p.train);
    }
    if let Some(v) = s.history.iter().rev().find_map(|p| p.valid) {
        println!("  final valid loss {v:.4} (perplexity {:.2})", v.exp());
    }
    println!("  model written to {}", s.model_dir.display());
    Ok(())
}
