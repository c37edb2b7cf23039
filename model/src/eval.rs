//! The evaluation protocol: perplexity on a fixed, deterministic set of non-overlapping token
//! windows of a data file, so that models are compared on exactly the same predictions.
//!
//! - **Stream.** A text file (`.jsonl` of `{"text"}` lines, or plain text) is tokenized document
//!   by document and joined with the EOS token, as for training ([`crate::data`]); a BOS token
//!   starts each document only when the tokenizer config sets `add_bos_token`. A `.json` file
//!   holds token ids instead: a list (the stream, taken as is) or a list of lists (documents,
//!   each followed by EOS), so that models are compared on ids rather than on text.
//! - **Windows.** The stream holds `tokens / window` non-overlapping windows (the stride equals
//!   the window). Of these `windows` are used, evenly spaced: window `k` of `n` is window
//!   number `k * available / n`, so all of the stream is sampled; all are used when fewer are
//!   available.
//! - **Score.** A window of `W` tokens is one forward over its first `W − 1` tokens, scored on
//!   all `W − 1` next-token predictions (no context crosses a window boundary). The mean
//!   negative log-likelihood runs over every scored token; perplexity is its exponential.

use crate::checkpoint::ModelDir;
use crate::data::{self, DataError};
use crate::fused::row_nll;
use crate::layout::Layout;
use crate::llama::LlamaForCausalLM;
use crate::tokenizer::Tokenizer;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The protocol's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalConfig {
    /// Tokens per window (`window − 1` predictions each).
    pub window: usize,
    /// Most windows to score.
    pub windows: usize,
    /// Windows per forward.
    pub batch: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            window: 512,
            windows: 64,
            batch: 4,
        }
    }
}

/// Data or settings that cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A text file could not be read or tokenized.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.json` file is not a list of token ids or a list of lists of them.
    #[error("{}: {reason}", path.display())]
    Ids {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Text data needs a tokenizer, and the model has none.
    #[error(
        "{}: text data needs the model's tokenizer.json, and the model has none (pass token ids \
         as a .json file instead)",
        path.display()
    )]
    NoTokenizer {
        /// The data file.
        path: PathBuf,
    },
    /// The stream is shorter than one window.
    #[error(
        "{}: {tokens} tokens do not fill one window of {window} tokens (use a smaller --window)",
        path.display()
    )]
    TooShort {
        /// The data file.
        path: PathBuf,
        /// Tokens in the stream.
        tokens: usize,
        /// The window.
        window: usize,
    },
    /// A token id is outside the model's vocabulary.
    #[error("{}: token id {id} is outside the model's vocabulary of {vocab}", path.display())]
    IdOutOfRange {
        /// The data file.
        path: PathBuf,
        /// The id.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// Sizes that make no protocol.
    #[error("invalid evaluation settings: {0}")]
    Settings(String),
}

/// What a data file held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Text, tokenized with the model's tokenizer.
    Text,
    /// Token ids.
    Ids,
}

/// The token stream of a data file.
#[derive(Debug, Clone)]
pub struct EvalData {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Text or ids.
    pub format: DataFormat,
    /// Documents in the file (1 for a flat list of ids or a plain text file).
    pub documents: usize,
    /// Whether each text document starts with a BOS token (`add_bos_token`).
    pub bos_per_document: bool,
    /// The token that ends each document, if any.
    pub eos_token_id: Option<u32>,
    /// The stream.
    pub tokens: Vec<u32>,
}

impl EvalData {
    /// Reads `path`: token ids from a `.json` file, else text tokenized with `tokenizer`;
    /// documents are each followed by `eos`.
    pub fn load(
        path: &Path,
        tokenizer: Option<&Tokenizer>,
        eos: Option<u32>,
    ) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|source| EvalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let ids_err = |reason: &str| EvalError::Ids {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let (format, documents, bos_per_document, tokens) =
            if path.extension().is_some_and(|e| e == "json") {
                let value: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| ids_err(&format!("not valid JSON: {e}")))?;
                let (documents, tokens) = parse_ids(&value, eos).ok_or_else(|| {
                    ids_err("expected a list of token ids or a list of lists of token ids")
                })?;
                (DataFormat::Ids, documents, false, tokens)
            } else {
                let tokenizer = tokenizer.ok_or_else(|| EvalError::NoTokenizer {
                    path: path.to_path_buf(),
                })?;
                let docs = data::read_documents(path)?;
                let name = path.display().to_string();
                let tokens = data::tokenize_documents(tokenizer, &docs, eos, &name)?;
                (
                    DataFormat::Text,
                    docs.len(),
                    tokenizer.add_bos_token,
                    tokens,
                )
            };
        if tokens.is_empty() {
            return Err(ids_err("no token ids"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            sha256,
            format,
            documents,
            bos_per_document,
            eos_token_id: eos,
            tokens,
        })
    }
}

