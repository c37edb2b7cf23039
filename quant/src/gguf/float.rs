//! GGML `F32` (type id 0) and `F16` (type id 1): unquantized rows.
//!
//! # Byte layout
//!
//! * `F32`: each value as 4 little-endian bytes of its IEEE binary32 bits.
//! * `F16`: each value as 2 little-endian bytes of its IEEE binary16 bits,
//!   converted with round-to-nearest-even (numpy `astype(np.float16)`):
//!   magnitudes above 65504 (more exactly, at or above 65520) become
//!   infinity, small ones become subnormal or zero.
//!
//! Dequantization is the exact widening back to `f32`.

/// Writes `x` as little-endian `f32` bytes into `out` (`4 * x.len()` bytes).
pub(super) fn quantize_f32(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(4)) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// Reads little-endian `f32` bytes.
pub(super) fn dequantize_f32(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(4).zip(out.iter_mut()) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// Writes `x` as little-endian `f16` bytes into `out` (`2 * x.len()` bytes).
pub(super) fn quantize_f16(x: &[f32], out: &mut [u8]) {
    for (v, o) in x.iter().zip(out.chunks_exact_mut(2)) {
        o.copy_from_slice(&super::f16_bits(*v));
    }
}

/// Reads little-endian `f16` bytes, widening to `f32`.
pub(super) fn dequantize_f16(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(2).zip(out.iter_mut()) {
        *o = super::f16_value([b[0], b[1]]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GgmlType, dequantize_row, quantize_row};

    #[test]
    fn f32_round_trip_is_bitwise() {
        let x = [
            0.0,
            -0.0,
            1.5,
            -3.25e-30,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-45,
        ];
        let q = quantize_row(GgmlType::F32, &x).unwrap();
        assert_eq!(q.len(), 28);
        assert_eq!(&q[8..12], &1.5f32.to_le_bytes());
        let d = dequantize_row(GgmlType::F32, &q, x.len()).unwrap();
        for (a, b) in x.iter().zip(&d) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        // 1 + 2^-11 is half-way between 1 and 1 + 2^-10: ties to even (1).
        let x = [
            1.0 + 2f32.powi(-11),
            1.0 + 3.0 * 2f32.powi(-11),
            65520.0,
            -0.0,
            0.5,
        ];
        let q = quantize_row(GgmlType::F16, &x).unwrap();
        assert_eq!(&q[0..2], &[0x00, 0x3c]);
        assert_eq!(&q[2..4], &[0x02, 0x3c]);
        assert_eq!(&q[4..6], &[0x00, 0x7c]); // +inf
        assert_eq!(&q[6..8], &[0x00, 0x80]);
        let d = dequantize_row(GgmlType::F16, &q, x.len()).unwrap();
        assert_eq!(d[0], 1.0);
        assert_eq!(d[1], 1.0 + 2.0 * 2f32.powi(-10));
        assert_eq!(d[2], f32::INFINITY);
        assert_eq!(d[4], 0.5);
    }
}
