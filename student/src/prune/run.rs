//! `distill student prune`: a model pruned structurally and/or unstructurally on calibration
//! text, written as an HF model directory with a report of what was removed.

use super::PruneError;
use super::structured::{self, Importance, StructuredConfig, non_embedding_parameters};
use super::unstructured::{self, SparsityReport, UnstructuredConfig};
use crate::calibrate;
use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `student prune` reads, as in its TOML file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneRunConfig {
    /// The model to prune: an HF directory or a GGUF file.
    pub model: PathBuf,
    /// Output folder: `model/` (HF layout) and `prune_report.json`.
    pub out: PathBuf,
    /// Calibration text (`.jsonl` of `{"text"}` lines, or plain text); needed by structured
    /// pruning and Wanda.
    pub calib_data: Option<PathBuf>,
    /// Calibration windows. Default 32.
    pub calib_samples: usize,
    /// Tokens per calibration window. Default 512.
    pub calib_len: usize,
    /// Seed of the calibration windows' offsets. Default 0.
    pub seed: u64,
    /// Structured targets; none = no structured pruning.
    pub structured: Option<StructuredConfig>,
    /// Unstructured sparsity, applied after the structured cut; none = none.
    pub unstructured: Option<UnstructuredConfig>,
}

impl Default for PruneRunConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            out: PathBuf::from("runs/prune"),
            calib_data: None,
            calib_samples: 32,
            calib_len: 512,
            seed: 0,
            structured: None,
            unstructured: None,
        }
    }
}

/// Why `student prune` could not run.
#[derive(Debug, thiserror::Error)]
pub enum PruneRunError {
    /// A bad config file or setting.
    #[error("{0}")]
    Config(String),
    /// Pruning refused.
    #[error(transparent)]
    Prune(#[from] PruneError),
    /// Unusable calibration text.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// A model that cannot be read.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A model directory that cannot be written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A file that cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl PruneRunConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_toml_file(path: &Path) -> Result<Self, PruneRunError> {
        distill_model::fsutil::read_toml(path).map_err(PruneRunError::Config)
    }
}

/// What a pruning run did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The input model.
    pub model: String,
    /// Where the pruned model was written.
    pub out: String,
    /// Parameters before and after.
    pub parameters: [usize; 2],
    /// Non-embedding parameters before and after.
    pub non_embedding_parameters: [usize; 2],
    /// Sizes after: layers, query heads, KV heads, MLP width, hidden width.
    pub sizes: [usize; 5],
    /// The structured importance scores, when structured pruning ran.
    pub importance: Option<Importance>,
    /// The unstructured result, when it ran.
    pub sparsity: Option<SparsityReport>,
    /// The settings.
    pub config: PruneRunConfig,
    /// Wall time, in seconds.
    pub seconds: f64,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [l, h, kv, i, d] = self.sizes;
        let [p0, p1] = self.parameters;
        let [n0, n1] = self.non_embedding_parameters;
        writeln!(f, "pruned {} in {:.1}s", self.model, self.seconds)?;
        writeln!(
            f,
            "  sizes: {l} layers, {h} query / {kv} KV heads, MLP {i}, hidden {d}"
        )?;
        writeln!(f, "  parameters {p0} → {p1}")?;
        writeln!(
            f,
            "  non-embedding parameters {n0} → {n1} ({:.1}%)",
            100.0 * n1 as f64 / n0.max(1) as f64
        )?;
        if let Some(s) = &self.sparsity {
            writeln!(
                f,
                "  sparsity {:.1}% of the pruned layers' weights, {:.1}% of non-embedding parameters",
                100.0 * s.sparsity(),
                100.0 * s.non_embedding_sparsity()
            )?;
        }
        write!(f, "  model written to {}/model", self.out)
    }
}

/// Prunes `config.model` on `device` and writes `OUT/model` and `OUT/prune_report.json`.
pub fn run(config: &PruneRunConfig, device: &Device) -> Result<PruneReport, PruneRunError> {
    let started = Instant::now();
    if config.model.as_os_str().is_empty() {
        return Err(PruneRunError::Config("`model` is not set".into()));
    }
    if config.structured.is_none() && config.unstructured.is_none() {
        return Err(PruneRunError::Config(
            "nothing to do: give a [structured] and/or an [unstructured] table".into(),
        ));
    }
    if let Some(u) = &config.unstructured {
        u.validate()?;
    }
    let m = distill_model::load::load_model(&config.model, device)?;
    if let Some(s) = &config.structured {
        s.validate(&m.config)?;
    }
    let needs_text = config.structured.is_some()
        || config
            .unstructured
            .is_some_and(|u| u.score == unstructured::Score::Wanda);
    let windows = match (&config.calib_data, needs_text) {
        (_, false) => Vec::new(),
        (None, true) => {
            return Err(PruneRunError::Config(
                "`calib_data` is not set: structured pruning and Wanda measure importance on text"
                    .into(),
            ));
        }
        (Some(path), true) => {
            let tokenizer = m.tokenizer.as_ref().ok_or_else(|| {
                PruneRunError::Config(format!(
                    "{}: no tokenizer.json to tokenize the calibration text with",
                    config.model.display()
                ))
            })?;
            let name = path.display().to_string();
            let tokens = data::tokenize_file(tokenizer, path)?;
            calibrate::windows(
                &tokens,
                config.calib_samples,
                config.calib_len,
                config.seed,
                &name,
            )
            .map_err(PruneError::from)?
        }
    };
    let before = (
        m.config.num_parameters(),
        non_embedding_parameters(&m.config),
    );
    let (mut model_config, mut model, mut importance) = (m.config.clone(), m.model, None);
    if let Some(target) = &config.structured {
        tracing::info!("measuring importance on {} windows", windows.len());
        let imp = structured::importance(&model, &model_config, &windows, device)?;
        let (c, pruned) =
            structured::prune_structured(&model_config, &model, &imp, target, device)?;
        (model_config, model, importance) = (c, pruned, Some(imp));
    }
    let sparsity = match &config.unstructured {
        Some(u) => Some(unstructured::prune_unstructured(
            &mut model, u, &windows, device,
        )?),
        None => None,
    };
    let c = &model_config;
    let report = PruneReport {
        model: config.model.display().to_string(),
        out: config.out.display().to_string(),
        parameters: [before.0, c.num_parameters()],
        non_embedding_parameters: [before.1, non_embedding_parameters(c)],
        sizes: [
            c.num_hidden_layers,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.intermediate_size,
            c.hidden_size,
        ],
        importance,
        sparsity,
        config: config.clone(),
        seconds: started.elapsed().as_secs_f64(),
    };
    let dir = ModelDir {
        config: model_config,
        model,
        tokenizer: m.tokenizer,
        generation_config: m.generation_config,
    };
    checkpoint::save_dir(&config.out.join("model"), &dir, SaveOptions::default())?;
    let path = config.out.join("prune_report.json");
    let json = serde_json::to_value(&report).map_err(|e| PruneRunError::Config(e.to_string()))?;
    distill_model::fsutil::write_json_atomic(&path, &json)
        .map_err(|source| PruneRunError::Io { path, source })?;
    Ok(report)
}
