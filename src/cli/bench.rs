//! `distill bench MODEL…`: prefill and decode speed and peak memory of models on the chosen
//! device, the way generation runs them (`crate::report::speed`), as one table.

use crate::report::markdown::{self, NONE};
use crate::report::speed::{self, Speed, SpeedSettings};
use anyhow::{Context, Result};
use clap::Args;
use distill_model::LlamaConfig;
use distill_model::device::DeviceChoice;
use distill_model::fsutil;
use distill_quant::Format;
use distill_student::quantize::{Method, QuantizeConfig, quantize_model};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    /// HF model directories (dense or quantized), GGUF files, or `config.json` files: an
    /// architecture with random weights (speed does not depend on the values).
    #[arg(required = true)]
    models: Vec<PathBuf>,
    /// Round-to-nearest quantize the decoder's linear layers to this scheme first (int8,
    /// int4-g64, q4_0, ...): speed only; `distill quantize` makes models worth evaluating.
    #[arg(long)]
    quantize: Option<String>,
    /// Prompt tokens prefilled in one forward.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time after the prompt.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Timed repetitions; the median is reported (one untimed warm-up run comes first).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One model's measurement.
#[derive(Serialize)]
struct BenchRow {
    model: String,
    quantize: Option<String>,
    parameters: usize,
    /// Weight bytes each decoded token reads.
    decode_weight_bytes: usize,
    speed: Speed,
}

pub fn run(args: &BenchArgs, choice: DeviceChoice) -> Result<()> {
    let settings = SpeedSettings {
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        repeats: args.repeats,
    };
    anyhow::ensure!(
        args.prompt_tokens > 0 && args.decode_tokens > 0 && args.repeats > 0,
        "--prompt-tokens, --decode-tokens and --repeats must be at least 1"
    );
    let format = match &args.quantize {
        Some(scheme) => Some(Format::from_cli(scheme, false).context("--quantize")?),
        None => None,
    };
    let device = choice.open()?;
    let mut rows = Vec::new();
    // One model in memory at a time, so each peak holds only its own weights.
    for path in &args.models {
        let (config, mut model) = if path.extension().is_some_and(|e| e == "json") {
            let config = LlamaConfig::from_file(path)?;
            let model = config.init(&device, 0);
            (config, model)
        } else {
            let m = super::load_model(path, &device)?;
            (m.config, m.model)
        };
        if let Some(format) = format {
            quantize_model(
                &mut model,
                &QuantizeConfig::new(format, Method::Rtn),
                None,
                &device,
                |_| {},
            )?;
        }
        tracing::info!("measuring {}", path.display());
        let speed = speed::measure(&model, &config, &settings, &device)
            .with_context(|| format!("cannot measure {}", path.display()))?;
        rows.push(BenchRow {
            model: path.display().to_string(),
            quantize: args.quantize.clone(),
            parameters: config.num_parameters(),
            decode_weight_bytes: model.decode_weight_bytes(),
            speed,
        });
    }
    print!("{}", table(&rows));
    println!(
        "device {choice}; prefill {} tokens, then decode {} tokens after it; median of {} runs \
         after a warm-up; peak = the process's peak resident memory meanwhile{}",
        args.prompt_tokens,
        args.decode_tokens,
        args.repeats,
        args.quantize.as_ref().map_or(String::new(), |q| format!(
            "; decoder layers RTN-quantized to {q}"
        ))
    );
    if rows.iter().any(|r| r.speed.peak_memory_bytes.is_none()) {
        println!("peak memory: not available on this OS (needs Linux's /proc/self/clear_refs)");
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "device": choice.to_string(),
            "settings": settings,
            "models": rows,
        });
        fsutil::write_json_atomic(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The results as a Markdown table, one row per model.
fn table(rows: &[BenchRow]) -> String {
    let header = [
        "model",
        "parameters",
        "MB read/token",
        "prefill tok/s",
        "decode tok/s",
        "decode GB/s",
        "peak MB",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.speed;
            let streamed = r.decode_weight_bytes as f64;
            vec![
                r.model.clone(),
                markdown::count(r.parameters as u64),
                markdown::mb(r.decode_weight_bytes as u64),
                markdown::sig3(s.prefill_tokens_per_s),
                markdown::sig3(s.decode_tokens_per_s),
                markdown::sig3(s.decode_tokens_per_s * streamed / 1e9),
                s.peak_memory_bytes.map_or(NONE.to_string(), markdown::mb),
            ]
        })
        .collect();
    markdown::table(&header, &cells, 1)
}
