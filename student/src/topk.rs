//! The offline teacher signal: the teacher's `k` most likely next tokens and their
//! log-probabilities at every position of a fixed set of training windows, computed once and
//! stored so that many students and epochs reuse them without running the teacher.
//!
//! The file is safetensors: `tokens` U32 `[windows, seq_len + 1]` (the windows themselves, so
//! a run can check it is reading the signal of its own data), `ids` U32 `[windows, seq_len, k]`
//! and `logprobs` F32 `[windows, seq_len, k]` (log-softmax of the logits divided by the
//! temperature, best first), with a [`TopKHeader`] as JSON under `distill.topk` in the
//! metadata. Memory: `8k` bytes a position (256 B at `k = 32`), against `4·vocab` (197 KB for
//! SmolLM2) for full logits. How the loss treats the mass outside the top `k` is in [`crate::kd`].

use crate::kd::TeacherSignal;
use burn::prelude::*;
use distill_model::fsutil::write_bytes_atomic;
use distill_model::{Layout, LlamaForCausalLM};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The metadata key of the header.
pub const METADATA_KEY: &str = "distill.topk";

/// What a cache holds and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopKHeader {
    /// Tokens kept per position.
    pub k: usize,
    /// Temperature the log-probabilities were taken at.
    pub temperature: f64,
    /// Predictions per window (windows hold `seq_len + 1` tokens).
    pub seq_len: usize,
    /// Windows in the file.
    pub windows: usize,
    /// The teacher's vocabulary size.
    pub vocab_size: usize,
    /// The teacher, as named when the cache was made.
    pub teacher: String,
    /// SHA-256 of the teacher's files (`distill_model::load::fingerprint`).
    pub teacher_sha256: String,
}

/// A cache file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopKError {
    /// The file is unreadable, malformed or inconsistent.
    #[error("teacher top-k cache {}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Settings that make no cache.
    #[error("teacher top-k cache: {0}")]
    Settings(String),
}

/// The teacher's top-k signal over a set of windows, in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKCache {
    /// What the cache holds.
    pub header: TopKHeader,
    tokens: Vec<u32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
}

/// The top `k` of one row of logits at `temperature`: `(ids, log-probabilities)`, best first
/// (ties by lower id).
pub fn top_k_row(logits: &[f32], k: usize, temperature: f64) -> (Vec<u32>, Vec<f32>) {
    let scaled = |x: f32| x as f64 / temperature;
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(scaled(x)));
    let lse = max
        + logits
            .iter()
            .map(|&x| (scaled(x) - max).exp())
            .sum::<f64>()
            .ln();
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let better = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let k = k.min(logits.len());
    if k < order.len() {
        order.select_nth_unstable_by(k, better);
        order.truncate(k);
    }
    order.sort_unstable_by(better);
    let logprobs = order
        .iter()
        .map(|&i| (scaled(logits[i as usize]) - lse) as f32)
        .collect();
    (order, logprobs)
}

