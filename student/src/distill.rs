//! `distill student kd`: a student trained on domain text against its teacher's soft labels,
//! on the shared training loop of `distill_model::train`.
//!
//! - **Data.** The training text is packed into windows of `seq_len + 1` tokens; the run uses a
//!   fixed set of `windows` of them, the first of a seeded shuffle (by default as many as the
//!   budget visits, `steps × batch_size × grad_accum`, so each is seen once), visited in order
//!   epoch after epoch. Validation is the student's next-token cross-entropy on the validation
//!   text, whatever the loss, so runs with different losses compare.
//! - **Teacher signal.** `online`: the teacher (on the plain device, no gradients) runs on each
//!   batch and its logits are produced a chunk of positions at a time. `cached`: the teacher's
//!   top-k ([`crate::topk`]) over the run's windows, computed once into a file that later runs
//!   with the same teacher, data, `k` and temperature reuse. With `kd.alpha = 0` (plain
//!   cross-entropy fine-tuning) the teacher is never run.
//! - **Tokenizers.** Teacher and student must share one: the same vocabulary size and the
//!   same token for every id, checked before any work starts.
//! - **Sparsity.** Weights that are exactly zero in the starting student (an unstructured-pruned
//!   model) stay zero: the masks are re-applied after every optimizer step.

use crate::kd::{self, KdConfig, TeacherSignal};
use crate::prune::mask::SparsityMasks;
use crate::topk::{TopKCache, TopKError, TopKHeader};
use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data::{self, PackedWindows};
use distill_model::loss::cross_entropy;
use distill_model::tokenizer::Tokenizer;
use distill_model::train::{self, LossPoint, TrainConfig, TrainControl, TrainTask};
use distill_model::{Layout, LlamaForCausalLM};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the teacher's signal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalMode {
    /// The teacher runs a forward pass at every step.
    Online,
    /// The teacher's top-k, cached to a file once.
    Cached,
}

/// The teacher-signal settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignalConfig {
    /// `online` or `cached`. Default `online`.
    pub mode: SignalMode,
    /// Tokens kept per position in the cache. Default 32.
    pub top_k: usize,
    /// The cache file. Default `OUT/teacher-topk.safetensors`; point several runs at one file
    /// to share it.
    pub cache: Option<PathBuf>,
    /// Windows per teacher forward when building the cache. Default 4.
    pub cache_batch: usize,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            mode: SignalMode::Online,
            top_k: 32,
            cache: None,
            cache_batch: 4,
        }
    }
}

/// Everything `student kd` reads, as in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdRunConfig {
    /// The teacher: an HF directory or a GGUF file.
    pub teacher: PathBuf,
    /// The student to start from: an HF directory (a pruned teacher, say) or a GGUF file.
    pub student: PathBuf,
    /// Start from fresh random weights of the student's architecture (seeded by
    /// `train.seed`) instead of its weights: the from-scratch baseline. Default false.
    pub random_init: bool,
    /// Training text: `.jsonl` of `{"text"}` lines, or plain text.
    pub train_data: PathBuf,
    /// Validation text; without it no validation runs.
    pub valid_data: Option<PathBuf>,
    /// Distinct training windows; 0 (the default) = as many as the budget visits.
    pub windows: usize,
    /// Conversations mixed into the training windows so the student keeps following
    /// instructions: `.jsonl` of `{"messages": [{"role", "content"}, ...]}` or
    /// `{"prompt", "response"}`, rendered with the student's chat template.
    pub mix_data: Option<PathBuf>,
    /// Fraction of the training windows taken from `mix_data`. Default 0.1.
    pub mix_fraction: f64,
    /// Output folder: `model/`, `checkpoints/`, `train_log.json`.
    pub out: PathBuf,
    /// The teacher signal.
    pub signal: SignalConfig,
    /// The loss.
    pub kd: KdConfig,
    /// Optimization settings.
    pub train: TrainConfig,
}

