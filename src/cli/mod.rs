//! The commands of the `distill` binary, one module each, and what they share.

pub mod bench;
pub mod convert;
pub mod eval;
pub mod generate;
pub mod info;
pub mod quantize;
pub mod report;
pub mod run;
pub mod student;
pub mod teacher;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use distill_model::checkpoint::ModelDir;
use std::path::Path;

pub use distill_model::load::is_gguf;

/// Loads MODEL: an HF model directory, or a GGUF file (weights dequantized to f32).
pub fn load_model(path: &Path, device: &Device) -> Result<ModelDir> {
    if !path.exists() {
        bail!("{}: no such model directory or GGUF file", path.display());
    }
    distill_model::load::load_model(path, device)
        .with_context(|| format!("cannot load model {}", path.display()))
}

/// A progress bar of `len` steps named `what` (`window 3/12`), with elapsed time and ETA.
pub fn progress_bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {what} {{pos}}/{{len}} (eta {{eta}}) {{msg}}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}
