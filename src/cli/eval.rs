//! `distill eval MODEL --data FILE`: the evaluation protocol of `distill_model::eval`; with
//! `--choices FILE`, multiple choice over rankings (`distill_teacher::questions::choice`).

use anyhow::{Context, Result};
use clap::Args;
use distill_model::device::DeviceChoice;
use distill_model::eval::{self, EvalConfig, EvalData};
use distill_teacher::questions::choice;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
    /// Text (.jsonl of {"text"} lines, or plain text), or token ids (.json: a list, or a list
    /// of lists = documents).
    #[arg(long, required_unless_present = "choices")]
    data: Option<PathBuf>,
    /// Instead of perplexity, multiple choice over the rankings of this JSON Lines file: each
    /// candidate scored by its log-likelihood after the prompt in the model's chat template.
    #[arg(long, conflicts_with_all = ["data", "teacher"])]
    choices: Option<PathBuf>,
    /// Tokens per window (each scored on window − 1 next-token predictions).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Most windows, evenly spaced over the stream.
    #[arg(long, default_value_t = 64)]
    windows: usize,
    /// Windows per forward (with --choices: candidate sequences per forward).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Also compare with this teacher (HF directory or GGUF file, same vocabulary): KL(teacher ‖
    /// model) per token, top-1 agreement and the teacher's perplexity on the same windows.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: &EvalArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let m = super::load_model(&args.model, &device)?;
    let name = args.model.display().to_string();
    let data = match (&args.data, &args.choices) {
        (Some(data), _) => data,
        (None, Some(choices)) => return run_choices(args, &m, &name, choices, &device),
        (None, None) => anyhow::bail!("give --data FILE or --choices FILE"),
    };
    let data = EvalData::load(data, m.tokenizer.as_ref(), eval::document_eos(&m))?;
    let config = EvalConfig {
        window: args.window,
        windows: args.windows,
        batch: args.batch,
    };
    let planned = eval::window_starts(data.tokens.len(), config.window, config.windows).len();
    let bar = ProgressBar::new(planned as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] window {pos}/{len} (eta {eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let teacher = match &args.teacher {
        Some(path) => Some((
            super::load_model(path, &device)?,
            path.display().to_string(),
        )),
        None => None,
    };
    let teacher = teacher.as_ref().map(|(t, n)| (t, n.as_str()));
    let report = eval::evaluate(&m, &name, teacher, &data, &config, &device, |done| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    let report = report?;
    println!("{report}");
    write_json(args, &report)
}

/// Multiple choice over the rankings of `path`, with a progress bar over candidate sequences.
fn run_choices(
    args: &EvalArgs,
    m: &distill_model::checkpoint::ModelDir,
    name: &str,
    path: &std::path::Path,
    device: &burn::prelude::Device,
) -> Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] candidate {pos}/{len} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let report = choice::evaluate_choices(m, name, path, args.batch, device, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let report = report?;
    println!("{report}");
    write_json(args, &report)
}

/// Writes the report as JSON to `--json`, when given.
fn write_json(args: &EvalArgs, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report)? + "\n";
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
