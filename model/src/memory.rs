//! Keep freed memory in the process, so training steps stop paying the kernel for fresh pages.
//!
//! glibc's malloc serves every allocation above 32 MiB with its own `mmap` and returns it with
//! `munmap` when freed. A training step allocates and frees many such buffers (logits over a
//! 49,152-token vocabulary are 200 KB a position), so every step the kernel zeroes gigabytes
//! of fresh pages again: 10–14% of a step's time, most of it `clear_page` and page faults
//! (650,000 faults in one step of the half-size SmolLM2 student; about 3,000 without).
//! [`keep_freed_memory`] turns the per-buffer `mmap` off and raises the trim threshold to its
//! maximum, so freed buffers go back to malloc's free lists and the next step reuses them.
//! The cost is a higher resident set: the process keeps its peak until it exits.

/// Serve large allocations from malloc's heap and keep freed memory for reuse (glibc only;
/// elsewhere a no-op). Call it at the start of `main`, and of a benchmark so that it measures
/// what `distill` runs.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (under malloc's own locks); a refused
    // setting leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
