//! Quantized weight formats for `distill`.
//!
//! * [`gguf`]: the GGML/GGUF types `F32`, `F16`, `Q8_0`, `Q4_0` and `Q4_1`,
//!   bit-identical to the Python `gguf` package's `gguf.quants`
//!   (`quantize_row`, `dequantize_row`, [`GgmlMatrix`]).
//! * [`int8`]: int8 per-output-channel symmetric.
//! * [`int4`]: int4 group-wise (32/64/128) symmetric and asymmetric.
//! * [`matrix`]: [`Scheme`] and [`QuantizedMatrix`] for int8/int4, with RTN
//!   quantization and the per-group grid functions GPTQ/AWQ build on.
//! * [`reference`](mod@reference): plain dequantize-then-dot matrix-vector products.
//!
//! Weight matrices are `[out, in]` row-major `f32` (one row per output
//! channel); every format quantizes along the row (the input dimension).
//! Bad input (wrong lengths, unsupported or non-dividing group sizes,
//! out-of-range codes) is reported as a [`QuantError`], never a panic.

pub mod error;
pub mod gguf;
pub mod int4;
pub mod int8;
pub mod matrix;
pub mod reference;

pub use error::{QuantError, Result};
pub use gguf::{
    GgmlMatrix, GgmlType, dequantize_matrix, dequantize_row, quantize_matrix, quantize_row,
};
pub use matrix::{GROUP_SIZES, QuantizedMatrix, Scheme};
