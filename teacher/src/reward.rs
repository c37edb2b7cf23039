//! `distill teacher reward`: the reward model of InstructGPT (Ouyang et al. 2022,
//! <https://arxiv.org/abs/2203.02155>, section 3.5), trained on rankings of answers.
//!
//! The model is the SFT model's decoder with its LM head replaced by a scalar `score` head
//! read at the last real token, laid out and named as HF's `LlamaForSequenceClassification`
//! (`model.*`, `score.weight` `[1, hidden]`). For a prompt with K ranked answers the loss is
//! the mean over its K·(K−1)/2 pairs of −log σ(r_better − r_worse), averaged over prompts.

use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use distill_model::checkpoint::{self, CheckpointError, SafetensorsSource, StoreDtype};
use distill_model::llama::{FreshInit, Linear, LlamaModel};
use distill_model::tokenizer::Tokenizer;
use distill_model::train::{self, LossPoint, TrainConfig, TrainControl, TrainTask};
use distill_model::{Layout, LlamaConfig, LlamaForCausalLM};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::mixture::Mixture;
use crate::records::{self, DataFiles, RecordError};
use crate::sft::{ChatEncoder, ChatTokens, EncodeError, check_common, hold_out, ids_tensor};

/// Everything `teacher reward` reads, as in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    /// Rankings `{"prompt", "responses", "ranking", "kinds"?}` or comparisons
    /// `{"prompt", "chosen", "rejected"}`, as JSON Lines: one file, or a list of files read as
    /// one set (e.g. the four-way rankings and the near misses).
    pub train_data: DataFiles,
    /// Share of the training draws each `train_data` file gets, one number per file in its
    /// order (normalized; e.g. `[0.6, 0.4]`). Without it every training ranking is equally
    /// likely, so each file gets a share in proportion to its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_shares: Option<Vec<f64>>,
    /// Validation rankings (one file or a list): the loss during training and the held-out
    /// accuracy at the end. Without them `valid_fraction` of `train_data` is held out.
    pub valid_data: Option<DataFiles>,
    /// Share of `train_data` held out when `valid_data` is not given. Default 0.05.
    pub valid_fraction: f64,
    /// Test rankings (one file or a list), scored once at the end (accuracy only); optional.
    pub test_data: Option<DataFiles>,
    /// The SFT model the reward model starts from (HF directory or GGUF file); its LM head
    /// is dropped.
    pub init: PathBuf,
    /// Output folder: `model/` (HF `LlamaForSequenceClassification`), `checkpoints/`,
    /// `train_log.json`, `reward_report.json`. Default `runs/reward`.
    pub out: PathBuf,
    /// Longest prompt in tokens; longer ones keep their last tokens. Default 64.
    pub max_prompt_tokens: usize,
    /// Longest response in tokens (through the end-of-turn token); longer ones keep their
    /// first tokens. Default 48.
    pub max_response_tokens: usize,
    /// Optimization settings; `batch_size` counts prompts (each brings its K answers),
    /// `seq_len` is not used.
    pub train: TrainConfig,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            train_data: DataFiles::default(),
            train_shares: None,
            valid_data: None,
            valid_fraction: 0.05,
            test_data: None,
            init: PathBuf::new(),
            out: PathBuf::from("runs/reward"),
            max_prompt_tokens: 64,
            max_response_tokens: 48,
            train: TrainConfig::default(),
        }
    }
}

impl RewardConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self, RewardError> {
        distill_model::fsutil::read_toml(path).map_err(RewardError::Config)
    }

    /// Checks `train_shares`: one finite, non-negative number per `train_data` file, not all zero.
    pub fn check_shares(&self) -> Result<(), String> {
        let Some(shares) = &self.train_shares else {
            return Ok(());
        };
        let files = self.train_data.iter().count();
        if shares.len() != files {
            return Err(format!(
                "train_shares has {} numbers for {files} train_data files ({})",
                shares.len(),
                self.train_data
            ));
        }
        if shares.iter().any(|s| !s.is_finite() || *s < 0.0) || shares.iter().sum::<f64>() <= 0.0 {
            return Err(format!(
                "train_shares {shares:?}: each must be a finite number ≥ 0, and not all 0"
            ));
        }
        Ok(())
    }
}

