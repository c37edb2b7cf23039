//! `distill generate MODEL --prompt TEXT [--chat]`: continue a prompt, or answer it as the
//! user's turn of a chat rendered with the model's template.

use anyhow::{Context, Result};
use clap::Args;
use distill_model::chat::{self, ChatTemplate, Message};
use distill_model::checkpoint::ModelDir;
use distill_model::device::DeviceChoice;
use distill_model::generate::{GenerateConfig, generate};
use distill_model::sample::SamplingConfig;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Send the prompt as a user message through the model's chat template and print only
    /// the answer, which ends at EOS or the template's end-of-turn token.
    #[arg(long)]
    chat: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens; 0 keeps all.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass; 1 keeps all.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// EOS ids from `config.json`, the tokenizer and `generation_config.json`.
fn eos_ids(m: &ModelDir) -> Vec<u32> {
    let mut ids = m.config.eos_token_id.clone();
    ids.extend(m.tokenizer.as_ref().and_then(|t| t.eos_id()));
    match m.generation_config.as_ref().map(|g| &g["eos_token_id"]) {
        Some(Value::Number(n)) => ids.extend(n.as_u64().map(|id| id as u32)),
        Some(Value::Array(a)) => ids.extend(a.iter().filter_map(Value::as_u64).map(|id| id as u32)),
        _ => {}
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

pub fn run(args: &GenerateArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let name = args.model.display();
    let m = super::load_model(&args.model, &device)?;
    let tokenizer = m
        .tokenizer
        .as_ref()
        .with_context(|| format!("{name}: the model has no tokenizer"))?;
    let mut stop_tokens = eos_ids(&m);
    let prompt = if args.chat {
        let template = ChatTemplate::from_tokenizer(tokenizer).with_context(|| name.to_string())?;
        stop_tokens.extend(template.end_of_turn(tokenizer));
        let text = template
            .render(&[Message::user(&args.prompt)], true)
            .with_context(|| format!("{name}: cannot render the chat template"))?;
        chat::encode_prompt(tokenizer, &text)?
    } else {
        tokenizer.encode(&args.prompt)?
    };
    anyhow::ensure!(!prompt.is_empty(), "the prompt is empty");
    let config = GenerateConfig {
        max_new_tokens: args.max_tokens,
        stop_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    let out = generate(&m.model, &[prompt], &config, &device);
    let text = tokenizer.decode(&out[0])?;
    if args.chat {
        println!("{text}");
    } else {
        println!("{}{text}", args.prompt);
    }
    Ok(())
}
