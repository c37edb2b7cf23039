//! `distill teacher sft`: supervised fine-tuning on demonstrations, the first step of
//! InstructGPT (Ouyang et al. 2022, <https://arxiv.org/abs/2203.02155>).
//!
//! Each demonstration is rendered with the model's chat template and tokenized; the loss is
//! next-token cross-entropy over the assistant's tokens only (its text and the end-of-turn
//! token, so the model learns to stop), with the prompt's tokens weighted 0. Batches are
//! right-padded and run on the shared training loop (checkpoints, resume, progress).

use burn::prelude::*;
use distill_model::chat::{ChatError, ChatTemplate, Message, encode_prompt};
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data::permutation;
use distill_model::loss::cross_entropy;
use distill_model::tokenizer::Tokenizer;
use distill_model::train::{self, LossPoint, TrainConfig, TrainControl, TrainTask};
use distill_model::{Layout, LlamaForCausalLM};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::records::{self, Demonstration, RecordError};

/// Everything `teacher sft` reads, as in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Demonstrations: JSON Lines of `{"prompt", "response"}` or `{"messages": [...]}`.
    pub train_data: PathBuf,
    /// Validation demonstrations; without them `valid_fraction` of `train_data` is held out.
    pub valid_data: Option<PathBuf>,
    /// Share of `train_data` held out for validation when `valid_data` is not given (a seeded
    /// draw; 0 validates on nothing). Default 0.05.
    pub valid_fraction: f64,
    /// The model to fine-tune: an HF directory or a GGUF file (dequantized to f32), with a
    /// tokenizer and a chat template.
    pub init: PathBuf,
    /// Output folder: `model/` (HF layout, tokenizer and chat template kept), `checkpoints/`,
    /// `train_log.json`. Default `runs/sft`.
    pub out: PathBuf,
    /// Longest prompt (everything before the first assistant token) in tokens; longer ones
    /// keep their last tokens. Default 64.
    pub max_prompt_tokens: usize,
    /// Longest response (the assistant's tokens through the end-of-turn token) in tokens;
    /// longer ones keep their first tokens and lose the end of turn. Default 48.
    pub max_response_tokens: usize,
    /// Optimization settings; `batch_size` counts demonstrations, `seq_len` is not used
    /// (a batch is as long as its longest demonstration).
    pub train: TrainConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            train_data: PathBuf::new(),
            valid_data: None,
            valid_fraction: 0.05,
            init: PathBuf::new(),
            out: PathBuf::from("runs/sft"),
            max_prompt_tokens: 64,
            max_response_tokens: 48,
            train: TrainConfig::default(),
        }
    }
}

impl SftConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self, SftError> {
        distill_model::fsutil::read_toml(path).map_err(SftError::Config)
    }

    fn validate(&self) -> Result<(), String> {
        self.train.validate()?;
        check_common(
            !self.train_data.as_os_str().is_empty(),
            &self.init,
            self.valid_fraction,
            self.max_prompt_tokens,
            self.max_response_tokens,
        )
    }
}

/// The checks `teacher sft` and `teacher reward` share: data and model named, sane limits.
pub(crate) fn check_common(
    has_train_data: bool,
    init: &Path,
    valid_fraction: f64,
    max_prompt_tokens: usize,
    max_response_tokens: usize,
) -> Result<(), String> {
    if !has_train_data {
        return Err("train_data is not set (use --data FILE or `train_data` in the config)".into());
    }
    if init.as_os_str().is_empty() {
        return Err("init is not set (use --init MODEL or `init` in the config)".into());
    }
    if !(0.0..1.0).contains(&valid_fraction) {
        return Err("valid_fraction must be in [0, 1)".into());
    }
    if max_prompt_tokens == 0 || max_response_tokens == 0 {
        return Err("max_prompt_tokens and max_response_tokens must be at least 1".into());
    }
    Ok(())
}

/// Why fine-tuning could not run.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    /// A bad config file or setting.
    #[error("{0}")]
    Config(String),
    /// Unusable demonstrations.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// A model (HF directory or GGUF file) that cannot be read.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A model directory that cannot be written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// The chat template cannot render or tokenize a conversation.
    #[error("{origin}: {source}")]
    Chat { origin: String, source: EncodeError },
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

/// A conversation that cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The template fails to render, or its text fails to tokenize.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// The rendering does not show where the assistant's turns are.
    #[error("chat template: {0}")]
    Turns(String),
}

