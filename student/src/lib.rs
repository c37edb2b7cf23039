//! Making students from a teacher: the calibration drivers that run text through a model and
//! hand each layer's input statistics to `distill_quant`'s per-layer algorithms, pruning, and
//! soft-label distillation.
//!
//! * [`calibrate`]: calibration windows from a token stream, and the per-layer input
//!   statistics (GPTQ Hessians, AWQ activation means) gathered with the model's capture hook.
//! * [`quantize`]: quantizing a whole model with RTN, GPTQ, AWQ or AWQ+GPTQ.
//! * [`prune`]: structured and unstructured pruning, and sparsity masks.
//! * [`kd`]: the distillation losses (forward KL, reverse KL, generalized JSD), chunked over
//!   positions, against full teacher logits or a cached top-k ([`topk`]).
//! * [`distill`]: the `student kd` run: data, teacher signal, masks, the training loop.

pub mod calibrate;
pub mod distill;
pub mod kd;
pub mod prune;
pub mod quantize;
pub mod topk;
