//! Multiple choice over rankings: each candidate response is scored by its log-likelihood
//! under the model, given the prompt rendered with the model's chat template (one user turn
//! and the generation prompt); the prediction is the best-scoring candidate, and it is right
//! when it is the ranking's best (`ranking[0]`).
//!
//! - **Tokens.** The prompt is `apply_chat_template([user], add_generation_prompt=True)`
//!   tokenized without added special tokens; the response is tokenized on its own and follows
//!   it, as a generated answer would. No end-of-turn token is scored.
//! - **Score.** The sum of the response tokens' log-probabilities (`logprob`), and that sum
//!   divided by the response's token count (length-normalized), each with its own argmax; a
//!   tie goes to the earlier candidate.
//! - **Batches.** Candidates are sorted by length and run `batch` at a time, right-padded, with
//!   padding masked out of attention ([`Layout::from_mask`]), so a candidate's score does not
//!   depend on its batch.

use crate::records::{Ranking, RecordError, read_rankings};
use burn::prelude::*;
use distill_model::chat::{ChatError, ChatTemplate, Message, encode_prompt};
use distill_model::checkpoint::ModelDir;
use distill_model::fused::row_nll;
use distill_model::layout::Layout;
use distill_model::llama::LlamaForCausalLM;
use distill_model::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

/// Rankings or models that cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The rankings file is missing or malformed.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The rankings file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The model has no tokenizer.
    #[error("model {model}: multiple choice needs the model's tokenizer and chat template")]
    NoTokenizer { model: String },
    /// The chat template cannot render or tokenize a prompt.
    #[error("model {model}: {source}")]
    Chat { model: String, source: ChatError },
    /// A prompt or response has no tokens.
    #[error("{path}: ranking {item}: {what} tokenizes to no tokens")]
    NoTokens {
        path: String,
        item: usize,
        what: String,
    },
    /// Two prediction lists do not cover the same questions.
    #[error("predictions differ: {0}")]
    Mismatch(String),
}

/// A ranking in tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceItem {
    /// The ranking's id, if any.
    pub id: Option<String>,
    /// The rendered prompt, up to where the answer begins.
    pub prompt: Vec<u32>,
    /// Each candidate response.
    pub candidates: Vec<Vec<u32>>,
    /// The index of the right (best-ranked) candidate.
    pub right: usize,
    /// What each candidate is, from the ranking's `kinds` (else `rank<k>` by its rank).
    pub kinds: Vec<String>,
}

/// Renders and tokenizes `rankings` for the model of `tokenizer` and `template`; `path` names
/// the file in errors.
pub fn encode_rankings(
    rankings: &[Ranking],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    path: &str,
) -> Result<Vec<ChoiceItem>, ChoiceError> {
    let chat = |source| ChoiceError::Chat {
        model: "tokenizer".into(),
        source,
    };
    let empty = |item: usize, what: String| ChoiceError::NoTokens {
        path: path.to_string(),
        item: item + 1,
        what,
    };
    rankings
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let text = template
                .render(&[Message::user(&r.prompt)], true)
                .map_err(chat)?;
            let prompt = encode_prompt(tokenizer, &text).map_err(chat)?;
            if prompt.is_empty() {
                return Err(empty(i, "the prompt".into()));
            }
            let mut candidates = Vec::with_capacity(r.responses.len());
            for (j, response) in r.responses.iter().enumerate() {
                let ids = encode_prompt(tokenizer, response).map_err(chat)?;
                if ids.is_empty() {
                    return Err(empty(i, format!("response {j}")));
                }
                candidates.push(ids);
            }
            let kinds = match &r.kinds {
                Some(k) => k.clone(),
                None => (0..r.responses.len())
                    .map(|j| {
                        let rank = r.ranking.iter().position(|&x| x == j).unwrap_or(j);
                        format!("rank{rank}")
                    })
                    .collect(),
            };
            Ok(ChoiceItem {
                id: r.id.clone(),
                prompt,
                candidates,
                right: r.ranking[0],
                kinds,
            })
        })
        .collect()
}

