//! AVX-512 kernels (F, BW, VL and VNNI): integer dot products of weight
//! codes with the int8-quantized input via `vpdpbusd` (u8 × i8 → i32).
//!
//! * int8 and `Q8_0` codes are made unsigned by flipping the sign bit
//!   (`w + 128`); the lane offsets of [`XQuant`] subtract `128 · Σq` again.
//! * Nibbles are already unsigned; every 4-bit format subtracts `8 · Σq`
//!   (precomputed per lane), i.e. takes its codes centred on 8; `Q4_1` and
//!   asymmetric int4 also add `(m + 8d) · Σx` per block or group.
//! * One 32-bit lane sums 4 (int8) or 8 (int4) products of a single
//!   32-block, so the per-block scales are applied lane-wise in `f32` and
//!   the lanes are reduced once per row.
//!
//! Callers must have checked the CPU features ([`super::Isa::Avx512Vnni`])
//! and the slice lengths (the `View` invariants).

use std::arch::x86_64::*;

use super::View;
use super::portable::asym_offsets;
use super::xq::XQuant;
use crate::gguf::QK;

/// Lane `l` takes element `l / 4` (4 blocks per 16 lanes).
const IDX4: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
/// Lane `l` takes element `l / 8` (2 blocks per 16 lanes).
const IDX2: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];

/// How far ahead (bytes) the row loops prefetch the weights: the hardware
/// prefetcher alone leaves the packed kernels short of the `f32` one's
/// bandwidth.
const PF: usize = 1024;

/// Prefetches `n` cache lines from `p + dist`.
#[inline(always)]
fn prefetch(p: *const u8, dist: usize, n: usize) {
    for i in 0..n {
        // SAFETY: a prefetch never faults, wherever it points.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(dist + 64 * i).cast()) };
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn idx(v: &[i32; 16]) -> __m512i {
    // SAFETY: 64 readable bytes.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

/// `y[i] = W[r0 + i] · x` for the rows `r0 .. r0 + y.len()` of `view`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/VNNI, F16C and FMA; `view` must hold
/// the rows and `xq` must have been built from a vector of `cols` values in
/// the order and with the offset `view` needs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn rows(view: View<'_>, cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match view {
            View::Int8 { data, scales } => int8_rows(data, scales, cols, xq, r0, y),
            View::Int4 {
                data,
                scales,
                mins,
                group,
            } => match (group, mins.is_empty()) {
                (32, true) => int4_rows::<32, false>(data, scales, mins, cols, xq, r0, y),
                (64, true) => int4_rows::<64, false>(data, scales, mins, cols, xq, r0, y),
                (128, true) => int4_rows::<128, false>(data, scales, mins, cols, xq, r0, y),
                (32, false) => int4_rows::<32, true>(data, scales, mins, cols, xq, r0, y),
                (64, false) => int4_rows::<64, true>(data, scales, mins, cols, xq, r0, y),
                _ => int4_rows::<128, true>(data, scales, mins, cols, xq, r0, y),
            },
            View::Q8_0(data) => q8_0_rows(data, cols, xq, r0, y),
            View::Q4_0(data) => q4_rows::<18, 2, false>(data, cols, xq, r0, y),
            View::Q4_1(data) => q4_rows::<20, 4, true>(data, cols, xq, r0, y),
        }
    }
}

