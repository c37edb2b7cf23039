//! `distill teacher compare`: the models of the InstructGPT path (base, SFT, PPO) side by side
//! on held-out prompts, as InstructGPT compares its stages. Each model answers every prompt
//! greedily (chat template, at most `max_new_tokens`); each answer is scored by the gold judge
//! and, when given, the reward model; its KL to the reference policy (the SFT model) is summed
//! over the answer's tokens; and the multiple-choice rankings are scored. Every gain between
//! consecutive models (and from the first to the last) comes with a paired-bootstrap 95%
//! interval over the prompts or questions ([`crate::bootstrap`]).
//!
//! KL here is exact per position: Σ_t Σ_v π(v|ctx_t)·(log π − log π_ref)(v|ctx_t) along the
//! model's own greedy answer, in nats per answer (PPO's log samples at temperature 1 and
//! estimates it from the sampled tokens, so the two differ).
//!
//! With `samples`, each model also answers every prompt that many times at temperature 1, as
//! PPO samples: PPO maximizes the expected reward of such answers, which greedy decoding does
//! not measure. A prompt's sampled scores are averaged before the bootstrap. With two or more
//! samples and a reward model, it also measures how well the reward model can guide PPO: how
//! often it orders two sampled answers to one prompt as the gold judge does, and what the reward
//! model buys without training: the gold score of the sampled answer it ranks first (best-of-n,
//! a policy within log n − (n−1)/n nats of the model), against the mean sampled answer.

use crate::bootstrap::{Interval, mean_interval, paired_difference};
use crate::ppo::policy::response_log_dist;
use crate::ppo::rollout::{RolloutBatch, sampling_config};
use crate::ppo::{RewardFn, RewardModelFn, chat_prompts, stop_tokens};
use crate::questions::choice::{ChoiceError, evaluate_choices};
use crate::questions::judge::{GoldJudge, JudgeError};
use crate::records::{self, Prompt, RecordError};
use crate::reward::RewardError;
use burn::prelude::*;
use distill_model::chat::{ChatError, ChatTemplate};
use distill_model::checkpoint::ModelDir;
use distill_model::fsutil::{write_bytes_atomic, write_json_atomic};
use distill_model::generate::{Continuation, GenerateConfig, generate_continuations};
use distill_model::llama::LlamaForCausalLM;
use distill_model::sample::SamplingConfig;
use distill_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Confidence level of every interval.
pub const LEVEL: f64 = 0.95;

/// One model to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedModel {
    /// Its name in the report (`base`, `sft`, `ppo`).
    pub name: String,
    /// An HF directory or a GGUF file.
    pub path: PathBuf,
}

/// Everything `teacher compare` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompareConfig {
    /// The models, in the order of the path; each is compared with the one before it, and
    /// the last with the first. At least two. Default none.
    pub models: Vec<NamedModel>,
    /// The model KL is measured against, by name. Default `sft`; when no model has this
    /// name, no KL is measured.
    pub reference: String,
    /// The reward model (`teacher reward`'s `OUT/model`); none skips the reward score.
    /// Default none.
    pub reward_model: Option<PathBuf>,
    /// Held-out prompts, `{"id","prompt"}`, whose ids the judge knows. Default
    /// `assets/questions/prompts.test.jsonl`.
    pub prompts: PathBuf,
    /// The gold judge's facts. Default `assets/questions/facts.jsonl`.
    pub gold_facts: PathBuf,
    /// Rankings for the multiple-choice accuracy; none skips it. Default
    /// `assets/questions/rankings.test.jsonl`.
    pub rankings: Option<PathBuf>,
    /// Prompts longer than this many tokens (chat template applied) are skipped. Default 64.
    pub max_prompt_length: usize,
    /// Most tokens per answer. Default 48.
    pub max_new_tokens: usize,
    /// Prompts answered (and sequences scored) per forward. Default 8.
    pub batch_size: usize,
    /// Bootstrap resamples per interval. Default 10000.
    pub bootstrap_samples: usize,
    /// Seed of the resampling. Default 0.
    pub seed: u64,
    /// Prompts whose answers are shown in the report, every model's side by side. Default 3.
    pub examples: usize,
    /// Answers per prompt sampled at temperature 1 (seeded by `seed`), besides the greedy
    /// one, scored by the gold judge and the reward model; 0 skips them. Default 0.
    pub samples: usize,
    /// Output folder: `compare.json`, `compare.md`, `answers.jsonl`. Default `runs/compare`.
    pub out: PathBuf,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            reference: "sft".into(),
            reward_model: None,
            prompts: "assets/questions/prompts.test.jsonl".into(),
            gold_facts: "assets/questions/facts.jsonl".into(),
            rankings: Some("assets/questions/rankings.test.jsonl".into()),
            max_prompt_length: 64,
            max_new_tokens: 48,
            batch_size: 8,
            bootstrap_samples: 10_000,
            seed: 0,
            examples: 3,
            samples: 0,
            out: "runs/compare".into(),
        }
    }
}

