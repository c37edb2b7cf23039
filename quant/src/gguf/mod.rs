//! GGML/GGUF tensor types: `F32`, `F16` and the 32-value block formats
//! `Q8_0`, `Q4_0` and `Q4_1`.
//!
//! Quantization and dequantization are bit-identical to the Python `gguf`
//! package (`gguf.quants.quantize` / `gguf.quants.dequantize`, version
//! 0.19.0, which in turn mirrors the `*_ref` functions of `ggml-quants.c`).
//! Every format file documents its byte layout and the exact arithmetic.
//!
//! A row of `n` values (`n` a multiple of the block size) is stored as
//! `n / block_size` consecutive blocks of `type_size` bytes; a matrix is its
//! rows one after the other (row-major, rows along the input dimension, the
//! same order as a GGUF tensor whose first dimension `ne[0]` is the row).
//! All multi-byte numbers are little-endian.
//!
//! # How the reference rounds (shared by all block formats)
//!
//! * All arithmetic is `f32` (IEEE, round-to-nearest-even, no fused
//!   multiply-add, no flush-to-zero); scales are computed in `f32` from the
//!   `f32` inputs and only then rounded to `f16` (round-to-nearest-even) for
//!   storage. The codes are computed with the unrounded `f32` scale.
//! * The inverse scale is `id = if d == 0 { 0 } else { 1 / d }` and the codes
//!   use `x * id`, never `x / d`.
//! * `Q8_0` rounds half away from zero; `Q4_0` and `Q4_1` add `8.5` or `0.5`
//!   and truncate toward zero.
//! * When `1 / d` overflows to infinity (block range below about `1e-37`) or
//!   an input is NaN, numpy casts NaN/infinity to an integer; on x86-64 that
//!   cast yields `0` (the low byte of `i32::MIN`), which we reproduce, see
//!   [`np_cast_i32`]. Such blocks store a zero `f16` scale anyway.
//! * The only divergence known: the sign bit of a zero `Q4_1` minimum in a
//!   block mixing `+0.0` and `-0.0` (see the `q4_1` module); values agree.

mod float;
mod q4_0;
mod q4_1;
mod q8_0;

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{QuantError, Result, check_bytes, check_len, checked_len};

pub use q4_0::{dequantize_block as dequantize_block_q4_0, quantize_block as quantize_block_q4_0};
pub use q4_1::{dequantize_block as dequantize_block_q4_1, quantize_block as quantize_block_q4_1};
pub use q8_0::{dequantize_block as dequantize_block_q8_0, quantize_block as quantize_block_q8_0};

/// Values per block of the quantized GGML types (`QK4_0 = QK4_1 = QK8_0`).
pub const QK: usize = 32;

/// A GGML tensor type, as stored in a GGUF file.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit IEEE float, 4 bytes per value.
    F32,
    /// 16-bit IEEE float, 2 bytes per value.
    F16,
    /// 4-bit symmetric blocks of 32: `f16` scale + 16 bytes of nibbles.
    Q4_0,
    /// 4-bit affine blocks of 32: `f16` scale + `f16` min + 16 bytes of nibbles.
    Q4_1,
    /// 8-bit symmetric blocks of 32: `f16` scale + 32 `i8`.
    Q8_0,
}

