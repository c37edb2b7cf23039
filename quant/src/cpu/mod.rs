//! Packed CPU kernels: matrix-vector (decode) and matrix-matrix (prefill)
//! products straight from the packed weights, plus the dense `f32`
//! baselines.
//!
//! * [`matvec`]: `y = W · x`. `x` is quantized once per call to int8 blocks
//!   of 32 (one `f32` scale per block, as llama.cpp's `Q8_0`); each row is
//!   then an integer dot product of the weight codes with those int8 codes,
//!   scaled per block. The weights are read once, in their packed form; no
//!   `f32` copy of them is made. Rows run in parallel (rayon) in chunks.
//! * [`matmul`]: `Y[tokens, rows] = X[tokens, cols] · Wᵀ`. Panels of rows
//!   are dequantized into a per-thread `f32` scratch (at most
//!   [`PANEL_ROWS`] rows) and multiplied with `gemm`; panels run in
//!   parallel. Up to [`SMALL_BATCH`] tokens run the [`matvec`] kernels
//!   instead, token after token over each cache-sized chunk of rows.
//! * [`f32_matvec`], [`f32_matmul`]: the same for a dense row-major `f32`
//!   matrix.
//!
//! # Numerics
//!
//! [`matvec`] differs from [`reference::matvec`](crate::reference::matvec)
//! (dequantize, then an exact-input `f32` dot) only by the rounding of `x`
//! to its int8 grid and by the summation order: with `Δ_b = max_{j∈b}|x_j| / 127`
//! the scale of input block `b` and `ŵ` the dequantized row,
//! `|y - y_ref| <= ½ Σ_b Δ_b Σ_{j∈b} |ŵ_j|` plus `f32` rounding (about
//! `1e-6 · Σ_j |ŵ_j x_j|`), i.e. at most 0.4 % of `Σ_j |ŵ_j| · max_{b(j)}|x|`.
//! On random data the relative RMS error `‖y - y_ref‖ / ‖y_ref‖` is about
//! 0.5 %: the same order as rounding the weights to int8, and well below
//! int4's weight error (this is llama.cpp's `Q8_0` activation trick).
//! (`Q4_1` and asymmetric int4 take their codes around the group centre
//! `m + 8d` (`d` the step, `m` the minimum) and add `(m + 8d)·Σx` exactly,
//! so their bound has `|ŵ_j - m - 8d|` for `|ŵ_j|`.)
//! The integer parts are exact, so every instruction set gives the same
//! result up to `f32` rounding. [`matmul`] with more than [`SMALL_BATCH`]
//! tokens multiplies the exactly dequantized weights with the exact `x`, so
//! it differs from the reference by `f32` rounding only; with fewer it has
//! [`matvec`]'s numerics.
//!
//! # Instruction sets
//!
//! [`Isa::best`] picks, at run time, the hand-written AVX-512 VNNI kernels,
//! else the portable kernels compiled for AVX2/FMA, else the portable
//! kernels as compiled. The `*_with` functions take an explicit [`Isa`]
//! (tests run every available one).
//!
//! All functions check their slice lengths and return a
//! [`QuantError`](crate::QuantError) instead of panicking.

mod dense;
mod packed_gemm;
mod portable;
mod xq;

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Result, check_len, checked_len};
use crate::format::PackedMatrix;
use crate::gguf::{GgmlMatrix, GgmlType};
use crate::matrix::Scheme;
use xq::{Order, XQuant};

pub use dense::{f32_matmul, f32_matvec, f32_matvec_with};
pub use packed_gemm::{PANEL_ROWS, SMALL_BATCH, matmul, matmul_with};

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The portable kernels (plain Rust, auto-vectorized), compiled for the
    /// build's baseline target.
    Portable,
    /// The portable kernels compiled with AVX2, FMA and F16C (x86-64).
    Avx2,
    /// Hand-written AVX-512 F/BW/VL + VNNI kernels (x86-64): `vpdpbusd`
    /// integer dot products.
    Avx512Vnni,
}

impl Isa {
    /// Every instruction set, slowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512Vnni];

    /// Whether this CPU can run it.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest instruction set this CPU runs (detected once).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .rev()
                .find(|i| i.is_available())
                .unwrap_or(Isa::Portable)
        })
    }

    /// The instruction sets this CPU runs, slowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// `self` if available, else [`Isa::Portable`].
    fn or_portable(self) -> Isa {
        if self.is_available() {
            self
        } else {
            Isa::Portable
        }
    }
}

