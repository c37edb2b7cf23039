//! The teacher's InstructGPT path. So far: pretraining (from scratch or continued) on text.

pub mod pretrain;