/// One conversation rendered with a chat template and tokenized.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTokens {
    /// Token ids: the prompt, the response, then any text the template writes after the last
    /// end of turn (such as ChatML's `\n`).
    pub ids: Vec<u32>,
    /// Per token, whether a model learns it: the assistant turns' text and end-of-turn token.
    pub trained: Vec<bool>,
    /// Whether the prompt lost its first tokens to `max_prompt_tokens`.
    pub prompt_truncated: bool,
    /// Whether the response lost trained tokens to `max_response_tokens`.
    pub response_truncated: bool,
}

/// Renders conversations with a model's chat template, as HF's `apply_chat_template` does, and
/// tokenizes them, marking the assistant's tokens and applying the length limits.
///
/// The conversation is rendered turn by turn: the text before each assistant turn (rendered
/// with the generation prompt) is masked, the turn's own text through its end-of-turn token is
/// trained on. The prompt is everything before the first trained token, the response
/// everything from it through the last trained token (a later user turn in between stays
/// masked but counts).
pub struct ChatEncoder {
    template: ChatTemplate,
    tokenizer: Tokenizer,
    end_of_turn: Option<u32>,
    max_prompt_tokens: usize,
    max_response_tokens: usize,
}

impl ChatEncoder {
    /// An encoder for `tokenizer`'s chat template with the given limits.
    pub fn new(
        tokenizer: &Tokenizer,
        max_prompt_tokens: usize,
        max_response_tokens: usize,
    ) -> Result<Self, ChatError> {
        let template = ChatTemplate::from_tokenizer(tokenizer)?;
        let end_of_turn = template.end_of_turn(tokenizer);
        Ok(Self {
            template,
            tokenizer: tokenizer.clone(),
            end_of_turn,
            max_prompt_tokens,
            max_response_tokens,
        })
    }

    /// The token that closes an assistant turn, when the template has a special one.
    pub fn end_of_turn(&self) -> Option<u32> {
        self.end_of_turn
    }

    /// The id padding uses: the tokenizer's pad token, else its EOS, else 0. Padded positions
    /// are masked, so the choice never changes a result.
    pub fn pad_id(&self) -> u32 {
        self.tokenizer
            .pad_id()
            .or(self.tokenizer.eos_id())
            .unwrap_or(0)
    }

    /// Renders and tokenizes `messages` (which must hold an assistant turn).
    pub fn encode(&self, messages: &[Message]) -> Result<ChatTokens, EncodeError> {
        let render_err = |reason: &str| EncodeError::Turns(reason.to_string());
        let mut ids = Vec::new();
        let mut trained = Vec::new();
        let mut done = String::new();
        let mut push = |text: &str, learn: bool| -> Result<(), EncodeError> {
            let tokens = encode_prompt(&self.tokenizer, text)?;
            let keep = if learn {
                // Through the last end-of-turn token; what the template adds after it is not
                // the model's to predict.
                self.end_of_turn
                    .and_then(|eot| tokens.iter().rposition(|&t| t == eot))
                    .map_or(tokens.len(), |i| i + 1)
            } else {
                0
            };
            trained.extend((0..tokens.len()).map(|i| i < keep));
            ids.extend(tokens);
            Ok(())
        };
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.template.render(&messages[..i], true)?;
            let after = self.template.render(&messages[..=i], false)?;
            let (Some(context), Some(turn)) = (
                before.strip_prefix(done.as_str()),
                after.strip_prefix(before.as_str()),
            ) else {
                return Err(render_err(
                    "the template does not render a conversation as a prefix of its continuation, \
                     so assistant turns cannot be told apart",
                ));
            };
            push(context, false)?;
            push(turn, true)?;
            done = after;
        }
        let full = self.template.render(messages, false)?;
        let tail = full.strip_prefix(done.as_str()).ok_or_else(|| {
            render_err("the template renders the whole conversation unlike its turns")
        })?;
        if !tail.is_empty() {
            push(tail, false)?;
        }
        let (Some(first), Some(last)) = (
            trained.iter().position(|&t| t),
            trained.iter().rposition(|&t| t),
        ) else {
            return Err(render_err("the conversation has no assistant tokens"));
        };
        Ok(self.truncate(ids, trained, first, last + 1))
    }

    /// Keeps the last `max_prompt_tokens` of `..first`, the first `max_response_tokens` of
    /// `first..end`, and what follows `end` when the response was kept whole.
    fn truncate(&self, ids: Vec<u32>, trained: Vec<bool>, first: usize, end: usize) -> ChatTokens {
        let start = first.saturating_sub(self.max_prompt_tokens);
        let cut = (first + self.max_response_tokens).min(end);
        let response_truncated = cut < end;
        let stop = if response_truncated { cut } else { ids.len() };
        ChatTokens {
            ids: ids[start..stop].to_vec(),
            trained: trained[start..stop].to_vec(),
            prompt_truncated: start > 0,
            response_truncated,
        }
    }
}

