//! The Llama-family decoder, its tokenizer and checkpoints, generation, and the one training
//! loop that every stage of distill uses.

pub mod capture;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod fsutil;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod layout;
pub mod llama;
pub mod load;
pub mod loss;
pub mod memory;
pub mod quantized;
pub mod sample;
pub mod tokenizer;
pub mod train;

pub use config::{Architecture, LlamaConfig};
pub use layout::{KvCache, Layout};
pub use llama::LlamaForCausalLM;