/// A candidate's log-likelihood.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateScore {
    /// Sum of the response tokens' log-probabilities, in nats.
    pub logprob: f64,
    /// Response tokens.
    pub tokens: usize,
}

/// Scores every candidate of `items`, `batch` sequences per forward; calls `progress` with
/// the sequences done and the total after each forward.
pub fn score_items(
    model: &LlamaForCausalLM,
    items: &[ChoiceItem],
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Vec<Vec<CandidateScore>> {
    let sequences: Vec<(usize, usize)> = items
        .iter()
        .enumerate()
        .flat_map(|(i, item)| (0..item.candidates.len()).map(move |j| (i, j)))
        .collect();
    let len = |&(i, j): &(usize, usize)| items[i].prompt.len() + items[i].candidates[j].len();
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(len(&sequences[k])));
    let mut out: Vec<Vec<CandidateScore>> = items
        .iter()
        .map(|item| {
            item.candidates
                .iter()
                .map(|c| CandidateScore {
                    logprob: 0.0,
                    tokens: c.len(),
                })
                .collect()
        })
        .collect();
    let mut done = 0;
    for chunk in order.chunks(batch.max(1)) {
        let b = chunk.len();
        let width = chunk.iter().map(|&k| len(&sequences[k])).max().unwrap_or(0);
        let (mut ids, mut targets) = (vec![0i64; b * width], vec![0i64; b * width]);
        let mut mask = vec![false; b * width];
        for (r, &k) in chunk.iter().enumerate() {
            let (i, j) = sequences[k];
            let row = items[i].prompt.iter().chain(&items[i].candidates[j]);
            for (t, &id) in row.enumerate() {
                ids[r * width + t] = id as i64;
                mask[r * width + t] = true;
                if t > 0 {
                    targets[r * width + t - 1] = id as i64;
                }
            }
        }
        let layout = Layout::from_mask(b, width, &mask);
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, width]), device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [b * width]), device);
        let logits = model.forward(ids, &layout);
        let v = logits.dims()[2];
        let logp = row_nll(logits.reshape([b * width, v]), targets).neg();
        let logp: Vec<f32> = logp
            .into_data()
            .try_to_vec()
            .expect("f32 log-probabilities");
        for (r, &k) in chunk.iter().enumerate() {
            let (i, j) = sequences[k];
            let p = items[i].prompt.len();
            let n = items[i].candidates[j].len();
            // The token at position t is predicted at position t − 1.
            out[i][j].logprob = logp[r * width + p - 1..r * width + p + n - 1]
                .iter()
                .map(|&x| x as f64)
                .sum();
        }
        done += b;
        progress(done, sequences.len());
    }
    out
}

/// The model's choice on one ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoicePrediction {
    /// The ranking's id, if any.
    pub id: Option<String>,
    /// The right candidate.
    pub right: usize,
    /// Each candidate's summed log-probability.
    pub logprobs: Vec<f64>,
    /// Each candidate's token count.
    pub tokens: Vec<usize>,
    /// The candidate with the highest summed log-probability.
    pub predicted: usize,
    /// The candidate with the highest mean log-probability per token.
    pub predicted_normalized: usize,
}

impl ChoicePrediction {
    /// The prediction for `item` from its candidates' scores.
    pub fn new(item: &ChoiceItem, scores: &[CandidateScore]) -> Self {
        let logprobs: Vec<f64> = scores.iter().map(|s| s.logprob).collect();
        let normalized: Vec<f64> = scores
            .iter()
            .map(|s| s.logprob / s.tokens.max(1) as f64)
            .collect();
        Self {
            id: item.id.clone(),
            right: item.right,
            tokens: scores.iter().map(|s| s.tokens).collect(),
            predicted: argmax(&logprobs),
            predicted_normalized: argmax(&normalized),
            logprobs,
        }
    }

    /// Whether the summed score picks the right candidate.
    pub fn correct(&self) -> bool {
        self.predicted == self.right
    }

    /// Whether the length-normalized score picks the right candidate.
    pub fn correct_normalized(&self) -> bool {
        self.predicted_normalized == self.right
    }
}

