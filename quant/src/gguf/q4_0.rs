//! GGML `Q4_0` (type id 2): blocks of 32 values, 4.5 bits per value.
//!
//! # Byte layout (18 bytes per block)
//!
//! | bytes   | content                                                   |
//! |---------|-----------------------------------------------------------|
//! | 0..2    | `d`: the scale, IEEE `f16`, little-endian                 |
//! | 2..18   | `qs[j]`, `j = 0..16`: low nibble = code of element `j`,   |
//! |         | high nibble = code of element `j + 16`                    |
//!
//! So the low nibbles hold elements 0..15 and the high nibbles elements
//! 16..31 (not interleaved pairs). A code `c` in `0..=15` stands for the
//! value `(c - 8) * d`: dequantized `x[j] = f32(d) * ((c - 8) as f32)`.
//!
//! # Quantization, exactly as `gguf.quants.Q4_0` / `quantize_row_q4_0_ref`
//!
//! ```text
//! max  = x[argmax_j |x[j]|]     (signed; first index on ties; first NaN wins)
//! d    = max / -8               (f32)
//! id   = d == 0 ? 0 : 1 / d     (f32)
//! c[j] = min(15, uint8(trunc(x[j] * id + 8.5)))   (f32 ops, then truncate)
//! store f16(d)                  (round to nearest even)
//! ```
//!
//! The element of largest magnitude maps to code 0 (value `-8 * d = max`),
//! so the sign of `d` follows it and the full range -8..=7 is used. Because
//! of the truncation, `x * id + 8.5` rounds half *up* (toward +infinity),
//! not half away from zero. An all-zero block stores `d = -0.0` (`f16` bits
//! `0x8000`, bytes `00 80`) and codes 8 (bytes `0x88`). If `1 / d` overflows
//! or the input holds NaN the cast yields code 0 (see [`super::np_cast_i32`]).

use super::{QK, f16_bits, f16_value, inverse_scale, np_cast_i32};

/// Bytes per `Q4_0` block.
pub const BLOCK_BYTES: usize = 2 + QK / 2;

/// Quantizes 32 values into one `Q4_0` block.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    // numpy `argmax` of |x|: the first maximum, or the first NaN.
    let mut imax = 0;
    let mut best = x[0].abs();
    if !best.is_nan() {
        for (j, v) in x.iter().enumerate().skip(1) {
            let a = v.abs();
            if a.is_nan() {
                imax = j;
                break;
            }
            if a > best {
                best = a;
                imax = j;
            }
        }
    }
    let d = x[imax] / -8.0;
    let id = inverse_scale(d);
    out[..2].copy_from_slice(&f16_bits(d));
    let code = |v: f32| (np_cast_i32((v * id + 8.5).trunc()) as u8).min(15);
    for j in 0..QK / 2 {
        out[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
}

/// Dequantizes one `Q4_0` block.
pub fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_value([b[0], b[1]]);
    for j in 0..QK / 2 {
        let q = b[2 + j];
        out[j] = d * ((q & 0x0f) as i32 - 8) as f32;
        out[j + QK / 2] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_grid_values_round_trip_exactly() {
        let d = 0.0625f32;
        let mut x = [0f32; QK];
        for (j, v) in x.iter_mut().enumerate() {
            *v = ((j * 7 % 16) as i32 - 8) as f32 * d;
        }
        x[0] = -8.0 * d; // the largest magnitude must be the -8 code
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(f16_value([b[0], b[1]]), d);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn nibble_order_low_first_half() {
        let mut x = [0f32; QK];
        x[0] = -8.0; // d = 1, code 0
        x[1] = 1.0; // code 9
        x[16] = 7.0; // code 15, high nibble of byte 0
        x[17] = -3.0; // code 5, high nibble of byte 1
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(&b[..2], &[0x00, 0x3c]); // f16 1.0
        assert_eq!(b[2], 0xf0);
        assert_eq!(b[3], 0x59);
        assert_eq!(b[4], 0x88);
    }

    #[test]
    fn sign_of_scale_follows_largest_magnitude_and_ties_round_up() {
        let mut x = [0f32; QK];
        x[0] = 8.0; // first of the tied maxima: d = -1
        x[1] = -8.0;
        x[2] = 2.5; // 2.5 * -1 + 8.5 = 6 -> value (6 - 8) * -1 = 2
        x[3] = -2.5; // -2.5 * -1 + 8.5 = 11 -> value -3 (half rounds up)
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        assert_eq!(f16_value([b[0], b[1]]), -1.0);
        assert_eq!(&y[..4], &[8.0, -7.0, 2.0, -3.0]); // -8 clips to code 15
    }

    #[test]
    fn zero_block_stores_negative_zero_scale() {
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&[0.0; QK], &mut b);
        assert_eq!(&b[..2], &[0x00, 0x80]);
        assert!(b[2..].iter().all(|&q| q == 0x88));
        let mut y = [1f32; QK];
        dequantize_block(&b, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }
}