/// Why reward-model training, saving or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// A bad config file or setting.
    #[error("{0}")]
    Config(String),
    /// Unusable rankings.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// A model (HF directory or GGUF file) that cannot be read.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A model directory that cannot be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The chat template cannot render or tokenize a conversation.
    #[error("{origin}: {source}")]
    Chat { origin: String, source: EncodeError },
    /// The loop stopped.
    #[error(transparent)]
    Train(#[from] train::TrainError),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// A decoder with a scalar head on its last real token, as HF's
/// `LlamaForSequenceClassification` with `num_labels = 1`.
#[derive(Module, Debug)]
pub struct RewardModel {
    /// The decoder stack (HF `model.*`).
    pub model: LlamaModel,
    /// The reward head, `score.weight` `[1, hidden]`, no bias.
    pub score: Linear,
    head_dim: usize,
    rope_theta: f64,
}

impl RewardModel {
    /// The reward model on `lm`'s decoder (its LM head is dropped), with a fresh `score`
    /// head drawn from N(0, `initializer_range`²) by `seed`, as HF initializes it.
    pub fn from_causal_lm(lm: LlamaForCausalLM, config: &LlamaConfig, seed: u64) -> Self {
        let mut fresh = FreshInit {
            device: lm.model.embed_tokens.weight.val().device(),
            std: config.initializer_range,
            seed,
        };
        let score = match Linear::build(&mut fresh, "score", config.hidden_size, 1, false) {
            Ok(score) => score,
            Err(never) => match never {},
        };
        Self {
            model: lm.model,
            score,
            head_dim: config.head_dim,
            rope_theta: config.rope_theta,
        }
    }

    /// Rewards `[batch]` of right-padded `input_ids` `[batch, seq]` whose row `b` holds
    /// `lengths[b]` real tokens: the score of each row's last real token.
    pub fn forward(&self, input_ids: Tensor<2, Int>, lengths: &[usize]) -> Tensor<1> {
        let [b, s] = input_ids.dims();
        assert_eq!(lengths.len(), b, "one length per row");
        assert!(
            lengths.iter().all(|&n| (1..=s).contains(&n)),
            "lengths must be in 1..={s}: {lengths:?}"
        );
        let device = input_ids.device();
        let mask: Vec<bool> = lengths
            .iter()
            .flat_map(|&n| (0..s).map(move |i| i < n))
            .collect();
        let layout = Layout::from_mask(b, s, &mask);
        let hidden = self
            .model
            .forward(input_ids, &layout, self.head_dim, self.rope_theta);
        let h = hidden.dims()[2];
        let last: Vec<i64> = lengths
            .iter()
            .enumerate()
            .map(|(r, &n)| (r * s + n - 1) as i64)
            .collect();
        let last = Tensor::<1, Int>::from_data(TensorData::new(last, [b]), &device);
        let pooled = hidden.reshape([b * s, h]).select(0, last);
        self.score.forward(pooled).reshape([b])
    }

    /// The rewards of `forward` as numbers: the scoring call PPO makes on rendered
    /// conversations (prompt plus response, as [`ChatEncoder::encode`] tokenizes them).
    pub fn score(&self, input_ids: Tensor<2, Int>, lengths: &[usize]) -> Vec<f32> {
        self.forward(input_ids, lengths)
            .into_data()
            .try_to_vec()
            .expect("f32 rewards")
    }

    /// Rewards of token sequences of any lengths, padded here with `pad`.
    fn score_rows(&self, rows: &[&[u32]], pad: u32) -> Vec<f32> {
        let (ids, lengths) = pad_rows(rows, pad, &self.device());
        self.score(ids, &lengths)
    }

    fn device(&self) -> Device {
        self.model.embed_tokens.weight.val().device()
    }
}

/// Right-pads `rows` with `pad` into `[rows, longest]` ids and their lengths.
fn pad_rows(rows: &[&[u32]], pad: u32, device: &Device) -> (Tensor<2, Int>, Vec<usize>) {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = vec![pad; rows.len() * len];
    for (i, r) in rows.iter().enumerate() {
        ids[i * len..i * len + r.len()].copy_from_slice(r);
    }
    let lengths = rows.iter().map(|r| r.len()).collect();
    (ids_tensor(&ids, [rows.len(), len], device), lengths)
}

/// The ranking loss: over `groups` (one per prompt, each a list of `(better, worse)` indices
/// into `rewards`), the mean of each group's mean −log σ(r_better − r_worse).
pub fn ranking_loss(rewards: Tensor<1>, groups: &[Vec<(usize, usize)>]) -> Tensor<1> {
    let device = rewards.device();
    let (mut better, mut worse, mut weight) = (Vec::new(), Vec::new(), Vec::new());
    for g in groups {
        for &(b, w) in g {
            better.push(b as i64);
            worse.push(w as i64);
            weight.push(1.0 / (g.len() * groups.len()) as f32);
        }
    }
    let n = better.len();
    let index = |v: Vec<i64>| Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &device);
    let margin = rewards.clone().select(0, index(better)) - rewards.select(0, index(worse));
    let weight = Tensor::<1>::from_data(TensorData::new(weight, [n]), &device);
    (log_sigmoid(margin) * weight).sum().neg()
}

