//! Making students from a teacher: the calibration drivers that run text through a model and
//! hand each layer's input statistics to `distill_quant`'s per-layer algorithms.
//!
//! * [`calibrate`]: calibration windows from a token stream, and the per-layer input
//!   statistics (GPTQ Hessians, AWQ activation means) gathered with the model's capture hook.
//! * [`quantize`]: quantizing a whole model with RTN, GPTQ, AWQ or AWQ+GPTQ.

pub mod calibrate;
pub mod quantize;