/// A right-padded batch for the response-only loss, `[rows, len]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct SftBatch {
    /// Rows.
    pub rows: usize,
    /// Positions per row: the longest conversation minus one.
    pub len: usize,
    /// Input ids (padding where a row has ended).
    pub inputs: Vec<u32>,
    /// The next token at each position.
    pub targets: Vec<u32>,
    /// 1 where the target is an assistant token, 0 for prompt and padding.
    pub weights: Vec<f32>,
    /// Which inputs are real tokens.
    pub mask: Vec<bool>,
}

impl SftBatch {
    /// Pads `examples` on the right with `pad`.
    pub fn new(examples: &[&ChatTokens], pad: u32) -> Self {
        let len = examples
            .iter()
            .map(|e| e.ids.len().saturating_sub(1))
            .max()
            .unwrap_or(0);
        let rows = examples.len();
        let mut b = Self {
            rows,
            len,
            inputs: vec![pad; rows * len],
            targets: vec![pad; rows * len],
            weights: vec![0.0; rows * len],
            mask: vec![false; rows * len],
        };
        for (r, e) in examples.iter().enumerate() {
            for t in 0..e.ids.len().saturating_sub(1) {
                let at = r * len + t;
                b.inputs[at] = e.ids[t];
                b.targets[at] = e.ids[t + 1];
                b.weights[at] = if e.trained[t + 1] { 1.0 } else { 0.0 };
                b.mask[at] = true;
            }
        }
        b
    }

    /// The loss of `model` on this batch.
    pub fn loss(&self, model: &LlamaForCausalLM, device: &Device) -> Tensor<1> {
        let ids = ids_tensor(&self.inputs, [self.rows, self.len], device);
        let layout = Layout::from_mask(self.rows, self.len, &self.mask);
        self.loss_of_logits(model.forward(ids, &layout))
    }

    /// Mean cross-entropy of `logits` `[rows, len, vocab]` over the assistant tokens only.
    pub fn loss_of_logits(&self, logits: Tensor<3>) -> Tensor<1> {
        let device = logits.device();
        let targets = ids_tensor(&self.targets, [self.rows, self.len], &device);
        let weights = Tensor::<2>::from_data(
            TensorData::new(self.weights.clone(), [self.rows, self.len]),
            &device,
        );
        cross_entropy(logits, targets, Some(weights))
    }
}

/// Token ids as an int tensor of `shape`.
pub(crate) fn ids_tensor(ids: &[u32], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// Element `i` of the visiting order over `n` items, reshuffled from `seed` each epoch.
pub(crate) fn shuffled(n: usize, seed: u64, i: usize) -> usize {
    let epoch = (i / n) as u64;
    permutation(n, seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15))[i % n]
}

/// Splits off a seeded `fraction` of `records` as `(train, held_out)`: at least one record
/// when the fraction is positive, at most half of them.
pub(crate) fn hold_out<T>(records: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let n = records.len();
    let mut k = (n as f64 * fraction).round() as usize;
    if fraction > 0.0 {
        k = k.max(1);
    }
    let k = k.min(n / 2);
    let mut held = vec![false; n];
    for &i in &permutation(n, seed)[..k] {
        held[i] = true;
    }
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (r, h) in records.into_iter().zip(held) {
        if h { &mut valid } else { &mut train }.push(r);
    }
    (train, valid)
}

/// Next-token training on the assistant's tokens of demonstrations.
pub struct SupervisedFineTuning {
    train: Vec<ChatTokens>,
    valid: Vec<ChatTokens>,
    batch_size: usize,
    seed: u64,
    pad: u32,
    device: Device,
}

impl SupervisedFineTuning {
    /// A task over `train` (shuffled each epoch from `seed`) and `valid` (in order).
    pub fn new(
        train: Vec<ChatTokens>,
        valid: Vec<ChatTokens>,
        batch_size: usize,
        seed: u64,
        pad: u32,
        device: &Device,
    ) -> Self {
        Self {
            train,
            valid,
            batch_size,
            seed,
            pad,
            device: device.clone(),
        }
    }

