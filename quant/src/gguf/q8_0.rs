//! GGML `Q8_0` (type id 8): blocks of 32 values, 8.5 bits per value.
//!
//! # Byte layout (34 bytes per block)
//!
//! | bytes   | content                                              |
//! |---------|------------------------------------------------------|
//! | 0..2    | `d`: the scale, IEEE `f16`, little-endian            |
//! | 2..34   | `qs[j]`: element `j` as a two's-complement `i8`      |
//!
//! Dequantized value: `x[j] = (qs[j] as f32) * f32(d)` (one `f32` product).
//!
//! # Quantization, exactly as `gguf.quants.Q8_0` / `quantize_row_q8_0_ref`
//!
//! ```text
//! amax = max_j |x[j]|                       (f32; NaN if any x is NaN)
//! d    = amax / 127                         (f32 division)
//! id   = d == 0 ? 0 : 1 / d                 (f32)
//! qs[j] = int8(roundf(x[j] * id))           (round half away from zero)
//! store f16(d)                              (round to nearest even)
//! ```
//!
//! The codes use the `f32` scale, not the rounded `f16` one. `roundf` is
//! numpy's `np_roundf` (`sign(n) * (floor|n| + floor(2 * frac|n|))`), which
//! equals round-half-away-from-zero on finite values and gives NaN for
//! infinities; a NaN code is cast to `0` (see [`super::np_cast_i32`]). An
//! all-zero block stores `d = +0` and zero codes.

use super::{QK, f16_bits, f16_value, inverse_scale, np_cast_i32};

/// Bytes per `Q8_0` block.
pub const BLOCK_BYTES: usize = 2 + QK;

/// numpy's `np_roundf`: round half away from zero; NaN for non-finite.
#[inline]
fn np_roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    np_sign(n) * b
}

/// `np.sign`: -1, 0 or 1 (keeping the zero), NaN for NaN.
#[inline]
fn np_sign(n: f32) -> f32 {
    if n > 0.0 {
        1.0
    } else if n < 0.0 {
        -1.0
    } else {
        n
    }
}

/// Quantizes 32 values into one `Q8_0` block.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    // `abs(blocks).max()` propagates NaN.
    let mut amax = 0f32;
    for v in x {
        let a = v.abs();
        if a.is_nan() || a > amax {
            amax = a;
            if a.is_nan() {
                break;
            }
        }
    }
    let d = amax / 127.0;
    let id = inverse_scale(d);
    out[..2].copy_from_slice(&f16_bits(d));
    for (o, v) in out[2..].iter_mut().zip(x) {
        *o = np_cast_i32(np_roundf(v * id)) as i8 as u8;
    }
}

/// Dequantizes one `Q8_0` block.
pub fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_value([b[0], b[1]]);
    for (o, q) in out.iter_mut().zip(&b[2..]) {
        *o = (*q as i8) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_grid_values_round_trip_exactly() {
        // d = 2^-7 so that amax / 127 and 1 / d are exact.
        let d = 2f32.powi(-7);
        let mut x = [0f32; QK];
        for (j, v) in x.iter_mut().enumerate() {
            *v = ((j as i32 * 9) % 255 - 127) as f32 * d;
        }
        x[5] = -127.0 * d;
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(f16_value([b[0], b[1]]), d);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn rounds_half_away_from_zero() {
        // amax = 127 gives d = 1 and id = 1, so x * id = x exactly.
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        x[4] = -0.5;
        x[5] = 0.49999997;
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        let q: Vec<i8> = b[2..8].iter().map(|&v| v as i8).collect();
        assert_eq!(q, [127, 3, -3, 1, -1, 0]);
    }

    #[test]
    fn zero_block_and_overflowing_inverse() {
        let mut b = [0xffu8; BLOCK_BYTES];
        quantize_block(&[0.0; QK], &mut b);
        assert_eq!(b, [0u8; BLOCK_BYTES]);
        // amax / 127 is so small that 1 / d overflows: numpy gives all zeros.
        let mut x = [0f32; QK];
        x[0] = 1e-38;
        x[1] = -3e-39;
        quantize_block(&x, &mut b);
        assert_eq!(b, [0u8; BLOCK_BYTES]);
    }

    #[test]
    fn nan_never_panics() {
        let mut x = [1f32; QK];
        x[3] = f32::NAN;
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert!(f16_value([b[0], b[1]]).is_nan());
        assert!(b[2..].iter().all(|&q| q == 0));
    }
}