impl CompareConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the file and key.
    pub fn from_toml_file(path: &Path) -> Result<Self, String> {
        distill_model::fsutil::read_toml(path)
    }

    /// Checks the settings make sense; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.models.len() < 2 {
            return Err(format!(
                "models: {} given, at least two are needed to compare",
                self.models.len()
            ));
        }
        for (i, m) in self.models.iter().enumerate() {
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("models: the name `{}` is used twice", m.name));
            }
        }
        crate::at_least_one(&[
            ("max_prompt_length", self.max_prompt_length),
            ("max_new_tokens", self.max_new_tokens),
            ("batch_size", self.batch_size),
            ("bootstrap_samples", self.bootstrap_samples),
        ])
    }
}

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// A model could not be loaded.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// Models that do not share a tokenizer.
    #[error("models `{first}` and `{other}` do not share a tokenizer: {reason}")]
    Vocabulary {
        first: String,
        other: String,
        reason: String,
    },
    /// The prompts file is unusable.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The chat template cannot render a prompt.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The reward model could not be loaded.
    #[error(transparent)]
    RewardModel(#[from] RewardError),
    /// The gold judge's facts are unusable, or lack a prompt's id.
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// The rankings could not be scored.
    #[error(transparent)]
    Choice(#[from] ChoiceError),
    /// An output file could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One model's scores: means over the prompts (questions for the accuracy) with intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelScores {
    /// The model's name.
    pub name: String,
    /// Where it was loaded from.
    pub path: String,
    /// Gold judge score in [0, 1].
    pub gold: Interval,
    /// Reward model score.
    pub reward: Option<Interval>,
    /// KL to the reference, nats per answer (none for the reference itself).
    pub kl_to_reference: Option<Interval>,
    /// Multiple-choice accuracy (summed log-probability).
    pub choice_accuracy: Option<Interval>,
    /// Mean answer length in tokens (with the stop token, if any).
    pub answer_tokens: f64,
    /// Fraction of answers that ended with a stop token before `max_new_tokens`.
    pub finished: f64,
    /// Gold score of the sampled answers (with `samples`).
    #[serde(default)]
    pub sampled_gold: Option<Interval>,
    /// Reward of the sampled answers (with `samples` and a reward model).
    #[serde(default)]
    pub sampled_reward: Option<Interval>,
    /// Mean sampled answer length in tokens (with `samples`).
    #[serde(default)]
    pub sampled_tokens: Option<f64>,
    /// Per prompt, the fraction of pairs of its sampled answers with different gold scores
    /// that the reward model orders as the gold judge does (a reward tie counts half); over
    /// the prompts with such a pair (with `samples` ≥ 2 and a reward model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_agreement: Option<Interval>,
    /// Prompts with a pair of sampled answers the gold judge tells apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampled_agreement_prompts: Option<usize>,
    /// Gold score of the sampled answer the reward model ranks first (best-of-n; tied answers
    /// averaged), with `samples` ≥ 2 and a reward model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_n_gold: Option<Interval>,
    /// `best_of_n_gold` minus the mean sampled gold score, paired over the prompts: what
    /// choosing by the reward model gains on the gold judge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_n_gain: Option<Interval>,
}

/// The gain of `to` over `from` in one metric, paired over the same prompts or questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gain {
    /// The earlier model.
    pub from: String,
    /// The later model.
    pub to: String,
    /// `gold`, `reward`, `choice_accuracy`, `sampled_gold` or `sampled_reward`.
    pub metric: String,
    /// Mean of `to − from` with its interval.
    pub gain: Interval,
    /// Items paired.
    pub n: usize,
}

