//! [`Format`] (every weight format the toolkit quantizes to) and
//! [`PackedMatrix`] (a weight matrix held in one of them).
//!
//! The crate's own integer schemes live in [`QuantizedMatrix`], the GGUF
//! block formats in [`GgmlMatrix`]; this module puts both behind one type so
//! algorithms, kernels and file formats can take either.

use std::fmt;
use std::str::FromStr;

use crate::error::{QuantError, Result};
use crate::gguf::{GgmlMatrix, GgmlType};
use crate::matrix::{QuantizedMatrix, Scheme};

/// A quantized weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// One of the crate's integer schemes (int8 per channel, int4 group-wise).
    Int(Scheme),
    /// A GGUF block format: `Q8_0`, `Q4_0` or `Q4_1`.
    Ggml(GgmlType),
}

impl Format {
    /// Every format: int8, symmetric and asymmetric int4 at each group size, and the GGUF
    /// block formats.
    pub fn all() -> Vec<Format> {
        let int4 = |group_size| {
            [
                Scheme::Int4Sym { group_size },
                Scheme::Int4Asym { group_size },
            ]
        };
        let mut out = vec![Format::Int(Scheme::Int8PerChannel)];
        out.extend(
            crate::GROUP_SIZES
                .iter()
                .flat_map(|&g| int4(g))
                .map(Format::Int),
        );
        out.extend([GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1].map(Format::Ggml));
        out
    }

    /// Parses a CLI scheme name (`int8`, `int4-g64`, `q4_0`, ...) with the
    /// `--asym` flag, which only int4 takes.
    pub fn from_cli(name: &str, asym: bool) -> Result<Self> {
        let l = name.to_ascii_lowercase();
        let unknown = || QuantError::UnknownName {
            what: "quantization scheme (int8, int4-g32, int4-g64, int4-g128, q8_0, q4_0, q4_1)",
            name: name.to_owned(),
        };
        let format = if let Some(g) = l.strip_prefix("int4-g") {
            let group_size: usize = g.parse().map_err(|_| unknown())?;
            if !crate::GROUP_SIZES.contains(&group_size) {
                return Err(QuantError::UnsupportedGroupSize(group_size));
            }
            let scheme = if asym {
                Scheme::Int4Asym { group_size }
            } else {
                Scheme::Int4Sym { group_size }
            };
            return Ok(Format::Int(scheme));
        } else {
            l.parse::<Format>().map_err(|_| unknown())?
        };
        if asym {
            return Err(QuantError::UnknownName {
                what: "--asym combination (only int4 schemes take --asym)",
                name: name.to_owned(),
            });
        }
        Ok(format)
    }

    /// Checks that the format applies to rows of `cols` inputs.
    pub fn validate(self, cols: usize) -> Result<()> {
        match self {
            Format::Int(s) => s.validate(cols),
            Format::Ggml(t) => t.row_bytes(cols).map(|_| ()),
        }
    }

    /// Bits per stored code (8 or 4).
    pub fn bits(self) -> u32 {
        match self {
            Format::Int(s) => s.bits(),
            Format::Ggml(GgmlType::Q8_0) => 8,
            Format::Ggml(GgmlType::F16) => 16,
            Format::Ggml(GgmlType::F32) => 32,
            Format::Ggml(_) => 4,
        }
    }

    /// Inputs sharing one scale, for rows of `cols` inputs.
    pub fn group_size(self, cols: usize) -> usize {
        match self {
            Format::Int(s) => s.group_size(cols),
            Format::Ggml(t) => t.block_size(),
        }
    }

    /// Storage cost in bits per weight, scales included.
    pub fn bits_per_weight(self, cols: usize) -> f64 {
        match self {
            Format::Int(s) => s.bits_per_weight(cols),
            Format::Ggml(t) => t.bits_per_value(),
        }
    }
}

