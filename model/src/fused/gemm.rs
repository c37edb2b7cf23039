//! Strided `f32` matrix products for the fused operations, through the `gemm` crate (the one
//! burn's CPU backend uses).

use gemm::Parallelism;

/// A strided matrix view: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    /// Row-major, row stride `rs`.
    pub(super) fn rows(ptr: *const f32, rs: usize) -> Self {
        Self {
            ptr,
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose.
    pub(super) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Products of at least this many multiply-adds use all threads (burn's CPU threshold).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// All threads for a product of `macs` multiply-adds, one below the threshold.
pub(super) fn parallelism(macs: usize) -> Parallelism {
    if macs >= PARALLEL_MACS {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `dst (+)= alpha · a·b`: `a` is `m × k`, `b` is `k × n`, `dst` is `m × n`; `dst` is read
/// only when `accumulate`.
///
/// # Safety
/// Every element the shapes and strides name must be valid, `dst`'s for writes by this call
/// alone.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: Mat,
    accumulate: bool,
    a: Mat,
    b: Mat,
    alpha: f32,
    parallelism: Parallelism,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr as *mut f32,
            dst.cs,
            dst.rs,
            accumulate,
            a.ptr,
            a.cs,
            a.rs,
            b.ptr,
            b.cs,
            b.rs,
            1.0f32,
            alpha,
            false,
            false,
            false,
            parallelism,
        )
    }
}
