//! `distill teacher ppo`: the last stage of the InstructGPT path (Ouyang et al. 2022), PPO
//! (Schulman et al. 2017) against a reward with a KL penalty to the SFT policy, after Ziegler
//! et al. 2019 and TRL's `PPOTrainer`.
//!
//! - [`config`]: every setting ([`PpoConfig`]), TRL's names.
//! - [`policy`]: the LM with a value head, optionally with LoRA adapters.
//! - [`rollout`]: batched sampling with the KV cache, and the prompt+response layout.
//! - [`gae`]: per-token rewards (score at the last token − β·KL), GAE, whitening.
//! - [`kl`]: the adaptive KL coefficient.
//! - [`loss`]: the clipped surrogate and clipped value losses.
//! - [`log`]: `ppo_log.csv` and `ppo_log.svg`.
//! - [`reward_model`]: the trained reward model as the [`RewardFn`].
//! - `trainer`: the loop ([`train`]); [`run`] loads its inputs from files.

pub mod config;
mod exact;
pub mod gae;
pub mod kl;
pub mod log;
pub mod loss;
pub mod policy;
pub mod reward_model;
pub mod rollout;
mod trainer;

pub use config::{PpoConfig, PtxConfig};
pub use policy::{LoraConfig, PolicyWithValueHead};
pub use reward_model::RewardModelFn;
pub(crate) use trainer::stream_seed;
pub use trainer::{PpoOutcome, PpoRun, Selection, train};

use crate::questions::judge::{GoldJudge, JudgeError};
use crate::records::{self, Prompt, RecordError};
use crate::reward::RewardError;
use burn::prelude::Device;
use distill_model::chat::{self, ChatError, ChatTemplate, Message};
use distill_model::data::{self, DataError, PackedWindows};
use distill_model::tokenizer::Tokenizer;
use distill_model::train::{TrainControl, TrainError};
use std::path::PathBuf;

/// Scores finished rollouts: one scalar per (prompt, response) pair. A response ends with the
/// stop token that ended it (EOS or the chat template's end of turn), if one did.
pub trait RewardFn {
    /// The scores of `responses` to `prompts` (token ids), in order.
    fn score(&mut self, prompts: &[Vec<u32>], responses: &[Vec<u32>]) -> Vec<f32>;
}

impl<F: FnMut(&[Vec<u32>], &[Vec<u32>]) -> Vec<f32>> RewardFn for F {
    fn score(&mut self, prompts: &[Vec<u32>], responses: &[Vec<u32>]) -> Vec<f32> {
        self(prompts, responses)
    }
}

/// A gold (programmatic) judge, for the log only: never trained on.
pub trait GoldFn {
    /// The score of `response` to prompt number `prompt` of the run's prompt list.
    fn score(&mut self, prompt: usize, response: &[u32]) -> f64;
}

impl<F: FnMut(usize, &[u32]) -> f64> GoldFn for F {
    fn score(&mut self, prompt: usize, response: &[u32]) -> f64 {
        self(prompt, response)
    }
}

/// A gold judge of a prompt record's decoded answer, for [`run_with`].
pub type AnswerJudge<'a> = dyn Fn(&Prompt, &str) -> f64 + 'a;