impl GgmlType {
    /// Every type this crate implements.
    pub const ALL: [GgmlType; 5] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ];

    /// Values per block (1 for the float types, 32 for the block formats).
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            GgmlType::Q4_0 => q4_0::BLOCK_BYTES,
            GgmlType::Q4_1 => q4_1::BLOCK_BYTES,
            GgmlType::Q8_0 => q8_0::BLOCK_BYTES,
        }
    }

    /// The GGUF type id (`ggml_type` enum value).
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
        }
    }

    /// The type with a GGUF type id.
    pub const fn from_id(id: u32) -> Result<Self> {
        match id {
            0 => Ok(GgmlType::F32),
            1 => Ok(GgmlType::F16),
            2 => Ok(GgmlType::Q4_0),
            3 => Ok(GgmlType::Q4_1),
            8 => Ok(GgmlType::Q8_0),
            other => Err(QuantError::UnsupportedGgmlType(other)),
        }
    }

    /// The name ggml uses (`"Q4_0"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
        }
    }

    /// Whether this is one of the block-quantized types.
    pub const fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by a row of `n` values; `n` must be a multiple of
    /// [`block_size`](Self::block_size).
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if !n.is_multiple_of(bs) {
            return Err(QuantError::NotBlockMultiple {
                ty: self,
                len: n,
                block_size: bs,
            });
        }
        (n / bs)
            .checked_mul(self.type_size())
            .ok_or(QuantError::ShapeOverflow { rows: 1, cols: n })
    }

    /// Average storage cost in bits per value (8.5 for `Q8_0`, 4.5 for
    /// `Q4_0`, 5 for `Q4_1`).
    pub fn bits_per_value(self) -> f64 {
        (self.type_size() * 8) as f64 / self.block_size() as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u32> for GgmlType {
    type Error = QuantError;
    fn try_from(id: u32) -> Result<Self> {
        Self::from_id(id)
    }
}

impl FromStr for GgmlType {
    type Err = QuantError;
    /// Parses a ggml name, case-insensitively (`"q4_0"`, `"Q8_0"`, `"f16"`).
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| QuantError::UnknownName {
                what: "GGML type",
                name: s.to_owned(),
            })
    }
}

/// numpy's `float32 -> int` cast as compiled for x86-64 (`cvttss2si`):
/// truncation toward zero; NaN, infinities and values outside the `i32`
/// range give `i32::MIN`. numpy's `astype(np.uint8)` / `astype(np.int8)`
/// then keep the low byte (`as u8` / `as i8` here), so those become `0`.
pub fn np_cast_i32(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// The inverse scale as the reference computes it: `0` for a zero scale.
#[inline]
pub(crate) fn inverse_scale(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// `f16` bits of an `f32`, round-to-nearest-even (numpy `astype(float16)`).
#[inline]
pub(crate) fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// `f32` value of little-endian `f16` bytes.
#[inline]
pub(crate) fn f16_value(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// Quantizes one row into `out`, which must be exactly
/// [`row_bytes`](GgmlType::row_bytes)`(x.len())` long.
pub fn quantize_row_into(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let expected = ty.row_bytes(x.len())?;
    check_bytes("quantized row buffer", expected, out.len())?;
    match ty {
        GgmlType::F32 => float::quantize_f32(x, out),
        GgmlType::F16 => float::quantize_f16(x, out),
        GgmlType::Q8_0 => blocks(x, out, q8_0::quantize_block),
        GgmlType::Q4_0 => blocks(x, out, q4_0::quantize_block),
        GgmlType::Q4_1 => blocks(x, out, q4_1::quantize_block),
    }
    Ok(())
}

fn blocks<const B: usize>(x: &[f32], out: &mut [u8], f: fn(&[f32; QK], &mut [u8; B])) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(B)) {
        // Both chunk iterators yield exactly-sized chunks.
        f(xb.try_into().unwrap(), ob.try_into().unwrap());
    }
}

/// Quantizes one row of `x.len()` values (a multiple of the block size).
pub fn quantize_row(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; ty.row_bytes(x.len())?];
    quantize_row_into(ty, x, &mut out)?;
    Ok(out)
}

/// Dequantizes one row into `out`; `bytes` must be exactly
/// [`row_bytes`](GgmlType::row_bytes)`(out.len())` long.
pub fn dequantize_row_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = ty.row_bytes(out.len())?;
    check_bytes("quantized row", expected, bytes.len())?;
    match ty {
        GgmlType::F32 => float::dequantize_f32(bytes, out),
        GgmlType::F16 => float::dequantize_f16(bytes, out),
        GgmlType::Q8_0 => deblocks(bytes, out, q8_0::dequantize_block),
        GgmlType::Q4_0 => deblocks(bytes, out, q4_0::dequantize_block),
        GgmlType::Q4_1 => deblocks(bytes, out, q4_1::dequantize_block),
    }
    Ok(())
}

