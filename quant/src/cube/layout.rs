//! The host side of the device layout: every [`PackedMatrix`] repacked into
//! one uniform form (see the [module docs](super) for the layout itself).

use rayon::prelude::*;

use super::CubeError;
use crate::error::{QuantError, checked_len};
use crate::format::PackedMatrix;
use crate::gguf::{GgmlMatrix, GgmlType, QK};
use crate::matrix::{QuantizedMatrix, Scheme};

/// A matrix in the uniform device layout, still on the host.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HostPacked {
    pub rows: usize,
    pub cols: usize,
    /// 4 or 8.
    pub bits: u32,
    /// Inputs per group (`cols` for int8 per channel).
    pub group_size: usize,
    /// `ceil(cols / codes_per_word)`.
    pub words_per_row: usize,
    /// Words sharing one scale and offset (`words_per_row` when a row is one group).
    pub words_per_group: usize,
    /// `cols / group_size`.
    pub groups_per_row: usize,
    /// `[rows, words_per_row]`.
    pub codes: Vec<u32>,
    /// `[rows, groups_per_row]`.
    pub scales: Vec<f32>,
    /// `[rows, groups_per_row]`.
    pub offsets: Vec<f32>,
}

impl HostPacked {
    /// Codes per `u32` word: 8 (4-bit) or 4 (8-bit).
    #[cfg(test)]
    pub fn codes_per_word(&self) -> usize {
        32 / self.bits as usize
    }

    /// Repacks `m`. `F32`/`F16` GGML matrices are refused (they are not packed formats).
    pub fn from_packed(m: &PackedMatrix) -> Result<Self, CubeError> {
        match m {
            PackedMatrix::Int(q) => Ok(Self::from_int(q)),
            PackedMatrix::Ggml(g) => Self::from_ggml(g),
        }
    }

    fn empty(rows: usize, cols: usize, bits: u32, group_size: usize) -> Result<Self, QuantError> {
        if cols == 0 {
            return Err(QuantError::NoColumns);
        }
        let cpw = 32 / bits as usize;
        let words_per_row = cols.div_ceil(cpw);
        let groups_per_row = cols / group_size;
        let words_per_group = if groups_per_row == 1 {
            words_per_row
        } else {
            group_size / cpw
        };
        let n_words = checked_len(rows, words_per_row)?;
        let n_groups = checked_len(rows, groups_per_row)?;
        // The kernels index with 32-bit integers.
        if checked_len(rows, cols)? > u32::MAX as usize / 2 {
            return Err(QuantError::ShapeOverflow { rows, cols });
        }
        Ok(Self {
            rows,
            cols,
            bits,
            group_size,
            words_per_row,
            words_per_group,
            groups_per_row,
            codes: vec![0; n_words],
            scales: vec![0.0; n_groups],
            offsets: vec![0.0; n_groups],
        })
    }

    /// Fills row by row (rows in parallel): `f(r, codes, scales, offsets)`.
    fn fill(mut self, f: impl Fn(usize, &mut [u32], &mut [f32], &mut [f32]) + Sync) -> Self {
        let (wpr, gpr) = (self.words_per_row, self.groups_per_row);
        self.codes
            .par_chunks_mut(wpr)
            .zip(self.scales.par_chunks_mut(gpr))
            .zip(self.offsets.par_chunks_mut(gpr))
            .enumerate()
            .for_each(|(r, ((c, s), o))| f(r, c, s, o));
        self
    }

    fn from_int(q: &QuantizedMatrix) -> Self {
        let (rows, cols, scheme) = (q.rows(), q.cols(), q.scheme());
        let group_size = scheme.group_size(cols);
        // A QuantizedMatrix is validated at construction, so the shape is sound.
        let out = Self::empty(rows, cols, scheme.bits(), group_size)
            .expect("a QuantizedMatrix has a valid shape");
        let rb = scheme.row_bytes(cols);
        let gpr = scheme.groups_per_row(cols);
        out.fill(|r, codes, scales, offsets| {
            let data = &q.data()[r * rb..(r + 1) * rb];
            let s = &q.scales()[r * gpr..(r + 1) * gpr];
            scales.copy_from_slice(s);
            match scheme {
                Scheme::Int8PerChannel => {
                    // Offset binary: u = q + 128 (flip the sign bit), value = s·u − 128·s.
                    pack_bytes(data.iter().map(|&b| b ^ 0x80), 8, codes);
                    offsets[0] = -128.0 * s[0];
                }
                Scheme::Int4Sym { .. } => {
                    // Nibble n = q + 8, element 2i low: already the word order.
                    pack_le_words(data, codes);
                    for (o, &s) in offsets.iter_mut().zip(s) {
                        *o = -8.0 * s;
                    }
                }
                Scheme::Int4Asym { .. } => {
                    // Nibble q, value s·q + min: the offset is the minimum.
                    pack_le_words(data, codes);
                    offsets.copy_from_slice(&q.mins()[r * gpr..(r + 1) * gpr]);
                }
            }
        })
    }

