//! int4 group-wise quantization along the input dimension
//! (`Scheme::Int4Sym` and `Scheme::Int4Asym`), groups of 32, 64 or 128.
//!
//! # Layout (inside a [`QuantizedMatrix`](crate::QuantizedMatrix))
//!
//! For a weight matrix `W[out, in]` (row-major `f32`) and group size `g`
//! (which must divide `in`), with `G = in / g` groups per row:
//!
//! * `data`: `out * in / 2` bytes, row-major, `in / 2` bytes per row. Byte
//!   `i` of a row holds element `2i` in its low nibble (bits 0..4) and
//!   element `2i + 1` in its high nibble (bits 4..8). (This is *not* the
//!   GGML `Q4_0` order, where a block's low nibbles hold its first half.)
//! * `scales`: `out * G` `f32`, row-major: `scales[r * G + k]` is the scale of
//!   elements `k * g .. (k + 1) * g` of row `r`.
//! * `zeros`: asymmetric only, `out * G` `u8` in `0..=15`, same indexing;
//!   empty for symmetric.
//!
//! # Symmetric grid: `q` in `-7..=7`, nibble `q + 8`
//!
//! ```text
//! scale = max |w| over the group / 7      (f32; NaN weights ignored)
//! q     = clamp(round(w / scale), -7, 7)  (round half away from zero)
//! w'    = q * scale
//! ```
//!
//! Why `-7..=7` and `absmax / 7` (rather than `-8..=7`): the grid is
//! symmetric, so `-w` quantizes to `-q`, zero is exact, and the largest
//! weight of each group lands exactly on `±7 * scale` whatever its sign; with
//! `absmax / 8` and `-8..=7` one sign of the extreme would clip. It costs one
//! of the 16 levels. The nibble is offset binary, `q + 8` (as in GGML), so
//! nibble 0 (`q = -8`) is never written by RTN; it still decodes to
//! `-8 * scale`, and [`QuantizedMatrix::from_codes`](crate::QuantizedMatrix::from_codes)
//! accepts `-8..=7`.
//!
//! # Asymmetric grid: `q` in `0..=15`, integer zero point
//!
//! ```text
//! lo    = min(min w, 0),  hi = max(max w, 0)  (the range always holds 0)
//! scale = (hi - lo) / 15                      (f32)
//! zero  = clamp(round(-lo / scale), 0, 15)    (u8)
//! q     = clamp(round(w / scale) + zero, 0, 15)
//! w'    = (q - zero) * scale
//! ```
//!
//! Widening the range to include 0 (as GPTQ does) keeps the zero point a
//! representable code, so 0 dequantizes exactly; without it an all-positive
//! group would get `zero = 0` and clip. Rounding is half away from zero
//! throughout, divisions are `f32` divisions. A zero scale (an all-zero
//! group) gives `q = zero = 0`. NaN weights give code 0 (symmetric: the code
//! for value 0; asymmetric: the lowest code).

use crate::error::{Result, check_bytes};

/// Largest symmetric code; RTN codes are in `-SYM_QMAX..=SYM_QMAX`.
pub const SYM_QMAX: i8 = 7;
/// Smallest symmetric code the storage holds (nibble 0).
pub const SYM_STORE_MIN: i8 = -8;
/// Largest asymmetric code; codes and zero points are in `0..=ASYM_QMAX`.
pub const ASYM_QMAX: u8 = 15;

/// Symmetric scale for a group whose largest magnitude is `absmax`.
#[inline]
pub fn sym_scale(absmax: f32) -> f32 {
    absmax / SYM_QMAX as f32
}

/// Symmetric code of `w`: `clamp(round(w / scale), -7, 7)`; 0 for a zero scale.
#[inline]
pub fn quantize_sym(w: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (w / scale)
        .round()
        .clamp(-(SYM_QMAX as f32), SYM_QMAX as f32) as i8
}

/// Value of symmetric code `q`: `q * scale`.
#[inline]
pub fn dequantize_sym(q: i8, scale: f32) -> f32 {
    q as f32 * scale
}

/// Asymmetric `(scale, zero)` for a group spanning `min..=max` (the range is
/// first widened to include 0). NaN bounds are treated as 0.
#[inline]
pub fn asym_params(min: f32, max: f32) -> (f32, u8) {
    let lo = min.min(0.0);
    let hi = max.max(0.0);
    let scale = (hi - lo) / ASYM_QMAX as f32;
    if scale == 0.0 || scale.is_nan() {
        return (0.0, 0);
    }
    let zero = (-lo / scale).round().clamp(0.0, ASYM_QMAX as f32) as u8;
    (scale, zero)
}