/// A ranking's answers, tokenized, with the pairs it implies.
struct EncodedRanking {
    /// Which file of its set it came from (0-based).
    file: usize,
    responses: Vec<ChatTokens>,
    pairs: Vec<(usize, usize)>,
    kinds: Option<Vec<String>>,
    /// The question kind: the ranking's `id` after its last `#` (`man2/close.2#errors`).
    question: Option<String>,
}

/// The rankings of every file of `files`, tokenized, in file order.
fn encode_rankings(
    encoder: &ChatEncoder,
    files: &[(PathBuf, Vec<records::Ranking>)],
) -> Result<Vec<EncodedRanking>, RewardError> {
    use distill_model::chat::Message;
    files
        .iter()
        .enumerate()
        .flat_map(|(file, (origin, rankings))| {
            rankings.iter().enumerate().map(move |r| (file, origin, r))
        })
        .map(|(file, origin, (i, r))| {
            let responses = r
                .responses
                .iter()
                .map(|answer| {
                    encoder.encode(&[Message::user(&r.prompt), Message::new("assistant", answer)])
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| RewardError::Chat {
                    origin: format!("{}: ranking {}", origin.display(), i + 1),
                    source,
                })?;
            Ok(EncodedRanking {
                file,
                responses,
                pairs: r.pairs(),
                kinds: r.kinds.clone(),
                question: r
                    .id
                    .as_deref()
                    .and_then(|id| id.rsplit_once('#'))
                    .map(|(_, q)| q.to_string()),
            })
        })
        .collect()
}

/// Pairwise ranking loss over batches of prompts.
struct RewardModeling {
    train: Vec<EncodedRanking>,
    valid: Vec<EncodedRanking>,
    /// Which training ranking each draw takes.
    draws: Mixture,
    batch_size: usize,
    pad: u32,
}

impl RewardModeling {
    fn loss(&self, model: &RewardModel, rankings: &[&EncodedRanking]) -> Tensor<1> {
        let mut rows: Vec<&[u32]> = Vec::new();
        let mut groups = Vec::new();
        for r in rankings {
            let offset = rows.len();
            rows.extend(r.responses.iter().map(|c| c.ids.as_slice()));
            groups.push(
                r.pairs
                    .iter()
                    .map(|&(b, w)| (offset + b, offset + w))
                    .collect(),
            );
        }
        let (ids, lengths) = pad_rows(&rows, self.pad, &model.device());
        ranking_loss(model.forward(ids, &lengths), &groups)
    }
}

impl TrainTask<RewardModel> for RewardModeling {
    fn train_loss(&mut self, model: &RewardModel, index: usize) -> Tensor<1> {
        let batch: Vec<&EncodedRanking> = (0..self.batch_size)
            .map(|r| &self.train[self.draws.record(index * self.batch_size + r)])
            .collect();
        self.loss(model, &batch)
    }

    fn valid_batches(&self) -> usize {
        self.valid.len().div_ceil(self.batch_size)
    }

    fn valid_loss(&mut self, model: &RewardModel, index: usize) -> Tensor<1> {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(self.valid.len());
        let batch: Vec<&EncodedRanking> = self.valid[start..end].iter().collect();
        self.loss(model, &batch)
    }
}

/// How often the better answer of a pair got the higher reward (a tie counts as wrong).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PairAccuracy {
    /// Pairs scored.
    pub pairs: usize,
    /// Pairs ordered right.
    pub correct: usize,
    /// `correct / pairs`.
    pub accuracy: f64,
}

impl PairAccuracy {
    fn add(&mut self, right: bool) {
        self.pairs += 1;
        self.correct += usize::from(right);
        self.accuracy = self.correct as f64 / self.pairs as f64;
    }
}

