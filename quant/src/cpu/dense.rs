//! Dense `f32` baselines: a bandwidth-bound mat-vec and `gemm`.

use gemm::Parallelism;

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
/// `W[rows, cols]` (`X`, `Y` row-major), with `gemm` on the rayon pool.
/// One token goes to [`f32_matvec`].
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
    // SAFETY: the lengths were checked: `y` is `tokens x rows` (row stride
    // `rows`), `x` is `tokens x cols`, `w` read as `Wᵀ` is `cols x rows`
    // (column stride `cols`).
    unsafe {
        gemm_xwt(
            tokens,
            rows,
            cols,
            y.as_mut_ptr(),
            rows,
            x,
            w,
            Parallelism::Rayon(0),
        )
    };
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
