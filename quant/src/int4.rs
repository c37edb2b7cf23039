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
//! * `mins`: asymmetric only, `out * G` `f32`, same indexing: the group's
//!   minimum, the value of code 0; empty for symmetric.
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
//! # Asymmetric grid: `q` in `0..=15`, `f32` minimum (affine)
//!
//! ```text
//! min   = min w over the group                  (f32; NaN weights ignored)
//! scale = (max w - min) / 15                    (f32)
//! q     = clamp(round((w - min) / scale), 0, 15)
//! w'    = q * scale + min                       (an f32 product, then an f32 sum)
//! ```
//!
//! This is GGUF `Q4_1`'s rule (see [`crate::gguf`]) at any group size, with
//! the parameters kept in `f32` instead of `f16`: the 16 levels span exactly
//! the group's range, which need not hold 0. A group that is already on such
//! a grid (codes 0 and 15 both used, as `Q4_1` always writes them) is
//! recovered up to `f32` rounding, which an integer zero point cannot do:
//! its grid always holds 0, so a `Q4_1` block whose minimum is not a multiple
//! of its step is off it. Rounding is half away from zero (`(w - min) /
//! scale >= 0`, so ties round up), divisions are `f32` divisions. A zero
//! scale (a constant group) gives `q = 0`, so the group dequantizes exactly
//! to `min`. A group holding an infinite weight, or whose range overflows
//! `f32` (`max - min` beyond `f32::MAX`), gets `scale = min = 0` (all of it
//! dequantizes to 0), so the stored parameters are always finite. NaN
//! weights give code 0 (symmetric: the code for value 0; asymmetric: the
//! lowest code, the value `min`).

use crate::error::{Result, check_bytes};

/// Largest symmetric code; RTN codes are in `-SYM_QMAX..=SYM_QMAX`.
pub const SYM_QMAX: i8 = 7;
/// Smallest symmetric code the storage holds (nibble 0).
pub const SYM_STORE_MIN: i8 = -8;
/// Largest asymmetric code; codes are in `0..=ASYM_QMAX`.
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

/// Asymmetric `(scale, min)` for a group spanning `min..=max`:
/// `((max - min) / 15, min)`. Non-finite bounds (an infinite weight, or NaN)
/// or a range whose width overflows `f32` give `(0, 0)`.
#[inline]
pub fn asym_params(min: f32, max: f32) -> (f32, f32) {
    let scale = (max - min) / ASYM_QMAX as f32;
    if !(min.is_finite() && scale.is_finite()) {
        return (0.0, 0.0);
    }
    (scale, min)
}

/// Asymmetric code of `w`: `clamp(round((w - min) / scale), 0, 15)`; 0 for
/// a zero scale or a NaN `w`.
#[inline]
pub fn quantize_asym(w: f32, scale: f32, min: f32) -> u8 {
    if scale == 0.0 {
        return 0;
    }
    // `as` maps NaN to 0.
    ((w - min) / scale).round().clamp(0.0, ASYM_QMAX as f32) as u8
}

/// Value of asymmetric code `q`: `q * scale + min`.
#[inline]
pub fn dequantize_asym(q: u8, scale: f32, min: f32) -> f32 {
    q as f32 * scale + min
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
    mins: &mut [f32],
) {
    for (((wg, og), s), m) in w
        .chunks_exact(group)
        .zip(out.chunks_exact_mut(group / 2))
        .zip(scales.iter_mut())
        .zip(mins.iter_mut())
    {
        let (lo, hi) = min_max(wg);
        let (scale, min) = asym_params(lo, hi);
        *s = scale;
        *m = min;
        for (o, p) in og.iter_mut().zip(wg.chunks_exact(2)) {
            let lo = quantize_asym(p[0], scale, min);
            let hi = quantize_asym(p[1], scale, min);
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
    mins: &[f32],
    out: &mut [f32],
) {
    for (((pg, og), &s), &m) in packed
        .chunks_exact(group / 2)
        .zip(out.chunks_exact_mut(group))
        .zip(scales)
        .zip(mins)
    {
        for (&b, o) in pg.iter().zip(og.chunks_exact_mut(2)) {
            o[0] = dequantize_asym(b & 0x0f, s, m);
            o[1] = dequantize_asym(b >> 4, s, m);
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
        // -1..=2: scale 0.2, min -1.
        let (s, m) = asym_params(-1.0, 2.0);
        assert_eq!((s, m), (3.0 / 15.0, -1.0));
        assert_eq!(quantize_asym(-1.0, s, m), 0);
        assert_eq!(quantize_asym(2.0, s, m), 15);
        assert_eq!(quantize_asym(-5.0, s, m), 0);
        assert_eq!(quantize_asym(5.0, s, m), 15);
        assert_eq!(dequantize_asym(0, s, m), -1.0);
        // All-positive group: the range is not widened to 0, the minimum is code 0.
        let (s, m) = asym_params(3.0, 10.5);
        assert_eq!((s, m), (0.5, 3.0));
        assert_eq!(quantize_asym(3.0, s, m), 0);
        assert_eq!(quantize_asym(3.25, s, m), 1); // a tie rounds up
        assert_eq!(quantize_asym(10.5, s, m), 15);
        assert_eq!(dequantize_asym(7, s, m), 6.5);
        // All-negative group.
        let (s, m) = asym_params(-7.5, -0.0);
        assert_eq!((s, m), (0.5, -7.5));
        assert_eq!(quantize_asym(-7.5, s, m), 0);
        assert_eq!(dequantize_asym(15, s, m), 0.0);
        // A constant group is exact: code 0, value `min`.
        assert_eq!(asym_params(0.0, 0.0), (0.0, 0.0));
        assert_eq!(asym_params(0.75, 0.75), (0.0, 0.75));
        assert_eq!(quantize_asym(0.75, 0.0, 0.75), 0);
        assert_eq!(dequantize_asym(0, 0.0, 0.75), 0.75);
        assert_eq!(quantize_asym(f32::NAN, 1.0, 3.0), 0);
        // Parameters stay finite.
        assert_eq!(asym_params(f32::NEG_INFINITY, 1.0), (0.0, 0.0));
        assert_eq!(asym_params(0.0, f32::INFINITY), (0.0, 0.0));
        assert_eq!(asym_params(-f32::MAX, f32::MAX), (0.0, 0.0));
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

        // Asymmetric: codes 0..=15 with scale 0.5 and minimum 1.25 (not a
        // multiple of the scale: off every integer-zero-point grid).
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 7) % 16) as f32)
            .map(|q| q * 0.5 + 1.25)
            .collect();
        let mut mins = vec![0f32; 2];
        quantize_row_asym(&w, 32, &mut packed, &mut scales, &mut mins);
        assert_eq!(scales, [0.5, 0.5]);
        assert_eq!(mins, [1.25, 1.25]);
        dequantize_row_asym(&packed, 32, &scales, &mins, &mut back);
        assert_eq!(back, w);
    }
}