    /// Training micro-batch `index`.
    pub fn train_batch(&self, index: usize) -> SftBatch {
        let n = self.train.len();
        let rows: Vec<&ChatTokens> = (0..self.batch_size)
            .map(|r| &self.train[shuffled(n, self.seed, index * self.batch_size + r)])
            .collect();
        SftBatch::new(&rows, self.pad)
    }
}

impl TrainTask<LlamaForCausalLM> for SupervisedFineTuning {
    fn train_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        self.train_batch(index).loss(model, &self.device)
    }

    fn valid_batches(&self) -> usize {
        self.valid.len().div_ceil(self.batch_size)
    }

    fn valid_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(self.valid.len());
        let rows: Vec<&ChatTokens> = self.valid[start..end].iter().collect();
        SftBatch::new(&rows, self.pad).loss(model, &model_device(model))
    }
}

/// The device `model`'s weights live on (validation runs on the loop's non-autodiff copy).
fn model_device(model: &LlamaForCausalLM) -> Device {
    model.model.embed_tokens.weight.val().device()
}

/// Encodes demonstrations, naming the file and record of a failure.
fn encode_all(
    encoder: &ChatEncoder,
    demos: &[Demonstration],
    origin: &Path,
) -> Result<Vec<ChatTokens>, SftError> {
    demos
        .iter()
        .enumerate()
        .map(|(i, d)| {
            encoder
                .encode(&d.messages())
                .map_err(|source| SftError::Chat {
                    origin: format!("{}: demonstration {}", origin.display(), i + 1),
                    source,
                })
        })
        .collect()
}

/// What a fine-tuning run produced.
pub struct SftSummary {
    /// Where the HF model directory was written (when the run finished).
    pub model_dir: PathBuf,
    /// Steps completed (including before a resume).
    pub steps: usize,
    /// Loss curve.
    pub history: Vec<LossPoint>,
    /// Training demonstrations.
    pub train_examples: usize,
    /// Validation demonstrations.
    pub valid_examples: usize,
    /// Demonstrations (both sets) whose prompt lost its first tokens.
    pub truncated_prompts: usize,
    /// Demonstrations (both sets) whose response lost tokens, the end of turn with them.
    pub truncated_responses: usize,
    /// Mean tokens per training demonstration, and mean trained (assistant) tokens.
    pub mean_tokens: (f64, f64),
    /// Wall time of this invocation.
    pub seconds: f64,
    /// Model parameters.
    pub parameters: usize,
}