/// Held-out accuracy of a reward model on one ranking file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccuracyReport {
    /// The rankings' file (or the held-out share of the training file).
    pub data: String,
    /// Prompts scored.
    pub rankings: usize,
    /// Over all pairs.
    pub overall: PairAccuracy,
    /// Per pair type `better_kind>worse_kind` (e.g. `right>same_page`), for rankings that
    /// name their answers' `kinds`.
    pub by_pair_type: BTreeMap<String, PairAccuracy>,
    /// Per question kind and pair type, `question: better>worse` (e.g.
    /// `errors: right>same_page`), for rankings whose `id` ends in `#question` and that name
    /// their answers' `kinds`.
    #[serde(default)]
    pub by_question: BTreeMap<String, PairAccuracy>,
    /// Mean reward over every answer: the offset PPO may subtract.
    pub reward_mean: f64,
    /// Standard deviation of the rewards.
    pub reward_std: f64,
}

impl AccuracyReport {
    /// Scores every answer, `rows` sequences a forward in order of length (so little work
    /// goes to padding), then counts the pairs ordered right.
    fn new(
        model: &RewardModel,
        rankings: &[EncodedRanking],
        rows: usize,
        pad: u32,
        data: String,
        quiet: bool,
    ) -> Self {
        let seqs: Vec<&[u32]> = rankings
            .iter()
            .flat_map(|r| r.responses.iter().map(|c| c.ids.as_slice()))
            .collect();
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        tracing::info!("scoring the {} answers of {data}", seqs.len());
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(seqs.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} answers {msg} (eta {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("of {data}"));
        let mut rewards = vec![0f32; seqs.len()];
        for chunk in order.chunks(rows.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i]).collect();
            for (&i, r) in chunk.iter().zip(model.score_rows(&batch, pad)) {
                rewards[i] = r;
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();

        let mut report = Self {
            data,
            rankings: rankings.len(),
            overall: PairAccuracy::default(),
            by_pair_type: BTreeMap::new(),
            by_question: BTreeMap::new(),
            reward_mean: 0.0,
            reward_std: 0.0,
        };
        let mut at = 0;
        for r in rankings {
            let rs = &rewards[at..at + r.responses.len()];
            at += r.responses.len();
            for &(b, w) in &r.pairs {
                let right = rs[b] > rs[w];
                report.overall.add(right);
                if let Some(kinds) = &r.kinds {
                    let key = format!("{}>{}", kinds[b], kinds[w]);
                    if let Some(q) = &r.question {
                        let by = report.by_question.entry(format!("{q}: {key}"));
                        by.or_default().add(right);
                    }
                    report.by_pair_type.entry(key).or_default().add(right);
                }
            }
        }
        let n = rewards.len().max(1) as f64;
        report.reward_mean = rewards.iter().map(|&r| r as f64).sum::<f64>() / n;
        report.reward_std = (rewards
            .iter()
            .map(|&r| (r as f64 - report.reward_mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        report
    }
}

/// A reward model in memory with what its directory holds besides the weights.
pub struct RewardDir {
    /// The backbone's sizes (as in `config.json`).
    pub config: LlamaConfig,
    /// The weights.
    pub model: RewardModel,
    /// The tokenizer with its chat template, when the directory has one.
    pub tokenizer: Option<Tokenizer>,
}

impl RewardDir {
    /// The padding id written as `pad_token_id`: the tokenizer's pad token, else its EOS,
    /// else the config's first EOS, else 0.
    pub fn pad_token_id(&self) -> u32 {
        self.tokenizer
            .as_ref()
            .and_then(|t| t.pad_id().or(t.eos_id()))
            .or(self.config.eos_token_id.first().copied())
            .unwrap_or(0)
    }
}

fn sequence_class(causal: &str) -> String {
    causal.replace("ForCausalLM", "ForSequenceClassification")
}

/// Writes an HF `LlamaForSequenceClassification` directory: `model.safetensors` (f32,
/// `model.*` and `score.weight`), `config.json` (`num_labels: 1`, `pad_token_id`) and the
/// tokenizer files.
pub fn save_reward_model(dir: &Path, m: &RewardDir) -> Result<(), RewardError> {
    let file_err = |path: &Path, e: std::io::Error| RewardError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let tensors = checkpoint::named_tensors(&m.model);
    checkpoint::save_safetensors(&dir.join("model.safetensors"), &tensors, StoreDtype::F32)?;
    let mut config = m.config.to_hf_json(StoreDtype::F32.torch_name());
    let obj = config.as_object_mut().expect("an object");
    obj.insert(
        "architectures".into(),
        json!([sequence_class(m.config.architecture.hf_class())]),
    );
    obj.insert("num_labels".into(), json!(1));
    obj.insert("id2label".into(), json!({"0": "LABEL_0"}));
    obj.insert("label2id".into(), json!({"LABEL_0": 0}));
    obj.insert("pad_token_id".into(), json!(m.pad_token_id()));
    let path = dir.join("config.json");
    distill_model::fsutil::write_json_atomic(&path, &config).map_err(|e| file_err(&path, e))?;
    if let Some(t) = &m.tokenizer {
        t.save_dir(dir).map_err(CheckpointError::from)?;
    }
    Ok(())
}

/// Loads a reward model directory that [`save_reward_model`] (or transformers'
/// `LlamaForSequenceClassification.save_pretrained` with one label) wrote.
pub fn load_reward_model(dir: &Path, device: &Device) -> Result<RewardDir, RewardError> {
    let path = dir.join("config.json");
    let bad = |reason: String| RewardError::File {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let mut value: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let class = value["architectures"][0].as_str().unwrap_or_default();
    let causal = [
        distill_model::Architecture::Llama,
        distill_model::Architecture::Qwen2,
    ]
    .into_iter()
    .map(|a| a.hf_class())
    .find(|c| sequence_class(c) == class)
    .ok_or_else(|| {
        bad(format!(
            "architectures is {:?}, not a reward model (LlamaForSequenceClassification)",
            value["architectures"]
        ))
    })?;
    let labels = value
        .get("id2label")
        .and_then(Value::as_object)
        .map(|m| m.len() as u64)
        .or(value.get("num_labels").and_then(Value::as_u64))
        .unwrap_or(1);
    if labels != 1 {
        return Err(bad(format!(
            "{labels} labels: a reward model has exactly one"
        )));
    }
    value["architectures"] = json!([causal]);
    let config = LlamaConfig::from_hf_json(&value, &path.display().to_string())
        .map_err(CheckpointError::from)?;
    // The backbone alone: no `lm_head` is read.
    let backbone = LlamaConfig {
        tie_word_embeddings: true,
        ..config.clone()
    };
    let mut source = SafetensorsSource::open(&SafetensorsSource::dir_files(dir)?, device)?;
    let lm = LlamaForCausalLM::build(&backbone, &mut source)?;
    let score = Linear::build(&mut source, "score", config.hidden_size, 1, false)?;
    let unused = source.unused();
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} tensors were not used: {unused:?}",
            dir.display(),
            unused.len()
        );
    }
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir).map_err(CheckpointError::from)?)
    } else {
        None
    };
    Ok(RewardDir {
        model: RewardModel {
            model: lm.model,
            score,
            head_dim: config.head_dim,
            rope_theta: config.rope_theta,
        },
        config,
        tokenizer,
    })
}