    fn from_ggml(g: &GgmlMatrix) -> Result<Self, CubeError> {
        let (rows, cols, ty) = (g.rows(), g.cols(), g.ty());
        let bits = match ty {
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_0 | GgmlType::Q4_1 => 4,
            GgmlType::F32 | GgmlType::F16 => return Err(CubeError::UnsupportedType(ty)),
        };
        let out = Self::empty(rows, cols, bits, QK)?;
        let rb = g.row_bytes();
        let bb = ty.type_size();
        Ok(out.fill(|r, codes, scales, offsets| {
            let row = &g.data()[r * rb..(r + 1) * rb];
            let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            for (k, b) in row.chunks_exact(bb).enumerate() {
                let d = f16(&b[..2]);
                scales[k] = d;
                let words = &mut codes[k * 32 / cpw_of(bits)..(k + 1) * 32 / cpw_of(bits)];
                match ty {
                    GgmlType::Q8_0 => {
                        pack_bytes(b[2..].iter().map(|&q| q ^ 0x80), 8, words);
                        offsets[k] = -128.0 * d;
                    }
                    GgmlType::Q4_0 => {
                        pack_ggml_nibbles(&b[2..], words);
                        offsets[k] = -8.0 * d;
                    }
                    _ => {
                        pack_ggml_nibbles(&b[4..], words);
                        offsets[k] = f16(&b[2..4]);
                    }
                }
            }
        }))
    }

    /// Dequantizes row `r` from this layout (`s·u + o`, as the kernels do), for tests.
    #[cfg(test)]
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        let cpw = self.codes_per_word();
        let mask = (1u32 << self.bits) - 1;
        (0..self.cols)
            .map(|c| {
                let w = c / cpw;
                let word = self.codes[r * self.words_per_row + w];
                let u = (word >> (self.bits as usize * (c % cpw))) & mask;
                let g = r * self.groups_per_row + w / self.words_per_group;
                self.scales[g] * u as f32 + self.offsets[g]
            })
            .collect()
    }
}

fn cpw_of(bits: u32) -> usize {
    32 / bits as usize
}

/// Packs codes of `bits` bits into words, code `i` at bits `bits·(i % cpw)` of word `i / cpw`.
fn pack_bytes(codes: impl Iterator<Item = u8>, bits: u32, words: &mut [u32]) {
    let cpw = cpw_of(bits);
    words.fill(0);
    for (i, c) in codes.enumerate() {
        words[i / cpw] |= (c as u32) << (bits as usize * (i % cpw));
    }
}

/// Little-endian words from bytes (a last partial word is zero-padded).
fn pack_le_words(bytes: &[u8], words: &mut [u32]) {
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_le_bytes(b);
    }
}

/// A GGML 4-bit block's 16 code bytes (low nibbles elements 0..16, high
/// nibbles 16..32) into 4 words in element order.
fn pack_ggml_nibbles(qs: &[u8], words: &mut [u32]) {
    let nibble = |j: usize| {
        if j < QK / 2 {
            qs[j] & 0x0f
        } else {
            qs[j - QK / 2] >> 4
        }
    };
    pack_bytes((0..QK).map(nibble), 4, words);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    #[test]
    fn every_format_round_trips_through_the_layout() {
        let (rows, cols) = (5, 256);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.45) * 2.0)
            .collect();
        for f in Format::all() {
            let m = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
            let h = HostPacked::from_packed(&m).unwrap();
            assert_eq!(h.bits, f.bits(), "{f}");
            let want = m.dequantize();
            for r in 0..rows {
                let got = h.dequantize_row(r);
                for (c, (a, b)) in got.iter().zip(&want[r * cols..]).enumerate() {
                    // s·u + o against s·(u − 8) and the like: a rounding or two
                    // apart at most (the affine int4-asym and Q4_1: equal).
                    let tol = 4.0 * f32::EPSILON * (1.0 + b.abs()) * 128.0;
                    assert!((a - b).abs() <= tol, "{f} ({r}, {c}): {a} vs {b}");
                    if matches!(f, Format::Int(Scheme::Int4Asym { .. })) {
                        assert_eq!(a.to_bits(), b.to_bits(), "{f} ({r}, {c})");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_rows_are_padded_to_whole_words() {
        let (rows, cols) = (3, 6);
        let w: Vec<f32> = (0..rows * cols).map(|i| i as f32 - 8.0).collect();
        let m = PackedMatrix::quantize_rtn(&w, rows, cols, Format::Int(Scheme::Int8PerChannel))
            .unwrap();
        let h = HostPacked::from_packed(&m).unwrap();
        assert_eq!(
            (h.words_per_row, h.words_per_group, h.groups_per_row),
            (2, 2, 1)
        );
        assert_eq!(h.codes.len(), 6);
        let want = m.dequantize();
        for r in 0..rows {
            let got = h.dequantize_row(r);
            for (a, b) in got.iter().zip(&want[r * cols..(r + 1) * cols]) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn ggml_float_types_are_refused() {
        let g = GgmlMatrix::quantize(GgmlType::F16, &[0.5; 64], 2, 32).unwrap();
        assert!(HostPacked::from_packed(&PackedMatrix::Ggml(g)).is_err());
    }
}
