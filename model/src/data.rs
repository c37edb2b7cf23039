//! Text for language-model training: documents read from files, tokenized, and packed into
//! fixed-length windows.

use crate::tokenizer::Tokenizer;
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// A text file that cannot be used as training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A JSON Lines record is malformed.
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    /// The file holds no text, or too little for one window.
    #[error("{path}: {reason}")]
    Empty { path: String, reason: String },
    /// Tokenization failed.
    #[error("{path}: {reason}")]
    Tokenize { path: String, reason: String },
}

/// Reads the documents of a file: a `.jsonl` file holds one `{"text": ...}` object per line,
/// any other file is one document.
pub fn read_documents(path: &Path) -> Result<Vec<String>, DataError> {
    let name = path.display().to_string();
    let io = |source| DataError::Io {
        path: name.clone(),
        source,
    };
    let docs: Vec<String> = if path.extension().is_some_and(|e| e == "jsonl") {
        let file = std::fs::File::open(path).map_err(io)?;
        let mut docs = Vec::new();
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |reason: String| DataError::Line {
                path: name.clone(),
                line: i + 1,
                reason,
            };
            let value: Value =
                serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let text = value
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("field `text`: missing or not a string".into()))?;
            docs.push(text.to_string());
        }
        docs
    } else {
        vec![std::fs::read_to_string(path).map_err(io)?]
    };
    let docs: Vec<String> = docs.into_iter().filter(|d| !d.trim().is_empty()).collect();
    if docs.is_empty() {
        return Err(DataError::Empty {
            path: name,
            reason: "no text in this file".into(),
        });
    }
    Ok(docs)
}

/// Tokenizes documents and joins them into one stream, each document followed by `eos`.
pub fn tokenize_documents(
    tokenizer: &Tokenizer,
    docs: &[String],
    eos: Option<u32>,
    origin: &str,
) -> Result<Vec<u32>, DataError> {
    let mut stream = Vec::new();
    for doc in docs {
        let ids = tokenizer.encode(doc).map_err(|e| DataError::Tokenize {
            path: origin.to_string(),
            reason: e.to_string(),
        })?;
        stream.extend(ids);
        stream.extend(eos);
    }
    Ok(stream)
}

/// The documents of a file ([`read_documents`]) tokenized and joined, each followed by the
/// tokenizer's EOS token: the stream every training stage reads.
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>, DataError> {
    let docs = read_documents(path)?;
    tokenize_documents(
        tokenizer,
        &docs,
        tokenizer.eos_id(),
        &path.display().to_string(),
    )
}

/// A token stream cut into windows of `seq_len + 1` tokens (inputs plus the shifted targets),
/// visited in an order shuffled afresh each epoch from a seed.
#[derive(Debug, Clone)]
pub struct PackedWindows {
    tokens: Vec<u32>,
    seq_len: usize,
    windows: usize,
    seed: u64,
}

impl PackedWindows {
    /// Packs `tokens`; errors when they do not fill one window.
    pub fn new(
        tokens: Vec<u32>,
        seq_len: usize,
        seed: u64,
        origin: &str,
    ) -> Result<Self, DataError> {
        let windows = tokens.len().saturating_sub(1) / seq_len;
        if windows == 0 {
            return Err(DataError::Empty {
                path: origin.to_string(),
                reason: format!(
                    "{} tokens do not fill one window of {} tokens",
                    tokens.len(),
                    seq_len + 1
                ),
            });
        }
        Ok(Self {
            tokens,
            seq_len,
            windows,
            seed,
        })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows
    }

    /// Whether there are no windows (never true once built).
    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }

    /// Tokens per training sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens in the stream.
    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Window `w` in stream order: `seq_len + 1` tokens.
    pub fn window(&self, w: usize) -> &[u32] {
        let start = w * self.seq_len;
        &self.tokens[start..start + self.seq_len + 1]
    }

    /// The `i`-th window of the shuffled visiting order, which continues across epochs.
    pub fn shuffled(&self, i: usize) -> &[u32] {
        let epoch = (i / self.windows) as u64;
        let order = permutation(
            self.windows,
            self.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        self.window(order[i % self.windows])
    }

    /// Batch `index` of `batch` windows in shuffled order, as `(inputs, targets)`, each
    /// `batch * seq_len` ids row-major.
    pub fn batch(&self, index: usize, batch: usize) -> (Vec<u32>, Vec<u32>) {
        let mut inputs = Vec::with_capacity(batch * self.seq_len);
        let mut targets = Vec::with_capacity(batch * self.seq_len);
        for i in 0..batch {
            let w = self.shuffled(index * batch + i);
            inputs.extend_from_slice(&w[..self.seq_len]);
            targets.extend_from_slice(&w[1..]);
        }
        (inputs, targets)
    }
}

/// A permutation of `0..n` from a seed (Fisher–Yates over SplitMix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_stream_and_shuffle_deterministically() {
        let tokens: Vec<u32> = (0..101).collect();
        let packed = PackedWindows::new(tokens, 10, 7, "t").unwrap();
        assert_eq!(packed.len(), 10);
        assert_eq!(packed.window(9), &(90..101).collect::<Vec<_>>()[..]);
        let first: Vec<u32> = (0..10).map(|i| packed.shuffled(i)[0]).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).map(|w| w * 10).collect::<Vec<_>>());
        let again = PackedWindows::new((0..101).collect(), 10, 7, "t").unwrap();
        assert_eq!(again.batch(3, 4), packed.batch(3, 4));
        let (inputs, targets) = packed.batch(0, 2);
        assert_eq!(inputs[1], targets[0]);
    }

    #[test]
    fn too_little_data_is_an_error() {
        let e = PackedWindows::new(vec![1, 2, 3], 8, 0, "tiny.txt").unwrap_err();
        assert!(e.to_string().contains("tiny.txt"), "{e}");
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"text\": \"a\"}\n{\"txt\": 1}\n").unwrap();
        let e = read_documents(&path).unwrap_err();
        assert!(e.to_string().contains("d.jsonl:2"), "{e}");
        let empty = dir.path().join("e.txt");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(read_documents(&empty).is_err());
    }
}