/// Asymmetric code of `w`: `clamp(round(w / scale) + zero, 0, 15)`; `zero`
/// for a zero scale.
#[inline]
pub fn quantize_asym(w: f32, scale: f32, zero: u8) -> u8 {
    if scale == 0.0 {
        return zero.min(ASYM_QMAX);
    }
    ((w / scale).round() + zero as f32).clamp(0.0, ASYM_QMAX as f32) as u8
}

/// Value of asymmetric code `q`: `(q - zero) * scale`.
#[inline]
pub fn dequantize_asym(q: u8, scale: f32, zero: u8) -> f32 {
    (q as i32 - zero as i32) as f32 * scale
}

/// Nibble of a symmetric code: `q + 8` (the low 4 bits).
#[inline]
pub fn sym_to_nibble(q: i8) -> u8 {
    (q as i32 + 8) as u8 & 0x0f
}

/// Symmetric code of a nibble: `n - 8`, in `-8..=7`.
#[inline]
pub fn nibble_to_sym(n: u8) -> i8 {
    (n & 0x0f) as i8 - 8
}

/// Smallest and largest value of `w`, ignoring NaN (`(0, 0)` if none).
#[inline]
pub fn min_max(w: &[f32]) -> (f32, f32) {
    let (lo, hi) = w
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi { (0.0, 0.0) } else { (lo, hi) }
}

/// Packs 4-bit codes (`codes.len()` even; only the low nibble of each is
/// used) two per byte: element `2i` low, `2i + 1` high.
pub fn pack_nibbles(codes: &[u8], out: &mut [u8]) -> Result<()> {
    check_bytes("packed nibbles", codes.len().div_ceil(2), out.len())?;
    for (o, pair) in out.iter_mut().zip(codes.chunks(2)) {
        let hi = pair.get(1).copied().unwrap_or(0);
        *o = (pair[0] & 0x0f) | (hi << 4);
    }
    Ok(())
}

/// Unpacks bytes into 4-bit codes (`out.len()` = `2 * packed.len()`, or one
/// less for an odd count): element `2i` from the low nibble.
pub fn unpack_nibbles(packed: &[u8], out: &mut [u8]) -> Result<()> {
    check_bytes("packed nibbles", out.len().div_ceil(2), packed.len())?;
    for (pair, &b) in out.chunks_mut(2).zip(packed) {
        pair[0] = b & 0x0f;
        if let Some(h) = pair.get_mut(1) {
            *h = b >> 4;
        }
    }
    Ok(())
}

/// Quantizes one row symmetrically, group by group, into packed bytes.
pub(crate) fn quantize_row_sym(w: &[f32], group: usize, out: &mut [u8], scales: &mut [f32]) {
    for ((wg, og), s) in w
        .chunks_exact(group)
        .zip(out.chunks_exact_mut(group / 2))
        .zip(scales.iter_mut())
    {
        let scale = sym_scale(crate::int8::absmax(wg));
        *s = scale;
        for (o, p) in og.iter_mut().zip(wg.chunks_exact(2)) {
            let lo = sym_to_nibble(quantize_sym(p[0], scale));
            let hi = sym_to_nibble(quantize_sym(p[1], scale));
            *o = lo | (hi << 4);
        }
    }
}

/// Quantizes one row asymmetrically, group by group, into packed bytes.
pub(crate) fn quantize_row_asym(
    w: &[f32],
    group: usize,
    out: &mut [u8],
    scales: &mut [f32],
    zeros: &mut [u8],
) {
    for (((wg, og), s), z) in w
        .chunks_exact(group)
        .zip(out.chunks_exact_mut(group / 2))
        .zip(scales.iter_mut())
        .zip(zeros.iter_mut())
    {
        let (min, max) = min_max(wg);
        let (scale, zero) = asym_params(min, max);
        *s = scale;
        *z = zero;
        for (o, p) in og.iter_mut().zip(wg.chunks_exact(2)) {
            let lo = quantize_asym(p[0], scale, zero);
            let hi = quantize_asym(p[1], scale, zero);
            *o = lo | (hi << 4);
        }
    }
}

/// Dequantizes one symmetric row of packed bytes.
pub(crate) fn dequantize_row_sym(packed: &[u8], group: usize, scales: &[f32], out: &mut [f32]) {
    for ((pg, og), &s) in packed
        .chunks_exact(group / 2)
        .zip(out.chunks_exact_mut(group))
        .zip(scales)
    {
        for (&b, o) in pg.iter().zip(og.chunks_exact_mut(2)) {
            o[0] = dequantize_sym(nibble_to_sym(b), s);
            o[1] = dequantize_sym(nibble_to_sym(b >> 4), s);
        }
    }
}