/// One 64-value step of an int8 row: `acc += dx · Σ (w + 128)·q - 128·Σq`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_step(acc: __m512, w: __m512i, c: usize, xq: &XQuant) -> __m512 {
    // SAFETY: `xq` is padded past every chunk of the row.
    unsafe {
        let w = _mm512_xor_si512(w, _mm512_set1_epi8(-128));
        let x = _mm512_loadu_si512(xq.q.as_ptr().add(64 * c).cast());
        let off = _mm512_loadu_si512(xq.lane_off.as_ptr().add(16 * c).cast());
        let isum = _mm512_dpbusd_epi32(off, w, x);
        let dx = _mm512_loadu_ps(xq.dx_lane.as_ptr().add(16 * c));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), dx, acc)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn int8_rows(
    data: &[u8],
    scales: &[f32],
    cols: usize,
    xq: &XQuant,
    r0: usize,
    y: &mut [f32],
) {
    let full = cols / 64;
    let tail = cols % 64;
    let tmask = if tail == 0 { 0 } else { (1u64 << tail) - 1 };
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        debug_assert!((r + 1) * cols <= data.len());
        // SAFETY: the row is `cols` bytes inside `data`; the tail is masked.
        unsafe {
            let w = data.as_ptr().add(r * cols);
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut c = 0;
            while c + 2 <= full {
                prefetch(w.add(64 * c), PF, 2);
                a0 = int8_step(a0, _mm512_loadu_si512(w.add(64 * c).cast()), c, xq);
                a1 = int8_step(a1, _mm512_loadu_si512(w.add(64 * c + 64).cast()), c + 1, xq);
                c += 2;
            }
            if c < full {
                a0 = int8_step(a0, _mm512_loadu_si512(w.add(64 * c).cast()), c, xq);
                c += 1;
            }
            if tail > 0 {
                let wt = _mm512_maskz_loadu_epi8(tmask, w.add(64 * c).cast());
                a1 = int8_step(a1, wt, c, xq);
            }
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) * scales[r];
        }
    }
}

/// One 128-value (4-block) step of an int4 row in the crate's layout:
/// `Σ (n - 8)·q` per lane, scaled by the lanes' `dx` and group scale.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn int4_step(
    acc: __m512,
    w: __m512i,
    s: *const f32,
    gmask: u16,
    idx: __m512i,
    c: usize,
    xq: &XQuant,
) -> __m512 {
    // SAFETY: `s` points at the chunk's groups (masked by `gmask`), `xq` is
    // padded past every chunk.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(w, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), m4);
        let xp = xq.q.as_ptr().add(128 * c);
        let xlo = _mm512_loadu_si512(xp.cast());
        let xhi = _mm512_loadu_si512(xp.add(64).cast());
        let off = _mm512_loadu_si512(xq.lane_off.as_ptr().add(16 * c).cast());
        let isum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(off, lo, xlo), hi, xhi);
        let sv = _mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(gmask, s));
        let dx = _mm512_loadu_ps(xq.dx_lane.as_ptr().add(16 * c));
        _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum), dx), sv, acc)
    }
}

/// int4 rows; asymmetric ones (`ASYM`) add `(m + 8s)·Σx` per group
/// ([`asym_offsets`]) to the centred products.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn int4_rows<const G: usize, const ASYM: bool>(
    data: &[u8],
    scales: &[f32],
    mins: &[f32],
    cols: usize,
    xq: &XQuant,
    r0: usize,
    y: &mut [f32],
) {
    let rb = cols / 2;
    let gpr = cols / G;
    let gpc = 128 / G;
    let full = cols / 128;
    let tail = cols % 128; // a multiple of G
    let wmask = (1u64 << (tail / 2)) - 1;
    let gfull = (1u16 << gpc) - 1;
    let gtail = (1u16 << (tail / G)) - 1;
    let idx = match G {
        32 => idx(&IDX4),
        64 => idx(&IDX2),
        _ => _mm512_setzero_si512(),
    };
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        debug_assert!((r + 1) * rb <= data.len() && (r + 1) * gpr <= scales.len());
        // SAFETY: the row's bytes and scales lie inside the slices; the tail
        // is masked.
        unsafe {
            let w = data.as_ptr().add(r * rb);
            let s = scales.as_ptr().add(r * gpr);
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut c = 0;
            while c + 2 <= full {
                prefetch(w.add(64 * c), PF, 2);
                let w0 = _mm512_loadu_si512(w.add(64 * c).cast());
                let w1 = _mm512_loadu_si512(w.add(64 * c + 64).cast());
                a0 = int4_step(a0, w0, s.add(c * gpc), gfull, idx, c, xq);
                a1 = int4_step(a1, w1, s.add(c * gpc + gpc), gfull, idx, c + 1, xq);
                c += 2;
            }
            if c < full {
                let w0 = _mm512_loadu_si512(w.add(64 * c).cast());
                a0 = int4_step(a0, w0, s.add(c * gpc), gfull, idx, c, xq);
                c += 1;
            }
            if tail > 0 {
                let wt = _mm512_maskz_loadu_epi8(wmask, w.add(64 * c).cast());
                a1 = int4_step(a1, wt, s.add(c * gpc), gtail, idx, c, xq);
            }
            let offsets = if ASYM {
                let row = r * gpr..(r + 1) * gpr;
                asym_offsets::<G>(&scales[row.clone()], &mins[row], &xq.fsum)
            } else {
                0.0
            };
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + offsets;
        }
    }
}