impl fmt::Display for Format {
    /// `int8`, `int4-sym-g64`, `int4-asym-g32`, `q8_0`, `q4_0` or `q4_1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Int(s) => s.fmt(f),
            Format::Ggml(t) => f.write_str(&t.to_string().to_ascii_lowercase()),
        }
    }
}

impl FromStr for Format {
    type Err = QuantError;
    /// Parses what `Display` writes (case-insensitive). Only the quantized
    /// GGML types are formats; `f32`/`f16` are refused.
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(scheme) = s.parse::<Scheme>() {
            return Ok(Format::Int(scheme));
        }
        match s.parse::<GgmlType>() {
            Ok(t @ (GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1)) => Ok(Format::Ggml(t)),
            _ => Err(QuantError::UnknownName {
                what: "quantized format",
                name: s.to_owned(),
            }),
        }
    }
}

/// A `[rows, cols]` weight matrix (rows = outputs, cols = inputs) held packed
/// in one [`Format`].
#[derive(Debug, Clone, PartialEq)]
pub enum PackedMatrix {
    /// int8 or int4 codes with their scales (and minima).
    Int(QuantizedMatrix),
    /// GGUF blocks, exactly as in a GGUF tensor.
    Ggml(GgmlMatrix),
}

impl PackedMatrix {
    /// Round-to-nearest quantization of a row-major `f32` matrix.
    pub fn quantize_rtn(weights: &[f32], rows: usize, cols: usize, format: Format) -> Result<Self> {
        match format {
            Format::Int(s) => QuantizedMatrix::quantize_rtn(weights, rows, cols, s).map(Self::Int),
            Format::Ggml(t) => {
                format.validate(cols)?;
                GgmlMatrix::quantize(t, weights, rows, cols).map(Self::Ggml)
            }
        }
    }

    /// The format.
    pub fn format(&self) -> Format {
        match self {
            Self::Int(m) => Format::Int(m.scheme()),
            Self::Ggml(m) => Format::Ggml(m.ty()),
        }
    }

    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        match self {
            Self::Int(m) => m.rows(),
            Self::Ggml(m) => m.rows(),
        }
    }

    /// Number of columns (inputs, the quantized axis).
    pub fn cols(&self) -> usize {
        match self {
            Self::Int(m) => m.cols(),
            Self::Ggml(m) => m.cols(),
        }
    }

    /// Bytes held: codes, scales and minima.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Int(m) => m.storage_bytes(),
            Self::Ggml(m) => m.data().len(),
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        match self {
            Self::Int(m) => m.dequantize_row_into(r, out),
            Self::Ggml(m) => m.dequantize_row_into(r, out),
        }
    }

    /// Dequantizes the whole matrix to row-major `f32`.
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Self::Int(m) => m.dequantize(),
            Self::Ggml(m) => m.dequantize(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(Format::all().len(), 10);
        for f in Format::all() {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f, "{f}");
        }
        for (name, asym) in [("int8", false), ("int4-g64", true), ("Q4_1", false)] {
            assert!(Format::all().contains(&Format::from_cli(name, asym).unwrap()));
        }
        assert!(Format::from_cli("q4_0", true).is_err());
        assert!(Format::from_cli("int4-g48", false).is_err());
        assert!(Format::from_cli("f16", false).is_err());
    }

    #[test]
    fn rtn_matches_each_format() {
        let w: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for name in ["int8", "int4-g32", "q8_0", "q4_0", "q4_1"] {
            let f = Format::from_cli(name, false).unwrap();
            let m = PackedMatrix::quantize_rtn(&w, 4, 64, f).unwrap();
            assert_eq!(m.format(), f);
            let d = m.dequantize();
            let err = w
                .iter()
                .zip(&d)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 0.5, "{name}: {err}");
        }
        assert!(PackedMatrix::quantize_rtn(&w, 8, 32, Format::Ggml(GgmlType::Q4_0)).is_ok());
        assert!(
            PackedMatrix::quantize_rtn(&w[..4 * 48], 4, 48, Format::Ggml(GgmlType::Q4_0)).is_err()
        );
    }
}
