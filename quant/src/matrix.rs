//! [`Scheme`] and [`QuantizedMatrix`]: a weight matrix in one of the crate's
//! own integer formats (int8 per channel, int4 group-wise symmetric or
//! asymmetric), with round-to-nearest (RTN) quantization.
//!
//! The byte layouts are documented in [`crate::int8`] and [`crate::int4`].
//! In short, for `W[rows = out, cols = in]`:
//!
//! | scheme              | `data` bytes       | `scales` (f32)        | `mins` (f32)          |
//! |---------------------|--------------------|-----------------------|-----------------------|
//! | `int8`              | `rows * cols`      | `rows`                | none                  |
//! | `int4-sym-g{g}`     | `rows * cols / 2`  | `rows * cols / g`     | none                  |
//! | `int4-asym-g{g}`    | `rows * cols / 2`  | `rows * cols / g`     | `rows * cols / g`     |
//!
//! An asymmetric weight is `q * scale + min` (`Q4_1`'s affine rule in `f32`);
//! the symmetric ones are `q * scale`.
//!
//! Algorithms other than RTN (GPTQ, AWQ) use the per-group grid functions of
//! [`Scheme`] ([`Scheme::group_params`], [`Scheme::quantize_value`],
//! [`Scheme::dequantize_value`]) to quantize column by column, then build the
//! matrix with [`QuantizedMatrix::from_codes`].

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use crate::error::{QuantError, Result, check_bytes, check_len, checked_len};
use crate::{int4, int8};

/// The group sizes int4 supports.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// `"32, 64"`: the supported group sizes dividing `cols`, for error messages.
pub(crate) fn dividing_group_sizes_text(cols: usize) -> String {
    let ok: Vec<String> = GROUP_SIZES
        .iter()
        .filter(|&&g| cols > 0 && cols.is_multiple_of(g))
        .map(|g| g.to_string())
        .collect();
    if ok.is_empty() {
        "none".to_owned()
    } else {
        ok.join(", ")
    }
}

/// How a matrix is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// int8 symmetric, one `f32` scale per row (output channel).
    Int8PerChannel,
    /// int4 symmetric (codes `-7..=7`), one `f32` scale per group of
    /// `group_size` inputs.
    Int4Sym {
        /// Inputs per group: 32, 64 or 128.
        group_size: usize,
    },
    /// int4 asymmetric (codes `0..=15`, value `q * scale + min`), one `f32`
    /// scale and one `f32` minimum per group of `group_size` inputs.
    Int4Asym {
        /// Inputs per group: 32, 64 or 128.
        group_size: usize,
    },
}

impl Scheme {
    /// Bits per stored code (8 or 4).
    pub const fn bits(self) -> u32 {
        match self {
            Scheme::Int8PerChannel => 8,
            Scheme::Int4Sym { .. } | Scheme::Int4Asym { .. } => 4,
        }
    }

    /// Whether the scheme stores a minimum per group (int4 asymmetric).
    pub const fn is_asymmetric(self) -> bool {
        matches!(self, Scheme::Int4Asym { .. })
    }

    /// Inputs sharing one scale, for rows of `cols` inputs (`cols` itself for
    /// int8).
    pub const fn group_size(self, cols: usize) -> usize {
        match self {
            Scheme::Int8PerChannel => cols,
            Scheme::Int4Sym { group_size } | Scheme::Int4Asym { group_size } => group_size,
        }
    }