/// What a reward-model run produced.
pub struct RewardSummary {
    /// Where the reward model directory was written (when the run finished).
    pub model_dir: PathBuf,
    /// Where the accuracy report was written (when the run finished).
    pub report_path: PathBuf,
    /// Steps completed (including before a resume).
    pub steps: usize,
    /// Loss curve.
    pub history: Vec<LossPoint>,
    /// Training prompts.
    pub train_rankings: usize,
    /// Answers (all sets) whose prompt lost its first tokens.
    pub truncated_prompts: usize,
    /// Answers (all sets) that lost tokens to the response limit.
    pub truncated_responses: usize,
    /// Held-out accuracy on the validation rankings (when the run finished and there are any).
    pub validation: Option<AccuracyReport>,
    /// Accuracy on `test_data` (when given and the run finished).
    pub test: Option<AccuracyReport>,
    /// Wall time of this invocation.
    pub seconds: f64,
}

/// The order training rankings are drawn in: by `train_shares` when given (a file with a
/// share must have rankings left for training), else uniformly over the whole set.
fn training_draws(config: &RewardConfig, train: &[EncodedRanking]) -> Result<Mixture, RewardError> {
    let seed = config.train.seed;
    let Some(shares) = &config.train_shares else {
        return Ok(Mixture::uniform(train.len(), seed));
    };
    let mut groups = vec![Vec::new(); shares.len()];
    for (i, r) in train.iter().enumerate() {
        groups[r.file].push(i);
    }
    let files: Vec<&PathBuf> = config.train_data.iter().collect();
    let mut kept = (Vec::new(), Vec::new());
    for ((group, &share), file) in groups.into_iter().zip(shares).zip(files) {
        if group.is_empty() && share > 0.0 {
            return Err(RewardError::Config(format!(
                "{}: a train_shares share of {share} but no rankings left for training",
                file.display()
            )));
        }
        if share > 0.0 {
            kept.0.push(group);
            kept.1.push(share);
        }
    }
    Ok(Mixture::new(kept.0, &kept.1, seed))
}