fn deblocks<const B: usize>(bytes: &[u8], out: &mut [f32], f: fn(&[u8; B], &mut [f32; QK])) {
    for (b, o) in bytes.chunks_exact(B).zip(out.chunks_exact_mut(QK)) {
        f(b.try_into().unwrap(), o.try_into().unwrap());
    }
}

/// Dequantizes one row of `n` values from its bytes.
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n];
    dequantize_row_into(ty, bytes, &mut out)?;
    Ok(out)
}

/// Quantizes a row-major `[rows, cols]` matrix, rows in parallel.
pub fn quantize_matrix(ty: GgmlType, x: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    check_len("weights", checked_len(rows, cols)?, x.len())?;
    let rb = ty.row_bytes(cols)?;
    let mut out = vec![0u8; checked_len(rows, rb)?];
    if rb > 0 {
        out.par_chunks_mut(rb)
            .zip(x.par_chunks(cols))
            .try_for_each(|(o, r)| quantize_row_into(ty, r, o))?;
    }
    Ok(out)
}

/// Dequantizes a row-major `[rows, cols]` matrix, rows in parallel.
pub fn dequantize_matrix(ty: GgmlType, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let rb = ty.row_bytes(cols)?;
    check_bytes("quantized matrix", checked_len(rows, rb)?, bytes.len())?;
    let mut out = vec![0f32; checked_len(rows, cols)?];
    if cols > 0 {
        out.par_chunks_mut(cols)
            .zip(bytes.par_chunks(rb))
            .try_for_each(|(o, b)| dequantize_row_into(ty, b, o))?;
    }
    Ok(out)
}

