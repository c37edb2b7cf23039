//! Loading a model from either format: an HF model directory or a GGUF file.

use crate::checkpoint::{self, CheckpointError, ModelDir};
use crate::gguf::{self, GgufError};
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