/// The scales `d` of 16 GGUF blocks starting at `p` (`BS` bytes apart,
/// `d` first, then for `Q4_1` the minimum `m`), as `(d, m)`. Lanes outside
/// `mask` are 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn gather_scales<const BS: usize>(p: *const u8, mask: u16) -> (__m512, __m512) {
    // SAFETY: each unmasked lane reads 4 bytes at the start of a block.
    unsafe {
        let offs = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(BS as i32),
        );
        let g = _mm512_mask_i32gather_epi32::<1>(_mm512_setzero_si512(), mask, offs, p.cast());
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
        let m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(g)));
        (d, m)
    }
}

/// `cs` with lane `l` taken from element `first + l / per` (`per` = lanes
/// per block: 8 for pairs of blocks, 4 for quads).
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes_of(cs: __m512, idx: __m512i, first: usize) -> __m512 {
    _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(first as i32)), cs)
}

/// One 2-block step of a `Q8_0` row: `acc += s · Σ (w + 128)·q - 128·Σq`
/// per lane, `s` the lanes' combined scales `d · dx`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q8_0_step(acc: __m512, w: __m512i, k: usize, xq: &XQuant, s: __m512) -> __m512 {
    // SAFETY: `xq` is padded past the row's last block pair.
    unsafe {
        let w = _mm512_xor_si512(w, _mm512_set1_epi8(-128));
        let x = _mm512_loadu_si512(xq.q.as_ptr().add(64 * k).cast());
        let off = _mm512_loadu_si512(xq.lane_off.as_ptr().add(16 * k).cast());
        let isum = _mm512_dpbusd_epi32(off, w, x);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s, acc)
    }
}

