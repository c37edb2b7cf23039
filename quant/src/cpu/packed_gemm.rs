//! Prefill: `Y = X · Wᵀ` for a packed `W`, one dequantized panel of rows at
//! a time.

use gemm::Parallelism;
use rayon::prelude::*;

use super::dense::gemm_xwt;
use super::xq::XQuant;
use super::{Isa, View, check_batch, chunk_rows, matvec_with, portable, view_rows};
use crate::error::Result;
use crate::format::PackedMatrix;

/// Most rows of `W` dequantized at once per thread (the `f32` scratch holds
/// `PANEL_ROWS * cols` values).
pub const PANEL_ROWS: usize = 128;

/// Up to this many tokens, [`matmul`] runs the mat-vec kernels token by
/// token over each chunk of rows (the chunk stays in cache), which beats
/// dequantizing the whole matrix for `gemm`.
pub const SMALL_BATCH: usize = 8;

/// Most weight bytes per chunk of rows in the small-batch path (to stay in
/// the L2 cache while every token passes over it).
const SMALL_BATCH_CHUNK_BYTES: usize = 128 << 10;

/// `Y[tokens, rows] = X[tokens, cols] · Wᵀ` for a packed `W[rows, cols]`
/// (`X`, `Y` row-major), with [`Isa::best`].
///
/// Panels of at most [`PANEL_ROWS`] rows are dequantized into a per-thread
/// scratch and multiplied with `gemm`, panels in parallel, so no `f32` copy
/// of `W` larger than a panel per thread ever exists; the result is the
/// exact dequantized product up to `f32` rounding. Up to [`SMALL_BATCH`]
/// tokens instead run the [`matvec`](super::matvec) kernels, whose input is
/// rounded to int8 (see the [module docs](super)).
pub fn matmul(w: &PackedMatrix, x: &[f32], tokens: usize, y: &mut [f32]) -> Result<()> {
    matmul_with(Isa::best(), w, x, tokens, y)
}

/// [`matmul`] with the kernels of `isa` for the dequantization and the
/// one-token case ([`Isa::Portable`] if this CPU lacks it).
pub fn matmul_with(
    isa: Isa,
    w: &PackedMatrix,
    x: &[f32],
    tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    let (rows, cols) = (w.rows(), w.cols());
    check_batch(rows, cols, x, tokens, y)?;
    if tokens == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    if tokens == 1 {
        return matvec_with(isa, w, x, y);
    }
    let isa = isa.or_portable();
    let view = View::of(w);
    if let Ok(v) = view
        && tokens <= SMALL_BATCH
    {
        small_batch(isa, v, rows, cols, x, tokens, y, w.storage_bytes() / rows);
        return Ok(());
    }
    let panel = panel_rows(rows);
    let dst = SharedMut(y.as_mut_ptr());
    (0..rows.div_ceil(panel)).into_par_iter().try_for_each_init(
        Vec::new,
        |scratch: &mut Vec<f32>, p| {
            let r0 = p * panel;
            let n = panel.min(rows - r0);
            scratch.resize(n * cols, 0.0);
            match view {
                Ok(v) => dequantize_rows(isa, v, cols, r0, scratch),
                Err(_) => {
                    for (i, o) in scratch.chunks_exact_mut(cols).enumerate() {
                        w.dequantize_row_into(r0 + i, o)?;
                    }
                }
            }
            // SAFETY: `x` is `tokens x cols`, the scratch `n x cols`; this
            // panel writes only columns `r0 .. r0 + n` of `y` (`tokens x rows`),
            // which no other panel touches.
            unsafe {
                gemm_xwt(
                    tokens,
                    n,
                    cols,
                    dst.at(r0),
                    rows,
                    x,
                    scratch,
                    Parallelism::None,
                );
            }
            Ok(())
        },
    )
}

/// `Y = X · Wᵀ` for `tokens <= SMALL_BATCH`: each chunk of rows times every
/// token's quantized input, chunks in parallel.
#[allow(clippy::too_many_arguments)]
fn small_batch(
    isa: Isa,
    view: View<'_>,
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    y: &mut [f32],
    row_bytes: usize,
) {
    let xqs: Vec<XQuant> = x
        .chunks_exact(cols)
        .map(|xt| view.quantize_x(isa, xt))
        .collect();
    let by_cache = SMALL_BATCH_CHUNK_BYTES.div_ceil(row_bytes.max(1));
    let chunk = chunk_rows(rows, row_bytes * tokens).min(by_cache).max(1);
    let dst = SharedMut(y.as_mut_ptr());
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let r0 = c * chunk;
        let n = chunk.min(rows - r0);
        for (t, xq) in xqs.iter().enumerate() {
            // SAFETY: `y` is `tokens x rows`; this chunk alone writes
            // `y[t, r0 .. r0 + n]`.
            let yt = unsafe { std::slice::from_raw_parts_mut(dst.at(t * rows + r0), n) };
            view_rows(isa, view, cols, xq, r0, yt);
        }
    });
}

/// Rows per panel: at most [`PANEL_ROWS`], and a multiple of the thread
/// count of panels so that the threads finish together.
pub(super) fn panel_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let panels = rows.div_ceil(PANEL_ROWS).max(threads).div_ceil(threads) * threads;
    rows.div_ceil(panels)
        .next_multiple_of(8)
        .clamp(1, PANEL_ROWS)
}

/// Dequantizes rows `r0 ..` of `view` into `out` with the code for `isa`.
pub(super) fn dequantize_rows(isa: Isa, view: View<'_>, cols: usize, r0: usize, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA/F16C are available (AVX-512 implies them here).
        Isa::Avx2 | Isa::Avx512Vnni => unsafe {
            portable::avx2::dequantize_rows(view, cols, r0, out)
        },
        // SAFETY: baseline code.
        _ => unsafe { portable::baseline::dequantize_rows(view, cols, r0, out) },
    }
}

/// `y`'s base pointer, shared by tasks writing disjoint elements.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);

// SAFETY: every task writes a disjoint set of elements (see the users).
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `i` elements on.
    pub(super) fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