/// One model's answer to a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The prompt's id.
    pub id: String,
    /// The model's name.
    pub model: String,
    /// The decoded answer, without its stop token.
    pub answer: String,
    /// The answer's token ids, with the stop token that ended it, if any.
    pub tokens: Vec<u32>,
    /// Gold judge score.
    pub gold: f64,
    /// Reward model score.
    pub reward: Option<f64>,
    /// KL to the reference along the answer, nats.
    pub kl: Option<f64>,
}

/// A prompt with every model's answer, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The prompt's id.
    pub id: String,
    /// The user's turn.
    pub prompt: String,
    /// One answer per model, in model order.
    pub answers: Vec<Answer>,
}

/// What `teacher compare` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// The prompts file and its SHA-256.
    pub prompts: String,
    pub prompts_sha256: String,
    /// Prompts answered (those within `max_prompt_length`).
    pub prompts_used: usize,
    /// The rankings file, when scored, and its question count.
    pub rankings: Option<String>,
    pub questions: usize,
    /// The model KL is measured against, if any.
    pub reference: Option<String>,
    /// Decoding: greedy, at most this many tokens.
    pub max_new_tokens: usize,
    /// Answers sampled per prompt at temperature 1 (0: none).
    #[serde(default)]
    pub samples: usize,
    /// Bootstrap resamples per interval, confidence level, seed.
    pub bootstrap_samples: usize,
    pub level: f64,
    pub seed: u64,
    /// Per model, in order.
    pub models: Vec<ModelScores>,
    /// Consecutive gains, then last over first.
    pub gains: Vec<Gain>,
    /// Sample answers.
    pub examples: Vec<Example>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Per-item measurements of one model.
struct Measured {
    answers: Vec<Answer>,
    /// Answer lengths in tokens, with the stop token.
    lengths: Vec<usize>,
    finished: Vec<bool>,
    correct: Option<Vec<f64>>,
    sampled: Option<Sampled>,
}

/// Per-prompt means over the sampled answers of one model.
struct Sampled {
    gold: Vec<f64>,
    reward: Option<Vec<f64>>,
    /// [`reward_gold_agreement`] of each prompt that has a pair the gold judge tells apart.
    agreement: Option<Vec<f64>>,
    /// Per prompt, [`best_by_reward`] of its sampled answers.
    best: Option<Vec<f64>>,
    /// Every sampled answer, sample by sample.
    answers: Vec<Answer>,
    /// Mean answer length over every sampled answer, tokens.
    tokens: f64,
}