    /// Checks that the scheme applies to rows of `cols` inputs: `cols > 0`,
    /// and for int4 a group size of 32, 64 or 128 that divides `cols`.
    pub fn validate(self, cols: usize) -> Result<()> {
        if cols == 0 {
            return Err(QuantError::NoColumns);
        }
        match self {
            Scheme::Int8PerChannel => Ok(()),
            Scheme::Int4Sym { group_size } | Scheme::Int4Asym { group_size } => {
                if !GROUP_SIZES.contains(&group_size) {
                    Err(QuantError::UnsupportedGroupSize(group_size))
                } else if !cols.is_multiple_of(group_size) {
                    Err(QuantError::GroupSizeMismatch { group_size, cols })
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Scales (and minima) per row of `cols` inputs (1 for int8).
    pub const fn groups_per_row(self, cols: usize) -> usize {
        match self {
            Scheme::Int8PerChannel => 1,
            Scheme::Int4Sym { group_size } | Scheme::Int4Asym { group_size } => cols / group_size,
        }
    }

    /// Packed code bytes per row of `cols` inputs.
    pub const fn row_bytes(self, cols: usize) -> usize {
        match self {
            Scheme::Int8PerChannel => cols,
            Scheme::Int4Sym { .. } | Scheme::Int4Asym { .. } => cols / 2,
        }
    }

    /// Storage cost in bits per weight, scales and minima included: an `f32`
    /// scale per group, plus an `f32` minimum for int4 asymmetric.
    pub fn bits_per_weight(self, cols: usize) -> f64 {
        let g = self.group_size(cols) as f64;
        let extra = if self.is_asymmetric() { 64.0 } else { 32.0 };
        self.bits() as f64 + extra / g
    }

    /// Codes the storage can hold: `-128..=127`, `-8..=7` or `0..=15`.
    /// (RTN produces `-127..=127`, `-7..=7` and `0..=15`.)
    pub const fn code_range(self) -> (i8, i8) {
        match self {
            Scheme::Int8PerChannel => (i8::MIN, i8::MAX),
            Scheme::Int4Sym { .. } => (int4::SYM_STORE_MIN, int4::SYM_QMAX),
            Scheme::Int4Asym { .. } => (0, int4::ASYM_QMAX as i8),
        }
    }

    /// The RTN `(scale, min)` of a group of weights (a whole row for int8);
    /// `min` is 0 for the symmetric schemes.
    pub fn group_params(self, group: &[f32]) -> (f32, f32) {
        match self {
            Scheme::Int8PerChannel => (int8::scale_for_absmax(int8::absmax(group)), 0.0),
            Scheme::Int4Sym { .. } => (int4::sym_scale(int8::absmax(group)), 0.0),
            Scheme::Int4Asym { .. } => {
                let (min, max) = int4::min_max(group);
                int4::asym_params(min, max)
            }
        }
    }

    /// The code of `w` on the grid `(scale, min)` (round to nearest,
    /// clamped); the symmetric schemes ignore `min`.
    #[inline]
    pub fn quantize_value(self, w: f32, scale: f32, min: f32) -> i8 {
        match self {
            Scheme::Int8PerChannel => int8::quantize_value(w, scale),
            Scheme::Int4Sym { .. } => int4::quantize_sym(w, scale),
            Scheme::Int4Asym { .. } => int4::quantize_asym(w, scale, min) as i8,
        }
    }

    /// The value of code `q` on the grid `(scale, min)`; the symmetric
    /// schemes ignore `min`.
    #[inline]
    pub fn dequantize_value(self, q: i8, scale: f32, min: f32) -> f32 {
        match self {
            Scheme::Int8PerChannel => int8::dequantize_value(q, scale),
            Scheme::Int4Sym { .. } => int4::dequantize_sym(q, scale),
            Scheme::Int4Asym { .. } => int4::dequantize_asym(q as u8, scale, min),
        }
    }

    /// `w` rounded onto the grid: `dequantize_value(quantize_value(w))`.
    #[inline]
    pub fn fake_quantize(self, w: f32, scale: f32, min: f32) -> f32 {
        self.dequantize_value(self.quantize_value(w, scale, min), scale, min)
    }
}

impl fmt::Display for Scheme {
    /// `int8`, `int4-sym-g128` or `int4-asym-g64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Int8PerChannel => f.write_str("int8"),
            Scheme::Int4Sym { group_size } => write!(f, "int4-sym-g{group_size}"),
            Scheme::Int4Asym { group_size } => write!(f, "int4-asym-g{group_size}"),
        }
    }
}

impl FromStr for Scheme {
    type Err = QuantError;
    /// Parses what `Display` writes, case-insensitively; the group size is
    /// checked to be 32, 64 or 128.
    fn from_str(s: &str) -> Result<Self> {
        let unknown = || QuantError::UnknownName {
            what: "quantization scheme",
            name: s.to_owned(),
        };
        let l = s.to_ascii_lowercase();
        if l == "int8" {
            return Ok(Scheme::Int8PerChannel);
        }
        let (asym, g) = if let Some(g) = l.strip_prefix("int4-sym-g") {
            (false, g)
        } else if let Some(g) = l.strip_prefix("int4-asym-g") {
            (true, g)
        } else {
            return Err(unknown());
        };
        let group_size: usize = g.parse().map_err(|_| unknown())?;
        if !GROUP_SIZES.contains(&group_size) {
            return Err(QuantError::UnsupportedGroupSize(group_size));
        }
        Ok(if asym {
            Scheme::Int4Asym { group_size }
        } else {
            Scheme::Int4Sym { group_size }
        })
    }
}

/// A `[rows, cols]` weight matrix (rows = output channels, cols = inputs) in
/// one of the crate's integer schemes: packed codes, `f32` scales and, for
/// the asymmetric scheme, `f32` minima (layouts in [`crate::int8`],
/// [`crate::int4`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    rows: usize,
    cols: usize,
    scheme: Scheme,
    data: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

/// Expected lengths of `(data, scales, mins)`.
fn part_lens(rows: usize, cols: usize, scheme: Scheme) -> Result<(usize, usize, usize)> {
    scheme.validate(cols)?;
    checked_len(rows, cols)?;
    let data = rows * scheme.row_bytes(cols);
    let scales = rows * scheme.groups_per_row(cols);
    let mins = if scheme.is_asymmetric() { scales } else { 0 };
    Ok((data, scales, mins))
}

/// Every minimum must be finite: a NaN or infinite one would turn its whole
/// group into NaN or infinities.
fn check_mins(mins: &[f32], groups_per_row: usize) -> Result<()> {
    match mins.iter().position(|m| !m.is_finite()) {
        Some(i) => Err(QuantError::NonFiniteMin {
            row: i / groups_per_row.max(1),
            group: i % groups_per_row.max(1),
            value: mins[i].to_string(),
        }),
        None => Ok(()),
    }
}

impl QuantizedMatrix {
    /// Round-to-nearest quantization (the RTN baseline) of a row-major
    /// `[rows, cols]` `f32` matrix; rows in parallel.
    pub fn quantize_rtn(weights: &[f32], rows: usize, cols: usize, scheme: Scheme) -> Result<Self> {
        let (n_data, n_scales, _) = part_lens(rows, cols, scheme)?;
        check_len("weights", rows * cols, weights.len())?;
        let gpr = scheme.groups_per_row(cols);
        let rb = scheme.row_bytes(cols);
        let mut data = vec![0u8; n_data];
        let mut scales = vec![0f32; n_scales];
        let mut mins = vec![0f32; n_scales];
        data.par_chunks_mut(rb)
            .zip(scales.par_chunks_mut(gpr))
            .zip(mins.par_chunks_mut(gpr))
            .zip(weights.par_chunks(cols))
            .for_each(|(((d, s), m), w)| match scheme {
                Scheme::Int8PerChannel => s[0] = int8::quantize_row(w, d),
                Scheme::Int4Sym { group_size } => int4::quantize_row_sym(w, group_size, d, s),
                Scheme::Int4Asym { group_size } => int4::quantize_row_asym(w, group_size, d, s, m),
            });
        if !scheme.is_asymmetric() {
            mins = Vec::new();
        }
        Ok(Self {
            rows,
            cols,
            scheme,
            data,
            scales,
            mins,
        })
    }

    /// Packs integer codes (row-major, `rows * cols`, each within
    /// [`Scheme::code_range`]) with their scales (and finite minima for the
    /// asymmetric scheme; empty otherwise).
    pub fn from_codes(
        rows: usize,
        cols: usize,
        scheme: Scheme,
        codes: &[i8],
        scales: Vec<f32>,
        mins: Vec<f32>,
    ) -> Result<Self> {
        let (n_data, n_scales, n_mins) = part_lens(rows, cols, scheme)?;
        check_len("codes", rows * cols, codes.len())?;
        check_len("scales", n_scales, scales.len())?;
        check_len("minima", n_mins, mins.len())?;
        check_mins(&mins, scheme.groups_per_row(cols))?;
        let (min, max) = scheme.code_range();
        if let Some(&q) = codes.iter().find(|&&q| q < min || q > max) {
            return Err(QuantError::CodeOutOfRange {
                code: q as i32,
                min: min as i32,
                max: max as i32,
                scheme: scheme.to_string(),
            });
        }
        let data = match scheme {
            Scheme::Int8PerChannel => codes.iter().map(|&q| q as u8).collect(),
            Scheme::Int4Sym { .. } | Scheme::Int4Asym { .. } => {
                let nib = |q: i8| match scheme {
                    Scheme::Int4Sym { .. } => int4::sym_to_nibble(q),
                    _ => q as u8,
                };
                let mut data = vec![0u8; n_data];
                for (o, p) in data.iter_mut().zip(codes.chunks_exact(2)) {
                    *o = nib(p[0]) | (nib(p[1]) << 4);
                }
                data
            }
        };
        Ok(Self {
            rows,
            cols,
            scheme,
            data,
            scales,
            mins,
        })
    }

    /// Wraps already packed parts, checking their lengths and that the
    /// minima are finite.
    pub fn from_parts(
        rows: usize,
        cols: usize,
        scheme: Scheme,
        data: Vec<u8>,
        scales: Vec<f32>,
        mins: Vec<f32>,
    ) -> Result<Self> {
        let (n_data, n_scales, n_mins) = part_lens(rows, cols, scheme)?;
        check_bytes("packed codes", n_data, data.len())?;
        check_len("scales", n_scales, scales.len())?;
        check_len("minima", n_mins, mins.len())?;
        check_mins(&mins, scheme.groups_per_row(cols))?;
        Ok(Self {
            rows,
            cols,
            scheme,
            data,
            scales,
            mins,
        })
    }

    /// Number of rows (output channels).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs; the grouped axis).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Packed codes, row-major.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Scales, `[rows, groups_per_row]` row-major.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Minima (the value of code 0), `[rows, groups_per_row]` row-major
    /// (empty if symmetric).
    pub fn mins(&self) -> &[f32] {
        &self.mins
    }

    /// Takes the parts `(data, scales, mins)`.
    pub fn into_parts(self) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        (self.data, self.scales, self.mins)
    }

    /// Total storage in bytes (codes, scales, minima).
    pub fn storage_bytes(&self) -> usize {
        self.data.len() + 4 * self.scales.len() + 4 * self.mins.len()
    }

    /// The integer code of element `(r, c)`; `None` out of range.
    pub fn code(&self, r: usize, c: usize) -> Option<i8> {
        if r >= self.rows || c >= self.cols {
            return None;
        }
        let i = r * self.cols + c;
        Some(match self.scheme {
            Scheme::Int8PerChannel => self.data[i] as i8,
            Scheme::Int4Sym { .. } | Scheme::Int4Asym { .. } => {
                let nib = (self.data[i / 2] >> (4 * (i % 2))) & 0x0f;
                if self.scheme.is_asymmetric() {
                    nib as i8
                } else {
                    int4::nibble_to_sym(nib)
                }
            }
        })
    }

    /// All codes, row-major (`-128..=127`, `-8..=7` or `0..=15`).
    pub fn codes(&self) -> Vec<i8> {
        match self.scheme {
            Scheme::Int8PerChannel => self.data.iter().map(|&b| b as i8).collect(),
            Scheme::Int4Sym { .. } => self
                .data
                .iter()
                .flat_map(|&b| [int4::nibble_to_sym(b), int4::nibble_to_sym(b >> 4)])
                .collect(),
            Scheme::Int4Asym { .. } => self
                .data
                .iter()
                .flat_map(|&b| [(b & 0x0f) as i8, (b >> 4) as i8])
                .collect(),
        }
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(QuantError::RowOutOfRange {
                row: r,
                rows: self.rows,
            });
        }
        check_len("output row", self.cols, out.len())?;
        self.dequantize_row_unchecked(r, out);
        Ok(())
    }