/// Why PPO could not run.
#[derive(Debug, thiserror::Error)]
pub enum PpoError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// The policy could not be loaded.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// `OUT/model` could not be written.
    #[error(transparent)]
    Checkpoint(#[from] distill_model::checkpoint::CheckpointError),
    /// A run checkpoint could not be written or read.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The prompts file is unusable.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The PPO-ptx text is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The chat template cannot render a prompt.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The reward model could not be loaded.
    #[error(transparent)]
    RewardModel(#[from] RewardError),
    /// The gold judge's facts are unusable, or lack a prompt's id.
    #[error(transparent)]
    Judge(#[from] JudgeError),
    /// The reward returned the wrong number of scores, or a non-finite one.
    #[error("reward: {0}")]
    Reward(String),
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// The log could not be written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs `teacher ppo` from its files: the reward model of `config.reward_model` (on the plain
/// device) and, with `config.gold_facts`, the question set's gold judge, then [`run_with`].
pub fn run(
    config: &PpoConfig,
    device: &Device,
    control: &TrainControl,
) -> Result<PpoOutcome, PpoError> {
    config.validate().map_err(PpoError::Config)?;
    let rm = crate::reward::load_reward_model(&config.reward_model, device)?;
    let rm_name = config.reward_model.display();
    let tokenizer = rm.tokenizer.as_ref().ok_or_else(|| {
        PpoError::Config(format!(
            "{rm_name}: no tokenizer.json next to the reward model"
        ))
    })?;
    let mut reward = RewardModelFn::new(rm.model, tokenizer)?;
    let judge = match &config.gold_facts {
        Some(facts) => {
            let judge = gold_judge(facts, &config.prompts)?;
            if let Some(select) = &config.select_prompts {
                check_known(&judge, facts, select)?;
            }
            Some(judge)
        }
        None => None,
    };
    let gold = judge.as_ref().map(|j| {
        move |p: &Prompt, answer: &str| {
            let id = p.id.as_deref().unwrap_or_default();
            j.score(id, answer).unwrap_or(f64::NAN)
        }
    });
    run_with(
        config,
        device,
        control,
        &mut reward,
        gold.as_ref().map(|g| g as &AnswerJudge),
    )
}

/// The gold judge of `facts`, checked to know every prompt of `prompts` by its id.
fn gold_judge(facts: &std::path::Path, prompts: &std::path::Path) -> Result<GoldJudge, PpoError> {
    let judge = GoldJudge::load(facts)?;
    check_known(&judge, facts, prompts)?;
    Ok(judge)
}

/// An error unless `judge` (read from `facts`) knows every prompt of `prompts` by its id.
fn check_known(
    judge: &GoldJudge,
    facts: &std::path::Path,
    prompts: &std::path::Path,
) -> Result<(), PpoError> {
    for (i, p) in records::read_jsonl::<Prompt>(prompts)?.iter().enumerate() {
        let known =
            p.id.as_deref()
                .is_some_and(|id| judge.score(id, "").is_ok());
        if !known {
            return Err(PpoError::Config(format!(
                "{}: prompt {} (id {:?}) has no facts in the gold judge's {}",
                prompts.display(),
                i + 1,
                p.id,
                facts.display()
            )));
        }
    }
    Ok(())
}

/// `records` rendered as the user's turn with `template`'s generation prompt and tokenized,
/// skipping (with a warning) those over `max_len` tokens; returns the kept records and their
/// ids. None kept is an error naming `path`.
pub(crate) fn chat_prompts(
    records: Vec<Prompt>,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
    path: &std::path::Path,
) -> Result<(Vec<Prompt>, Vec<Vec<u32>>), ChatError> {
    let total = records.len();
    let mut kept = Vec::new();
    let mut prompts = Vec::new();
    for r in records {
        let text = template.render(&[Message::user(&r.prompt)], true)?;
        let ids = chat::encode_prompt(tokenizer, &text)?;
        if !ids.is_empty() && ids.len() <= max_len {
            prompts.push(ids);
            kept.push(r);
        }
    }
    if prompts.len() < total {
        tracing::warn!(
            "{}: skipped {} of {total} prompts longer than {max_len} tokens",
            path.display(),
            total - prompts.len(),
        );
    }
    Ok((kept, prompts))
}

/// The tokens that end a chat answer: the model's EOS ids, the tokenizer's EOS and the
/// template's end of turn.
pub(crate) fn stop_tokens(
    model: &distill_model::checkpoint::ModelDir,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) -> Vec<u32> {
    let mut stop = model.config.eos_token_id.clone();
    stop.extend(tokenizer.eos_id());
    stop.extend(template.end_of_turn(tokenizer));
    stop.sort_unstable();
    stop.dedup();
    stop
}

/// Runs PPO against `reward` with the rest from files: loads the SFT policy (`config.policy`)
/// on `device` with autodiff, sends each prompt of `config.prompts` through the policy's chat
/// template as the user's turn (skipping those over `max_prompt_length` tokens), reads the
/// PPO-ptx text, and trains. `gold`, when given, scores each prompt record's decoded answer
/// (without its stop token), on the training prompts for the log and on
/// `config.select_prompts` (which need it) to choose the step to keep.
pub fn run_with(
    config: &PpoConfig,
    device: &Device,
    control: &TrainControl,
    reward: &mut dyn RewardFn,
    gold: Option<&AnswerJudge<'_>>,
) -> Result<PpoOutcome, PpoError> {
    config.validate().map_err(PpoError::Config)?;
    let policy_name = config.policy.display().to_string();
    let sft = distill_model::load::load_model(&config.policy, &device.clone().autodiff())?;
    let tokenizer = sft.tokenizer.clone().ok_or_else(|| {
        PpoError::Config(format!(
            "{policy_name}: no tokenizer.json next to the policy"
        ))
    })?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;

    let read = |path| read_prompts(path, &tokenizer, &template, config.max_prompt_length);
    let (kept, prompts) = read(&config.prompts)?;
    let select = config.select_prompts.as_deref().map(read).transpose()?;
    let stop_tokens = stop_tokens(&sft, &tokenizer, &template);

    let ptx = match &config.ptx {
        Some(c) => {
            let tokens = data::tokenize_file(&tokenizer, &c.data)?;
            let origin = c.data.display().to_string();
            Some(PackedWindows::new(tokens, c.seq_len, config.seed, &origin)?)
        }
        None => None,
    };
    let mut judge = gold.map(|g| answer_gold(g, &kept, &tokenizer, &stop_tokens));
    let mut select_judge = gold
        .zip(select.as_ref())
        .map(|(g, (kept, _))| answer_gold(g, kept, &tokenizer, &stop_tokens));
    let select = match (&select, select_judge.as_mut()) {
        (Some((_, prompts)), Some(gold)) => Some(Selection {
            prompts,
            gold: gold as &mut dyn GoldFn,
        }),
        (Some(_), None) => {
            return Err(PpoError::Config(
                "select_prompts needs a gold judge (gold_facts)".into(),
            ));
        }
        _ => None,
    };
    train(
        config,
        PpoRun {
            sft,
            prompts: &prompts,
            stop_tokens: &stop_tokens,
            ptx: ptx.as_ref(),
            reward,
            gold: judge.as_mut().map(|j| j as &mut dyn GoldFn),
            select,
        },
        device,
        control,
    )
}

/// The prompts of `path` through [`chat_prompts`]; none kept is an error.
fn read_prompts(
    path: &std::path::Path,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_len: usize,
) -> Result<(Vec<Prompt>, Vec<Vec<u32>>), PpoError> {
    let records: Vec<Prompt> = records::read_jsonl(path)?;
    let (kept, prompts) = chat_prompts(records, tokenizer, template, max_len, path)?;
    if prompts.is_empty() {
        return Err(PpoError::Config(format!(
            "{}: none of its prompts fits max_prompt_length = {max_len} tokens",
            path.display()
        )));
    }
    Ok((kept, prompts))
}

/// `judge` of the decoded answer (a final stop token dropped) to prompt number i of `records`.
fn answer_gold<'a>(
    judge: &'a AnswerJudge<'a>,
    records: &'a [Prompt],
    tokenizer: &'a Tokenizer,
    stops: &'a [u32],
) -> impl FnMut(usize, &[u32]) -> f64 + 'a {
    move |i, response| {
        let answer = match response.split_last() {
            Some((last, rest)) if stops.contains(last) => rest,
            _ => response,
        };
        let text = tokenizer.decode(answer).unwrap_or_default();
        judge(&records[i], &text)
    }
}