/// Runs the comparison of `config` on `device` and writes its files.
pub fn run(config: &CompareConfig, device: &Device) -> Result<CompareReport, CompareError> {
    config.validate().map_err(CompareError::Config)?;
    let t0 = Instant::now();
    let judge = GoldJudge::load(&config.gold_facts)?;
    let records: Vec<Prompt> = records::read_jsonl(&config.prompts)?;
    let first = distill_model::load::load_model(&config.models[0].path, device)?;
    let tokenizer = first.tokenizer.clone().ok_or_else(|| {
        CompareError::Config(format!(
            "{}: no tokenizer.json next to the model",
            config.models[0].path.display()
        ))
    })?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let (kept, prompts) = chat_prompts(
        records,
        &tokenizer,
        &template,
        config.max_prompt_length,
        &config.prompts,
    )?;
    if prompts.is_empty() {
        return Err(CompareError::Config(format!(
            "{}: no prompt fits max_prompt_length = {} tokens",
            config.prompts.display(),
            config.max_prompt_length
        )));
    }
    let ids: Vec<String> = kept
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = p.id.clone().unwrap_or_default();
            judge.score(&id, "").map(|_| id).map_err(|_| {
                CompareError::Config(format!(
                    "{}: prompt {} (id {:?}) has no facts in {}",
                    config.prompts.display(),
                    i + 1,
                    p.id,
                    config.gold_facts.display()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    let stops = stop_tokens(&first, &tokenizer, &template);
    let mut reward = match &config.reward_model {
        Some(path) => {
            let rm = crate::reward::load_reward_model(path, device)?;
            Some(RewardModelFn::new(rm.model, &tokenizer)?)
        }
        None => None,
    };

    let load_checked = |spec: &NamedModel| -> Result<ModelDir, CompareError> {
        let m = distill_model::load::load_model(&spec.path, device)?;
        let name0 = &config.models[0].name;
        match first.vocabulary_mismatch(name0, &m, &spec.name) {
            Some(reason) => Err(CompareError::Vocabulary {
                first: name0.clone(),
                other: spec.name.clone(),
                reason,
            }),
            None => Ok(m),
        }
    };
    let reference_index = config
        .models
        .iter()
        .position(|m| m.name == config.reference);
    // Loaded once, before the models KL is measured against it (the first model is at hand).
    let reference_dir = match reference_index {
        Some(r) if r > 0 => Some(load_checked(&config.models[r])?),
        _ => None,
    };
    let context = Context {
        config,
        prompts: &prompts,
        ids: &ids,
        stops: &stops,
        tokenizer: &tokenizer,
        judge: &judge,
        device,
    };
    let reference = reference_index.map(|_| reference_dir.as_ref().unwrap_or(&first));
    let mut measured = Vec::with_capacity(config.models.len());
    for (i, spec) in config.models.iter().enumerate() {
        let loaded;
        let m = match reference {
            _ if i == 0 => &first,
            Some(r) if reference_index == Some(i) => r,
            _ => {
                loaded = load_checked(spec)?;
                &loaded
            }
        };
        let kl_reference = reference
            .filter(|_| reference_index != Some(i))
            .map(|r| &r.model);
        measured.push(context.measure(m, &spec.name, reward.as_mut(), kl_reference)?);
    }

    let prompts_sha256 = std::fs::read(&config.prompts)
        .map(|bytes| format!("{:x}", Sha256::digest(&bytes)))
        .map_err(|source| CompareError::Io {
            path: config.prompts.clone(),
            source,
        })?;
    let report = summarize(
        config,
        &kept,
        &measured,
        reference_index,
        prompts_sha256,
        t0,
    );
    write_outputs(config, &report, &measured)?;
    Ok(report)
}

/// What every model is measured with.
struct Context<'a> {
    config: &'a CompareConfig,
    prompts: &'a [Vec<u32>],
    ids: &'a [String],
    stops: &'a [u32],
    tokenizer: &'a Tokenizer,
    judge: &'a GoldJudge,
    device: &'a Device,
}

impl Context<'_> {
    /// Answers every prompt with `m` and scores the answers; scores the rankings.
    fn measure(
        &self,
        m: &ModelDir,
        name: &str,
        mut reward: Option<&mut RewardModelFn>,
        reference: Option<&LlamaForCausalLM>,
    ) -> Result<Measured, CompareError> {
        let (config, batch) = (self.config, self.config.batch_size);
        tracing::info!("`{name}`: answering {} prompts", self.prompts.len());
        let bar = distill_model::train::step_bar(self.prompts.len(), false);
        bar.set_message(format!("{name}: answers"));
        let generate = GenerateConfig {
            max_new_tokens: config.max_new_tokens,
            stop_tokens: self.stops.to_vec(),
            sampling: SamplingConfig::default(),
        };
        let mut tokens = Vec::with_capacity(self.prompts.len());
        let mut finished = Vec::with_capacity(self.prompts.len());
        for chunk in self.prompts.chunks(batch) {
            for c in generate_continuations(&m.model, chunk, &generate, self.device) {
                finished.push(c.stop_token.is_some());
                tokens.push(c.ids_with_stop());
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        let rewards: Option<Vec<f64>> = reward.as_deref_mut().map(|r| {
            self.prompts
                .chunks(batch)
                .zip(tokens.chunks(batch))
                .flat_map(|(p, t)| r.score(p, t))
                .map(f64::from)
                .collect()
        });
        let kl: Option<Vec<f64>> = reference.map(|reference| {
            self.prompts
                .chunks(batch)
                .zip(tokens.chunks(batch))
                .flat_map(|(p, t)| answer_kl(&m.model, reference, p, t))
                .collect()
        });
        let correct = match &config.rankings {
            Some(path) => {
                tracing::info!("`{name}`: scoring the rankings of {}", path.display());
                let report = evaluate_choices(m, name, path, batch, self.device, |_, _| {})?;
                let right = |p: &crate::questions::choice::ChoicePrediction| {
                    f64::from(u8::from(p.correct()))
                };
                Some(report.predictions.iter().map(right).collect())
            }
            None => None,
        };
        let mut answers = Vec::with_capacity(tokens.len());
        for (k, toks) in tokens.iter().enumerate() {
            let body = &toks[..toks.len() - usize::from(finished[k])];
            let text = self.tokenizer.decode(body).unwrap_or_default();
            answers.push(Answer {
                id: self.ids[k].clone(),
                model: name.to_string(),
                gold: self.judge.score(&self.ids[k], &text)?,
                answer: text,
                tokens: toks.clone(),
                reward: rewards.as_ref().map(|r| r[k]),
                kl: kl.as_ref().map(|v| v[k]),
            });
        }
        let sampled = match config.samples {
            0 => None,
            _ => Some(self.sample(m, name, reward)?),
        };
        Ok(Measured {
            answers,
            lengths: tokens.iter().map(Vec::len).collect(),
            finished,
            correct,
            sampled,
        })
    }

    /// `config.samples` answers per prompt at temperature 1, scored; the same seeds for every
    /// model.
    fn sample(
        &self,
        m: &ModelDir,
        name: &str,
        mut reward: Option<&mut RewardModelFn>,
    ) -> Result<Sampled, CompareError> {
        let (config, batch) = (self.config, self.config.batch_size);
        let n = self.prompts.len();
        tracing::info!(
            "`{name}`: sampling {} answers to each prompt",
            config.samples
        );
        let bar = distill_model::train::step_bar(n * config.samples, false);
        bar.set_message(format!("{name}: sampled answers"));
        let mut gold = vec![0.0; n];
        let mut rewards = reward.as_ref().map(|_| vec![0.0; n]);
        // Every sampled answer's (gold, reward), per prompt.
        let mut scored: Vec<Vec<(f64, f64)>> = vec![Vec::new(); n];
        let mut tokens = 0;
        let mut sampled = Vec::with_capacity(n * config.samples);
        for sample in 0..config.samples {
            for (c, chunk) in self.prompts.chunks(batch).enumerate() {
                let generate = sampling_config(
                    config.max_new_tokens,
                    self.stops,
                    config.seed ^ ((sample as u64) << 32) ^ c as u64,
                );
                let answers = generate_continuations(&m.model, chunk, &generate, self.device);
                let full: Vec<Vec<u32>> = answers.iter().map(Continuation::ids_with_stop).collect();
                let scores = match (reward.as_deref_mut(), rewards.as_mut()) {
                    (Some(r), Some(sum)) => {
                        let scores = r.score(chunk, &full);
                        for (k, &score) in scores.iter().enumerate() {
                            sum[c * batch + k] += f64::from(score);
                        }
                        Some(scores)
                    }
                    _ => None,
                };
                for (k, a) in answers.iter().enumerate() {
                    let i = c * batch + k;
                    let text = self.tokenizer.decode(&a.tokens).unwrap_or_default();
                    let g = self.judge.score(&self.ids[i], &text)?;
                    gold[i] += g;
                    if let Some(scores) = &scores {
                        scored[i].push((g, f64::from(scores[k])));
                    }
                    tokens += full[k].len();
                    sampled.push(Answer {
                        id: self.ids[i].clone(),
                        model: name.to_string(),
                        answer: text,
                        tokens: full[k].clone(),
                        gold: g,
                        reward: scores.as_ref().map(|s| f64::from(s[k])),
                        kl: None,
                    });
                }
                bar.inc(chunk.len() as u64);
            }
        }
        bar.finish_and_clear();
        let per = config.samples as f64;
        let mean = |v: Vec<f64>| v.into_iter().map(|x| x / per).collect::<Vec<f64>>();
        let agreement = rewards.is_some().then(|| {
            scored
                .iter()
                .filter_map(|s| reward_gold_agreement(s))
                .collect()
        });
        let best = (rewards.is_some() && config.samples >= 2)
            .then(|| scored.iter().map(|s| best_by_reward(s)).collect());
        Ok(Sampled {
            gold: mean(gold),
            reward: rewards.map(mean),
            agreement,
            best,
            answers: sampled,
            tokens: tokens as f64 / (n as f64 * per),
        })
    }
}

/// Σ over each answer's tokens of KL(π_model ‖ π_reference) at that position, in nats.
fn answer_kl(
    model: &LlamaForCausalLM,
    reference: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    answers: &[Vec<u32>],
) -> Vec<f64> {
    let batch = RolloutBatch::new(prompts.to_vec(), answers.to_vec());
    let p = response_log_dist(model, &batch);
    let q = response_log_dist(reference, &batch);
    let [b, r, _] = p.dims();
    let per_token: Vec<f32> = (p.clone().exp() * (p - q))
        .sum_dim(2)
        .reshape([b * r])
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 tensor");
    answers
        .iter()
        .enumerate()
        .map(|(i, a)| {
            per_token[i * r..i * r + a.len()]
                .iter()
                .map(|&x| f64::from(x))
                .sum()
        })
        .collect()
}

/// One value per prompt or question, when measured.
type Column = Option<Vec<f64>>;

/// Means with intervals per model, the gains, and the examples.
fn summarize(
    config: &CompareConfig,
    kept: &[Prompt],
    measured: &[Measured],
    reference: Option<usize>,
    prompts_sha256: String,
    t0: Instant,
) -> CompareReport {
    let (samples, seed) = (config.bootstrap_samples, config.seed);
    let column = |m: &Measured, f: fn(&Answer) -> Option<f64>| -> Column {
        m.answers.iter().map(f).collect()
    };
    let gold = |a: &Answer| Some(a.gold);
    let reward = |a: &Answer| a.reward;
    let kl = |a: &Answer| a.kl;
    let interval = |v: Column| v.map(|v| mean_interval(&v, samples, LEVEL, seed));
    let models = config
        .models
        .iter()
        .zip(measured)
        .map(|(spec, m)| {
            let n = m.answers.len().max(1) as f64;
            ModelScores {
                name: spec.name.clone(),
                path: spec.path.display().to_string(),
                gold: interval(column(m, gold)).expect("every answer has a gold score"),
                reward: interval(column(m, reward)),
                kl_to_reference: interval(column(m, kl)),
                choice_accuracy: interval(m.correct.clone()),
                answer_tokens: m.lengths.iter().sum::<usize>() as f64 / n,
                finished: m.finished.iter().filter(|&&f| f).count() as f64 / n,
                sampled_gold: interval(m.sampled.as_ref().map(|s| s.gold.clone())),
                sampled_reward: interval(m.sampled.as_ref().and_then(|s| s.reward.clone())),
                sampled_tokens: m.sampled.as_ref().map(|s| s.tokens),
                sampled_agreement: interval(m.sampled.as_ref().and_then(|s| s.agreement.clone()))
                    .filter(|i| !i.estimate.is_nan()),
                sampled_agreement_prompts: m
                    .sampled
                    .as_ref()
                    .and_then(|s| s.agreement.as_ref().map(Vec::len)),
                best_of_n_gold: interval(m.sampled.as_ref().and_then(|s| s.best.clone())),
                best_of_n_gain: m.sampled.as_ref().and_then(|s| {
                    let best = s.best.as_ref()?;
                    Some(paired_difference(&s.gold, best, samples, LEVEL, seed))
                }),
            }
        })
        .collect();

    let last = measured.len() - 1;
    let mut pairs: Vec<(usize, usize)> = (1..measured.len()).map(|i| (i - 1, i)).collect();
    if last > 1 {
        pairs.push((0, last));
    }
    let mut gains = Vec::new();
    for (a, b) in pairs {
        let sampled = |m: &Measured, f: fn(&Sampled) -> Column| m.sampled.as_ref().and_then(f);
        let sampled_gold = |s: &Sampled| Some(s.gold.clone());
        let sampled_reward = |s: &Sampled| s.reward.clone();
        let metrics: [(&str, Column, Column); 5] = [
            (
                "gold",
                column(&measured[a], gold),
                column(&measured[b], gold),
            ),
            (
                "reward",
                column(&measured[a], reward),
                column(&measured[b], reward),
            ),
            (
                "choice_accuracy",
                measured[a].correct.clone(),
                measured[b].correct.clone(),
            ),
            (
                "sampled_gold",
                sampled(&measured[a], sampled_gold),
                sampled(&measured[b], sampled_gold),
            ),
            (
                "sampled_reward",
                sampled(&measured[a], sampled_reward),
                sampled(&measured[b], sampled_reward),
            ),
        ];
        for (metric, before, after) in metrics {
            if let (Some(before), Some(after)) = (before, after) {
                gains.push(Gain {
                    from: config.models[a].name.clone(),
                    to: config.models[b].name.clone(),
                    metric: metric.to_string(),
                    gain: paired_difference(&before, &after, samples, LEVEL, seed),
                    n: before.len(),
                });
            }
        }
    }

    let step = (kept.len() / config.examples.max(1)).max(1);
    let examples = (0..kept.len())
        .step_by(step)
        .take(config.examples)
        .map(|k| Example {
            id: measured[0].answers[k].id.clone(),
            prompt: kept[k].prompt.clone(),
            answers: measured.iter().map(|m| m.answers[k].clone()).collect(),
        })
        .collect();
    CompareReport {
        prompts: config.prompts.display().to_string(),
        prompts_sha256,
        prompts_used: kept.len(),
        rankings: config.rankings.as_ref().map(|p| p.display().to_string()),
        questions: measured[0].correct.as_ref().map_or(0, Vec::len),
        reference: reference.map(|r| config.models[r].name.clone()),
        max_new_tokens: config.max_new_tokens,
        samples: config.samples,
        bootstrap_samples: samples,
        level: LEVEL,
        seed,
        models,
        gains,
        examples,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

/// `compare.json`, `compare.md`, `answers.jsonl` (every greedy answer) and, with `samples`,
/// `samples.jsonl` (every sampled answer) in `config.out`.
fn write_outputs(
    config: &CompareConfig,
    report: &CompareReport,
    measured: &[Measured],
) -> Result<(), CompareError> {
    let io = |path: PathBuf| move |source| CompareError::Io { path, source };
    std::fs::create_dir_all(&config.out).map_err(io(config.out.clone()))?;
    let json = config.out.join("compare.json");
    let value = serde_json::to_value(report).expect("report serializes");
    write_json_atomic(&json, &value).map_err(io(json.clone()))?;
    let md = config.out.join("compare.md");
    write_bytes_atomic(&md, report.markdown().as_bytes()).map_err(io(md.clone()))?;
    let answers = config.out.join("answers.jsonl");
    let greedy: Vec<&Answer> = measured.iter().flat_map(|m| &m.answers).collect();
    records::write_jsonl(&answers, &greedy).map_err(io(answers.clone()))?;
    if config.samples > 0 {
        let path = config.out.join("samples.jsonl");
        let sampled: Vec<&Answer> = measured
            .iter()
            .flat_map(|m| m.sampled.iter().flat_map(|s| &s.answers))
            .collect();
        records::write_jsonl(&path, &sampled).map_err(io(path.clone()))?;
    }
    Ok(())
}

/// Of the pairs of `(gold, reward)` scored answers to one prompt whose gold scores differ, the
/// fraction the reward orders the same way (a reward tie counts half); `None` without such a
/// pair. 0.5 is a reward that cannot tell the better answer, 1.0 one that always can.
pub fn reward_gold_agreement(scored: &[(f64, f64)]) -> Option<f64> {
    let (mut pairs, mut agree) = (0usize, 0.0);
    for (i, &(gold_i, reward_i)) in scored.iter().enumerate() {
        for &(gold_j, reward_j) in &scored[i + 1..] {
            if gold_i == gold_j {
                continue;
            }
            pairs += 1;
            agree += match (gold_i - gold_j) * (reward_i - reward_j) {
                x if x > 0.0 => 1.0,
                x if x < 0.0 => 0.0,
                _ => 0.5,
            };
        }
    }
    (pairs > 0).then(|| agree / pairs as f64)
}

/// The gold score of the answer with the highest reward among `(gold, reward)` scored answers
/// to one prompt; answers tied for it are averaged. NaN without answers.
pub fn best_by_reward(scored: &[(f64, f64)]) -> f64 {
    let top = scored
        .iter()
        .map(|&(_, reward)| reward)
        .fold(f64::NEG_INFINITY, f64::max);
    let tied: Vec<f64> = scored
        .iter()
        .filter(|&&(_, reward)| reward == top)
        .map(|&(gold, _)| gold)
        .collect();
    tied.iter().sum::<f64>() / tied.len() as f64
}

/// `0.123 [0.101, 0.145]`.
fn show(i: &Interval) -> String {
    format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
}

fn show_opt(i: &Option<Interval>) -> String {
    i.as_ref().map_or_else(|| "–".to_string(), show)
}

impl CompareReport {
    /// The tables (scores per model, gains with intervals) and the sample answers, in
    /// Markdown.
    pub fn markdown(&self) -> String {
        let pct = format!("{:.0}%", self.level * 100.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} held-out prompts of `{}` answered greedily (at most {} tokens){}; means with \
             {pct} bootstrap intervals ({} resamples, seed {}).\n",
            self.prompts_used,
            self.prompts,
            self.max_new_tokens,
            self.rankings.as_ref().map_or(String::new(), |r| format!(
                "; multiple choice on the {} questions of `{r}`",
                self.questions
            )),
            self.bootstrap_samples,
            self.seed
        );
        let kl_head = self
            .reference
            .as_ref()
            .map_or("KL".to_string(), |r| format!("KL to {r} (nats/answer)"));
        let _ = writeln!(
            s,
            "| model | gold score | reward | MC accuracy | {kl_head} | answer tokens | finished |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for m in &self.models {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} | {:.0}% |",
                m.name,
                show(&m.gold),
                show_opt(&m.reward),
                show_opt(&m.choice_accuracy),
                show_opt(&m.kl_to_reference),
                m.answer_tokens,
                m.finished * 100.0
            );
        }
        if self.samples > 0 {
            let _ = writeln!(
                s,
                "\n{} answers to each prompt sampled at temperature 1 (the scores of a prompt's \
                 answers averaged, then bootstrapped over the prompts):\n",
                self.samples
            );
            let _ = writeln!(
                s,
                "| model | sampled gold score | sampled reward | answer tokens | reward orders \
                 sampled pairs as gold does (prompts) | gold of the reward's pick (best-of-{n}) \
                 | its gain over the mean |",
                n = self.samples
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for m in &self.models {
                let agreement = match (&m.sampled_agreement, m.sampled_agreement_prompts) {
                    (Some(a), Some(n)) => format!("{} ({n})", show(a)),
                    _ => "–".to_string(),
                };
                let gain = m.best_of_n_gain.as_ref().map_or_else(
                    || "–".to_string(),
                    |g| {
                        format!(
                            "{:+.3} [{:+.3}, {:+.3}]{}",
                            g.estimate,
                            g.low,
                            g.high,
                            if g.above_zero() { " ✓" } else { "" }
                        )
                    },
                );
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.1} | {agreement} | {} | {gain} |",
                    m.name,
                    show_opt(&m.sampled_gold),
                    show_opt(&m.sampled_reward),
                    m.sampled_tokens.unwrap_or(f64::NAN),
                    show_opt(&m.best_of_n_gold),
                );
            }
        }
        let _ = writeln!(
            s,
            "\n| gain | metric | mean gain [{pct} CI] | paired items |"
        );
        let _ = writeln!(s, "|---|---|---|---|");
        for g in &self.gains {
            let _ = writeln!(
                s,
                "| {} → {} | {} | {:+.3} [{:+.3}, {:+.3}]{} | {} |",
                g.from,
                g.to,
                g.metric,
                g.gain.estimate,
                g.gain.low,
                g.gain.high,
                if g.gain.above_zero() { " ✓" } else { "" },
                g.n
            );
        }
        for e in &self.examples {
            let _ = writeln!(s, "\n**{}**: {}\n", e.id, e.prompt.replace('\n', " "));
            for a in &e.answers {
                let _ = writeln!(
                    s,
                    "- *{}* (gold {:.2}): {}",
                    a.model,
                    a.gold,
                    a.answer.replace('\n', " ").trim()
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{best_by_reward, reward_gold_agreement};

    #[test]
    fn best_of_n_takes_the_gold_of_the_highest_reward_and_averages_ties() {
        assert_eq!(best_by_reward(&[(0.2, 1.0), (0.9, 3.0), (0.5, 2.0)]), 0.9);
        assert_eq!(best_by_reward(&[(0.2, 3.0), (0.6, 3.0), (1.0, -1.0)]), 0.4);
        assert!(best_by_reward(&[]).is_nan());
    }

    #[test]
    fn agreement_counts_the_pairs_gold_tells_apart() {
        // Of the two pairs gold tells apart, the reward orders one as gold does (5 > 3; not
        // 5 > 9); the gold tie is skipped.
        let scored = [(1.0, 5.0), (0.5, 3.0), (0.5, 9.0)];
        assert_eq!(reward_gold_agreement(&scored), Some(0.5));
        assert_eq!(reward_gold_agreement(&[(0.0, 1.0), (1.0, 2.0)]), Some(1.0));
        assert_eq!(reward_gold_agreement(&[(0.0, 2.0), (1.0, 2.0)]), Some(0.5));
        assert_eq!(reward_gold_agreement(&[(0.3, 1.0), (0.3, 2.0)]), None);
        assert_eq!(reward_gold_agreement(&[(0.3, 1.0)]), None);
    }
}