impl Default for KdRunConfig {
    fn default() -> Self {
        Self {
            teacher: PathBuf::new(),
            student: PathBuf::new(),
            random_init: false,
            train_data: PathBuf::new(),
            valid_data: None,
            windows: 0,
            mix_data: None,
            mix_fraction: 0.1,
            out: PathBuf::from("runs/kd"),
            signal: SignalConfig::default(),
            kd: KdConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

/// Why a distillation run could not run.
#[derive(Debug, thiserror::Error)]
pub enum KdError {
    /// A bad config file or setting.
    #[error("{0}")]
    Config(String),
    /// Teacher and student tokenize differently.
    #[error("teacher {teacher} and student {student} do not share a tokenizer: {reason}")]
    Vocabulary {
        /// The teacher's path.
        teacher: String,
        /// The student's path.
        student: String,
        /// The first difference.
        reason: String,
    },
    /// Unusable text.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A model that cannot be read.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A model directory that cannot be written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The top-k cache.
    #[error(transparent)]
    TopK(#[from] TopKError),
    /// The loop stopped.
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// Writing the log failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl KdRunConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self, KdError> {
        distill_model::fsutil::read_toml(path).map_err(KdError::Config)
    }

    /// Checks the settings before any work; the error names the key.
    pub fn validate(&self) -> Result<(), KdError> {
        for (key, path) in [
            ("teacher", &self.teacher),
            ("student", &self.student),
            ("train_data", &self.train_data),
        ] {
            if path.as_os_str().is_empty() {
                return Err(KdError::Config(format!("`{key}` is not set")));
            }
            if !path.exists() {
                return Err(KdError::Config(format!(
                    "`{key}`: {} does not exist",
                    path.display()
                )));
            }
        }
        if let Some(m) = self.mix_data.as_ref().filter(|m| !m.exists()) {
            return Err(KdError::Config(format!(
                "`mix_data`: {} does not exist",
                m.display()
            )));
        }
        if !(0.0..1.0).contains(&self.mix_fraction) {
            return Err(KdError::Config(format!(
                "`mix_fraction` = {}: must be in [0, 1)",
                self.mix_fraction
            )));
        }
        if let Some(v) = self.valid_data.as_ref().filter(|v| !v.exists()) {
            return Err(KdError::Config(format!(
                "`valid_data`: {} does not exist",
                v.display()
            )));
        }
        if self.signal.top_k == 0 || self.signal.cache_batch == 0 {
            return Err(KdError::Config(
                "`signal.top_k` and `signal.cache_batch` must be at least 1".into(),
            ));
        }
        self.train.validate().map_err(KdError::Config)?;
        self.kd.validate().map_err(KdError::Config)
    }

    /// The cache file this run reads or writes.
    pub fn cache_path(&self) -> PathBuf {
        self.signal
            .cache
            .clone()
            .unwrap_or_else(|| self.out.join("teacher-topk.safetensors"))
    }

    /// Windows the run trains on.
    fn windows_needed(&self) -> usize {
        match self.windows {
            0 => self.train.steps * self.train.batch_size * self.train.grad_accum,
            n => n,
        }
    }
}

/// Refuses a teacher and student that do not share a tokenizer (see
/// [`ModelDir::vocabulary_mismatch`]).
pub fn check_same_tokenizer(
    teacher: &ModelDir,
    teacher_name: &str,
    student: &ModelDir,
    student_name: &str,
) -> Result<(), KdError> {
    match teacher.vocabulary_mismatch("teacher", student, "student") {
        Some(reason) => Err(KdError::Vocabulary {
            teacher: teacher_name.to_string(),
            student: student_name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The teacher's side of a run.
pub enum Teacher {
    /// Plain cross-entropy: no teacher.
    None,
    /// The teacher model, on the plain device.
    Online(Box<LlamaForCausalLM>),
    /// The cached top-k.
    Cached(TopKCache),
}

/// Distillation over a fixed set of windows: the [`TrainTask`] of `student kd`.
pub struct KdTask {
    windows: Vec<Vec<u32>>,
    valid: Option<PackedWindows>,
    batch: usize,
    teacher: Teacher,
    kd: KdConfig,
    masks: SparsityMasks,
    device: Device,
    plain: Device,
}

impl KdTask {
    /// A task over `windows` (each `seq_len + 1` tokens, visited in order, `batch` a step)
    /// with validation windows `valid`; the student lives on `device` (autodiff), the teacher
    /// signal is made on `plain`; `masks` are re-applied after each step.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        windows: Vec<Vec<u32>>,
        valid: Option<PackedWindows>,
        batch: usize,
        teacher: Teacher,
        kd: KdConfig,
        masks: SparsityMasks,
        device: &Device,
        plain: &Device,
    ) -> Self {
        Self {
            windows,
            valid,
            batch,
            teacher,
            kd,
            masks,
            device: device.clone(),
            plain: plain.clone(),
        }
    }

    fn ids(
        &self,
        rows: &[Vec<u32>],
        take: impl Fn(&[u32]) -> &[u32],
        device: &Device,
    ) -> Tensor<2, Int> {
        let seq = rows[0].len() - 1;
        let v: Vec<i64> = rows
            .iter()
            .flat_map(|w| take(w).iter().map(|&t| t as i64))
            .collect();
        Tensor::from_data(TensorData::new(v, [rows.len(), seq]), device)
    }
}

impl TrainTask<LlamaForCausalLM> for KdTask {
    fn train_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        let n = self.windows.len();
        let picked: Vec<usize> = (0..self.batch)
            .map(|r| (index * self.batch + r) % n)
            .collect();
        let rows: Vec<Vec<u32>> = picked.iter().map(|&w| self.windows[w].clone()).collect();
        let (b, seq) = (rows.len(), rows[0].len() - 1);
        let layout = Layout::causal(b, seq);
        let inputs = self.ids(&rows, |w| &w[..w.len() - 1], &self.device);
        let targets: Vec<u32> = rows.iter().flat_map(|w| w[1..].iter().copied()).collect();
        let hidden = model.hidden_states(inputs, &layout);
        let width = hidden.dims()[2];
        let hidden = hidden.reshape([b * seq, width]);
        let head = model.head_weight();
        let plain = self.plain.clone();
        let out = match &self.teacher {
            Teacher::None => kd::chunked_kd_loss(&self.kd, hidden, head, None, &targets, None),
            Teacher::Online(teacher) => {
                let t_inputs = self.ids(&rows, |w| &w[..w.len() - 1], &plain);
                let t_hidden = teacher.hidden_states(t_inputs, &layout);
                let t_width = t_hidden.dims()[2];
                let t_hidden = t_hidden.reshape([b * seq, t_width]);
                let mut signal = |r: std::ops::Range<usize>| {
                    TeacherSignal::Logits(teacher.head(t_hidden.clone().slice([r])))
                };
                kd::chunked_kd_loss(&self.kd, hidden, head, Some(&mut signal), &targets, None)
            }
            Teacher::Cached(cache) => {
                let mut signal = |r: std::ops::Range<usize>| cache.signal(&picked, r, &plain);
                kd::chunked_kd_loss(&self.kd, hidden, head, Some(&mut signal), &targets, None)
            }
        };
        tracing::debug!(
            batch = index,
            kd = out.kd,
            ce = out.ce,
            "distillation terms"
        );
        out.loss
    }

    fn valid_batches(&self) -> usize {
        self.valid
            .as_ref()
            .map_or(0, |v| (v.len() / self.batch.max(1)).max(1))
    }

    fn valid_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        let valid = self
            .valid
            .as_ref()
            .expect("valid_batches is 0 without data");
        let rows: Vec<Vec<u32>> = (0..self.batch.min(valid.len()))
            .map(|r| {
                valid
                    .window((index * self.batch + r) % valid.len())
                    .to_vec()
            })
            .collect();
        let device = model.model.embed_tokens.weight.val().device();
        let inputs = self.ids(&rows, |w| &w[..w.len() - 1], &device);
        let targets = self.ids(&rows, |w| &w[1..], &device);
        let [b, s] = inputs.dims();
        cross_entropy(model.forward(inputs, &Layout::causal(b, s)), targets, None)
    }

    fn after_step(&mut self, model: LlamaForCausalLM) -> LlamaForCausalLM {
        self.masks.apply(model)
    }
}

/// What a distillation run produced.
pub struct KdSummary {
    /// Where the student's HF directory was written.
    pub model_dir: PathBuf,
    /// Steps completed (including before a resume).
    pub steps: usize,
    /// Loss curve (validation: next-token cross-entropy).
    pub history: Vec<LossPoint>,
    /// Student tokens per step.
    pub tokens_per_step: usize,
    /// Distinct training windows.
    pub windows: usize,
    /// Wall time of the training loop in this invocation.
    pub train_seconds: f64,
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Steps this invocation ran.
    pub steps_run: usize,
    /// The student's parameters.
    pub parameters: usize,
}

/// The conversations of a mix file, each rendered with `tokenizer`'s chat template and
/// tokenized, followed by EOS, joined into one stream.
fn conversation_tokens(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>, KdError> {
    use distill_model::chat::{ChatTemplate, Message, encode_prompt};
    let name = path.display().to_string();
    let template = ChatTemplate::from_tokenizer(tokenizer)
        .map_err(|e| KdError::Config(format!("`mix_data` {name}: the student's {e}")))?;
    let text = std::fs::read_to_string(path).map_err(|source| KdError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut stream = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: String| {
            KdError::Data(data::DataError::Line {
                path: name.clone(),
                line: i + 1,
                reason,
            })
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let field = |k: &str| value.get(k).and_then(|v| v.as_str());
        let messages: Vec<Message> =
            match (value.get("messages"), field("prompt"), field("response")) {
                (Some(m), _, _) => serde_json::from_value(m.clone()).map_err(|e| {
                    bad(format!(
                        "field `messages`: a list of {{\"role\", \"content\"}} objects: {e}"
                    ))
                })?,
                (None, Some(p), Some(r)) => vec![Message::user(p), Message::new("assistant", r)],
                _ => {
                    return Err(bad(
                        "needs `messages`, or `prompt` and `response` strings".into()
                    ));
                }
            };
        let rendered = template
            .render(&messages, false)
            .map_err(|e| bad(e.to_string()))?;
        stream.extend(encode_prompt(tokenizer, &rendered).map_err(|e| bad(e.to_string()))?);
        stream.extend(tokenizer.eos_id());
    }
    if stream.is_empty() {
        return Err(KdError::Data(data::DataError::Empty {
            path: name,
            reason: "no conversations in this file".into(),
        }));
    }
    Ok(stream)
}

/// The run's training windows: the first of a seeded shuffle of the domain text's windows,
/// with every `1 / mix_fraction`-th one taken from the conversations of `mix_data` instead.
pub fn training_windows(
    config: &KdRunConfig,
    tokenizer: &Tokenizer,
) -> Result<Vec<Vec<u32>>, KdError> {
    let seq = config.train.seq_len;
    let seed = config.train.seed;
    let origin = config.train_data.display().to_string();
    let text = PackedWindows::new(
        data::tokenize_file(tokenizer, &config.train_data)?,
        seq,
        seed,
        &origin,
    )?;
    let chat = match &config.mix_data {
        Some(path) => Some(PackedWindows::new(
            conversation_tokens(tokenizer, path)?,
            seq,
            seed,
            &path.display().to_string(),
        )?),
        None => None,
    };
    let needed = config.windows_needed();
    let f = if chat.is_some() {
        config.mix_fraction
    } else {
        0.0
    };
    let n_chat = (needed as f64 * f).round() as usize;
    if needed - n_chat > text.len() {
        tracing::warn!(
            "{origin} holds {} windows of {seq} tokens, fewer than the {} the budget visits: \
             they are repeated",
            text.len(),
            needed - n_chat
        );
    }
    let (mut t, mut c) = (0, 0);
    let mut windows = Vec::with_capacity(needed);
    for i in 0..needed {
        let from_chat = ((i + 1) as f64 * f).floor() > (i as f64 * f).floor();
        match (&chat, from_chat) {
            (Some(chat), true) => {
                windows.push(chat.shuffled(c).to_vec());
                c += 1;
            }
            _ => {
                if t >= text.len() {
                    break; // repeating the text adds nothing: the run visits windows cyclically
                }
                windows.push(text.shuffled(t).to_vec());
                t += 1;
            }
        }
    }
    tracing::info!(
        "{} training windows, {c} of them conversations",
        windows.len()
    );
    Ok(windows)
}

/// The cached teacher signal for `windows`: read from the cache file when it matches (same
/// teacher, `k`, temperature and windows), else computed and written.
fn cached_signal(
    config: &KdRunConfig,
    teacher: &ModelDir,
    windows: &[Vec<u32>],
    device: &Device,
) -> Result<TopKCache, KdError> {
    let path = config.cache_path();
    let header = TopKHeader {
        k: config.signal.top_k,
        temperature: config.kd.loss.temperature(),
        seq_len: config.train.seq_len,
        windows: windows.len(),
        vocab_size: teacher.config.vocab_size,
        teacher: config.teacher.display().to_string(),
        teacher_sha256: distill_model::load::fingerprint(&config.teacher)?,
    };
    if path.is_file() {
        let cache = TopKCache::load(&path)?;
        let h = &cache.header;
        let same = h.k == header.k
            && h.temperature == header.temperature
            && h.seq_len == header.seq_len
            && h.teacher_sha256 == header.teacher_sha256
            && h.windows >= windows.len()
            && windows
                .iter()
                .enumerate()
                .all(|(i, w)| cache.window(i) == w.as_slice());
        if same {
            tracing::info!("teacher signal from {}", path.display());
            return Ok(cache);
        }
        tracing::warn!(
            "{} was made for another teacher, data, k or temperature: computing it again",
            path.display()
        );
    }
    let bar = ProgressBar::new(windows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] teacher top-k {pos}/{len} windows (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let cache = TopKCache::compute(
        &teacher.model,
        header,
        windows,
        config.signal.cache_batch,
        device,
        |done| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    cache.save(&path)?;
    tracing::info!(
        "teacher top-k of {} windows written to {}",
        windows.len(),
        path.display()
    );
    Ok(cache)
}

/// Runs distillation on `device` (autodiff is added for the student; the teacher stays on
/// `device`).
pub fn run(
    config: &KdRunConfig,
    device: &Device,
    control: &TrainControl,
) -> Result<KdSummary, KdError> {
    let started = Instant::now();
    config.validate()?;
    let plain = device.clone();
    let device = device.clone().autodiff();
    let (teacher_name, student_name) = (
        config.teacher.display().to_string(),
        config.student.display().to_string(),
    );
    let teacher = distill_model::load::load_model(&config.teacher, &plain)?;
    let student = distill_model::load::load_model(&config.student, &device)?;
    check_same_tokenizer(&teacher, &teacher_name, &student, &student_name)?;
    if !student.model.packed_weights().is_empty() {
        return Err(KdError::Config(format!(
            "student {student_name} is quantized: distil a float model, then quantize it"
        )));
    }
    let tokenizer = student.tokenizer.clone().expect("checked above");

    let seq = config.train.seq_len;
    let windows = training_windows(config, &tokenizer)?;
    let valid = match &config.valid_data {
        Some(path) => Some(PackedWindows::new(
            data::tokenize_file(&tokenizer, path)?,
            seq,
            0,
            &path.display().to_string(),
        )?),
        None => None,
    };

    // The teacher is moved in here: unless it runs online, its weights are freed before
    // training starts.
    let teacher_side = if config.kd.alpha == 0.0 {
        drop(teacher);
        Teacher::None
    } else {
        match config.signal.mode {
            SignalMode::Online => Teacher::Online(Box::new(teacher.model)),
            SignalMode::Cached => {
                let cache = cached_signal(config, &teacher, &windows, &plain)?;
                drop(teacher);
                Teacher::Cached(cache)
            }
        }
    };

    let mut model_config = student.config.clone();
    model_config.max_position_embeddings = model_config.max_position_embeddings.max(seq);
    let model = if config.random_init {
        model_config.init(&device, config.train.seed)
    } else {
        student.model
    };
    let masks = SparsityMasks::from_zeros(&model);
    if !masks.is_empty() {
        tracing::info!(
            "keeping pruned weights at zero: {:.1}% of the linear layers' weights",
            100.0 * masks.sparsity()
        );
    }
    tracing::info!(
        "distilling {teacher_name} into {student_name}{}: {} windows of {seq} tokens, {} parameters",
        if config.random_init {
            " (random init)"
        } else {
            ""
        },
        windows.len(),
        model_config.num_parameters()
    );
    let mut task = KdTask::new(
        windows,
        valid,
        config.train.batch_size,
        teacher_side,
        config.kd.clone(),
        masks,
        &device,
        &plain,
    );
    let train_started = Instant::now();
    let outcome = train::train(
        model,
        &mut task,
        &config.train,
        &config.out.join("checkpoints"),
        control,
    )?;
    let train_seconds = train_started.elapsed().as_secs_f64();
    let model_dir = config.out.join("model");
    if outcome.steps_done == config.train.steps {
        let dir = ModelDir {
            config: model_config.clone(),
            model: outcome.model,
            tokenizer: Some(tokenizer),
            generation_config: student.generation_config,
        };
        checkpoint::save_dir(&model_dir, &dir, SaveOptions::default())?;
    }
    let log_path = config.out.join("train_log.json");
    let log = serde_json::json!({
        "config": config,
        "steps": outcome.steps_done,
        "windows": task.windows.len(),
        "history": outcome.history,
    });
    distill_model::fsutil::write_json_atomic(&log_path, &log).map_err(|source| KdError::Io {
        path: log_path.clone(),
        source,
    })?;
    Ok(KdSummary {
        model_dir,
        steps: outcome.steps_done,
        steps_run: outcome.steps_done - outcome.start_step,
        history: outcome.history,
        tokens_per_step: config.train.batch_size * config.train.grad_accum * seq,
        windows: task.windows.len(),
        train_seconds,
        seconds: started.elapsed().as_secs_f64(),
        parameters: model_config.num_parameters(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped distillation configs read, and their training and loss settings are valid
    /// (their model paths exist only after the runs before them).
    #[test]
    fn the_shipped_configs_read_and_their_settings_are_valid() {
        // Cargo's runtime value: the build-time one names the checkout that built the binary.
        let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let dir = Path::new(&crate_dir).join("../configs");
        for name in [
            "kd-manpages",
            "ce-manpages",
            "kd-random-manpages",
            "kd-manpages-gpu",
        ] {
            let path = dir.join(format!("{name}.toml"));
            let c = KdRunConfig::from_toml_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            c.train.validate().unwrap();
            c.kd.validate().unwrap();
        }
    }
}