/// The codes of `Q8_0` blocks `2k` and `2k + 1` of the row at `row`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q8_0_pair(row: *const u8, k: usize) -> __m512i {
    const BS: usize = 34;
    // SAFETY: each 32-byte load ends at its block's end.
    unsafe {
        let p = row.add(2 * k * BS + 2);
        let lo = _mm256_loadu_si256(p.cast());
        let hi = _mm256_loadu_si256(p.add(BS).cast());
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// The combined scales `d_b · dx_b` of the `n <= 16` GGUF blocks `b0 ..`
/// at `p` (lanes past `n` are 0), and for `Q4_1` (`MIN`) the per-block
/// `(m_b + 8·d_b) · Σx_b` summed into `macc`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,f16c,fma")]
unsafe fn block_scales<const BS: usize, const MIN: bool>(
    p: *const u8,
    b0: usize,
    n: usize,
    xq: &XQuant,
    macc: &mut __m512,
) -> __m512 {
    let mask = if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    // SAFETY: the `xq` arrays are padded to a multiple of 16 blocks.
    unsafe {
        let (d, m) = gather_scales::<BS>(p, mask);
        if MIN {
            // Codes are centred on 8: `d·c + m = d·(c - 8) + (m + 8d)`.
            let fs = _mm512_loadu_ps(xq.fsum.as_ptr().add(b0));
            let m = _mm512_fmadd_ps(d, _mm512_set1_ps(8.0), m);
            *macc = _mm512_fmadd_ps(m, fs, *macc);
        }
        _mm512_mul_ps(d, _mm512_loadu_ps(xq.dx.as_ptr().add(b0)))
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q8_0_rows(data: &[u8], cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
    const BS: usize = 34;
    let nb = cols / QK;
    let rb = nb * BS;
    let idx2 = idx(&IDX2);
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        debug_assert!((r + 1) * rb <= data.len());
        // SAFETY: the row's `nb` blocks lie inside `data`; the `xq` arrays
        // are padded past them.
        unsafe {
            let row = data.as_ptr().add(r * rb);
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut unused = _mm512_setzero_ps();
            // 16 blocks (8 pairs) per scale gather.
            for b0 in (0..nb).step_by(16) {
                let n = (nb - b0).min(16);
                let cs = block_scales::<BS, false>(row.add(b0 * BS), b0, n, xq, &mut unused);
                let k0 = b0 / 2;
                let pairs = n / 2;
                let mut j = 0;
                while j + 2 <= pairs {
                    prefetch(row.add((b0 + 2 * j) * BS), PF, 3);
                    let (s0, s1) = (lanes_of(cs, idx2, 2 * j), lanes_of(cs, idx2, 2 * j + 2));
                    a0 = q8_0_step(a0, q8_0_pair(row, k0 + j), k0 + j, xq, s0);
                    a1 = q8_0_step(a1, q8_0_pair(row, k0 + j + 1), k0 + j + 1, xq, s1);
                    j += 2;
                }
                if j < pairs {
                    let s0 = lanes_of(cs, idx2, 2 * j);
                    a0 = q8_0_step(a0, q8_0_pair(row, k0 + j), k0 + j, xq, s0);
                    j += 1;
                }
                if n % 2 == 1 {
                    // The row's last block alone; the padding of `xq` is 0.
                    let p = row.add((b0 + 2 * j) * BS + 2);
                    let w = _mm512_zextsi256_si512(_mm256_loadu_si256(p.cast()));
                    a1 = q8_0_step(a1, w, k0 + j, xq, lanes_of(cs, idx2, 2 * j));
                }
            }
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        }
    }
}

/// One 4-block step of a `Q4_0`/`Q4_1` row: `Σ (c - 8)·q` per lane, scaled
/// by the lanes' combined scales `s` (`Q4_1`'s minimum is added per row).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
unsafe fn q4_step(acc: __m512, w: __m512i, c: usize, xq: &XQuant, s: __m512) -> __m512 {
    // SAFETY: `xq` is padded past the row's last chunk.
    unsafe {
        let m4 = _mm512_set1_epi8(0x0f);
        let lo = _mm512_and_si512(w, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), m4);
        let xp = xq.q.as_ptr().add(128 * c);
        let xlo = _mm512_loadu_si512(xp.cast());
        let xhi = _mm512_loadu_si512(xp.add(64).cast());
        let init = _mm512_loadu_si512(xq.lane_off.as_ptr().add(16 * c).cast());
        let isum = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xlo), hi, xhi);
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s, acc)
    }
}

/// The 16 code bytes of each of the first `n <= 4` GGUF blocks at `p`
/// (`BS` bytes apart, codes at `QOFF`), one block per 128-bit lane (zeros
/// past `n`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4_quad<const BS: usize, const QOFF: usize>(p: *const u8, n: usize) -> __m512i {
    // SAFETY: each 16-byte load ends at its block's end.
    unsafe {
        let p = p.add(QOFF);
        let mut w = _mm512_zextsi128_si512(_mm_loadu_si128(p.cast()));
        if n > 1 {
            w = _mm512_inserti32x4::<1>(w, _mm_loadu_si128(p.add(BS).cast()));
        }
        if n > 2 {
            w = _mm512_inserti32x4::<2>(w, _mm_loadu_si128(p.add(2 * BS).cast()));
        }
        if n > 3 {
            w = _mm512_inserti32x4::<3>(w, _mm_loadu_si128(p.add(3 * BS).cast()));
        }
        w
    }
}

