//! `distill bench MODEL`: prefill and decode speed of a model on the chosen device, the way
//! generation runs it (KV cache, logits of the last position only).

use anyhow::{Context, Result};
use burn::prelude::*;
use clap::Args;
use distill_model::LlamaConfig;
use distill_model::device::DeviceChoice;
use distill_quant::Format;
use distill_student::quantize::{Method, QuantizeConfig, quantize_model};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// An HF model directory (dense or quantized), a GGUF file, or a `config.json` file: an
    /// architecture with random weights (speed does not depend on the values).
    model: PathBuf,
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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: &BenchArgs, choice: DeviceChoice) -> Result<()> {
    anyhow::ensure!(
        args.prompt_tokens > 0 && args.decode_tokens > 0 && args.repeats > 0,
        "--prompt-tokens, --decode-tokens and --repeats must be at least 1"
    );
    let device = choice.open()?;
    let (config, mut model) = if args.model.extension().is_some_and(|e| e == "json") {
        let config = LlamaConfig::from_file(&args.model)?;
        let model = config.init(&device, 0);
        (config, model)
    } else {
        let m = super::load_model(&args.model, &device)?;
        (m.config, m.model)
    };
    if let Some(scheme) = &args.quantize {
        let format = Format::from_cli(scheme, false).context("--quantize")?;
        quantize_model(
            &mut model,
            &QuantizeConfig::new(format, Method::Rtn),
            None,
            &device,
            |_| {},
        )?;
    }
    let vocab = config.vocab_size as i64;
    let ids = |n: usize, offset: usize| {
        let v: Vec<i64> = (0..n)
            .map(|i| ((i + offset) as i64 * 7919) % vocab)
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &device)
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=args.repeats {
        let mut cache = model.new_cache(1);
        let start = Instant::now();
        let logits = model.forward_cached_last(ids(args.prompt_tokens, 0), None, &mut cache);
        logits.into_data();
        let prefill_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for t in 0..args.decode_tokens {
            let logits = model.forward_cached_last(ids(1, t + 1), None, &mut cache);
            logits.into_data();
        }
        let decode_s = start.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(args.prompt_tokens as f64 / prefill_s);
            decode.push(args.decode_tokens as f64 / decode_s);
        }
    }
    let streamed = model.decode_weight_bytes() as f64;
    let decode = median(decode);
    println!(
        "model {}{}  device {choice}  parameters {}  weights read per token {:.1} MB",
        args.model.display(),
        args.quantize
            .as_ref()
            .map_or(String::new(), |q| format!(" ({q})")),
        config.num_parameters(),
        streamed / 1e6
    );
    println!(
        "prefill {} tokens: {:.1} tokens/s   decode {} tokens after it: {:.1} tokens/s, {:.1} GB/s of weights   (median of {})",
        args.prompt_tokens,
        median(prefill),
        args.decode_tokens,
        decode,
        decode * streamed / 1e9,
        args.repeats
    );
    Ok(())
}