/// `[ids...]` as is, or `[[ids...], ...]` joined with `eos`; `(documents, stream)`.
fn parse_ids(value: &Value, eos: Option<u32>) -> Option<(usize, Vec<u32>)> {
    let id = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
    let items = value.as_array()?;
    if items.iter().all(Value::is_array) && !items.is_empty() {
        let mut stream = Vec::new();
        for doc in items {
            for v in doc.as_array()? {
                stream.push(id(v)?);
            }
            stream.extend(eos);
        }
        Some((items.len(), stream))
    } else {
        Some((1, items.iter().map(id).collect::<Option<_>>()?))
    }
}

/// The document separator: the tokenizer's EOS token, else the config's first `eos_token_id`.
pub fn document_eos(m: &ModelDir) -> Option<u32> {
    m.tokenizer
        .as_ref()
        .and_then(Tokenizer::eos_id)
        .or_else(|| m.config.eos_token_id.first().copied())
}

/// Start offsets of the windows to score: `windows` of the `tokens / window` non-overlapping
/// windows, evenly spaced (all when there are no more than `windows`).
pub fn window_starts(tokens: usize, window: usize, windows: usize) -> Vec<usize> {
    let available = tokens / window.max(1);
    let n = windows.min(available);
    (0..n).map(|k| window * (k * available / n)).collect()
}

/// Summed negative log-likelihood over scored tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Windows scored.
    pub windows: usize,
    /// Next-token predictions scored.
    pub tokens: usize,
    /// Sum of −log p(target), in nats.
    pub nll_sum: f64,
}

impl Score {
    /// Mean negative log-likelihood per scored token, in nats.
    pub fn mean_nll(&self) -> f64 {
        self.nll_sum / self.tokens.max(1) as f64
    }

    /// `exp(mean_nll)`.
    pub fn perplexity(&self) -> f64 {
        self.mean_nll().exp()
    }
}

/// Scores the windows of `window` tokens starting at `starts`, `batch` per forward; calls
/// `progress` with the windows done after each forward.
pub fn score_windows(
    model: &LlamaForCausalLM,
    tokens: &[u32],
    starts: &[usize],
    window: usize,
    batch: usize,
    device: &Device,
    progress: impl FnMut(usize),
) -> Score {
    compare_windows(model, None, tokens, starts, window, batch, device, progress).0
}

/// Summed agreement of a model with a teacher over scored positions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    /// Positions compared.
    pub tokens: usize,
    /// Sum over positions of KL(teacher ‖ model) of the next-token distributions, in nats.
    pub kl_sum: f64,
    /// Positions where both models' most likely next token is the same.
    pub top1_same: usize,
    /// The teacher's summed negative log-likelihood on the same targets.
    pub teacher_nll_sum: f64,
}

