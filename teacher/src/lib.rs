//! The teacher's InstructGPT path: pretraining (from scratch or continued) on text, and the
//! JSON Lines records that supervised fine-tuning, the reward model and PPO read.

pub mod pretrain;
pub mod records;