/// The first index of the largest value.
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Fraction of `predictions` that are right, summed and length-normalized.
pub fn accuracy(predictions: &[ChoicePrediction]) -> (f64, f64) {
    let n = predictions.len().max(1) as f64;
    let right = predictions.iter().filter(|p| p.correct()).count() as f64;
    let normalized = predictions
        .iter()
        .filter(|p| p.correct_normalized())
        .count() as f64;
    (right / n, normalized / n)
}

/// Per kind of wrong candidate, the fraction of its pairings with the right candidate where
/// the right one has the higher summed score.
pub fn right_beats(
    items: &[ChoiceItem],
    predictions: &[ChoicePrediction],
) -> BTreeMap<String, f64> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (item, p) in items.iter().zip(predictions) {
        for (j, kind) in item.kinds.iter().enumerate() {
            if j == item.right {
                continue;
            }
            let c = counts.entry(kind.clone()).or_default();
            c.0 += usize::from(p.logprobs[item.right] > p.logprobs[j]);
            c.1 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(k, (wins, n))| (k, wins as f64 / n as f64))
        .collect()
}

/// Fraction of questions whose correctness differs between two models' predictions (right
/// under one, wrong under the other), over the same rankings in the same order: the "flips"
/// that accuracy alone hides.
pub fn flip_rate(a: &[ChoicePrediction], b: &[ChoicePrediction]) -> Result<f64, ChoiceError> {
    if a.len() != b.len() {
        return Err(ChoiceError::Mismatch(format!(
            "{} against {} predictions",
            a.len(),
            b.len()
        )));
    }
    if let Some((i, (x, y))) = a
        .iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x.id != y.id || x.right != y.right)
    {
        return Err(ChoiceError::Mismatch(format!(
            "item {i}: {:?} (right {}) against {:?} (right {})",
            x.id, x.right, y.id, y.right
        )));
    }
    let flips = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.correct() != y.correct())
        .count();
    Ok(flips as f64 / a.len().max(1) as f64)
}

/// The result of a multiple-choice evaluation, with every prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChoiceReport {
    /// The model, as named by the caller.
    pub model: String,
    /// The rankings file.
    pub data: String,
    /// SHA-256 of the rankings file.
    pub data_sha256: String,
    /// Rankings scored.
    pub items: usize,
    /// Candidates scored.
    pub candidates: usize,
    /// Fraction right by summed log-probability.
    pub accuracy: f64,
    /// Fraction right by mean log-probability per token.
    pub accuracy_normalized: f64,
    /// The accuracy of a uniform random choice.
    pub chance: f64,
    /// Per kind of wrong candidate, how often the right one scores higher.
    pub right_beats: BTreeMap<String, f64>,
    /// Wall time of the scoring, in seconds.
    pub seconds: f64,
    /// One prediction per ranking, in file order.
    pub predictions: Vec<ChoicePrediction>,
}