/// Like [`score_windows`], and with a `teacher` (same vocabulary) also its [`Agreement`] with
/// the model on the same positions.
#[allow(clippy::too_many_arguments)]
pub fn compare_windows(
    model: &LlamaForCausalLM,
    teacher: Option<&LlamaForCausalLM>,
    tokens: &[u32],
    starts: &[usize],
    window: usize,
    batch: usize,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> (Score, Option<Agreement>) {
    let seq = window - 1;
    let mut nll_sum = 0.0f64;
    let mut agreement = teacher.map(|_| Agreement {
        tokens: 0,
        kl_sum: 0.0,
        top1_same: 0,
        teacher_nll_sum: 0.0,
    });
    let sum = |t: Tensor<3>| -> f64 {
        let v: Vec<f32> = t.into_data().try_to_vec().expect("f32 values");
        v.iter().map(|&x| x as f64).sum()
    };
    for (i, chunk) in starts.chunks(batch.max(1)).enumerate() {
        let b = chunk.len();
        let (mut inputs, mut targets) = (Vec::with_capacity(b * seq), Vec::with_capacity(b * seq));
        for &s in chunk {
            inputs.extend(tokens[s..s + seq].iter().map(|&t| t as i64));
            targets.extend(tokens[s + 1..s + window].iter().map(|&t| t as i64));
        }
        let inputs = Tensor::<2, Int>::from_data(TensorData::new(inputs, [b, seq]), device);
        let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [b, seq, 1]), device);
        let layout = Layout::causal(b, seq);
        let logits = model.forward(inputs.clone(), &layout);
        match teacher.zip(agreement.as_mut()) {
            None => {
                let v = logits.dims()[2];
                let nll = row_nll(logits.reshape([b * seq, v]), targets.reshape([b * seq]));
                nll_sum += sum(nll.reshape([b, seq, 1]));
            }
            Some((teacher, a)) => {
                let logp = log_softmax(logits, 2);
                nll_sum -= sum(logp.clone().gather(2, targets.clone()));
                let tlogp = log_softmax(teacher.forward(inputs, &layout), 2);
                a.teacher_nll_sum -= sum(tlogp.clone().gather(2, targets));
                let kl = tlogp.clone().exp() * (tlogp.clone() - logp.clone());
                a.kl_sum += sum(kl.sum_dim(2));
                let same = tlogp.argmax(2).equal(logp.argmax(2));
                a.top1_same += same.int().sum().into_scalar::<i64>() as usize;
                a.tokens += b * seq;
            }
        }
        progress((i * batch + b).min(starts.len()));
    }
    let score = Score {
        windows: starts.len(),
        tokens: starts.len() * seq,
        nll_sum,
    };
    (score, agreement)
}

/// How a model compares with a teacher on the evaluated positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherComparison {
    /// The teacher, as named by the caller.
    pub teacher: String,
    /// Mean KL(teacher ‖ model) per scored position, in nats.
    pub kl: f64,
    /// Fraction of positions where both predict the same most likely next token.
    pub top1_agreement: f64,
    /// The teacher's perplexity on the same windows.
    pub teacher_perplexity: f64,
}

/// The result of one evaluation, with everything needed to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model, as named by the caller (its path).
    pub model: String,
    /// The data file.
    pub data: String,
    /// SHA-256 of the data file.
    pub data_sha256: String,
    /// Text or token ids.
    pub data_format: DataFormat,
    /// Documents in the data file.
    pub documents: usize,
    /// Whether each text document starts with BOS (the tokenizer's `add_bos_token`).
    pub bos_per_document: bool,
    /// The token that ends each document.
    pub eos_token_id: Option<u32>,
    /// Tokens in the stream.
    pub stream_tokens: usize,
    /// Tokens per window.
    pub window: usize,
    /// Tokens between window starts in the stream (= window: non-overlapping).
    pub stride: usize,
    /// Non-overlapping windows in the stream.
    pub windows_available: usize,
    /// Windows scored (evenly spaced among those available).
    pub windows: usize,
    /// Next-token predictions scored: `windows × (window − 1)`.
    pub tokens_scored: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub perplexity: f64,
    /// Agreement with a teacher, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherComparison>,
    /// Wall time of the scoring, in seconds.
    pub seconds: f64,
}