/// `Q4_0` (`BS = 18`, codes at 2) and `Q4_1` (`BS = 20`, codes at 4, `MIN`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn q4_rows<const BS: usize, const QOFF: usize, const MIN: bool>(
    data: &[u8],
    cols: usize,
    xq: &XQuant,
    r0: usize,
    y: &mut [f32],
) {
    let nb = cols / QK;
    let rb = nb * BS;
    let idx4 = idx(&IDX4);
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        debug_assert!((r + 1) * rb <= data.len());
        // SAFETY: as in `q8_0_rows`.
        unsafe {
            let row = data.as_ptr().add(r * rb);
            let mut a0 = _mm512_setzero_ps();
            let mut a1 = _mm512_setzero_ps();
            let mut macc = _mm512_setzero_ps();
            // 16 blocks (4 quads) per scale gather.
            for b0 in (0..nb).step_by(16) {
                let n = (nb - b0).min(16);
                let cs = block_scales::<BS, MIN>(row.add(b0 * BS), b0, n, xq, &mut macc);
                let c0 = b0 / 4;
                let quads = n / 4;
                let mut j = 0;
                while j + 2 <= quads {
                    let p = row.add((b0 + 4 * j) * BS);
                    prefetch(p, PF, 3);
                    let (s0, s1) = (lanes_of(cs, idx4, 4 * j), lanes_of(cs, idx4, 4 * j + 4));
                    a0 = q4_step(a0, q4_quad::<BS, QOFF>(p, 4), c0 + j, xq, s0);
                    a1 = q4_step(
                        a1,
                        q4_quad::<BS, QOFF>(p.add(4 * BS), 4),
                        c0 + j + 1,
                        xq,
                        s1,
                    );
                    j += 2;
                }
                if j < quads {
                    let p = row.add((b0 + 4 * j) * BS);
                    a0 = q4_step(
                        a0,
                        q4_quad::<BS, QOFF>(p, 4),
                        c0 + j,
                        xq,
                        lanes_of(cs, idx4, 4 * j),
                    );
                    j += 1;
                }
                if !n.is_multiple_of(4) {
                    // The row's last 1-3 blocks; the padding of `xq` is 0.
                    let p = row.add((b0 + 4 * j) * BS);
                    let w = q4_quad::<BS, QOFF>(p, n % 4);
                    a1 = q4_step(a1, w, c0 + j, xq, lanes_of(cs, idx4, 4 * j));
                }
            }
            let mins = if MIN { _mm512_reduce_add_ps(macc) } else { 0.0 };
            *yr = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + mins;
        }
    }
}

/// `Σ a_i b_i` with four 16-lane accumulators and a masked tail.
///
/// # Safety
/// The CPU must support AVX-512 F; `a` and `b` must have the same length.
#[inline]
#[target_feature(enable = "avx512f,fma")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    // SAFETY: every load is inside `a`/`b` (the tail is masked).
    unsafe {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let va = _mm512_loadu_ps(pa.add(i + 16 * j));
                let vb = _mm512_loadu_ps(pb.add(i + 16 * j));
                *a = _mm512_fmadd_ps(va, vb, *a);
            }
            i += 64;
        }
        while i < n {
            let m = if n - i >= 16 {
                u16::MAX
            } else {
                (1u16 << (n - i)) - 1
            };
            let va = _mm512_maskz_loadu_ps(m, pa.add(i));
            let vb = _mm512_maskz_loadu_ps(m, pb.add(i));
            acc[0] = _mm512_fmadd_ps(va, vb, acc[0]);
            i += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}

/// `y[i] = W[r0 + i] · x` for a dense row-major `W`.
///
/// # Safety
/// The CPU must support AVX-512 F; `w` must hold the rows, `x` `cols` values.
#[target_feature(enable = "avx512f,fma")]
pub(crate) unsafe fn f32_rows(w: &[f32], cols: usize, x: &[f32], r0: usize, y: &mut [f32]) {
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        // SAFETY: forwarded.
        *yr = unsafe { dot(&w[r * cols..(r + 1) * cols], x) };
    }
}
