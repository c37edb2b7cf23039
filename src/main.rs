//! `distill`: turn a large language model into small, fast domain models.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use distill_model::checkpoint::{self, SafetensorsSource};
use distill_model::device::DeviceChoice;
use distill_model::generate::{GenerateConfig, generate};
use distill_model::sample::SamplingConfig;
use distill_model::train::TrainControl;
use distill_teacher::pretrain::{self, PretrainConfig};
use std::path::{Path, PathBuf};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "distill", version, about = "Distil a large language model into small, fast domain models")]
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
        /// An HF model directory.
        model: PathBuf,
    },
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Teacher stages.
    #[command(subcommand)]
    Teacher(TeacherCommand),
}

#[derive(Args)]
struct GenerateArgs {
    /// An HF model directory.
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
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

#[derive(Subcommand)]
enum TeacherCommand {
    /// Pretrain from scratch or continue training a model on text.
    Pretrain(PretrainArgs),
}

#[derive(Args)]
struct PretrainArgs {
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

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("DISTILL_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Info { model } => info(&model),
        Command::Generate(args) => run_generate(&args, cli.device),
        Command::Teacher(TeacherCommand::Pretrain(args)) => run_pretrain(args, cli.device),
    }
}

fn info(dir: &Path) -> Result<()> {
    let config = distill_model::LlamaConfig::from_file(&dir.join("config.json"))?;
    println!("architecture  {}", config.architecture.hf_class());
    println!(
        "shape         {} layers, hidden {}, ffn {}, {} heads / {} kv heads, head_dim {}, vocab {}",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.vocab_size
    );
    println!("parameters    {}", config.num_parameters());
    let mut bytes = 0u64;
    let mut rows = Vec::new();
    for path in SafetensorsSource::dir_files(dir)? {
        bytes += std::fs::metadata(&path)
            .with_context(|| path.display().to_string())?
            .len();
        let data = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (name, t) in meta.tensors() {
            rows.push((name, format!("{:?}", t.dtype), t.shape.clone()));
        }
    }
    rows.sort();
    println!("bytes         {bytes}");
    for (name, dtype, shape) in rows {
        println!("  {name:<50} {dtype:<5} {shape:?}");
    }
    Ok(())
}

fn run_generate(args: &GenerateArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let m = checkpoint::load_dir(&args.model, &device)?;
    let Some(tokenizer) = m.tokenizer else {
        bail!("{}: no tokenizer.json", args.model.display());
    };
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let config = GenerateConfig {
        max_new_tokens: args.max_tokens,
        stop_tokens: m.config.eos_token_id.clone(),
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    let out = generate(&m.model, &[prompt], &config, &device);
    println!("{}{}", args.prompt, tokenizer.decode(&out[0])?);
    Ok(())
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
    println!("pretraining finished: {} steps in {:.1}s", s.steps, s.seconds);
    println!(
        "  parameters {}, training tokens {}, {} tokens/step, {:.0} tokens/s",
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