/// A borrowed view of a packed matrix's storage, one variant per kernel.
#[derive(Clone, Copy)]
pub(crate) enum View<'a> {
    /// int8 per channel: `rows * cols` codes, `rows` scales.
    Int8 { data: &'a [u8], scales: &'a [f32] },
    /// int4, the crate's layout; `mins` empty for symmetric.
    Int4 {
        data: &'a [u8],
        scales: &'a [f32],
        mins: &'a [f32],
        group: usize,
    },
    /// GGUF `Q8_0` rows.
    Q8_0(&'a [u8]),
    /// GGUF `Q4_0` rows.
    Q4_0(&'a [u8]),
    /// GGUF `Q4_1` rows.
    Q4_1(&'a [u8]),
}

impl<'a> View<'a> {
    /// The view of `w`, or the matrix itself for the GGML float types
    /// (`F32`, `F16`), which take the generic dequantize-then-dot path.
    fn of(w: &'a PackedMatrix) -> std::result::Result<View<'a>, &'a GgmlMatrix> {
        Ok(match w {
            PackedMatrix::Int(m) => match m.scheme() {
                Scheme::Int8PerChannel => View::Int8 {
                    data: m.data(),
                    scales: m.scales(),
                },
                Scheme::Int4Sym { group_size } | Scheme::Int4Asym { group_size } => View::Int4 {
                    data: m.data(),
                    scales: m.scales(),
                    mins: m.mins(),
                    group: group_size,
                },
            },
            PackedMatrix::Ggml(m) => match m.ty() {
                GgmlType::Q8_0 => View::Q8_0(m.data()),
                GgmlType::Q4_0 => View::Q4_0(m.data()),
                GgmlType::Q4_1 => View::Q4_1(m.data()),
                GgmlType::F32 | GgmlType::F16 => return Err(m),
            },
        })
    }

    /// `x` quantized as this view's kernels want it (see [`XQuant`]).
    fn quantize_x(self, isa: Isa, x: &[f32]) -> XQuant {
        let (order, k) = self.x_layout();
        quantize_x(isa, x, order, k)
    }

    /// How `x` must be quantized for this view: its order and lane offset.
    fn x_layout(self) -> (Order, i32) {
        match self {
            View::Int8 { .. } | View::Q8_0(_) => (Order::Natural, 128),
            // Asymmetric codes are centred on 8 too (its minimum is added apart).
            View::Int4 { .. } => (Order::Pairs, 8),
            View::Q4_0(_) | View::Q4_1(_) => (Order::Halves, 8),
        }
    }
}

/// Quantizes `x` with the code compiled for `isa`.
fn quantize_x(isa: Isa, x: &[f32], order: Order, k: i32) -> XQuant {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is available (checked by the caller).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { portable::avx2::quantize_x(x, order, k) },
        // SAFETY: baseline code.
        _ => unsafe { portable::baseline::quantize_x(x, order, k) },
    }
}

/// Rows of `view` times `xq` with the kernels of `isa`.
fn view_rows(isa: Isa, view: View<'_>, cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is available; the view and `xq` match (built by `matvec_with`).
        Isa::Avx512Vnni => unsafe { avx512::rows(view, cols, xq, r0, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { portable::avx2::rows(view, cols, xq, r0, y) },
        // SAFETY: as above.
        _ => unsafe { portable::baseline::rows(view, cols, xq, r0, y) },
    }
}

/// Weight bytes below which a product runs on the calling thread.
const PAR_MIN_BYTES: usize = 128 << 10;
/// Smallest share of the weights one parallel task streams.
const CHUNK_MIN_BYTES: usize = 32 << 10;

/// Rows per parallel task for `rows` rows of `row_bytes` bytes each
/// (`rows` itself when the product should stay on one thread).
fn chunk_rows(rows: usize, row_bytes: usize) -> usize {
    let threads = rayon::current_num_threads();
    let total = rows.saturating_mul(row_bytes);
    if threads <= 1 || total < PAR_MIN_BYTES || rows < 2 {
        return rows.max(1);
    }
    // About 8 tasks per thread balance load when another process takes a core.
    let by_count = rows.div_ceil(8 * threads);
    let by_size = CHUNK_MIN_BYTES.div_ceil(row_bytes.max(1));
    by_count.max(by_size).clamp(1, rows)
}

/// Runs `f(r0, y_chunk)` over chunks of `y`, in parallel when worth it.
fn for_row_chunks(y: &mut [f32], row_bytes: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let chunk = chunk_rows(y.len(), row_bytes);
    if chunk >= y.len() {
        f(0, y);
    } else {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, yc)| f(i * chunk, yc));
    }
}

/// `y = W · x` for a packed `W[rows, cols]`: `x` has `cols` values, `y`
/// gets `rows`. Uses [`Isa::best`]; see the [module docs](self) for the
/// numerics.
pub fn matvec(w: &PackedMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
    matvec_with(Isa::best(), w, x, y)
}

/// [`matvec`] with the kernels of `isa` ([`Isa::Portable`] if this CPU
/// lacks it).
pub fn matvec_with(isa: Isa, w: &PackedMatrix, x: &[f32], y: &mut [f32]) -> Result<()> {
    let (rows, cols) = (w.rows(), w.cols());
    check_len("input vector", cols, x.len())?;
    check_len("output vector", rows, y.len())?;
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let isa = isa.or_portable();
    let row_bytes = w.storage_bytes() / rows;
    let view = match View::of(w) {
        Ok(v) => v,
        Err(m) => return float_ggml_matvec(m, x, y, row_bytes),
    };
    let xq = view.quantize_x(isa, x);
    for_row_chunks(y, row_bytes, |r0, yc| {
        view_rows(isa, view, cols, &xq, r0, yc)
    });
    Ok(())
}

/// `matvec` for a GGML `F32`/`F16` matrix: dequantize-then-dot, row by row.
fn float_ggml_matvec(m: &GgmlMatrix, x: &[f32], y: &mut [f32], row_bytes: usize) -> Result<()> {
    let cols = m.cols();
    let chunk = chunk_rows(y.len(), row_bytes);
    y.par_chunks_mut(chunk).enumerate().try_for_each_init(
        || vec![0f32; cols],
        |row, (i, yc)| {
            for (j, yr) in yc.iter_mut().enumerate() {
                m.dequantize_row_into(i * chunk + j, row)?;
                *yr = portable::dot(row, x);
            }
            Ok(())
        },
    )
}

/// Checks `x[tokens, cols]` and `y[tokens, rows]`.
fn check_batch(rows: usize, cols: usize, x: &[f32], tokens: usize, y: &[f32]) -> Result<()> {
    check_len("input matrix", checked_len(tokens, cols)?, x.len())?;
    check_len("output matrix", checked_len(tokens, rows)?, y.len())
}
