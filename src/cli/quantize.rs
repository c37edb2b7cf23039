//! `distill quantize MODEL OUT --scheme S --method M [--calib FILE]`: every decoder linear
//! layer into one packed format, written as a quantized model directory (see
//! `distill_model::quantized` for the file layout) that `eval`, `generate`, `info`, `bench` and
//! `convert` read.

use anyhow::{Context, Result, bail};
use clap::Args;
use distill_model::checkpoint::{self, SaveOptions};
use distill_model::device::DeviceChoice;
use distill_model::eval::{self, EvalData};
use distill_quant::Format;
use distill_quant::ScaleSearch;
use distill_student::calibrate;
use distill_student::quantize::{Method, QuantizeConfig, quantize_model_sequential};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct QuantizeArgs {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
    /// Output: a quantized HF-style model directory.
    output: PathBuf,
    /// int8, int4-g32, int4-g64, int4-g128, q8_0, q4_0 or q4_1.
    #[arg(long)]
    scheme: String,
    /// Asymmetric int4 (a zero point per group).
    #[arg(long)]
    asym: bool,
    /// rtn, gptq, awq or awq+gptq.
    #[arg(long, default_value = "rtn")]
    method: String,
    /// Calibration text (.jsonl of {"text"} lines, plain text, or .json token ids); needed by
    /// every method but rtn. Its windows run through the model layer by layer, each layer's
    /// statistics taken after the layers before it are quantized.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration windows, drawn at seeded random offsets.
    #[arg(long, default_value_t = 32)]
    calib_samples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
    /// Seed of the calibration draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GPTQ dampening, as a fraction of the Hessian's mean diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// GPTQ: process columns by decreasing Hessian diagonal (with static groups).
    #[arg(long)]
    act_order: bool,
    /// GPTQ: choose each group's scale by searching shrunk ranges for the least error (the
    /// reference's `mse=True`) instead of taking the group's min and max.
    #[arg(long)]
    scale_search: bool,
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {what} {{pos}}/{{len}} {{msg}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

pub fn run(args: &QuantizeArgs, device: DeviceChoice) -> Result<()> {
    let format = Format::from_cli(&args.scheme, args.asym).context("--scheme")?;
    let method: Method = args
        .method
        .parse()
        .map_err(|e| anyhow::anyhow!("--method: {e}"))?;
    if method.needs_calibration() && args.calib.is_none() {
        bail!("--method {method} needs calibration text: pass --calib FILE");
    }
    let mut config = QuantizeConfig::new(format, method);
    config.gptq.damp = args.damp;
    config.gptq.act_order = args.act_order;
    config.gptq.scale_search = args.scale_search.then(ScaleSearch::default);
    let device = device.open()?;
    let start = Instant::now();
    let mut m = super::load_model(&args.model, &device)?;
    let mut header = config.describe();
    header["source"] = json!(args.model.display().to_string());
    let windows = match (&args.calib, method.needs_calibration()) {
        (Some(path), true) => {
            let data = EvalData::load(path, m.tokenizer.as_ref(), eval::document_eos(&m))?;
            let origin = path.display().to_string();
            let windows = calibrate::windows(
                &data.tokens,
                args.calib_samples,
                args.calib_len,
                args.seed,
                &origin,
            )?;
            header["calibration"] = json!({
                "file": origin, "sha256": data.sha256, "samples": args.calib_samples,
                "length": args.calib_len, "seed": args.seed, "layer_by_layer": true,
            });
            windows
        }
        _ => Vec::new(),
    };
    let layers = m.model.linears().len();
    let bar = bar(layers, "layer");
    let report = quantize_model_sequential(&mut m.model, &config, &windows, &device, |name| {
        bar.set_message(name.to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let options = SaveOptions {
        quantization: Some(header),
        ..SaveOptions::default()
    };
    checkpoint::save_dir(&args.output, &m, options)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    let error: f64 = report.layers.iter().filter_map(|l| l.output_error).sum();
    println!(
        "{} -> {}: {} layers to {format} with {method}, {:.1} MB -> {:.1} MB{}, in {:.1?}",
        args.model.display(),
        args.output.display(),
        report.layers.len(),
        report.bytes_before as f64 / 1e6,
        report.bytes_after as f64 / 1e6,
        if stats_present(&report) {
            format!(", summed output error {error:.4e} on the calibration inputs")
        } else {
            String::new()
        },
        start.elapsed()
    );
    Ok(())
}

fn stats_present(report: &distill_student::quantize::QuantizeReport) -> bool {
    report.layers.iter().any(|l| l.output_error.is_some())
}
