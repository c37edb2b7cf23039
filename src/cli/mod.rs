//! The commands of the `distill` binary, one module each, and what they share.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod info;
pub mod teacher;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use distill_model::checkpoint::{self, ModelDir};
use distill_model::gguf;
use std::path::Path;

/// Whether `path` names a GGUF file rather than an HF model directory.
pub fn is_gguf(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Loads MODEL: an HF model directory, or a GGUF file (weights dequantized to f32).
pub fn load_model(path: &Path, device: &Device) -> Result<ModelDir> {
    if !path.exists() {
        bail!("{}: no such model directory or GGUF file", path.display());
    }
    let what = || format!("cannot load model {}", path.display());
    if is_gguf(path) {
        gguf::load(path, device).with_context(what)
    } else {
        checkpoint::load_dir(path, device).with_context(what)
    }
}
