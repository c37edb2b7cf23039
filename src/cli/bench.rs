//! `distill bench MODEL`: prefill and decode speed of a model on the chosen device, the way
//! generation runs it (KV cache, logits of the last position only).

use anyhow::Result;
use burn::prelude::*;
use clap::Args;
use distill_model::device::DeviceChoice;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
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
    let m = super::load_model(&args.model, &device)?;
    let vocab = m.config.vocab_size as i64;
    let ids = |n: usize, offset: usize| {
        let v: Vec<i64> = (0..n)
            .map(|i| ((i + offset) as i64 * 7919) % vocab)
            .collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, [1, n]), &device)
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    for run in 0..=args.repeats {
        let mut cache = m.model.new_cache(1);
        let start = Instant::now();
        let logits = m
            .model
            .forward_cached_last(ids(args.prompt_tokens, 0), None, &mut cache);
        logits.into_data();
        let prefill_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for t in 0..args.decode_tokens {
            let logits = m.model.forward_cached_last(ids(1, t + 1), None, &mut cache);
            logits.into_data();
        }
        let decode_s = start.elapsed().as_secs_f64();
        if run > 0 {
            prefill.push(args.prompt_tokens as f64 / prefill_s);
            decode.push(args.decode_tokens as f64 / decode_s);
        }
    }
    println!(
        "model {}  device {choice}  parameters {}",
        args.model.display(),
        m.config.num_parameters()
    );
    println!(
        "prefill {} tokens: {:.1} tokens/s   decode {} tokens after it: {:.1} tokens/s   (median of {})",
        args.prompt_tokens,
        median(prefill),
        args.decode_tokens,
        median(decode),
        args.repeats
    );
    Ok(())
}