/// Evaluates model `m` (named `model_name`) on the rankings of `path`, `batch` sequences per
/// forward; `progress` gets the sequences done and the total.
pub fn evaluate_choices(
    m: &ModelDir,
    model_name: &str,
    path: &Path,
    batch: usize,
    device: &Device,
    progress: impl FnMut(usize, usize),
) -> Result<ChoiceReport, ChoiceError> {
    let rankings = read_rankings(path)?;
    let bytes = std::fs::read(path).map_err(|source| ChoiceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let tokenizer = m
        .tokenizer
        .as_ref()
        .ok_or_else(|| ChoiceError::NoTokenizer {
            model: model_name.to_string(),
        })?;
    let template = ChatTemplate::from_tokenizer(tokenizer).map_err(|source| ChoiceError::Chat {
        model: model_name.to_string(),
        source,
    })?;
    let items = encode_rankings(&rankings, tokenizer, &template, &path.display().to_string())?;
    let t0 = Instant::now();
    let scores = score_items(&m.model, &items, batch, device, progress);
    let predictions: Vec<ChoicePrediction> = items
        .iter()
        .zip(&scores)
        .map(|(item, s)| ChoicePrediction::new(item, s))
        .collect();
    let (accuracy, accuracy_normalized) = accuracy(&predictions);
    let candidates: usize = items.iter().map(|i| i.candidates.len()).sum();
    let chance = items
        .iter()
        .map(|i| 1.0 / i.candidates.len() as f64)
        .sum::<f64>()
        / items.len().max(1) as f64;
    Ok(ChoiceReport {
        model: model_name.to_string(),
        data: path.display().to_string(),
        data_sha256: format!("{:x}", Sha256::digest(&bytes)),
        items: items.len(),
        candidates,
        accuracy,
        accuracy_normalized,
        chance,
        right_beats: right_beats(&items, &predictions),
        seconds: t0.elapsed().as_secs_f64(),
        predictions,
    })
}

impl fmt::Display for ChoiceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model             {}", self.model)?;
        writeln!(
            f,
            "rankings          {} (sha256 {})",
            self.data, self.data_sha256
        )?;
        writeln!(
            f,
            "items             {} rankings, {} candidates (chance {:.4})",
            self.items, self.candidates, self.chance
        )?;
        writeln!(
            f,
            "accuracy          {:.4} (summed log-probability)",
            self.accuracy
        )?;
        writeln!(
            f,
            "accuracy, normed  {:.4} (mean log-probability per token)",
            self.accuracy_normalized
        )?;
        for (kind, rate) in &self.right_beats {
            writeln!(f, "right > {kind:<10} {rate:.4}")?;
        }
        write!(f, "time              {:.1}s", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_model::LlamaConfig;
    use distill_model::tokenizer::ENDOFTEXT;

    fn tiny_model(vocab: usize) -> LlamaForCausalLM {
        let mut config = LlamaConfig::llama(vocab, 32, 48, 2, 4, 2);
        config.initializer_range = 0.3;
        config.init(&Device::flex(), 7)
    }

    /// Σ log p(response) by one unpadded forward of the whole sequence, log-softmax in f64.
    fn reference(model: &LlamaForCausalLM, prompt: &[u32], response: &[u32]) -> f64 {
        let device = Device::flex();
        let seq: Vec<u32> = prompt.iter().chain(response).copied().collect();
        let ids: Vec<i64> = seq.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, seq.len()]), &device);
        let logits: Vec<f32> = model
            .forward(ids, &Layout::causal(1, seq.len()))
            .into_data()
            .try_to_vec()
            .unwrap();
        let vocab = logits.len() / seq.len();
        (prompt.len()..seq.len())
            .map(|t| {
                let row = &logits[(t - 1) * vocab..t * vocab];
                let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                row[seq[t] as usize] as f64 - lse
            })
            .sum()
    }

    fn ids(seed: u32, n: usize, vocab: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 31 + seed * 17 + i * i) % vocab)
            .collect()
    }

    #[test]
    fn batched_scores_equal_one_forward_per_sequence() {
        let model = tiny_model(64);
        let items: Vec<ChoiceItem> = (0..3)
            .map(|i| ChoiceItem {
                id: Some(format!("q{i}")),
                prompt: ids(i, 5 + 2 * i as usize, 64),
                candidates: (0..4)
                    .map(|j| ids(10 * i + j, 1 + 3 * j as usize, 64))
                    .collect(),
                right: 0,
                kinds: vec!["right".into(), "a".into(), "b".into(), "c".into()],
            })
            .collect();
        let mut calls = Vec::new();
        let scores = score_items(&model, &items, 5, &Device::flex(), |d, n| {
            calls.push((d, n))
        });
        assert_eq!(calls, [(5, 12), (10, 12), (12, 12)]);
        for (item, s) in items.iter().zip(&scores) {
            for (c, score) in item.candidates.iter().zip(s) {
                let want = reference(&model, &item.prompt, c);
                assert!(
                    (score.logprob - want).abs() < 1e-4,
                    "{} vs {want}",
                    score.logprob
                );
                assert_eq!(score.tokens, c.len());
                assert!(score.logprob < 0.0);
            }
        }
    }

    fn prediction(right: usize, logprobs: &[f64], tokens: &[usize]) -> ChoicePrediction {
        let item = ChoiceItem {
            id: Some(format!("q{right}")),
            prompt: vec![1],
            candidates: tokens.iter().map(|&n| vec![1; n]).collect(),
            right,
            kinds: (0..tokens.len())
                .map(|j| ["right", "x", "y"][j].to_string())
                .collect(),
        };
        let scores: Vec<CandidateScore> = logprobs
            .iter()
            .zip(tokens)
            .map(|(&logprob, &tokens)| CandidateScore { logprob, tokens })
            .collect();
        ChoicePrediction::new(&item, &scores)
    }

    #[test]
    fn accuracy_and_flips_on_a_constructed_case() {
        let a = vec![
            prediction(2, &[-5.0, -3.0, -1.0], &[1, 1, 1]),
            // Summed: candidate 1 wins (wrong); per token: candidate 0 wins (right).
            prediction(0, &[-10.0, -4.0, -6.0], &[20, 2, 3]),
            prediction(1, &[-1.0, -2.0], &[1, 1]),
        ];
        assert_eq!(
            a.iter()
                .map(|p| (p.predicted, p.predicted_normalized))
                .collect::<Vec<_>>(),
            [(2, 2), (1, 0), (0, 0)]
        );
        let (acc, normed) = accuracy(&a);
        assert!((acc - 1.0 / 3.0).abs() < 1e-12 && (normed - 2.0 / 3.0).abs() < 1e-12);

        let mut b = a.clone();
        b[2] = prediction(1, &[-3.0, -2.0], &[1, 1]);
        assert_eq!(flip_rate(&a, &b).unwrap(), 1.0 / 3.0);
        assert_eq!(flip_rate(&a, &a).unwrap(), 0.0);
        assert!(flip_rate(&a, &b[..2]).is_err());
        b[0].id = Some("other".into());
        assert!(matches!(flip_rate(&a, &b), Err(ChoiceError::Mismatch(_))));
    }

    #[test]
    fn evaluates_a_rankings_file_through_the_chat_template() {
        let texts = [
            "which header declares open",
            "the open call opens a file",
            "zero is returned",
        ];
        let mut tokenizer = Tokenizer::train_bpe(
            texts.iter().cycle().take(30),
            300,
            &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"],
        )
        .unwrap();
        tokenizer.chat_template = Some(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
                .into(),
        );
        let config = LlamaConfig::llama(tokenizer.vocab_size(), 32, 48, 2, 4, 2);
        let m = ModelDir {
            model: config.init(&Device::flex(), 3),
            config,
            tokenizer: Some(tokenizer),
            generation_config: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rankings.jsonl");
        let line = r#"{"id":"p#errors","prompt":"which header declares open","responses":["zero is returned","the open call opens a file"],"ranking":[1,0],"kinds":["off_topic","right"]}"#;
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let report = evaluate_choices(&m, "tiny", &path, 4, &Device::flex(), |_, _| {}).unwrap();
        assert_eq!(
            (report.items, report.candidates, report.chance),
            (1, 2, 0.5)
        );
        let p = &report.predictions[0];
        assert_eq!(p.right, 1);
        let tok = m.tokenizer.as_ref().unwrap();
        let template = ChatTemplate::from_tokenizer(tok).unwrap();
        let prompt = template
            .render(&[Message::user("which header declares open")], true)
            .unwrap();
        assert!(prompt.ends_with("<|im_start|>assistant\n"));
        let prompt = encode_prompt(tok, &prompt).unwrap();
        let response = encode_prompt(tok, "the open call opens a file").unwrap();
        assert_eq!(p.tokens[1], response.len());
        let want = reference(&m.model, &prompt, &response);
        assert!(
            (p.logprobs[1] - want).abs() < 1e-4,
            "{} vs {want}",
            p.logprobs[1]
        );
        assert_eq!(report.accuracy, f64::from(u8::from(p.correct())));
        assert_eq!(report.right_beats.len(), 1);
    }
}
