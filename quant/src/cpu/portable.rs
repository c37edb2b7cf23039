//! Portable kernels: plain Rust over fixed-size block arrays, written so the
//! compiler vectorizes them. The bodies are `#[inline(always)]`;
//! [`kernel_set!`] compiles them into one set of leaf functions per
//! instruction set: [`baseline`] (the build's target, [`Isa::Portable`](super::Isa::Portable))
//! and `avx2` (AVX2/FMA/F16C, [`Isa::Avx2`](super::Isa::Avx2)). Each format
//! gets its own leaf so that every loop is optimized on its own.

use super::View;
use super::xq::{Order, XQuant};
use crate::gguf::QK;

/// `f32` value of two little-endian `f16` bytes.
#[inline(always)]
fn f16(b0: u8, b1: u8) -> f32 {
    f16_to_f32(u16::from_le_bytes([b0, b1]))
}

/// Exact `f16` → `f32` conversion in plain integer/float operations, so it
/// inlines into the kernels (`half` calls out per value here). Handles
/// zeros, subnormals, infinities and NaN (F. Giesen's method).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    const SHIFTED_EXP: u32 = 0x7c00 << 13;
    let h = h as u32;
    let mut o = (h & 0x7fff) << 13;
    let exp = SHIFTED_EXP & o;
    o += (127 - 15) << 23;
    if exp == SHIFTED_EXP {
        // Infinity or NaN.
        o += (128 - 16) << 23;
    } else if exp == 0 {
        // Zero or subnormal: renormalize.
        o = (f32::from_bits(o + (1 << 23)) - f32::from_bits(113 << 23)).to_bits();
    }
    f32::from_bits(o | ((h & 0x8000) << 16))
}

