//! Loading a model from either format: an HF model directory or a GGUF file.

use crate::checkpoint::{self, CheckpointError, ModelDir};
use crate::gguf::{self, GgufError};
use crate::tokenizer::Tokenizer;
use burn::prelude::Device;
use std::path::Path;

/// Either reader's error.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// An HF model directory that cannot be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A GGUF file that cannot be read.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Whether `path` names a GGUF file rather than an HF model directory.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Loads an HF model directory, or a GGUF file (weights dequantized to f32).
pub fn load_model(path: &Path, device: &Device) -> Result<ModelDir, LoadError> {
    if is_gguf(path) {
        Ok(gguf::load(path, device)?)
    } else {
        Ok(checkpoint::load_dir(path, device)?)
    }
}

/// Takes `m`'s tokenizer for training it further: an error naming `path` when the model has
/// none, or when the tokenizer has more tokens than the model has embeddings.
pub fn take_training_tokenizer(m: &mut ModelDir, path: &Path) -> Result<Tokenizer, String> {
    let tokenizer = m.tokenizer.take().ok_or_else(|| {
        format!(
            "{}: no tokenizer.json: a model trained further needs its tokenizer (and, for \
             chats, its chat template)",
            path.display()
        )
    })?;
    if tokenizer.vocab_size() > m.config.vocab_size {
        return Err(format!(
            "{}: tokenizer has {} tokens but the model only {} embeddings",
            path.display(),
            tokenizer.vocab_size(),
            m.config.vocab_size
        ));
    }
    Ok(tokenizer)
}

/// SHA-256 over a model's bytes: the GGUF file, or an HF directory's `config.json` and
/// safetensors files (in name order). Identifies the model that produced a cached signal.
pub fn fingerprint(path: &Path) -> Result<String, LoadError> {
    use sha2::{Digest, Sha256};
    let files = if is_gguf(path) {
        vec![path.to_path_buf()]
    } else {
        let mut files = vec![path.join("config.json")];
        files.extend(checkpoint::SafetensorsSource::dir_files(path)?);
        files
    };
    let mut hash = Sha256::new();
    for f in &files {
        let mut file = std::fs::File::open(f).map_err(|e| CheckpointError::File {
            path: f.clone(),
            reason: e.to_string(),
        })?;
        std::io::copy(&mut file, &mut hash).map_err(|e| CheckpointError::File {
            path: f.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(format!("{:x}", hash.finalize()))
}
