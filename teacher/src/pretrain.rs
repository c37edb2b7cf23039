//! `distill teacher pretrain`: next-token training on packed text, from scratch (a model
//! config plus a tokenizer, trained on the data when none is given) or continuing a loaded
//! model (`init`), on the shared training loop of `distill_model::train`.

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data::{self, PackedWindows};
use distill_model::loss::cross_entropy;
use distill_model::tokenizer::Tokenizer;
use distill_model::train::{self, LossPoint, TrainConfig, TrainControl, TrainTask};
use distill_model::{LlamaConfig, LlamaForCausalLM};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sizes of a model trained from scratch. Defaults give a 4-layer model of about 1.6M
/// parameters plus the embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSizes {
    /// Vocabulary of the byte-level BPE trained on the data (when no tokenizer is given).
    /// Default 4096.
    pub vocab_size: usize,
    /// Residual width. Default 128.
    pub hidden_size: usize,
    /// MLP width. Default 384.
    pub intermediate_size: usize,
    /// Layers. Default 4.
    pub num_hidden_layers: usize,
    /// Query heads. Default 4.
    pub num_attention_heads: usize,
    /// Key/value heads. Default 2.
    pub num_key_value_heads: usize,
    /// RoPE base. Default 10000.
    pub rope_theta: f64,
    /// Tie the output head to the embedding. Default true.
    pub tie_word_embeddings: bool,
}

impl Default for ModelSizes {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
        }
    }
}

/// Everything `teacher pretrain` reads, as in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Training text: `.jsonl` with one `{"text": ...}` per line, or any plain text file.
    pub train_data: PathBuf,
    /// Validation text; without it the last 5% of the training tokens are held out.
    pub valid_data: Option<PathBuf>,
    /// Continue training this model (an HF directory or a GGUF file, dequantized to f32)
    /// instead of starting from scratch.
    pub init: Option<PathBuf>,
    /// From scratch: a `tokenizer.json`; without one a byte-level BPE is trained on the data.
    pub tokenizer: Option<PathBuf>,
    /// From scratch: the model's sizes.
    pub model: ModelSizes,
    /// Output folder: `model/` (HF layout), `checkpoints/`, `train_log.json`.
    pub out: PathBuf,
    /// Optimization settings.
    pub train: TrainConfig,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            train_data: PathBuf::new(),
            valid_data: None,
            init: None,
            tokenizer: None,
            model: ModelSizes::default(),
            out: PathBuf::from("runs/pretrain"),
            train: TrainConfig::default(),
        }
    }
}

/// Why pretraining could not run.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    /// A bad config file or setting.
    #[error("{0}")]
    Config(String),
    /// Unusable training or validation text.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A model (HF directory or GGUF file) that cannot be read.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A model directory that cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// Tokenizer training or loading failed.
    #[error(transparent)]
    Tokenizer(#[from] distill_model::tokenizer::TokenizerError),
    /// The loop stopped.
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// Writing the log failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PretrainConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self, PretrainError> {
        distill_model::fsutil::read_toml(path).map_err(PretrainError::Config)
    }
}

/// Next-token prediction over packed windows.
pub struct LanguageModeling {
    train: PackedWindows,
    valid: Option<PackedWindows>,
    batch_size: usize,
    device: Device,
}

impl LanguageModeling {
    /// A task over `train` (shuffled) and `valid` (in order), `batch_size` windows a batch.
    pub fn new(
        train: PackedWindows,
        valid: Option<PackedWindows>,
        batch_size: usize,
        device: &Device,
    ) -> Self {
        Self {
            train,
            valid,
            batch_size,
            device: device.clone(),
        }
    }

    fn loss(&self, model: &LlamaForCausalLM, inputs: Vec<u32>, targets: Vec<u32>) -> Tensor<1> {
        let rows = inputs.len() / self.train.seq_len();
        let shape = [rows, self.train.seq_len()];
        let ids = |v: Vec<u32>| {
            let v: Vec<i64> = v.into_iter().map(i64::from).collect();
            Tensor::<2, Int>::from_data(TensorData::new(v, shape), &self.device)
        };
        let layout = distill_model::Layout::causal(rows, shape[1]);
        let logits = model.forward(ids(inputs), &layout);
        cross_entropy(logits, ids(targets), None)
    }
}

impl TrainTask<LlamaForCausalLM> for LanguageModeling {
    fn train_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        let (inputs, targets) = self.train.batch(index, self.batch_size);
        self.loss(model, inputs, targets)
    }

    fn valid_batches(&self) -> usize {
        self.valid
            .as_ref()
            .map_or(0, |v| v.len() / self.batch_size.max(1))
            .max(usize::from(self.valid.is_some()))
    }

    fn valid_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        let valid = self
            .valid
            .as_ref()
            .expect("valid_batches is 0 without data");
        let rows = self.batch_size.min(valid.len());
        let mut inputs = Vec::new();
        let mut targets = Vec::new();
        for r in 0..rows {
            let w = valid.window((index * rows + r) % valid.len());
            inputs.extend_from_slice(&w[..w.len() - 1]);
            targets.extend_from_slice(&w[1..]);
        }
        self.loss(model, inputs, targets)
    }
}