/// Defines `mod $m` with the leaf kernels compiled with the given attributes
/// (`#[target_feature(...)]` or none).
macro_rules! kernel_set {
    ($(#[$doc:meta])* $m:ident, $(#[$tf:meta])*) => {
        $(#[$doc])*
        pub(crate) mod $m {
            use super::*;

            $(#[$tf])*
            unsafe fn int8(data: &[u8], scales: &[f32], cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
                for (i, yr) in y.iter_mut().enumerate() {
                    let r = r0 + i;
                    *yr = int8_row(&data[r * cols..(r + 1) * cols], xq) * scales[r];
                }
            }

            $(#[$tf])*
            #[allow(clippy::too_many_arguments)]
            unsafe fn int4<const G: usize, const ASYM: bool>(
                data: &[u8],
                scales: &[f32],
                mins: &[f32],
                cols: usize,
                xq: &XQuant,
                r0: usize,
                y: &mut [f32],
            ) {
                int4_rows::<G, ASYM>(data, scales, mins, cols, xq, r0, y)
            }

            $(#[$tf])*
            unsafe fn q8_0(data: &[u8], cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
                gguf_rows::<34>(data, cols, r0, y, |row| q8_0_row(row, xq))
            }

            $(#[$tf])*
            unsafe fn q4_0(data: &[u8], cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
                gguf_rows::<18>(data, cols, r0, y, |row| q4_0_row(row, xq))
            }

            $(#[$tf])*
            unsafe fn q4_1(data: &[u8], cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
                gguf_rows::<20>(data, cols, r0, y, |row| q4_1_row(row, xq))
            }

            /// `y[i] = W[r0 + i] · x` for the rows `r0 .. r0 + y.len()` of `view`.
            ///
            /// # Safety
            /// The CPU must support the set's features; `view` must hold the
            /// rows and `xq` match it.
            pub(crate) unsafe fn rows(view: View<'_>, cols: usize, xq: &XQuant, r0: usize, y: &mut [f32]) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match view {
                        View::Int8 { data, scales } => int8(data, scales, cols, xq, r0, y),
                        View::Int4 { data, scales, mins, group } => match (group, mins.is_empty()) {
                            (32, true) => int4::<32, false>(data, scales, mins, cols, xq, r0, y),
                            (64, true) => int4::<64, false>(data, scales, mins, cols, xq, r0, y),
                            (128, true) => int4::<128, false>(data, scales, mins, cols, xq, r0, y),
                            (32, false) => int4::<32, true>(data, scales, mins, cols, xq, r0, y),
                            (64, false) => int4::<64, true>(data, scales, mins, cols, xq, r0, y),
                            _ => int4::<128, true>(data, scales, mins, cols, xq, r0, y),
                        },
                        View::Q8_0(data) => q8_0(data, cols, xq, r0, y),
                        View::Q4_0(data) => q4_0(data, cols, xq, r0, y),
                        View::Q4_1(data) => q4_1(data, cols, xq, r0, y),
                    }
                }
            }

            /// `y[i] = W[r0 + i] · x` for a dense row-major `W`.
            ///
            /// # Safety
            /// The CPU must support the set's features.
            $(#[$tf])*
            pub(crate) unsafe fn f32_rows(w: &[f32], cols: usize, x: &[f32], r0: usize, y: &mut [f32]) {
                super::f32_rows(w, cols, x, r0, y)
            }

            /// Dequantizes rows `r0 ..` of `view` into `out`.
            ///
            /// # Safety
            /// The CPU must support the set's features.
            $(#[$tf])*
            pub(crate) unsafe fn dequantize_rows(view: View<'_>, cols: usize, r0: usize, out: &mut [f32]) {
                super::dequantize_rows(view, cols, r0, out)
            }

            /// Quantizes `x` (see [`XQuant::build`]).
            ///
            /// # Safety
            /// The CPU must support the set's features.
            $(#[$tf])*
            pub(crate) unsafe fn quantize_x(x: &[f32], order: Order, k: i32) -> XQuant {
                XQuant::build(x, order, k)
            }
        }
    };
}

kernel_set!(
    /// The kernels compiled for the build's baseline target.
    baseline,
);
#[cfg(target_arch = "x86_64")]
kernel_set!(
    /// The kernels compiled with AVX2, FMA and F16C.
    avx2,
    #[target_feature(enable = "avx2,fma,f16c")]
);

/// `y[i] = row(r0 + i)` for GGUF rows of `BS`-byte blocks.
#[inline(always)]
fn gguf_rows<const BS: usize>(
    data: &[u8],
    cols: usize,
    r0: usize,
    y: &mut [f32],
    row: impl Fn(&[u8]) -> f32,
) {
    let rb = cols / QK * BS;
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        *yr = row(&data[r * rb..(r + 1) * rb]);
    }
}

/// `Σ_j w_j · x_j / s` of one int8 row (the row scale `s` is applied by the caller).
#[inline(always)]
fn int8_row(w: &[u8], xq: &XQuant) -> f32 {
    let mut acc = 0f32;
    let blocks = w.chunks_exact(QK);
    let rem = blocks.remainder();
    for (b, wb) in blocks.enumerate() {
        let wb: &[u8; QK] = wb.try_into().unwrap();
        let xb = xq.block(b);
        let mut s = 0i32;
        for i in 0..QK {
            s += (wb[i] as i8 as i32) * (xb[i] as i32);
        }
        acc += xq.dx[b] * s as f32;
    }
    if !rem.is_empty() {
        let b = w.len() / QK;
        let s: i32 = rem
            .iter()
            .zip(xq.block(b))
            .map(|(&w, &x)| (w as i8 as i32) * (x as i32))
            .sum();
        acc += xq.dx[b] * s as f32;
    }
    acc
}

/// `(lo(w_i) - z)·xl_i + (hi(w_i) - z)·xh_i` for the 16 bytes of nibbles of
/// one block: element-wise `i16` products (at most `2 · 15 · 127` in
/// magnitude), summed by the caller into `f32` lanes, so nothing is reduced
/// horizontally per block and the loops vectorize.
#[inline(always)]
fn nibble_products(w: &[u8; 16], xl: &[i8; 16], xh: &[i8; 16], z: i16) -> [i16; 16] {
    let mut p = [0i16; 16];
    for i in 0..16 {
        p[i] =
            ((w[i] & 0x0f) as i16 - z) * (xl[i] as i16) + ((w[i] >> 4) as i16 - z) * (xh[i] as i16);
    }
    p
}

/// `acc[i] += p[i] · sc`.
#[inline(always)]
fn accumulate(acc: &mut [f32; 16], p: &[i16; 16], sc: f32) {
    for i in 0..16 {
        acc[i] += p[i] as f32 * sc;
    }
}

/// int4 rows in the crate's layout. Symmetric: `w = s·(n - 8)` for nibble
/// `n`. Asymmetric: `w = s·n + m = s·(n - 8) + (m + 8s)`, so the same
/// integer products (codes centred on 8, which halves the error from
/// rounding `x`, as for `Q4_1`) plus `(m + 8s)·Σx` per group
/// ([`asym_offsets`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn int4_rows<const G: usize, const ASYM: bool>(
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
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        let w = &data[r * rb..(r + 1) * rb];
        let s = &scales[r * gpr..(r + 1) * gpr];
        let mut acc = [0f32; 16];
        for (b, (wb, xl, xh)) in nibble_blocks::<16>(w, xq).enumerate() {
            let g = b / (G / QK);
            accumulate(
                &mut acc,
                &nibble_products(nibbles(wb, 0), xl, xh, 8),
                s[g] * xq.dx[b],
            );
        }
        let offsets = if ASYM {
            asym_offsets::<G>(s, &mins[r * gpr..(r + 1) * gpr], &xq.fsum)
        } else {
            0.0
        };
        *yr = acc.iter().sum::<f32>() + offsets;
    }
}

/// `Σ_g (m_g + 8·s_g) · Σ_{j ∈ g} x_j` over one asymmetric int4 row's
/// groups (`scales`, `mins`), with `fsum` the exact `Σ x` of each 32-block:
/// the part of `Σ_j (s·n_j + m)·x_j` the centred integer products leave out.
/// One term per group (`cols / G` per row, against `cols` products), in 8
/// partial sums.
#[inline(always)]
pub(crate) fn asym_offsets<const G: usize>(scales: &[f32], mins: &[f32], fsum: &[f32]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    for (k, ((&s, &m), f)) in scales
        .iter()
        .zip(mins)
        .zip(fsum.chunks_exact(G / QK))
        .enumerate()
    {
        let xs: f32 = f.iter().sum();
        acc[k % L] += (m + 8.0 * s) * xs;
    }
    acc.iter().sum()
}

#[inline(always)]
fn q8_0_row(row: &[u8], xq: &XQuant) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(34).enumerate() {
        let d = f16(blk[0], blk[1]);
        let wb: &[u8; QK] = blk[2..].try_into().unwrap();
        let xb = xq.block(b);
        let mut s = 0i32;
        for i in 0..QK {
            s += (wb[i] as i8 as i32) * (xb[i] as i32);
        }
        acc += d * xq.dx[b] * s as f32;
    }
    acc
}

#[inline(always)]
fn q4_0_row(row: &[u8], xq: &XQuant) -> f32 {
    let mut acc = [0f32; 16];
    for (b, (blk, xl, xh)) in nibble_blocks::<18>(row, xq).enumerate() {
        let d = f16(blk[0], blk[1]);
        accumulate(
            &mut acc,
            &nibble_products(nibbles(blk, 2), xl, xh, 8),
            d * xq.dx[b],
        );
    }
    acc.iter().sum()
}

#[inline(always)]
fn q4_1_row(row: &[u8], xq: &XQuant) -> f32 {
    let mut acc = [0f32; 16];
    let mut mins = 0f32;
    for (b, (blk, xl, xh)) in nibble_blocks::<20>(row, xq).enumerate() {
        let d = f16(blk[0], blk[1]);
        let m = f16(blk[2], blk[3]);
        // Codes centred on 8 (`d·c + m = d·(c - 8) + (m + 8d)`) halve the
        // error from rounding `x`.
        accumulate(
            &mut acc,
            &nibble_products(nibbles(blk, 4), xl, xh, 8),
            d * xq.dx[b],
        );
        mins += (m + 8.0 * d) * xq.fsum[b];
    }
    acc.iter().sum::<f32>() + mins
}

/// The 16 nibble bytes of a GGUF block, starting at `off`.
#[inline(always)]
fn nibbles<const BS: usize>(blk: &[u8; BS], off: usize) -> &[u8; 16] {
    blk[off..off + 16].try_into().unwrap()
}

/// The blocks of a row of `BS`-byte blocks, each with the input codes that
/// pair with its low and its high nibbles (see [`XQuant`]'s nibble orders).
#[inline(always)]
fn nibble_blocks<'a, const BS: usize>(
    row: &'a [u8],
    xq: &'a XQuant,
) -> impl Iterator<Item = (&'a [u8; BS], &'a [i8; 16], &'a [i8; 16])> {
    row.chunks_exact(BS)
        .zip(xq.q.chunks_exact(128).flat_map(|c| {
            let (lo, hi) = c.split_at(64);
            lo.chunks_exact(16).zip(hi.chunks_exact(16))
        }))
        .map(|(blk, (xl, xh))| {
            (
                blk.try_into().unwrap(),
                xl.try_into().unwrap(),
                xh.try_into().unwrap(),
            )
        })
}

/// `Σ a_i b_i` with 32 independent partial sums (vectorizes to 4 AVX2 or
/// 8 SSE registers).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 32;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(0f32, |s, (x, y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        let x: &[f32; L] = x.try_into().unwrap();
        let y: &[f32; L] = y.try_into().unwrap();
        for i in 0..L {
            acc[i] += x[i] * y[i];
        }
    }
    // Pairwise reduction of the partial sums.
    let mut w = L;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0] + tail
}