/// Trains a reward model on `device` (autodiff is added here).
pub fn run(
    config: &RewardConfig,
    device: &Device,
    control: &TrainControl,
) -> Result<RewardSummary, RewardError> {
    let started = Instant::now();
    config.train.validate().map_err(RewardError::Config)?;
    check_common(
        !config.train_data.is_empty(),
        &config.init,
        config.valid_fraction,
        config.max_prompt_tokens,
        config.max_response_tokens,
    )
    .map_err(RewardError::Config)?;
    config.check_shares().map_err(RewardError::Config)?;
    let read = |files: &Option<DataFiles>| -> Result<_, RecordError> {
        files.as_ref().map(records::read_rankings_from).transpose()
    };
    let rankings = records::read_rankings_from(&config.train_data)?;
    let (valid_rankings, test_rankings) = (read(&config.valid_data)?, read(&config.test_data)?);

    let device = device.clone().autodiff();
    let mut m = distill_model::load::load_model(&config.init, &device)?;
    let tokenizer = distill_model::load::take_training_tokenizer(&mut m, &config.init)
        .map_err(RewardError::Config)?;
    let encoder = ChatEncoder::new(
        &tokenizer,
        config.max_prompt_tokens,
        config.max_response_tokens,
    )
    .map_err(|e| RewardError::Chat {
        origin: config.init.display().to_string(),
        source: e.into(),
    })?;
    let encoded = encode_rankings(&encoder, &rankings)?;
    let (train_set, valid_set) = match valid_rankings {
        Some(v) => (encoded, encode_rankings(&encoder, &v)?),
        None => hold_out(encoded, config.valid_fraction, config.train.seed),
    };
    let test_set = test_rankings
        .map(|t| encode_rankings(&encoder, &t))
        .transpose()?;
    if train_set.is_empty() {
        return Err(RewardError::Config(format!(
            "{}: no rankings left for training",
            config.train_data
        )));
    }
    let answers = || {
        train_set
            .iter()
            .chain(&valid_set)
            .chain(test_set.iter().flatten())
            .flat_map(|r| &r.responses)
    };
    let truncated_prompts = answers().filter(|c| c.prompt_truncated).count();
    let truncated_responses = answers().filter(|c| c.response_truncated).count();
    tracing::info!(
        "{} training and {} validation prompts ({} pairs for training); of {} answers, \
         {truncated_prompts} prompts cut to {} tokens, {truncated_responses} responses to {}",
        train_set.len(),
        valid_set.len(),
        train_set.iter().map(|r| r.pairs.len()).sum::<usize>(),
        answers().count(),
        config.max_prompt_tokens,
        config.max_response_tokens
    );
    let train_rankings = train_set.len();
    let draws = training_draws(config, &train_set)?;
    let pad = encoder.pad_id();
    let model = RewardModel::from_causal_lm(m.model, &m.config, config.train.seed);
    let mut task = RewardModeling {
        train: train_set,
        valid: valid_set,
        draws,
        batch_size: config.train.batch_size,
        pad,
    };
    let outcome = train::train(
        model,
        &mut task,
        &config.train,
        &config.out.join("checkpoints"),
        control,
    )?;

    let model_dir = config.out.join("model");
    let report_path = config.out.join("reward_report.json");
    let finished = outcome.steps_done == config.train.steps;
    let (mut validation, mut test) = (None, None);
    if finished {
        let scorer = outcome.model.valid();
        let held_out_name = match &config.valid_data {
            Some(files) => files.to_string(),
            None => format!("{} (held out)", config.train_data),
        };
        // As many sequences a forward as a training micro-batch of the largest rankings holds.
        let widest = task.train.iter().map(|r| r.responses.len()).max();
        let rows = config.train.batch_size * widest.unwrap_or(1);
        let quiet = control.quiet;
        validation = (!task.valid.is_empty())
            .then(|| AccuracyReport::new(&scorer, &task.valid, rows, pad, held_out_name, quiet));
        test = test_set
            .as_ref()
            .zip(config.test_data.as_ref())
            .map(|(t, files)| AccuracyReport::new(&scorer, t, rows, pad, files.to_string(), quiet));
        let dir = RewardDir {
            config: m.config.clone(),
            model: outcome.model,
            tokenizer: Some(tokenizer),
        };
        save_reward_model(&model_dir, &dir)?;
        let report = json!({
            "init": config.init,
            "steps": outcome.steps_done,
            "validation": validation,
            "test": test,
        });
        write_json(&report_path, &report)?;
    }
    let log = json!({
        "config": config,
        "steps": outcome.steps_done,
        "train_rankings": train_rankings,
        "truncated_prompts": truncated_prompts,
        "truncated_responses": truncated_responses,
        "history": outcome.history,
    });
    write_json(&config.out.join("train_log.json"), &log)?;
    Ok(RewardSummary {
        model_dir,
        report_path,
        steps: outcome.steps_done,
        history: outcome.history,
        train_rankings,
        truncated_prompts,
        truncated_responses,
        validation,
        test,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn write_json(path: &Path, value: &Value) -> Result<(), RewardError> {
    distill_model::fsutil::write_json_atomic(path, value).map_err(|e| RewardError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sft::tests::chatml_tokenizer;

    fn tiny(vocab: usize) -> (LlamaConfig, RewardModel) {
        let mut c = LlamaConfig::llama(vocab, 16, 32, 2, 4, 2);
        c.initializer_range = 0.2;
        let lm = c.init(&Device::flex(), 3);
        let m = RewardModel::from_causal_lm(lm, &c, 9);
        (c, m)
    }

    /// The shipped man-page configs of the steps after SFT read, with valid settings: the
    /// reward model's reads the rankings and the near misses of each split as one set.
    #[test]
    fn the_man_page_reward_and_compare_configs_read() {
        // Cargo's runtime value: the build-time one names the checkout that built the binary.
        let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let configs = Path::new(&crate_dir).join("../configs");
        let c = RewardConfig::from_toml_file(&configs.join("reward-manpages.toml")).unwrap();
        c.train.validate().unwrap();
        c.check_shares().unwrap();
        assert!(c.train_shares.is_some());
        for (files, split) in [
            (Some(&c.train_data), "train"),
            (c.valid_data.as_ref(), "validation"),
            (c.test_data.as_ref(), "test"),
        ] {
            let names: Vec<String> = files
                .unwrap()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            assert_eq!(
                names,
                [
                    format!("assets/questions/rankings.{split}.jsonl"),
                    format!("assets/questions/near_misses.{split}.jsonl")
                ]
            );
        }
        let path = configs.join("compare-manpages.toml");
        let c = crate::compare::CompareConfig::from_toml_file(&path).unwrap();
        c.validate().unwrap();
        let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["base", "sft", "ppo"]);
    }

    /// `train_shares` names one share per file, and a file with a share must keep rankings
    /// for training; without shares the config serializes as before (recipe stage keys).
    #[test]
    fn train_shares_are_checked() {
        let mut c = RewardConfig {
            train_data: DataFiles(vec!["a.jsonl".into(), "b.jsonl".into()]),
            ..RewardConfig::default()
        };
        assert!(!serde_json::to_string(&c).unwrap().contains("train_shares"));
        c.check_shares().unwrap();
        for bad in [
            vec![1.0],
            vec![1.0, -1.0],
            vec![0.0, 0.0],
            vec![1.0, f64::NAN],
        ] {
            c.train_shares = Some(bad.clone());
            let e = c.check_shares().unwrap_err();
            assert!(e.contains("train_shares"), "{bad:?}: {e}");
        }
        c.train_shares = Some(vec![3.0, 1.0]);
        c.check_shares().unwrap();
        let ranking = |file| EncodedRanking {
            file,
            responses: Vec::new(),
            pairs: Vec::new(),
            kinds: None,
            question: None,
        };
        // Every ranking from the first file: the second's share has nothing to draw.
        let only_first = [ranking(0), ranking(0)];
        let e = training_draws(&c, &only_first).err().unwrap().to_string();
        assert!(
            e.contains("b.jsonl") && e.contains("no rankings left"),
            "{e}"
        );
        // With a zero share the empty file is fine and never drawn.
        c.train_shares = Some(vec![1.0, 0.0]);
        let mut draws = training_draws(&c, &only_first).unwrap();
        assert!((0..10).all(|i| draws.record(i) < 2));
        let mixed = [ranking(0), ranking(1), ranking(1), ranking(1)];
        c.train_shares = Some(vec![1.0, 1.0]);
        let mut draws = training_draws(&c, &mixed).unwrap();
        let firsts = (0..1000).filter(|&i| draws.record(i) == 0).count();
        assert!(
            (400..600).contains(&firsts),
            "{firsts} of 1000 from a.jsonl"
        );
    }

    #[test]
    fn ranking_loss_matches_its_definition() {
        let device = Device::flex();
        let r = [0.5f32, -1.0, 2.0, 0.25, 1.5];
        let rewards = Tensor::<1>::from_data(r, &device);
        let groups = vec![vec![(2, 0), (2, 1), (0, 1)], vec![(4, 3)]];
        let got = ranking_loss(rewards, &groups).into_scalar::<f32>() as f64;
        let nll = |b: usize, w: usize| (1.0 + (-(r[b] as f64 - r[w] as f64)).exp()).ln();
        let expected = ((nll(2, 0) + nll(2, 1) + nll(0, 1)) / 3.0 + nll(4, 3)) / 2.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    }

    #[test]
    fn the_score_is_read_at_the_last_real_token() {
        let (_, m) = tiny(40);
        let device = Device::flex();
        let a: &[u32] = &[1, 5, 7, 3, 9];
        let b: &[u32] = &[2, 8];
        let alone = |row: &[u32]| m.score_rows(&[row], 0)[0];
        let together = m.score_rows(&[a, b], 0);
        assert!((together[0] - alone(a)).abs() < 1e-5);
        assert!((together[1] - alone(b)).abs() < 1e-5);
        // Different padding ids change nothing.
        assert!((m.score_rows(&[a, b], 33)[1] - together[1]).abs() < 1e-5);
        // It is the head applied to the last hidden state.
        let ids = ids_tensor(a, [1, a.len()], &device);
        let hidden = m
            .model
            .forward(ids, &Layout::causal(1, a.len()), 4, 10_000.0);
        let w: Vec<f32> = m.score.weight_values();
        let h: Vec<f32> = hidden
            .narrow(1, a.len() - 1, 1)
            .into_data()
            .try_to_vec()
            .unwrap();
        let dot: f32 = w.iter().zip(&h).map(|(x, y)| x * y).sum();
        assert!((dot - alone(a)).abs() < 1e-5, "{dot} vs {}", alone(a));
    }

    #[test]
    fn saved_models_load_with_hf_names_and_the_same_scores() {
        let tokenizer = chatml_tokenizer();
        let (config, model) = tiny(tokenizer.vocab_size());
        let m = RewardDir {
            config,
            model,
            tokenizer: Some(tokenizer),
        };
        let dir = tempfile::tempdir().unwrap();
        save_reward_model(dir.path(), &m).unwrap();
        let names: Vec<String> = checkpoint::tensor_infos(&dir.path().join("model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _, shape)| format!("{n}{shape:?}"))
            .collect();
        assert!(
            names.contains(&"score.weight[1, 16]".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"model.norm.weight[16]".to_string()));
        assert!(!names.iter().any(|n| n.starts_with("lm_head")));
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            json["architectures"],
            json!(["LlamaForSequenceClassification"])
        );
        assert_eq!(json["num_labels"], 1);
        assert_eq!(json["pad_token_id"], json!(m.pad_token_id()));

        let back = load_reward_model(dir.path(), &Device::flex()).unwrap();
        assert!(back.tokenizer.unwrap().chat_template.is_some());
        let rows: [&[u32]; 2] = [&[1, 2, 3, 4], &[5, 6]];
        assert_eq!(
            m.model.score_rows(&rows, 0),
            back.model.score_rows(&rows, 0)
        );

        // A causal LM directory is not a reward model.
        let mut other = json.clone();
        other["architectures"] = json!(["LlamaForCausalLM"]);
        std::fs::write(dir.path().join("config.json"), other.to_string()).unwrap();
        let err = load_reward_model(dir.path(), &Device::flex())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("not a reward model"),
            "{err}"
        );
    }
}