/// What a pretraining run produced.
pub struct PretrainSummary {
    /// Where the HF model directory was written.
    pub model_dir: PathBuf,
    /// Steps completed (including before a resume).
    pub steps: usize,
    /// Loss curve.
    pub history: Vec<LossPoint>,
    /// Training tokens per step.
    pub tokens_per_step: usize,
    /// Tokens in the training stream.
    pub train_tokens: usize,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Model parameters.
    pub parameters: usize,
}

/// Runs pretraining on `device` (autodiff is added here).
pub fn run(
    config: &PretrainConfig,
    device: &Device,
    control: &TrainControl,
) -> Result<PretrainSummary, PretrainError> {
    let started = Instant::now();
    config.train.validate().map_err(PretrainError::Config)?;
    if config.train_data.as_os_str().is_empty() {
        return Err(PretrainError::Config(
            "train_data is not set (use --data FILE or `train_data` in the config)".into(),
        ));
    }
    let device = device.clone().autodiff();

    let (model, tokenizer, model_config, generation_config) = match &config.init {
        Some(dir) => {
            let mut m = distill_model::load::load_model(dir, &device)?;
            let tokenizer = distill_model::load::take_training_tokenizer(&mut m, dir)
                .map_err(PretrainError::Config)?;
            (m.model, tokenizer, m.config, m.generation_config)
        }
        None => {
            let tokenizer = match &config.tokenizer {
                Some(path) => Tokenizer::from_file(path)?,
                None => {
                    let docs = data::read_documents(&config.train_data)?;
                    tracing::info!(
                        "training a byte-level BPE of {} tokens on {}",
                        config.model.vocab_size,
                        config.train_data.display()
                    );
                    Tokenizer::train_bpe(docs, config.model.vocab_size, &["<|endoftext|>"])?
                }
            };
            let s = &config.model;
            let mut c = LlamaConfig::llama(
                tokenizer.vocab_size(),
                s.hidden_size,
                s.intermediate_size,
                s.num_hidden_layers,
                s.num_attention_heads,
                s.num_key_value_heads,
            );
            c.rope_theta = s.rope_theta;
            c.tie_word_embeddings = s.tie_word_embeddings;
            c.max_position_embeddings = config.train.seq_len.max(c.max_position_embeddings);
            c.bos_token_id = tokenizer.bos_id();
            c.eos_token_id = tokenizer.eos_id().into_iter().collect();
            c.validate()
                .map_err(|e| PretrainError::Config(format!("model: {e}")))?;
            (c.init(&device, config.train.seed), tokenizer, c, None)
        }
    };

    let seq = config.train.seq_len;
    let train_tokens = data::tokenize_file(&tokenizer, &config.train_data)?;
    let origin = config.train_data.display().to_string();
    let (train_stream, valid_stream) = match &config.valid_data {
        Some(path) => (train_tokens, Some(data::tokenize_file(&tokenizer, path)?)),
        None => {
            let cut = train_tokens.len() - train_tokens.len() / 20;
            let valid = train_tokens[cut..].to_vec();
            let mut train = train_tokens;
            train.truncate(cut);
            (train, (valid.len() > seq).then_some(valid))
        }
    };
    let train_windows = PackedWindows::new(train_stream, seq, config.train.seed, &origin)?;
    let valid_windows = match valid_stream {
        Some(v) => Some(PackedWindows::new(
            v,
            seq,
            0,
            &format!("{origin} (validation)"),
        )?),
        None => None,
    };
    tracing::info!(
        "{} training tokens in {} windows of {seq}; {} parameters",
        train_windows.num_tokens(),
        train_windows.len(),
        model_config.num_parameters()
    );
    let train_tokens = train_windows.num_tokens();
    let mut task = LanguageModeling::new(
        train_windows,
        valid_windows,
        config.train.batch_size,
        &device,
    );
    let outcome = train::train(
        model,
        &mut task,
        &config.train,
        &config.out.join("checkpoints"),
        control,
    )?;

    let model_dir = config.out.join("model");
    if outcome.steps_done == config.train.steps {
        let dir = ModelDir {
            config: model_config.clone(),
            model: outcome.model,
            tokenizer: Some(tokenizer),
            generation_config,
        };
        checkpoint::save_dir(&model_dir, &dir, SaveOptions::default())?;
    }
    let log_path = config.out.join("train_log.json");
    let log = serde_json::json!({
        "config": config,
        "steps": outcome.steps_done,
        "history": outcome.history,
    });
    distill_model::fsutil::write_json_atomic(&log_path, &log).map_err(|source| {
        PretrainError::Io {
            path: log_path.clone(),
            source,
        }
    })?;
    Ok(PretrainSummary {
        model_dir,
        steps: outcome.steps_done,
        history: outcome.history,
        tokens_per_step: config.train.batch_size * config.train.grad_accum * seq,
        train_tokens,
        seconds: started.elapsed().as_secs_f64(),
        parameters: model_config.num_parameters(),
    })
}
