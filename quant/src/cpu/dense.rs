//! Dense `f32` baselines: a bandwidth-bound mat-vec and `gemm`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::packed_gemm::{SharedMut, panel_rows};
use super::{Isa, check_batch, for_row_chunks, portable};
use crate::error::{Result, check_len, checked_len};

/// `y = W · x` for a row-major `f32` matrix `W[rows, cols]`, rows in
/// parallel, with [`Isa::best`].
pub fn f32_matvec(w: &[f32], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    f32_matvec_with(Isa::best(), w, rows, cols, x, y)
}

/// [`f32_matvec`] with the kernels of `isa` ([`Isa::Portable`] if this CPU
/// lacks it).
pub fn f32_matvec_with(
    isa: Isa,
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<()> {
    check_len("weights", checked_len(rows, cols)?, w.len())?;
    check_len("input vector", cols, x.len())?;
    check_len("output vector", rows, y.len())?;
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let isa = isa.or_portable();
    for_row_chunks(y, cols * 4, |r0, yc| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available; `w` holds `rows * cols` values.
        Isa::Avx512Vnni => unsafe { super::avx512::f32_rows(w, cols, x, r0, yc) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2/FMA are available.
        Isa::Avx2 => unsafe { portable::avx2::f32_rows(w, cols, x, r0, yc) },
        // SAFETY: baseline code.
        _ => unsafe { portable::baseline::f32_rows(w, cols, x, r0, yc) },
    });
    Ok(())
}

/// `Y[tokens, rows] = X[tokens, cols] · Wᵀ` for a row-major `f32` matrix
/// `W[rows, cols]` (`X`, `Y` row-major): `gemm` on panels of rows, in
/// parallel on the rayon pool. One token goes to [`f32_matvec`].
pub fn f32_matmul(
    w: &[f32],
    rows: usize,
    cols: usize,
    x: &[f32],
    tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    check_len("weights", checked_len(rows, cols)?, w.len())?;
    check_batch(rows, cols, x, tokens, y)?;
    if tokens == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    if tokens == 1 {
        return f32_matvec(w, rows, cols, x, y);
    }
    // Panels of rows in parallel, one single-threaded `gemm` each: as
    // `matmul` does for packed weights, and a little faster than `gemm`'s
    // own threading here.
    let panel = panel_rows(rows);
    let dst = SharedMut(y.as_mut_ptr());
    (0..rows.div_ceil(panel)).into_par_iter().for_each(|p| {
        let r0 = p * panel;
        let n = panel.min(rows - r0);
        let wp = &w[r0 * cols..(r0 + n) * cols];
        // SAFETY: the lengths were checked: `x` is `tokens x cols`, the panel
        // `n x cols`; this panel alone writes columns `r0 .. r0 + n` of `y`
        // (`tokens x rows`).
        unsafe { gemm_xwt(tokens, n, cols, dst.at(r0), rows, x, wp, Parallelism::None) };
    });
    Ok(())
}

/// `dst[t, j] = Σ_c x[t, c] · w[j, c]` for `t < m`, `j < n`, `c < k`, where
/// `dst` has row stride `dst_rs` (unit column stride), `x` is `m x k` and
/// `w` is `n x k`, both row-major and contiguous.
///
/// # Safety
/// `x` must hold `m * k` values, `w` `n * k`, and `dst` must be valid for
/// writes at `t * dst_rs + j` for every `t < m`, `j < n`, with no other
/// thread touching those elements.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_xwt(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    x: &[f32],
    w: &[f32],
    parallelism: Parallelism,
) {
    debug_assert!(x.len() >= m * k && w.len() >= n * k);
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}