    fn dequantize_row_unchecked(&self, r: usize, out: &mut [f32]) {
        let rb = self.scheme.row_bytes(self.cols);
        let gpr = self.scheme.groups_per_row(self.cols);
        let d = &self.data[r * rb..(r + 1) * rb];
        let s = &self.scales[r * gpr..(r + 1) * gpr];
        match self.scheme {
            Scheme::Int8PerChannel => int8::dequantize_row(d, s[0], out),
            Scheme::Int4Sym { group_size } => int4::dequantize_row_sym(d, group_size, s, out),
            Scheme::Int4Asym { group_size } => {
                let m = &self.mins[r * gpr..(r + 1) * gpr];
                int4::dequantize_row_asym(d, group_size, s, m, out)
            }
        }
    }

    /// Dequantizes the whole matrix to row-major `f32`, rows in parallel.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols)
            .enumerate()
            .for_each(|(r, o)| self.dequantize_row_unchecked(r, o));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SCHEMES: [Scheme; 7] = [
        Scheme::Int8PerChannel,
        Scheme::Int4Sym { group_size: 32 },
        Scheme::Int4Sym { group_size: 64 },
        Scheme::Int4Sym { group_size: 128 },
        Scheme::Int4Asym { group_size: 32 },
        Scheme::Int4Asym { group_size: 64 },
        Scheme::Int4Asym { group_size: 128 },
    ];

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0) * 0.05)
            .collect()
    }

    #[test]
    fn group_size_must_divide_and_be_supported() {
        // SmolLM2's hidden size 576 = 4.5 * 128.
        let w = vec![0.0; 2 * 576];
        for g in [32, 64] {
            assert!(
                QuantizedMatrix::quantize_rtn(&w, 2, 576, Scheme::Int4Sym { group_size: g })
                    .is_ok()
            );
        }
        let err = QuantizedMatrix::quantize_rtn(&w, 2, 576, Scheme::Int4Asym { group_size: 128 })
            .unwrap_err();
        assert_eq!(
            err,
            QuantError::GroupSizeMismatch {
                group_size: 128,
                cols: 576
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("576") && msg.contains("32, 64"), "{msg}");
        assert_eq!(
            Scheme::Int4Sym { group_size: 48 }.validate(96),
            Err(QuantError::UnsupportedGroupSize(48))
        );
        assert_eq!(
            Scheme::Int8PerChannel.validate(0),
            Err(QuantError::NoColumns)
        );
        assert!(QuantizedMatrix::quantize_rtn(&w, 3, 576, Scheme::Int8PerChannel).is_err());
        assert!(
            QuantizedMatrix::quantize_rtn(&w, usize::MAX, 576, Scheme::Int8PerChannel).is_err()
        );
    }

    #[test]
    fn parse_and_display() {
        for s in SCHEMES {
            assert_eq!(s.to_string().parse::<Scheme>().unwrap(), s);
        }
        assert_eq!(
            "INT4-ASYM-G64".parse::<Scheme>().unwrap(),
            Scheme::Int4Asym { group_size: 64 }
        );
        assert!("int4-sym-g100".parse::<Scheme>().is_err());
        assert!("int3".parse::<Scheme>().is_err());
        assert!("int4-sym-gx".parse::<Scheme>().is_err());
    }

    #[test]
    fn layout_sizes() {
        let (rows, cols) = (3, 256);
        let w = vec![0.5; rows * cols];
        let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, Scheme::Int4Asym { group_size: 64 })
            .unwrap();
        assert_eq!(m.data().len(), rows * cols / 2);
        assert_eq!(m.scales().len(), rows * 4);
        assert_eq!(m.mins().len(), rows * 4);
        assert_eq!(m.storage_bytes(), rows * cols / 2 + rows * 4 * 8);
        let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, Scheme::Int4Sym { group_size: 128 })
            .unwrap();
        assert_eq!(
            (m.data().len(), m.scales().len(), m.mins().len()),
            (rows * 128, rows * 2, 0)
        );
        let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, Scheme::Int8PerChannel).unwrap();
        assert_eq!(
            (m.data().len(), m.scales().len(), m.mins().len()),
            (rows * cols, rows, 0)
        );
        assert_eq!(
            Scheme::Int4Sym { group_size: 128 }.bits_per_weight(cols),
            4.25
        );
        assert_eq!(Scheme::Int8PerChannel.bits_per_weight(256), 8.125);
        // An f32 scale and an f32 minimum per group.
        for (g, bpw) in [(32, 6.0), (64, 5.0), (128, 4.5)] {
            let s = Scheme::Int4Asym { group_size: g };
            assert_eq!(s.bits_per_weight(cols), bpw);
        }
    }

    #[test]
    fn nibble_order_in_matrix() {
        let mut w = vec![0.0f32; 32];
        w[0] = 7.0; // scale 1
        w[1] = -3.0;
        w[2] = 1.0;
        let m =
            QuantizedMatrix::quantize_rtn(&w, 1, 32, Scheme::Int4Sym { group_size: 32 }).unwrap();
        assert_eq!(m.scales(), &[1.0]);
        assert_eq!(m.data()[0], 15 | (5 << 4));
        assert_eq!(m.data()[1], 9 | (8 << 4));
        assert_eq!(m.code(0, 1), Some(-3));
        assert_eq!(m.code(1, 0), None);
        assert_eq!(m.code(0, 32), None);
    }

    /// Values already on each scheme's grid come back exactly.
    #[test]
    fn on_grid_round_trip_is_exact() {
        let mut rng = StdRng::seed_from_u64(7);
        let (rows, cols) = (6, 256);
        for scheme in SCHEMES {
            let g = scheme.group_size(cols);
            let gpr = scheme.groups_per_row(cols);
            // Power-of-two scales make every scale computation exact.
            let scales: Vec<f32> = (0..rows * gpr)
                .map(|i| 2f32.powi(-(i as i32 % 9) - 3))
                .collect();
            let (lo, hi) = match scheme {
                Scheme::Int8PerChannel => (-127, 127),
                Scheme::Int4Sym { .. } => (-7, 7),
                Scheme::Int4Asym { .. } => (0, 15),
            };
            // Minima on a quarter of the step (so every value and the
            // range `15 * scale` are exact), most of them not a multiple of
            // the step, some of them positive: off an integer zero point.
            let mins: Vec<f32> = if scheme.is_asymmetric() {
                (0..rows * gpr)
                    .map(|i| rng.random_range(-80..=40) as f32 * scales[i] / 4.0)
                    .collect()
            } else {
                Vec::new()
            };
            let mut codes: Vec<i8> = (0..rows * cols)
                .map(|_| rng.random_range(lo..=hi))
                .collect();
            for r in 0..rows {
                for k in 0..gpr {
                    // Each group must reach its range's ends.
                    let base = r * cols + k * g;
                    codes[base] = lo;
                    codes[base + 1] = hi;
                }
            }
            let m = |i: usize| mins.get(i).copied().unwrap_or(0.0);
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    let gi = (i / cols) * gpr + (i % cols) / g;
                    scheme.dequantize_value(codes[i], scales[gi], m(gi))
                })
                .collect();
            let packed = QuantizedMatrix::from_codes(
                rows,
                cols,
                scheme,
                &codes,
                scales.clone(),
                mins.clone(),
            )
            .unwrap();
            assert_eq!(packed.codes(), codes, "{scheme}");
            assert_eq!(packed.dequantize(), w, "{scheme}");

            let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, scheme).unwrap();
            assert_eq!(m.dequantize(), w, "{scheme}");
            // Codes 0 and 15 of each group span the asymmetric range, so its
            // scale and minimum are recovered too.
            assert_eq!(m.codes(), codes, "{scheme}");
            assert_eq!(m.scales(), &scales[..], "{scheme}");
            assert_eq!(m.mins(), &mins[..], "{scheme}");
            assert_eq!(m, packed);
        }
    }

    /// All-positive, all-negative and far-from-zero groups keep their own
    /// range: the grid is not widened to hold 0.
    #[test]
    fn asym_on_grid_away_from_zero() {
        let (rows, cols) = (2, 64);
        let scheme = Scheme::Int4Asym { group_size: 32 };
        let mut codes = vec![0i8; rows * cols];
        for (i, c) in codes.iter_mut().enumerate() {
            *c = (i * 7 % 16) as i8;
        }
        let mins = [3.0f32, -7.5, 0.0, 100.0];
        let scales = [0.5f32, 0.25, 1.0, 2.0];
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| scheme.dequantize_value(codes[i], scales[i / 32], mins[i / 32]))
            .collect();
        let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, scheme).unwrap();
        assert_eq!(m.codes(), codes);
        assert_eq!(m.mins(), &mins[..]);
        assert_eq!(m.scales(), &scales[..]);
        assert_eq!(m.dequantize(), w);
        // A constant group is exact: code 0 at scale 0.
        let c = QuantizedMatrix::quantize_rtn(&[0.3; 32], 1, 32, scheme).unwrap();
        assert_eq!((c.scales(), c.mins()), (&[0.0][..], &[0.3][..]));
        assert_eq!(c.dequantize(), [0.3; 32]);
    }

    /// The old rule, for comparison: the range widened to hold 0, an integer
    /// zero point `z`, values `(q - z) * scale`.
    fn zero_point_fake_quantize(group: &[f32]) -> Vec<f32> {
        let (lo, hi) = int4::min_max(group);
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = (hi - lo) / 15.0;
        let z = (-lo / scale).round().clamp(0.0, 15.0);
        group
            .iter()
            .map(|&w| ((w / scale).round() + z).clamp(0.0, 15.0) - z)
            .map(|q| q * scale)
            .collect()
    }

    /// Weights that lie on `Q4_1` grids (SmolLM2's published weights are
    /// `Q4_1`, groups of 32) come back from int4-asym-g32 RTN with `Q4_1`'s
    /// own codes, and each value within `4 ε (|m| + 15 d)` of the `Q4_1`
    /// value (`ε = f32::EPSILON`, `d` and `m` the block's step and minimum: a
    /// few units in the last place of the block's largest magnitude, from
    /// the `f32` rounding of `scale = (max - min) / 15`); the minimum is
    /// exact. The old integer zero point missed almost every block.
    #[test]
    fn asym_g32_reproduces_q4_1_weights() {
        use crate::gguf::{QK, dequantize_block_q4_1, quantize_block_q4_1};
        let mut rng = StdRng::seed_from_u64(41);
        let (rows, cols) = (16, 576);
        let mut w = vec![0f32; rows * cols];
        let mut want_codes = vec![0i8; rows * cols];
        let mut blocks = Vec::new();
        for (wb, cb) in w.chunks_exact_mut(QK).zip(want_codes.chunks_exact_mut(QK)) {
            // Blocks around 0 and off it, narrow and wide.
            let centre = rng.random_range(-0.05f32..0.05);
            let spread = rng.random_range(0.002f32..0.08);
            let x: [f32; QK] =
                std::array::from_fn(|_| centre + spread * rng.random_range(-1.0f32..1.0));
            let mut b = [0u8; 20];
            quantize_block_q4_1(&x, &mut b);
            let mut y = [0f32; QK];
            dequantize_block_q4_1(&b, &mut y);
            wb.copy_from_slice(&y);
            for (j, c) in cb.iter_mut().enumerate() {
                let byte = b[4 + j % (QK / 2)];
                *c = if j < QK / 2 { byte & 0x0f } else { byte >> 4 } as i8;
            }
            let f16 = |i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
            blocks.push((f16(0), f16(2)));
        }
        let scheme = Scheme::Int4Asym { group_size: 32 };
        let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, scheme).unwrap();
        assert_eq!(m.codes(), want_codes);
        let deq = m.dequantize();
        let (mut exact, mut old_misses) = (0, 0);
        for (k, (&(d, mn), (wb, qb))) in blocks
            .iter()
            .zip(w.chunks_exact(QK).zip(deq.chunks_exact(QK)))
            .enumerate()
        {
            assert_eq!(m.mins()[k], mn, "block {k}");
            let tol = 4.0 * f32::EPSILON * (mn.abs() + 15.0 * d);
            for (&a, &b) in wb.iter().zip(qb) {
                assert!((a - b).abs() <= tol, "block {k}: {a} vs {b} (tol {tol})");
            }
            exact += usize::from(wb == qb);
            let old = zero_point_fake_quantize(wb);
            let old_err = wb
                .iter()
                .zip(&old)
                .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
            old_misses += usize::from(old_err > 100.0 * tol);
        }
        let n = blocks.len();
        eprintln!("{exact} of {n} blocks bit-exact; the zero point missed {old_misses}");
        assert!(old_misses * 10 >= n * 9, "{old_misses} of {n}");
    }

    #[test]
    fn rtn_error_is_within_half_a_step_and_requantizing_is_stable() {
        let mut rng = StdRng::seed_from_u64(11);
        let (rows, cols) = (8, 384);
        let mut w = random(&mut rng, rows * cols);
        w[5] = 0.9; // an outlier
        for scheme in SCHEMES {
            let m = QuantizedMatrix::quantize_rtn(&w, rows, cols, scheme).unwrap();
            let deq = m.dequantize();
            let g = scheme.group_size(cols);
            let gpr = scheme.groups_per_row(cols);
            for (i, (&a, &b)) in w.iter().zip(&deq).enumerate() {
                let s = m.scales()[(i / cols) * gpr + (i % cols) / g];
                assert!(
                    (a - b).abs() <= 0.5 * s * (1.0 + 1e-5),
                    "{scheme} {i}: {a} {b} {s}"
                );
            }
            // Matches the public per-value grid functions.
            for r in 0..rows {
                for k in 0..gpr {
                    let grp = &w[r * cols + k * g..r * cols + (k + 1) * g];
                    let (s, mn) = scheme.group_params(grp);
                    assert_eq!(s, m.scales()[r * gpr + k]);
                    if scheme.is_asymmetric() {
                        assert_eq!(mn, m.mins()[r * gpr + k]);
                    } else {
                        assert_eq!(mn, 0.0);
                    }
                    for (c, &v) in grp.iter().enumerate() {
                        assert_eq!(Some(scheme.quantize_value(v, s, mn)), m.code(r, k * g + c));
                        assert_eq!(scheme.fake_quantize(v, s, mn), deq[r * cols + k * g + c]);
                    }
                }
            }
            // The dequantized weights are on the grid RTN finds again (for
            // asym, its minimum exactly and its scale up to `f32` rounding).
            let again = QuantizedMatrix::quantize_rtn(&deq, rows, cols, scheme).unwrap();
            assert_eq!(again.codes(), m.codes(), "{scheme}");
            assert_eq!(again.mins(), m.mins(), "{scheme}");
        }
    }

    #[test]
    fn zero_matrix() {
        for scheme in SCHEMES {
            let m = QuantizedMatrix::quantize_rtn(&[0.0; 256], 2, 128, scheme).unwrap();
            assert!(m.dequantize().iter().all(|&v| v == 0.0));
            assert!(m.scales().iter().all(|&s| s == 0.0));
        }
    }

    #[test]
    fn parts_are_validated() {
        let s = Scheme::Int4Asym { group_size: 32 };
        let parts = |d: usize, sc: usize, mins: Vec<f32>| {
            QuantizedMatrix::from_parts(2, 64, s, vec![0; d], vec![0.0; sc], mins)
        };
        assert!(parts(64, 4, vec![0.0; 4]).is_ok());
        assert!(parts(63, 4, vec![0.0; 4]).is_err());
        assert!(parts(64, 3, vec![0.0; 4]).is_err());
        assert!(parts(64, 4, vec![0.0; 3]).is_err());
        // Minima must be finite; the error says where and why.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = parts(64, 4, vec![0.0, -1.5, 0.0, bad]).unwrap_err();
            assert!(
                matches!(
                    err,
                    QuantError::NonFiniteMin {
                        row: 1,
                        group: 1,
                        ..
                    }
                ),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("minim") && msg.contains("finite"), "{msg}");
        }
        let sym = Scheme::Int4Sym { group_size: 32 };
        assert!(
            QuantizedMatrix::from_parts(2, 64, sym, vec![0; 64], vec![0.0; 4], vec![0.0; 4])
                .is_err()
        );
        assert!(QuantizedMatrix::from_codes(1, 32, sym, &[-9; 32], vec![1.0], vec![]).is_err());
        assert!(QuantizedMatrix::from_codes(1, 32, sym, &[-8; 32], vec![1.0], vec![]).is_ok());
        assert!(QuantizedMatrix::from_codes(1, 32, s, &[-1; 32], vec![1.0], vec![0.0]).is_err());
        assert!(QuantizedMatrix::from_codes(1, 32, s, &[15; 32], vec![1.0], vec![0.5]).is_ok());
        assert!(QuantizedMatrix::from_codes(1, 32, s, &[15; 31], vec![1.0], vec![0.0]).is_err());
        assert!(
            QuantizedMatrix::from_codes(1, 32, s, &[15; 32], vec![1.0], vec![f32::NAN]).is_err()
        );
        let m = QuantizedMatrix::from_codes(
            1,
            4,
            Scheme::Int8PerChannel,
            &[-128, 127, 0, 1],
            vec![0.5],
            vec![],
        )
        .unwrap();
        assert_eq!(m.dequantize(), [-64.0, 63.5, 0.0, 0.5]);
        let mut out = vec![0.0; 3];
        assert!(m.dequantize_row_into(0, &mut out).is_err());
        assert!(m.dequantize_row_into(1, &mut [0.0; 4]).is_err());
        let (d, sc, z) = m.into_parts();
        assert_eq!((d.len(), sc.len(), z.len()), (4, 1, 0));
    }
}