/// Evaluates `m` on `data` under `config`; `model_name` goes into the report. With a
/// `teacher` (a model and its name) the report also compares the two on the same positions.
pub fn evaluate(
    m: &ModelDir,
    model_name: &str,
    teacher: Option<(&ModelDir, &str)>,
    data: &EvalData,
    config: &EvalConfig,
    device: &Device,
    progress: impl FnMut(usize),
) -> Result<EvalReport, EvalError> {
    if config.window < 2 || config.windows == 0 || config.batch == 0 {
        return Err(EvalError::Settings(format!(
            "window {} (at least 2), windows {} and batch {} (at least 1)",
            config.window, config.windows, config.batch
        )));
    }
    let vocab = m.config.vocab_size;
    if let Some(&id) = data.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(EvalError::IdOutOfRange {
            path: data.path.clone(),
            id,
            vocab,
        });
    }
    let starts = window_starts(data.tokens.len(), config.window, config.windows);
    if starts.is_empty() {
        return Err(EvalError::TooShort {
            path: data.path.clone(),
            tokens: data.tokens.len(),
            window: config.window,
        });
    }
    if let Some((t, name)) = teacher
        && t.config.vocab_size != vocab
    {
        return Err(EvalError::Settings(format!(
            "teacher {name} has a vocabulary of {} and the model {model_name} one of {vocab}: \
             they cannot be compared",
            t.config.vocab_size
        )));
    }
    let t0 = Instant::now();
    let (score, agreement) = compare_windows(
        &m.model,
        teacher.map(|(t, _)| &t.model),
        &data.tokens,
        &starts,
        config.window,
        config.batch,
        device,
        progress,
    );
    let teacher = teacher.zip(agreement).map(|((_, name), a)| {
        let n = a.tokens.max(1) as f64;
        TeacherComparison {
            teacher: name.to_string(),
            kl: a.kl_sum / n,
            top1_agreement: a.top1_same as f64 / n,
            teacher_perplexity: (a.teacher_nll_sum / n).exp(),
        }
    });
    Ok(EvalReport {
        model: model_name.to_string(),
        data: data.path.display().to_string(),
        data_sha256: data.sha256.clone(),
        data_format: data.format,
        documents: data.documents,
        bos_per_document: data.bos_per_document,
        eos_token_id: data.eos_token_id,
        stream_tokens: data.tokens.len(),
        window: config.window,
        stride: config.window,
        windows_available: data.tokens.len() / config.window,
        windows: score.windows,
        tokens_scored: score.tokens,
        mean_nll: score.mean_nll(),
        perplexity: score.perplexity(),
        teacher,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.data_format {
            DataFormat::Text => "text",
            DataFormat::Ids => "token ids",
        };
        let eos = self
            .eos_token_id
            .map_or("none".to_string(), |id| id.to_string());
        writeln!(f, "model           {}", self.model)?;
        writeln!(f, "data            {} ({format})", self.data)?;
        writeln!(f, "data sha256     {}", self.data_sha256)?;
        writeln!(
            f,
            "stream          {} tokens, {} documents (BOS each: {}, EOS after each: {eos})",
            self.stream_tokens, self.documents, self.bos_per_document
        )?;
        writeln!(
            f,
            "windows         {} of {} available, evenly spaced; {} tokens each, stride {}",
            self.windows, self.windows_available, self.window, self.stride
        )?;
        writeln!(
            f,
            "tokens scored   {} ({} next-token predictions per window)",
            self.tokens_scored,
            self.window - 1
        )?;
        writeln!(f, "mean NLL        {:.4} nats", self.mean_nll)?;
        writeln!(f, "perplexity      {:.4}", self.perplexity)?;
        if let Some(t) = &self.teacher {
            writeln!(
                f,
                "teacher         {} (perplexity {:.4})",
                t.teacher, t.teacher_perplexity
            )?;
            writeln!(f, "KL to teacher   {:.4} nats per token", t.kl)?;
            writeln!(f, "top-1 agreement {:.4}", t.top1_agreement)?;
        }
        write!(f, "time            {:.1}s", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;

    fn tiny_model(vocab: usize) -> LlamaForCausalLM {
        let mut config = LlamaConfig::llama(vocab, 32, 48, 2, 4, 2);
        config.initializer_range = 0.3;
        config.init(&Device::flex(), 11)
    }

    /// Mean NLL by a plain loop: one forward per window, log-softmax by hand in f64.
    fn reference_nll(model: &LlamaForCausalLM, tokens: &[u32], starts: &[usize], w: usize) -> f64 {
        let device = Device::flex();
        let (mut sum, mut n) = (0.0f64, 0usize);
        for &s in starts {
            let ids: Vec<i64> = tokens[s..s + w - 1].iter().map(|&t| t as i64).collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, w - 1]), &device);
            let logits: Vec<f32> = model
                .forward(ids, &Layout::causal(1, w - 1))
                .into_data()
                .try_to_vec()
                .unwrap();
            let vocab = logits.len() / (w - 1);
            for (i, row) in logits.chunks(vocab).enumerate() {
                let max = row.iter().fold(f64::MIN, |m, &x| m.max(x as f64));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (x as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                sum += lse - row[tokens[s + i + 1] as usize] as f64;
                n += 1;
            }
        }
        sum / n as f64
    }

    #[test]
    fn perplexity_equals_a_plain_loop_over_positions() {
        let model = tiny_model(64);
        let tokens: Vec<u32> = (0..1000u32).map(|i| (i * 37 + i / 7) % 64).collect();
        let starts = window_starts(tokens.len(), 24, 5);
        assert_eq!(starts, vec![0, 192, 384, 576, 768]);
        let score = score_windows(&model, &tokens, &starts, 24, 2, &Device::flex(), |_| {});
        assert_eq!((score.windows, score.tokens), (5, 5 * 23));
        let expected = reference_nll(&model, &tokens, &starts, 24);
        assert!(
            (score.mean_nll() - expected).abs() < 1e-5,
            "{score:?} vs {expected}"
        );
        assert!(
            (score.perplexity() - expected.exp()).abs() < 1e-4,
            "{} vs {}",
            score.perplexity(),
            expected.exp()
        );
    }

    #[test]
    fn a_model_agrees_with_itself_and_not_with_another() {
        let (a, b) = (tiny_model(64), {
            let mut c = LlamaConfig::llama(64, 32, 48, 2, 4, 2);
            c.initializer_range = 0.3;
            c.init(&Device::flex(), 12)
        });
        let tokens: Vec<u32> = (0..400u32).map(|i| (i * 37 + i / 7) % 64).collect();
        let starts = window_starts(tokens.len(), 20, 4);
        let d = Device::flex();
        let (score, same) = compare_windows(&a, Some(&a), &tokens, &starts, 20, 3, &d, |_| {});
        let same = same.unwrap();
        assert_eq!((same.tokens, same.top1_same), (4 * 19, 4 * 19));
        assert!(same.kl_sum.abs() < 1e-4, "{}", same.kl_sum);
        assert!((same.teacher_nll_sum - score.nll_sum).abs() < 1e-3);
        let (_, other) = compare_windows(&a, Some(&b), &tokens, &starts, 20, 3, &d, |_| {});
        let other = other.unwrap();
        assert!(other.kl_sum / other.tokens as f64 > 0.01, "{other:?}");
        assert!(other.top1_same < other.tokens);
    }

    #[test]
    fn short_data_gives_fewer_windows() {
        assert_eq!(
            window_starts(100, 10, 64),
            (0..10).map(|k| k * 10).collect::<Vec<_>>()
        );
        assert_eq!(window_starts(109, 10, 3), vec![0, 30, 60]);
        assert_eq!(window_starts(9, 10, 3), Vec::<usize>::new());
        assert_eq!(window_starts(10, 10, 3), vec![0]);
    }

    #[test]
    fn ids_files_equal_the_text_path() {
        let dir = tempfile::tempdir().unwrap();
        let docs = [
            "The quick brown fox jumps over the lazy dog. The dog sleeps.",
            "A tokenizer splits text into tokens, and the model sees the ids.",
        ];
        let tokenizer =
            Tokenizer::train_bpe(docs.iter().map(|d| d.repeat(4)), 300, &["<|endoftext|>"])
                .unwrap();
        let text = dir.path().join("d.jsonl");
        let lines: Vec<String> = docs
            .iter()
            .map(|d| serde_json::json!({"id": 1, "text": d}).to_string())
            .collect();
        std::fs::write(&text, lines.join("\n")).unwrap();
        let eos = tokenizer.eos_id();
        let from_text = EvalData::load(&text, Some(&tokenizer), eos).unwrap();
        assert_eq!(
            (from_text.format, from_text.documents),
            (DataFormat::Text, 2)
        );

        let flat = dir.path().join("flat.json");
        std::fs::write(&flat, serde_json::to_string(&from_text.tokens).unwrap()).unwrap();
        let per_doc: Vec<Vec<u32>> = docs.iter().map(|d| tokenizer.encode(d).unwrap()).collect();
        let nested = dir.path().join("nested.json");
        std::fs::write(&nested, serde_json::to_string(&per_doc).unwrap()).unwrap();
        for path in [flat, nested] {
            let ids = EvalData::load(&path, None, eos).unwrap();
            assert_eq!(ids.format, DataFormat::Ids);
            assert_eq!(ids.tokens, from_text.tokens, "{}", path.display());
        }

        for (name, body) in [("bad.json", "{\"a\": 1}"), ("neg.json", "[1, -2]")] {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            let e = EvalData::load(&path, None, eos).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
        let e = EvalData::load(&text, None, eos).unwrap_err();
        assert!(matches!(e, EvalError::NoTokenizer { .. }), "{e}");
    }
}
