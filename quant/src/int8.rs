//! int8 per-output-channel symmetric quantization (`Scheme::Int8PerChannel`).
//!
//! # Layout (inside a [`QuantizedMatrix`](crate::QuantizedMatrix))
//!
//! For a weight matrix `W[out, in]` (row-major `f32`, one row per output
//! channel):
//!
//! * `data`: `out * in` bytes, row-major; byte `r * in + c` is the code
//!   `q[r][c]` as a two's-complement `i8`.
//! * `scales`: `out` `f32`, one per row.
//! * `zeros`: empty.
//!
//! Dequantized value: `w[r][c] = (q[r][c] as f32) * scales[r]`.
//!
//! # Grid (round to nearest)
//!
//! ```text
//! scale = max_c |w[r][c]| / 127          (f32; NaN weights are ignored)
//! q     = clamp(round(w / scale), -127, 127)   (round half away from zero)
//! ```
//!
//! `w / scale` is an `f32` division (not a multiplication by `1 / scale`).
//! A zero scale (an all-zero row) gives codes 0. NaN weights give code 0.
//! RTN never produces -128, but the storage accepts it (it dequantizes to
//! `-128 * scale`), so an algorithm may use it.

/// Largest code RTN produces; codes are in `-QMAX..=QMAX`.
pub const QMAX: i8 = 127;

/// The scale for a row whose largest magnitude is `absmax`: `absmax / 127`.
#[inline]
pub fn scale_for_absmax(absmax: f32) -> f32 {
    absmax / QMAX as f32
}

/// Code of `w` on the grid of `scale`: `clamp(round(w / scale), -127, 127)`,
/// rounding half away from zero; 0 when `scale` is 0.
#[inline]
pub fn quantize_value(w: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    // `as` maps NaN to 0; the clamp keeps the cast in range.
    (w / scale).round().clamp(-(QMAX as f32), QMAX as f32) as i8
}

/// Value of code `q`: `q * scale`.
#[inline]
pub fn dequantize_value(q: i8, scale: f32) -> f32 {
    q as f32 * scale
}

/// Largest magnitude of `w`, ignoring NaN (0 for an empty or all-NaN slice).
#[inline]
pub fn absmax(w: &[f32]) -> f32 {
    w.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Quantizes one row into its code bytes; returns the row's scale.
pub(crate) fn quantize_row(w: &[f32], out: &mut [u8]) -> f32 {
    let scale = scale_for_absmax(absmax(w));
    for (o, &v) in out.iter_mut().zip(w) {
        *o = quantize_value(v, scale) as u8;
    }
    scale
}

/// Dequantizes one row of code bytes.
pub(crate) fn dequantize_row(codes: &[u8], scale: f32, out: &mut [f32]) {
    for (o, &q) in out.iter_mut().zip(codes) {
        *o = dequantize_value(q as i8, scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values() {
        assert_eq!(scale_for_absmax(254.0), 2.0);
        assert_eq!(quantize_value(3.0, 2.0), 2); // 1.5 -> 2
        assert_eq!(quantize_value(-3.0, 2.0), -2); // -1.5 -> -2
        assert_eq!(quantize_value(1.0, 2.0), 1); // 0.5 -> 1
        assert_eq!(quantize_value(0.99, 2.0), 0);
        assert_eq!(quantize_value(1000.0, 2.0), 127);
        assert_eq!(quantize_value(-1000.0, 2.0), -127);
        assert_eq!(quantize_value(5.0, 0.0), 0);
        assert_eq!(quantize_value(f32::NAN, 1.0), 0);
        assert_eq!(dequantize_value(-127, 0.5), -63.5);
        assert_eq!(absmax(&[1.0, f32::NAN, -3.0]), 3.0);
    }

    #[test]
    fn row_on_grid_round_trips() {
        let s = 2f32.powi(-9);
        let w: Vec<f32> = (-127..=127).map(|q| q as f32 * s).collect();
        let mut codes = vec![0u8; w.len()];
        let scale = quantize_row(&w, &mut codes);
        assert_eq!(scale, s);
        let mut back = vec![0f32; w.len()];
        dequantize_row(&codes, scale, &mut back);
        assert_eq!(back, w);
        assert_eq!(codes[0] as i8, -127);
        assert_eq!(codes[254] as i8, 127);
    }

    #[test]
    fn zero_row() {
        let mut codes = vec![9u8; 4];
        assert_eq!(quantize_row(&[0.0; 4], &mut codes), 0.0);
        assert_eq!(codes, [0; 4]);
    }
}
