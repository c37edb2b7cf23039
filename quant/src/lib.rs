//! Quantized weight formats for `distill`.
//!
//! * [`gguf`]: the GGML/GGUF types `F32`, `F16`, `Q8_0`, `Q4_0` and `Q4_1`,
//!   bit-identical to the Python `gguf` package's `gguf.quants`
//!   (`quantize_row`, `dequantize_row`, [`GgmlMatrix`]).
//! * [`int8`]: int8 per-output-channel symmetric.
//! * [`int4`]: int4 group-wise (32/64/128) symmetric and asymmetric (an `f32`
//!   minimum per group, `Q4_1`'s affine rule).
//! * [`matrix`]: [`Scheme`] and [`QuantizedMatrix`] for int8/int4, with RTN
//!   quantization and the per-group grid functions GPTQ/AWQ build on.
//! * [`format`]: [`Format`] and [`PackedMatrix`], one type over both families.
//! * [`reference`](mod@reference): plain dequantize-then-dot matrix-vector products.
//! * [`grid`]: [`Grid`], the per-group quantization grid of every format.
//! * [`gptq`]: GPTQ ([`gptq_quantize`]) and its input [`Hessian`].
//! * [`awq`]: AWQ activation-aware input-channel scaling ([`awq_search`]).
//! * [`cube`]: packed matrices on a CubeCL (WGPU) device and a linear layer
//!   that dequantizes inside its kernel.
//! * [`cpu`]: packed CPU kernels: [`cpu::matvec`] (decode, int8 dot products
//!   on the packed codes, AVX-512 VNNI or portable) and [`cpu::matmul`]
//!   (prefill, panel dequantization + `gemm`), with the dense `f32` baselines.
//!
//! Weight matrices are `[out, in]` row-major `f32` (one row per output
//! channel); every format quantizes along the row (the input dimension).
//! Bad input (wrong lengths, unsupported or non-dividing group sizes,
//! out-of-range codes) is reported as a [`QuantError`], never a panic.

pub mod awq;
pub mod cpu;
pub mod cube;
pub mod error;
pub mod format;
pub mod gguf;
pub mod gptq;
pub mod grid;
pub mod int4;
pub mod int8;
pub mod matrix;
pub mod reference;

pub use awq::{AwqConfig, AwqLayer, AwqResult, awq_scales, awq_search, scale_columns};
pub use error::{QuantError, Result};
pub use format::{Format, PackedMatrix};
pub use gguf::{
    GgmlMatrix, GgmlType, dequantize_matrix, dequantize_row, quantize_matrix, quantize_row,
};
pub use gptq::{GptqConfig, GptqResult, GptqStats, Hessian, gptq_quantize};
pub use grid::{Grid, GroupParams, ScaleSearch};
pub use matrix::{GROUP_SIZES, QuantizedMatrix, Scheme};