/// Dequantizes one asymmetric row of packed bytes.
pub(crate) fn dequantize_row_asym(
    packed: &[u8],
    group: usize,
    scales: &[f32],
    zeros: &[u8],
    out: &mut [f32],
) {
    for (((pg, og), &s), &z) in packed
        .chunks_exact(group / 2)
        .zip(out.chunks_exact_mut(group))
        .zip(scales)
        .zip(zeros)
    {
        for (&b, o) in pg.iter().zip(og.chunks_exact_mut(2)) {
            o[0] = dequantize_asym(b & 0x0f, s, z);
            o[1] = dequantize_asym(b >> 4, s, z);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sym_grid() {
        assert_eq!(sym_scale(14.0), 2.0);
        assert_eq!(quantize_sym(14.0, 2.0), 7);
        assert_eq!(quantize_sym(-14.0, 2.0), -7);
        assert_eq!(quantize_sym(-100.0, 2.0), -7);
        assert_eq!(quantize_sym(3.0, 2.0), 2); // 1.5 -> 2
        assert_eq!(quantize_sym(-3.0, 2.0), -2);
        assert_eq!(quantize_sym(1.0, 0.0), 0);
        assert_eq!(quantize_sym(f32::NAN, 1.0), 0);
        for q in -8..=7 {
            assert_eq!(nibble_to_sym(sym_to_nibble(q)), q);
        }
        assert_eq!(sym_to_nibble(-8), 0);
        assert_eq!(sym_to_nibble(0), 8);
        assert_eq!(sym_to_nibble(7), 15);
    }

    #[test]
    fn asym_grid() {
        // -1..=2: scale 0.2, zero round(5) = 5.
        let (s, z) = asym_params(-1.0, 2.0);
        assert_eq!(s, 3.0 / 15.0);
        assert_eq!(z, 5);
        assert_eq!(quantize_asym(-1.0, s, z), 0);
        assert_eq!(quantize_asym(2.0, s, z), 15);
        assert_eq!(quantize_asym(0.0, s, z), 5);
        assert_eq!(dequantize_asym(5, s, z), 0.0);
        // All-positive group: the range is widened to 0..=max.
        let (s, z) = asym_params(3.0, 7.5);
        assert_eq!((s, z), (0.5, 0));
        assert_eq!(quantize_asym(3.0, s, z), 6);
        // All-negative group: zero point at the top.
        let (s, z) = asym_params(-7.5, -1.0);
        assert_eq!((s, z), (0.5, 15));
        assert_eq!(quantize_asym(-7.5, s, z), 0);
        assert_eq!(asym_params(0.0, 0.0), (0.0, 0));
        assert_eq!(quantize_asym(1.0, 0.0, 0), 0);
        assert_eq!(quantize_asym(f32::NAN, 1.0, 3), 0);
        assert_eq!(min_max(&[f32::NAN, 2.0, -1.0]), (-1.0, 2.0));
        assert_eq!(min_max(&[]), (0.0, 0.0));
    }

    #[test]
    fn nibble_pack_order() {
        let codes = [1u8, 2, 3, 4, 15, 0];
        let mut packed = [0u8; 3];
        pack_nibbles(&codes, &mut packed).unwrap();
        assert_eq!(packed, [0x21, 0x43, 0x0f]);
        let mut back = [0u8; 6];
        unpack_nibbles(&packed, &mut back).unwrap();
        assert_eq!(back, codes);
        let mut odd = [0u8; 5];
        unpack_nibbles(&packed, &mut odd).unwrap();
        assert_eq!(odd, codes[..5]);
        assert!(pack_nibbles(&codes, &mut [0u8; 2]).is_err());
        assert!(unpack_nibbles(&packed, &mut [0u8; 7]).is_err());
    }

    #[test]
    fn rows_on_grid_round_trip() {
        let s = 0.25f32;
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 5) % 15) as f32 - 7.0)
            .map(|q| q * s)
            .collect();
        let mut packed = vec![0u8; 32];
        let mut scales = vec![0f32; 2];
        quantize_row_sym(&w, 32, &mut packed, &mut scales);
        assert_eq!(scales, [s, s]);
        let mut back = vec![0f32; 64];
        dequantize_row_sym(&packed, 32, &scales, &mut back);
        assert_eq!(back, w);

        // Asymmetric: codes 0..=15 with zero 4 and scale 0.5.
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 7) % 16) as f32 - 4.0)
            .map(|q| q * 0.5)
            .collect();
        let mut zeros = vec![0u8; 2];
        quantize_row_asym(&w, 32, &mut packed, &mut scales, &mut zeros);
        assert_eq!(scales, [0.5, 0.5]);
        assert_eq!(zeros, [4, 4]);
        dequantize_row_asym(&packed, 32, &scales, &zeros, &mut back);
        assert_eq!(back, w);
    }
}
