//! GGML `Q4_1` (type id 3): blocks of 32 values, 5 bits per value.
//!
//! # Byte layout (20 bytes per block)
//!
//! | bytes   | content                                                   |
//! |---------|-----------------------------------------------------------|
//! | 0..2    | `d`: the step, IEEE `f16`, little-endian                  |
//! | 2..4    | `m`: the block minimum, IEEE `f16`, little-endian         |
//! | 4..20   | `qs[j]`, `j = 0..16`: low nibble = code of element `j`,   |
//! |         | high nibble = code of element `j + 16`                    |
//!
//! A code `c` in `0..=15` stands for `c * d + m`: dequantized
//! `x[j] = f32(d) * (c as f32) + f32(m)` (an `f32` product then an `f32`
//! sum, no fused multiply-add).
//!
//! # Quantization, exactly as `gguf.quants.Q4_1` / `quantize_row_q4_1_ref`
//!
//! ```text
//! min  = min_j x[j],  max = max_j x[j]   (f32; NaN if any x is NaN)
//! d    = (max - min) / 15                (f32)
//! id   = d == 0 ? 0 : 1 / d              (f32)
//! c[j] = min(15, uint8(trunc((x[j] - min) * id + 0.5)))
//! store f16(d), f16(min)                 (round to nearest even)
//! ```
//!
//! The range is the plain block min..max (zero need not be in it); the codes
//! use the unrounded `f32` `min` and `d`, so after rounding `m` to `f16` the
//! block minimum dequantizes to `f16(min)`, not `min`. Ties
//! (`.5`) round up. An all-zero block stores `d = m = +0` and codes 0.
//!
//! One known, harmless divergence: when a block's minimum is a zero and the
//! block holds both `+0.0` and `-0.0`, which zero numpy's SIMD `min`
//! reduction returns depends on its lane order (and so on the CPU), so the
//! sign bit of `m` (`00 00` vs `00 80`) may differ from numpy's. We keep the
//! first of the tied zeros. The dequantized values are the same either way
//! (`d >= 0`, so `d * q + (-0.0)` equals `d * q + 0.0`).

use super::{QK, f16_bits, f16_value, inverse_scale, np_cast_i32};

/// Bytes per `Q4_1` block.
pub const BLOCK_BYTES: usize = 4 + QK / 2;

/// numpy `max`/`min` reductions propagate NaN.
#[inline]
fn nan_min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = x[0];
    let mut max = x[0];
    for &v in &x[1..] {
        if v.is_nan() {
            return (v, v);
        }
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Quantizes 32 values into one `Q4_1` block.
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    let (min, max) = nan_min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_scale(d);
    out[..2].copy_from_slice(&f16_bits(d));
    out[2..4].copy_from_slice(&f16_bits(min));
    let code = |v: f32| (np_cast_i32(((v - min) * id + 0.5).trunc()) as u8).min(15);
    for j in 0..QK / 2 {
        out[4 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
    }
}

/// Dequantizes one `Q4_1` block.
pub fn dequantize_block(b: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_value([b[0], b[1]]);
    let m = f16_value([b[2], b[3]]);
    for j in 0..QK / 2 {
        let q = b[4 + j];
        out[j] = d * (q & 0x0f) as f32 + m;
        out[j + QK / 2] = d * (q >> 4) as f32 + m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_grid_values_round_trip_exactly() {
        let (m, d) = (-1.0f32, 0.125f32);
        let mut x = [0f32; QK];
        for (j, v) in x.iter_mut().enumerate() {
            *v = m + (j * 11 % 16) as f32 * d;
        }
        x[3] = m; // the grid's ends must both occur
        x[4] = m + 15.0 * d;
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(f16_value([b[0], b[1]]), d);
        assert_eq!(f16_value([b[2], b[3]]), m);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        assert_eq!(x, y);
    }

    #[test]
    fn nibble_order_and_offset() {
        let mut x = [10f32; QK];
        x[0] = 25.0; // max: d = 1, m = 10
        x[16] = 12.0; // code 2, high nibble of byte 0
        x[1] = 11.5; // 1.5 + 0.5 = 2 -> code 2 (half rounds up)
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(f16_value([b[0], b[1]]), 1.0);
        assert_eq!(f16_value([b[2], b[3]]), 10.0);
        assert_eq!(b[4], 0x2f);
        assert_eq!(b[5], 0x02);
        assert_eq!(b[6], 0x00);
    }

    #[test]
    fn sign_of_a_zero_minimum_does_not_change_values() {
        let mut x = [0f32; QK];
        x[0] = -0.0;
        x[9] = 15.0; // d = 1
        let mut b = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut b);
        assert_eq!(&b[2..4], &[0x00, 0x80]);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        let mut b2 = b;
        b2[3] = 0x00; // m = +0
        let mut y2 = [0f32; QK];
        dequantize_block(&b2, &mut y2);
        assert_eq!(y.map(f32::to_bits), y2.map(f32::to_bits));
        assert_eq!(y[9], 15.0);
    }

    #[test]
    fn zero_and_constant_blocks() {
        let mut b = [0xffu8; BLOCK_BYTES];
        quantize_block(&[0.0; QK], &mut b);
        assert_eq!(b, [0u8; BLOCK_BYTES]);
        quantize_block(&[-3.0; QK], &mut b);
        let mut y = [0f32; QK];
        dequantize_block(&b, &mut y);
        assert!(y.iter().all(|&v| v == -3.0));
    }
}
