//! `distill student ...`: pruning a teacher and distilling students from it.

use anyhow::Result;
use clap::{Args, Subcommand};
use distill_model::device::DeviceChoice;
use distill_model::train::TrainControl;
use distill_student::distill::{self, KdRunConfig};
use distill_student::prune::run::{self as prune_run, PruneRunConfig};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum StudentCommand {
    /// Prune a model: structured (layers, heads, neurons, channels) and/or unstructured.
    Prune(PruneArgs),
    /// Train a student on text against its teacher's soft labels.
    Kd(KdArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model to prune (HF directory or GGUF file).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Calibration text.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct KdArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The teacher (HF directory or GGUF file).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// The student to start from.
    #[arg(long)]
    student: Option<PathBuf>,
    /// Training text.
    #[arg(long)]
    data: Option<PathBuf>,
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

pub fn run(command: StudentCommand, device: DeviceChoice) -> Result<()> {
    match command {
        StudentCommand::Prune(args) => run_prune(args, device),
        StudentCommand::Kd(args) => run_kd(args, device),
    }
}

fn run_prune(args: PruneArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => PruneRunConfig::from_toml_file(path)?,
        None => PruneRunConfig::default(),
    };
    if let Some(m) = args.model {
        config.model = m;
    }
    if let Some(c) = args.calib {
        config.calib_data = Some(c);
    }
    if let Some(o) = args.out {
        config.out = o;
    }
    let device = device.open()?;
    let report = prune_run::run(&config, &device)?;
    println!("{report}");
    Ok(())
}

fn run_kd(args: KdArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => KdRunConfig::from_toml_file(path)?,
        None => KdRunConfig::default(),
    };
    if let Some(t) = args.teacher {
        config.teacher = t;
    }
    if let Some(s) = args.student {
        config.student = s;
    }
    if let Some(d) = args.data {
        config.train_data = d;
    }
    if let Some(o) = args.out {
        config.out = o;
    }
    if let Some(steps) = args.steps {
        config.train.steps = steps;
    }
    let device = device.open()?;
    let control = TrainControl {
        resume: args.resume,
        ..TrainControl::default()
    };
    let s = distill::run(&config, &device, &control)?;
    println!(
        "distillation finished: {} steps ({} in this run) in {:.1}s",
        s.steps, s.steps_run, s.seconds
    );
    println!(
        "  student parameters {}, {} distinct windows, {} tokens/step, {:.1} student tokens/s in training",
        s.parameters,
        s.windows,
        s.tokens_per_step,
        s.tokens_per_step as f64 * s.steps_run as f64 / s.train_seconds.max(1e-9)
    );
    if let Some(p) = s.history.last() {
        println!("  final train loss {:.4}", p.train);
    }
    if let Some(v) = s.history.iter().rev().find_map(|p| p.valid) {
        println!(
            "  final validation cross-entropy {v:.4} (perplexity {:.2})",
            v.exp()
        );
    }
    println!("  model written to {}", s.model_dir.display());
    Ok(())
}