/// `y[i] = W[r0 + i] · x` for a dense row-major `W`.
#[inline(always)]
pub(crate) fn f32_rows(w: &[f32], cols: usize, x: &[f32], r0: usize, y: &mut [f32]) {
    for (i, yr) in y.iter_mut().enumerate() {
        let r = r0 + i;
        *yr = dot(&w[r * cols..(r + 1) * cols], x);
    }
}

/// Dequantizes rows `r0 .. r0 + out.len() / cols` of `view` into `out`
/// (row-major), exactly as [`PackedMatrix::dequantize`](crate::PackedMatrix::dequantize).
#[inline(always)]
pub(crate) fn dequantize_rows(view: View<'_>, cols: usize, r0: usize, out: &mut [f32]) {
    for (i, o) in out.chunks_exact_mut(cols).enumerate() {
        let r = r0 + i;
        match view {
            View::Int8 { data, scales } => {
                let s = scales[r];
                for (o, &q) in o.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = (q as i8) as f32 * s;
                }
            }
            View::Int4 {
                data,
                scales,
                mins,
                group,
            } => {
                let rb = cols / 2;
                let gpr = cols / group;
                let w = &data[r * rb..(r + 1) * rb];
                for (g, (wg, og)) in w
                    .chunks_exact(group / 2)
                    .zip(o.chunks_exact_mut(group))
                    .enumerate()
                {
                    let s = scales[r * gpr + g];
                    if mins.is_empty() {
                        for (&b, p) in wg.iter().zip(og.chunks_exact_mut(2)) {
                            p[0] = ((b & 0x0f) as i32 - 8) as f32 * s;
                            p[1] = ((b >> 4) as i32 - 8) as f32 * s;
                        }
                    } else {
                        // `q * scale + min`, as `int4::dequantize_asym`.
                        let m = mins[r * gpr + g];
                        for (&b, p) in wg.iter().zip(og.chunks_exact_mut(2)) {
                            p[0] = (b & 0x0f) as f32 * s + m;
                            p[1] = (b >> 4) as f32 * s + m;
                        }
                    }
                }
            }
            View::Q8_0(data) => for_blocks::<34>(data, cols, r, o, |b, o| {
                let d = f16(b[0], b[1]);
                for (o, &q) in o.iter_mut().zip(&b[2..]) {
                    *o = (q as i8) as f32 * d;
                }
            }),
            View::Q4_0(data) => for_blocks::<18>(data, cols, r, o, |b, o| {
                let d = f16(b[0], b[1]);
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..]) {
                    *l = d * ((q & 0x0f) as i32 - 8) as f32;
                    *h = d * ((q >> 4) as i32 - 8) as f32;
                }
            }),
            View::Q4_1(data) => for_blocks::<20>(data, cols, r, o, |b, o| {
                let d = f16(b[0], b[1]);
                let m = f16(b[2], b[3]);
                let (lo, hi) = o.split_at_mut(QK / 2);
                for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..]) {
                    *l = d * (q & 0x0f) as f32 + m;
                    *h = d * (q >> 4) as f32 + m;
                }
            }),
        }
    }
}

/// Calls `f(block, out)` for each `BS`-byte block of row `r` with its 32
/// outputs (the arithmetic of [`crate::gguf`]'s `dequantize_block`s).
#[inline(always)]
fn for_blocks<const BS: usize>(
    data: &[u8],
    cols: usize,
    r: usize,
    out: &mut [f32],
    mut f: impl FnMut(&[u8; BS], &mut [f32; QK]),
) {
    let rb = cols / QK * BS;
    for (b, o) in data[r * rb..(r + 1) * rb]
        .chunks_exact(BS)
        .zip(out.chunks_exact_mut(QK))
    {
        f(b.try_into().unwrap(), o.try_into().unwrap());
    }
}