/// Runs supervised fine-tuning on `device` (autodiff is added here).
pub fn run(
    config: &SftConfig,
    device: &Device,
    control: &TrainControl,
) -> Result<SftSummary, SftError> {
    let started = Instant::now();
    config.validate().map_err(SftError::Config)?;
    let demos: Vec<Demonstration> = records::read_jsonl(&config.train_data)?;
    let valid_demos: Option<Vec<Demonstration>> = match &config.valid_data {
        Some(path) => Some(records::read_jsonl(path)?),
        None => None,
    };

    let device = device.clone().autodiff();
    let mut m = distill_model::load::load_model(&config.init, &device)?;
    let tokenizer = distill_model::load::take_training_tokenizer(&mut m, &config.init)
        .map_err(SftError::Config)?;
    let encoder = ChatEncoder::new(
        &tokenizer,
        config.max_prompt_tokens,
        config.max_response_tokens,
    )
    .map_err(|e| SftError::Chat {
        origin: config.init.display().to_string(),
        source: e.into(),
    })?;
    let encoded = encode_all(&encoder, &demos, &config.train_data)?;
    let (train_set, valid_set) = match (&config.valid_data, valid_demos) {
        (Some(path), Some(v)) => (encoded, encode_all(&encoder, &v, path)?),
        _ => hold_out(encoded, config.valid_fraction, config.train.seed),
    };
    let all = || train_set.iter().chain(&valid_set);
    let truncated_prompts = all().filter(|e| e.prompt_truncated).count();
    let truncated_responses = all().filter(|e| e.response_truncated).count();
    let n = train_set.len().max(1) as f64;
    let mean_tokens = (
        train_set.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / n,
        train_set
            .iter()
            .map(|e| e.trained.iter().filter(|&&t| t).count())
            .sum::<usize>() as f64
            / n,
    );
    tracing::info!(
        "{} training and {} validation demonstrations, {:.1} tokens each ({:.1} trained); \
         {truncated_prompts} prompts cut to {} tokens, {truncated_responses} responses to {}; \
         {} parameters",
        train_set.len(),
        valid_set.len(),
        mean_tokens.0,
        mean_tokens.1,
        config.max_prompt_tokens,
        config.max_response_tokens,
        m.config.num_parameters()
    );
    if train_set.is_empty() {
        return Err(SftError::Config(format!(
            "{}: no demonstrations left for training",
            config.train_data.display()
        )));
    }
    let (train_examples, valid_examples) = (train_set.len(), valid_set.len());
    let mut task = SupervisedFineTuning::new(
        train_set,
        valid_set,
        config.train.batch_size,
        config.train.seed,
        encoder.pad_id(),
        &device,
    );
    let outcome = train::train(
        m.model,
        &mut task,
        &config.train,
        &config.out.join("checkpoints"),
        control,
    )?;

    let model_dir = config.out.join("model");
    if outcome.steps_done == config.train.steps {
        let dir = ModelDir {
            config: m.config.clone(),
            model: outcome.model,
            tokenizer: Some(tokenizer),
            generation_config: m.generation_config,
        };
        checkpoint::save_dir(&model_dir, &dir, SaveOptions::default())?;
    }
    let log_path = config.out.join("train_log.json");
    let log = serde_json::json!({
        "config": config,
        "steps": outcome.steps_done,
        "train_examples": train_examples,
        "valid_examples": valid_examples,
        "truncated_prompts": truncated_prompts,
        "truncated_responses": truncated_responses,
        "history": outcome.history,
    });
    distill_model::fsutil::write_json_atomic(&log_path, &log).map_err(|source| SftError::Io {
        path: log_path.clone(),
        source,
    })?;
    Ok(SftSummary {
        model_dir,
        steps: outcome.steps_done,
        history: outcome.history,
        train_examples,
        valid_examples,
        truncated_prompts,
        truncated_responses,
        mean_tokens,
        seconds: started.elapsed().as_secs_f64(),
        parameters: m.config.num_parameters(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use distill_model::tokenizer::ENDOFTEXT;

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    /// A small BPE with ChatML's special tokens and template.
    pub(crate) fn chatml_tokenizer() -> Tokenizer {
        let corpus: Vec<String> = [
            "how do I list files? use ls to list the files in a directory.",
            "what does cat do? cat prints files. good answers are short and right.",
        ]
        .iter()
        .map(|s| s.repeat(4))
        .collect();
        let mut t =
            Tokenizer::train_bpe(corpus, 300, &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"]).unwrap();
        t.chat_template = Some(CHATML.into());
        t.eos_token = Some("<|im_end|>".into());
        t
    }

    fn pair(prompt: &str, response: &str) -> Vec<Message> {
        vec![Message::user(prompt), Message::new("assistant", response)]
    }

    #[test]
    fn only_the_answer_and_its_end_of_turn_are_trained() {
        let t = chatml_tokenizer();
        let enc = ChatEncoder::new(&t, 64, 48).unwrap();
        let eot = t.token_to_id("<|im_end|>").unwrap();
        assert_eq!(enc.end_of_turn(), Some(eot));
        let e = enc.encode(&pair("how do I list files?", "use ls")).unwrap();
        let text = chatml("how do I list files?", "use ls");
        assert_eq!(e.ids, encode_prompt(&t, &text).unwrap());
        let learned: Vec<u32> = e
            .ids
            .iter()
            .zip(&e.trained)
            .filter(|(_, l)| **l)
            .map(|(&i, _)| i)
            .collect();
        let mut expected = encode_prompt(&t, "use ls").unwrap();
        expected.push(eot);
        assert_eq!(learned, expected);
        // The trained tokens are one run, followed by the template's "\n" only.
        let first = e.trained.iter().position(|&x| x).unwrap();
        assert!(e.trained[first..first + expected.len()].iter().all(|&x| x));
        assert_eq!(e.ids.len(), first + expected.len() + 1);
        assert!(!e.prompt_truncated && !e.response_truncated);

        // Two assistant turns: both trained, the user turn between them not.
        let mut chat = pair("how do I list files?", "use ls");
        chat.extend(pair("what does cat do?", "cat prints files"));
        let e = enc.encode(&chat).unwrap();
        let runs = e.trained.windows(2).filter(|w| !w[0] && w[1]).count();
        assert_eq!(runs, 2);
        assert_eq!(
            e.ids,
            encode_prompt(
                &t,
                &ChatTemplate::from_tokenizer(&t)
                    .unwrap()
                    .render(&chat, false)
                    .unwrap()
            )
            .unwrap()
        );
    }

    fn chatml(p: &str, r: &str) -> String {
        format!("<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>\n")
    }

    #[test]
    fn limits_cut_the_prompt_from_the_left_and_the_response_from_the_right() {
        let t = chatml_tokenizer();
        let whole = ChatEncoder::new(&t, 1000, 1000)
            .unwrap()
            .encode(&pair(
                "how do I list files? use ls to list",
                "cat prints files",
            ))
            .unwrap();
        let first = whole.trained.iter().position(|&x| x).unwrap();
        let answer = whole.trained.iter().filter(|&&x| x).count();
        let cut = ChatEncoder::new(&t, 3, answer - 2)
            .unwrap()
            .encode(&pair(
                "how do I list files? use ls to list",
                "cat prints files",
            ))
            .unwrap();
        assert!(cut.prompt_truncated && cut.response_truncated);
        assert_eq!(cut.ids[..3], whole.ids[first - 3..first]);
        assert_eq!(cut.ids[3..], whole.ids[first..first + answer - 2]);
        assert!(!cut.trained[..3].iter().any(|&x| x) && cut.trained[3..].iter().all(|&x| x));
        // A response that fits keeps the template's tail; the limit counts trained tokens only.
        let fits = ChatEncoder::new(&t, 1000, answer)
            .unwrap()
            .encode(&pair(
                "how do I list files? use ls to list",
                "cat prints files",
            ))
            .unwrap();
        assert_eq!(fits, whole);
    }

    #[test]
    fn prompt_tokens_get_no_gradient_and_their_targets_do_not_matter() {
        let t = chatml_tokenizer();
        let enc = ChatEncoder::new(&t, 64, 48).unwrap();
        let a = enc.encode(&pair("how do I list files?", "use ls")).unwrap();
        let b = enc
            .encode(&pair("what does cat do?", "cat prints files"))
            .unwrap();
        let batch = SftBatch::new(&[&a, &b], enc.pad_id());
        let vocab = t.vocab_size();
        let device = Device::flex().autodiff();
        let n = batch.rows * batch.len * vocab;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 25.0 - 2.0)
            .collect();
        let logits = || {
            Tensor::<3>::from_data(
                TensorData::new(values.clone(), [batch.rows, batch.len, vocab]),
                &device,
            )
            .require_grad()
        };
        let leaf = logits();
        let loss = batch.loss_of_logits(leaf.clone());
        let value = loss.clone().into_scalar::<f32>();
        let grad: Vec<f32> = leaf
            .grad(&loss.backward())
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap();
        let mut prompt_positions = 0;
        for (p, &w) in batch.weights.iter().enumerate() {
            let g = &grad[p * vocab..(p + 1) * vocab];
            if w == 0.0 {
                prompt_positions += 1;
                assert!(g.iter().all(|&x| x == 0.0), "position {p}: {g:?}");
            } else {
                assert!(g.iter().any(|&x| x != 0.0), "position {p} has no gradient");
            }
        }
        assert!(prompt_positions > batch.rows * 4, "{prompt_positions}");

        // Changing the target of a prompt position leaves the loss bit for bit the same.
        let mut changed = batch.clone();
        let p = changed.weights.iter().position(|&w| w == 0.0).unwrap();
        changed.targets[p] = (changed.targets[p] + 1) % vocab as u32;
        let again = changed.loss_of_logits(logits()).into_scalar::<f32>();
        assert_eq!(again.to_bits(), value.to_bits());
        // Changing a response target does change it.
        let q = changed.weights.iter().position(|&w| w == 1.0).unwrap();
        changed.targets[q] = (changed.targets[q] + 1) % vocab as u32;
        assert_ne!(changed.loss_of_logits(logits()).into_scalar::<f32>(), value);
    }

    #[test]
    fn hold_out_is_seeded_and_disjoint() {
        let (a, b) = hold_out((0..100).collect::<Vec<_>>(), 0.1, 7);
        assert_eq!((a.len(), b.len()), (90, 10));
        assert_eq!(hold_out((0..100).collect::<Vec<_>>(), 0.1, 7).1, b);
        assert!(b.iter().all(|x| !a.contains(x)));
        assert_eq!(hold_out(vec![1, 2, 3], 0.01, 0).1.len(), 1);
        assert!(hold_out(vec![1, 2, 3], 0.0, 0).1.is_empty());
    }
}