impl TopKCache {
    /// Runs `teacher` over `windows` (each `seq_len + 1` tokens), `batch` windows a forward,
    /// keeping the top `k` at every position; `progress` gets the windows done.
    #[allow(clippy::too_many_arguments)]
    pub fn compute(
        teacher: &LlamaForCausalLM,
        header: TopKHeader,
        windows: &[Vec<u32>],
        batch: usize,
        device: &Device,
        mut progress: impl FnMut(usize),
    ) -> Result<Self, TopKError> {
        let (k, seq) = (header.k, header.seq_len);
        if k == 0
            || k > header.vocab_size
            || header.temperature.is_nan()
            || header.temperature <= 0.0
        {
            return Err(TopKError::Settings(format!(
                "k = {k} must be in 1..={} and the temperature {} positive",
                header.vocab_size, header.temperature
            )));
        }
        if let Some(w) = windows.iter().find(|w| w.len() != seq + 1) {
            return Err(TopKError::Settings(format!(
                "a window of {} tokens, expected {}",
                w.len(),
                seq + 1
            )));
        }
        let mut cache = Self {
            header: TopKHeader {
                windows: windows.len(),
                ..header
            },
            tokens: windows.concat(),
            ids: Vec::with_capacity(windows.len() * seq * k),
            logprobs: Vec::with_capacity(windows.len() * seq * k),
        };
        let vocab = cache.header.vocab_size;
        for (i, chunk) in windows.chunks(batch.max(1)).enumerate() {
            let b = chunk.len();
            let ids: Vec<i64> = chunk
                .iter()
                .flat_map(|w| w[..seq].iter().map(|&t| t as i64))
                .collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, seq]), device);
            let hidden = teacher.hidden_states(ids, &Layout::causal(b, seq));
            let width = hidden.dims()[2];
            let hidden = hidden.reshape([b * seq, width]);
            // A few hundred rows of logits at a time keeps memory bounded for large vocabularies.
            for start in (0..b * seq).step_by(256) {
                let rows = 256.min(b * seq - start);
                let logits: Vec<f32> = teacher
                    .head(hidden.clone().narrow(0, start, rows))
                    .into_data()
                    .convert::<f32>()
                    .try_to_vec()
                    .map_err(|e| TopKError::Settings(format!("teacher logits: {e:?}")))?;
                let tops: Vec<(Vec<u32>, Vec<f32>)> = logits
                    .par_chunks(vocab)
                    .map(|row| top_k_row(row, k, cache.header.temperature))
                    .collect();
                for (ids, lp) in tops {
                    cache.ids.extend(ids);
                    cache.logprobs.extend(lp);
                }
            }
            progress((i * batch.max(1) + b).min(windows.len()));
        }
        Ok(cache)
    }

    /// Window `w`'s tokens (`seq_len + 1`).
    pub fn window(&self, w: usize) -> &[u32] {
        let n = self.header.seq_len + 1;
        &self.tokens[w * n..(w + 1) * n]
    }

    /// The signal at positions `range` of the windows `rows`, flattened row-major as a batch
    /// `[rows.len(), seq_len]` is: `ids` and `logprobs` `[range.len(), k]` on `device`.
    pub fn signal(
        &self,
        rows: &[usize],
        range: std::ops::Range<usize>,
        device: &Device,
    ) -> TeacherSignal {
        let (k, seq) = (self.header.k, self.header.seq_len);
        let mut ids = Vec::with_capacity(range.len() * k);
        let mut logprobs = Vec::with_capacity(range.len() * k);
        for p in range.clone() {
            let at = (rows[p / seq] * seq + p % seq) * k;
            ids.extend(self.ids[at..at + k].iter().map(|&i| i as i64));
            logprobs.extend_from_slice(&self.logprobs[at..at + k]);
        }
        let n = range.len();
        TeacherSignal::TopK {
            ids: Tensor::from_data(TensorData::new(ids, [n, k]), device),
            logprobs: Tensor::from_data(TensorData::new(logprobs, [n, k]), device),
        }
    }

    /// Writes the cache atomically.
    pub fn save(&self, path: &Path) -> Result<(), TopKError> {
        let err = |reason: String| TopKError::File {
            path: path.to_path_buf(),
            reason,
        };
        let h = &self.header;
        let tokens = bytes_u32(&self.tokens);
        let ids = bytes_u32(&self.ids);
        let logprobs: Vec<u8> = self.logprobs.iter().flat_map(|x| x.to_le_bytes()).collect();
        let views = [
            (
                "tokens",
                Dtype::U32,
                vec![h.windows, h.seq_len + 1],
                &tokens,
            ),
            ("ids", Dtype::U32, vec![h.windows, h.seq_len, h.k], &ids),
            (
                "logprobs",
                Dtype::F32,
                vec![h.windows, h.seq_len, h.k],
                &logprobs,
            ),
        ]
        .into_iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(dtype, shape, bytes)
                .map(|v| (name, v))
                .map_err(|e| err(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
        let header = serde_json::to_string(h).map_err(|e| err(e.to_string()))?;
        let metadata = HashMap::from([(METADATA_KEY.to_string(), header)]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| err(e.to_string()))?;
        write_bytes_atomic(path, &bytes).map_err(|e| err(e.to_string()))
    }

    /// Reads a cache, checking that its tensors agree with its header.
    pub fn load(path: &Path) -> Result<Self, TopKError> {
        let err = |reason: String| TopKError::File {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let header: TopKHeader = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| err(format!("no `{METADATA_KEY}` header: not a top-k cache")))
            .and_then(|t| serde_json::from_str(t).map_err(|e| err(format!("header: {e}"))))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let h = &header;
        let tensor = |name: &str, dtype: Dtype, shape: Vec<usize>| {
            let t = file
                .tensor(name)
                .map_err(|e| err(format!("tensor `{name}`: {e}")))?;
            if t.dtype() != dtype || t.shape() != shape.as_slice() {
                return Err(err(format!(
                    "tensor `{name}` is {:?} {:?}, the header says {dtype:?} {shape:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(t.data().to_vec())
        };
        let tokens = u32s(&tensor(
            "tokens",
            Dtype::U32,
            vec![h.windows, h.seq_len + 1],
        )?);
        let ids = u32s(&tensor("ids", Dtype::U32, vec![h.windows, h.seq_len, h.k])?);
        let logprobs: Vec<f32> = tensor("logprobs", Dtype::F32, vec![h.windows, h.seq_len, h.k])?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(&bad) = tokens
            .iter()
            .chain(&ids)
            .find(|&&t| t as usize >= h.vocab_size)
        {
            return Err(err(format!(
                "token id {bad} is outside the vocabulary of {}",
                h.vocab_size
            )));
        }
        if logprobs.iter().any(|x| x.is_nan() || *x > 0.0) {
            return Err(err("a log-probability is positive or NaN".into()));
        }
        Ok(Self {
            header,
            tokens,
            ids,
            logprobs,
        })
    }
}

fn bytes_u32(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(k: usize, seq_len: usize, vocab_size: usize) -> TopKHeader {
        TopKHeader {
            k,
            temperature: 2.0,
            seq_len,
            windows: 0,
            vocab_size,
            teacher: "tiny".into(),
            teacher_sha256: "00".into(),
        }
    }

    #[test]
    fn top_k_row_is_the_best_k_of_the_softened_distribution() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let (ids, lp) = top_k_row(&logits, 3, 2.0);
        assert_eq!(ids, vec![1, 3, 0]);
        let z: f64 = logits.iter().map(|&x| (x as f64 / 2.0).exp()).sum();
        for (&i, &l) in ids.iter().zip(&lp) {
            let expected = (logits[i as usize] as f64 / 2.0).exp() / z;
            assert!((l as f64 - expected.ln()).abs() < 1e-6, "{i}: {l}");
        }
    }

    #[test]
    fn the_cache_round_trips_and_matches_the_teacher() {
        let device = Device::flex();
        let mut config = distill_model::LlamaConfig::llama(50, 32, 48, 2, 4, 2);
        config.initializer_range = 0.3;
        let teacher = config.init(&device, 5);
        let windows: Vec<Vec<u32>> = (0..3)
            .map(|w| (0..9).map(|i| ((w * 13 + i * 7) % 50) as u32).collect())
            .collect();
        let cache =
            TopKCache::compute(&teacher, header(4, 8, 50), &windows, 2, &device, |_| {}).unwrap();
        assert_eq!(cache.header.windows, 3);
        assert_eq!(cache.window(2), windows[2].as_slice());

        // Position 5 of window 1 against the teacher's own logits.
        let ids: Vec<i64> = windows[1][..8].iter().map(|&t| t as i64).collect();
        let logits: Vec<f32> = teacher
            .forward(
                Tensor::from_data(TensorData::new(ids, [1, 8]), &device),
                &Layout::causal(1, 8),
            )
            .into_data()
            .try_to_vec()
            .unwrap();
        let (want_ids, want_lp) = top_k_row(&logits[5 * 50..6 * 50], 4, 2.0);
        let TeacherSignal::TopK { ids, logprobs } = cache.signal(&[1], 5..6, &device) else {
            panic!("a top-k signal");
        };
        let got_ids: Vec<i64> = ids.into_data().convert::<i64>().try_to_vec().unwrap();
        let got_lp: Vec<f32> = logprobs.into_data().try_to_vec().unwrap();
        assert_eq!(
            got_ids,
            want_ids.iter().map(|&i| i as i64).collect::<Vec<_>>()
        );
        for (g, w) in got_lp.iter().zip(&want_lp) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topk.safetensors");
        cache.save(&path).unwrap();
        assert_eq!(TopKCache::load(&path).unwrap(), cache);

        // A truncated file and a file that is not a cache are refused, naming the file.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = TopKCache::load(&path).unwrap_err().to_string();
        assert!(e.contains("topk.safetensors"), "{e}");
        let other = dir.path().join("other.safetensors");
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        std::fs::write(&other, safetensors::serialize([("x", view)], None).unwrap()).unwrap();
        let e = TopKCache::load(&other).unwrap_err().to_string();
        assert!(e.contains("not a top-k cache"), "{e}");
    }
}
