//! The teacher's InstructGPT path: pretraining (from scratch or continued) on text
//! (`pretrain`), the JSON Lines records the later stages read (`records`), the man-page
//! question set with its gold judge and multiple-choice evaluation (`questions`), supervised
//! fine-tuning on demonstrations (`sft`), a reward model trained on rankings (`reward`) and on
//! rankings of the policy's own sampled answers (`sample_rankings`), and
//! PPO against it with a KL penalty to the SFT policy (`ppo`).

pub mod bootstrap;
pub mod compare;
mod mixture;
pub mod ppo;
pub mod pretrain;
pub mod questions;
pub mod records;
pub mod reward;
pub mod sample_rankings;
pub mod sft;

/// The first of `keys` whose value is 0, as an error naming it (settings that count things).
pub(crate) fn at_least_one(keys: &[(&str, usize)]) -> Result<(), String> {
    match keys.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(format!("{key} must be at least 1")),
        None => Ok(()),
    }
}
