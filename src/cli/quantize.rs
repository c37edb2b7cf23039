//! `distill quantize MODEL OUT --scheme S --method M [--calib FILE]`: every decoder linear
//! layer into one packed format, written as a quantized model directory (see
//! `distill_model::quantized` for the file layout) that `eval`, `generate`, `info`, `bench` and
//! `convert` read.

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::Args;
use distill_model::checkpoint::{self, SaveOptions};
use distill_model::device::DeviceChoice;
use distill_model::eval::{self, EvalData};
use distill_quant::Format;
use distill_quant::ScaleSearch;
use distill_student::calibrate;
use distill_student::quantize::{Method, QuantizeConfig, quantize_model_sequential};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct QuantizeArgs {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
    /// Output: a quantized HF-style model directory.
    output: PathBuf,
    #[command(flatten)]
    settings: QuantizeSettings,
}

/// How to quantize: the flags of `distill quantize`, and a recipe's `[[student.quantize]]`.
#[derive(Args, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizeSettings {
    /// int8, int4-g32, int4-g64, int4-g128, q8_0, q4_0 or q4_1.
    #[arg(long)]
    pub scheme: String,
    /// Asymmetric int4 (an f32 minimum per group). Default false.
    #[arg(long)]
    pub asym: bool,
    /// rtn, gptq, awq or awq+gptq. Default rtn.
    #[arg(long, default_value = "rtn")]
    pub method: String,
    /// Calibration text (.jsonl of {"text"} lines, plain text, or .json token ids); needed by
    /// every method but rtn. Its windows run through the model layer by layer, each layer's
    /// statistics taken after the layers before it are quantized.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration windows, drawn at seeded random offsets. Default 32.
    #[arg(long, default_value_t = 32)]
    pub calib_samples: usize,
    /// Tokens per calibration window. Default 512.
    #[arg(long, default_value_t = 512)]
    pub calib_len: usize,
    /// Seed of the calibration draw. Default 0.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GPTQ dampening, as a fraction of the Hessian's mean diagonal. Default 0.01.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// GPTQ: process columns by decreasing Hessian diagonal (with static groups). Default false.
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ: choose each group's scale by searching shrunk ranges for the least error (the
    /// reference's `mse=True`) instead of taking the group's min and max. Default false.
    #[arg(long)]
    pub scale_search: bool,
    /// GPTQ: like --scale-search, but each column's error weighted by GPTQ's saliency
    /// 1/[H⁻¹]ᵤᵤ (implies --scale-search). Default false.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub weighted_scale_search: bool,
    /// GPTQ/AWQ: within each decoder layer, quantize q/k/v, then o, then gate/up, then down,
    /// each on statistics taken after the ones before it are quantized (the reference's
    /// `--true-sequential`). Default false.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub true_sequential: bool,
}

impl Default for QuantizeSettings {
    fn default() -> Self {
        Self {
            scheme: String::new(),
            asym: false,
            method: "rtn".into(),
            calib: None,
            calib_samples: 32,
            calib_len: 512,
            seed: 0,
            damp: 0.01,
            act_order: false,
            scale_search: false,
            weighted_scale_search: false,
            true_sequential: false,
        }
    }
}

impl QuantizeSettings {
    /// The format and method, checked; the error names the bad setting.
    pub fn parse(&self) -> Result<(Format, Method)> {
        let format = Format::from_cli(&self.scheme, self.asym).context("scheme")?;
        let method: Method = self
            .method
            .parse()
            .map_err(|e| anyhow::anyhow!("method: {e}"))?;
        if method.needs_calibration() && self.calib.is_none() {
            bail!("method {method} needs calibration text (calib)");
        }
        Ok((format, method))
    }
}

pub fn run(args: &QuantizeArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let summary = quantize(&args.model, &args.output, &args.settings, &device)?;
    println!("{summary}");
    Ok(())
}

/// Quantizes the model at `model` into the quantized model directory `output`; returns a
/// one-line summary.
pub fn quantize(
    model: &Path,
    output: &Path,
    settings: &QuantizeSettings,
    device: &Device,
) -> Result<String> {
    let (format, method) = settings.parse()?;
    let mut config = QuantizeConfig::new(format, method);
    config.gptq.damp = settings.damp;
    config.gptq.act_order = settings.act_order;
    config.gptq.scale_search =
        (settings.scale_search || settings.weighted_scale_search).then(ScaleSearch::default);
    config.gptq.weighted_search = settings.weighted_scale_search;
    config.true_sequential = settings.true_sequential;
    let start = Instant::now();
    let mut m = super::load_model(model, device)?;
    let mut header = config.describe();
    header["source"] = json!(model.display().to_string());
    let windows = match (&settings.calib, method.needs_calibration()) {
        (Some(path), true) => {
            let data = EvalData::load(path, m.tokenizer.as_ref(), eval::document_eos(&m))?;
            let origin = path.display().to_string();
            let windows = calibrate::windows(
                &data.tokens,
                settings.calib_samples,
                settings.calib_len,
                settings.seed,
                &origin,
            )?;
            header["calibration"] = json!({
                "file": origin, "sha256": data.sha256, "samples": settings.calib_samples,
                "length": settings.calib_len, "seed": settings.seed, "layer_by_layer": true,
            });
            windows
        }
        _ => Vec::new(),
    };
    let layers = m.model.linears().len();
    let bar = super::progress_bar(layers, "layer");
    let report = quantize_model_sequential(&mut m.model, &config, &windows, device, |name| {
        bar.set_message(name.to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let options = SaveOptions {
        quantization: Some(header),
        ..SaveOptions::default()
    };
    checkpoint::save_dir(output, &m, options)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let error: f64 = report.layers.iter().filter_map(|l| l.output_error).sum();
    Ok(format!(
        "{} -> {}: {} layers to {format} with {method}, {:.1} MB -> {:.1} MB{}, in {:.1?}",
        model.display(),
        output.display(),
        report.layers.len(),
        report.bytes_before as f64 / 1e6,
        report.bytes_after as f64 / 1e6,
        if stats_present(&report) {
            format!(", summed output error {error:.4e} on the calibration inputs")
        } else {
            String::new()
        },
        start.elapsed()
    ))
}

fn stats_present(report: &distill_student::quantize::QuantizeReport) -> bool {
    report.layers.iter().any(|l| l.output_error.is_some())
}
