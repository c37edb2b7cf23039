//! Pruning a model: structured (whole layers, KV groups with their query heads, MLP neurons,
//! hidden channels: a smaller dense model of the same family) and unstructured (individual
//! weights per output row, by magnitude or Wanda, optionally in an N:M pattern), with the masks
//! that keep pruned weights at zero through training.

pub mod mask;
pub mod run;
pub mod structured;
pub mod unstructured;

use crate::calibrate::CalibrationError;

/// Why a model cannot be pruned as asked.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// A target that does not fit the model; `key` is the setting's name.
    #[error("prune target `{key}`: {reason}")]
    Target {
        /// The setting, e.g. `structured.num_key_value_heads`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model that cannot be pruned (quantized layers, say).
    #[error("{0}")]
    Model(String),
    /// Calibration failed.
    #[error(transparent)]
    Calibration(#[from] CalibrationError),
}