/// A `[rows, cols]` matrix stored in a GGML type: `rows` rows of
/// `ty.row_bytes(cols)` bytes each, exactly as in a GGUF tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgmlMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl GgmlMatrix {
    /// Quantizes a row-major `f32` matrix.
    pub fn quantize(ty: GgmlType, weights: &[f32], rows: usize, cols: usize) -> Result<Self> {
        let data = quantize_matrix(ty, weights, rows, cols)?;
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Wraps bytes already in the GGML layout, checking their length.
    pub fn from_bytes(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        let rb = ty.row_bytes(cols)?;
        check_bytes("quantized matrix", checked_len(rows, rb)?, data.len())?;
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// The GGML type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Number of rows (output dimension).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (input dimension, the quantized axis).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The raw bytes, row after row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the raw bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        // Checked at construction.
        self.data.len().checked_div(self.rows).unwrap_or(0)
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> Result<&[u8]> {
        if r >= self.rows {
            return Err(QuantError::RowOutOfRange {
                row: r,
                rows: self.rows,
            });
        }
        let rb = self.row_bytes();
        Ok(&self.data[r * rb..(r + 1) * rb])
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        check_len("output row", self.cols, out.len())?;
        dequantize_row_into(self.ty, self.row(r)?, out)
    }

    /// Dequantizes the whole matrix to row-major `f32`.
    pub fn dequantize(&self) -> Vec<f32> {
        // The length was checked at construction, so this cannot fail.
        dequantize_matrix(self.ty, &self.data, self.rows, self.cols)
            .expect("GgmlMatrix invariants hold")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ids() {
        assert_eq!(GgmlType::Q8_0.type_size(), 34);
        assert_eq!(GgmlType::Q4_0.type_size(), 18);
        assert_eq!(GgmlType::Q4_1.type_size(), 20);
        assert_eq!(GgmlType::F16.type_size(), 2);
        assert_eq!(GgmlType::F32.type_size(), 4);
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()).unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<GgmlType>().unwrap(), t);
        }
        assert_eq!(GgmlType::Q4_0.id(), 2);
        assert_eq!(GgmlType::Q4_1.id(), 3);
        assert_eq!(GgmlType::Q8_0.id(), 8);
        assert!(GgmlType::from_id(7).is_err());
        assert!("q5_0".parse::<GgmlType>().is_err());
        assert_eq!(GgmlType::Q8_0.row_bytes(576).unwrap(), 18 * 34);
        assert_eq!(GgmlType::Q4_0.bits_per_value(), 4.5);
        assert_eq!(GgmlType::F16.row_bytes(3).unwrap(), 6);
    }

    #[test]
    fn bad_lengths_are_errors() {
        for t in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            assert!(matches!(
                quantize_row(t, &[0.0; 33]),
                Err(QuantError::NotBlockMultiple { len: 33, .. })
            ));
            assert!(matches!(
                dequantize_row(t, &[0u8; 10], 32),
                Err(QuantError::ByteLength { .. })
            ));
            assert!(dequantize_row(t, &[0u8; 10], 31).is_err());
            assert!(quantize_matrix(t, &[0.0; 64], 2, 33).is_err());
            assert!(quantize_matrix(t, &[0.0; 64], 3, 32).is_err());
            assert!(dequantize_matrix(t, &[0u8; 3], 1, 32).is_err());
            assert!(GgmlMatrix::from_bytes(t, 2, 32, vec![0; t.type_size()]).is_err());
        }
        assert!(quantize_matrix(GgmlType::Q8_0, &[0.0; 4], usize::MAX, 2).is_err());
    }

    #[test]
    fn np_cast_matches_x86_numpy() {
        assert_eq!(np_cast_i32(3.9), 3);
        assert_eq!(np_cast_i32(-3.9), -3);
        assert_eq!(np_cast_i32(300.0) as u8, 44);
        assert_eq!(np_cast_i32(-300.0) as u8, 212);
        assert_eq!(np_cast_i32(f32::NAN) as u8, 0);
        assert_eq!(np_cast_i32(f32::INFINITY) as i8, 0);
        assert_eq!(np_cast_i32(f32::NEG_INFINITY) as u8, 0);
        assert_eq!(np_cast_i32(1e10), i32::MIN);
    }

    #[test]
    fn matrix_matches_rows() {
        let rows = 5;
        let cols = 96;
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        for t in GgmlType::ALL {
            let m = GgmlMatrix::quantize(t, &w, rows, cols).unwrap();
            assert_eq!(m.data().len(), rows * t.row_bytes(cols).unwrap());
            let deq = m.dequantize();
            for r in 0..rows {
                let q = quantize_row(t, &w[r * cols..(r + 1) * cols]).unwrap();
                assert_eq!(m.row(r).unwrap(), &q[..]);
                let d = dequantize_row(t, &q, cols).unwrap();
                assert_eq!(&deq[r * cols..(r + 1) * cols], &d[..]);
                let mut o = vec![0.0; cols];
                m.dequantize_row_into(r, &mut o).unwrap();
                assert_eq!(o, d);
            }
            assert!(m.row(rows).is_err());
            let again = GgmlMatrix::from_bytes(t, rows, cols, m.clone().into_data()).unwrap();
            assert_eq!(again, m);
        }
    }

    #[test]
    fn empty_shapes() {
        for t in GgmlType::ALL {
            assert!(quantize_row(t, &[]).unwrap().is_empty());
            assert!(quantize_matrix(t, &[], 3, 0).unwrap().is_empty());
            assert!(quantize_matrix(t, &[], 0, 64).unwrap().is_empty());
            assert_eq!(dequantize_matrix(t, &[], 0, 64).unwrap().len(), 0);
            assert_eq!(dequantize_matrix(t, &[], 3, 0).unwrap().len(), 0);
        }
    }
}
