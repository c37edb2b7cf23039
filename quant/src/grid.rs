//! [`Grid`]: one per-group quantization grid over every [`Format`], so an
//! algorithm (GPTQ, AWQ) can quantize value by value on any format and pack
//! the result, the GGUF block formats included.
//!
//! A grid is the set of values one group of weights (a row segment of
//! [`Grid::group_size`] inputs) can take: [`Grid::params`] picks the
//! group's [`GroupParams`] from its weights with the format's RTN rule,
//! [`Grid::quantize`] maps a value to a code, [`Grid::dequantize`] a code to
//! its value, and [`Grid::build`] packs all codes and parameters into a
//! [`PackedMatrix`] whose [`PackedMatrix::dequantize`] returns exactly the
//! values [`Grid::dequantize`] gives (bit for bit).
//!
//! # The grid of each format
//!
//! * `int8`, `int4-sym-g*`, `int4-asym-g*`: exactly
//!   [`Scheme::group_params`], [`Scheme::quantize_value`] and
//!   [`Scheme::dequantize_value`], so grid RTN is
//!   [`QuantizedMatrix::quantize_rtn`] code for code. Codes are those of
//!   [`QuantizedMatrix`]: `-127..=127`, `-7..=7`, `0..=15`.
//! * GGUF (groups of 32): the parameters follow gguf-py's rule, then are
//!   rounded to `f16` as stored, and the grid is the *stored* one:
//!   * `Q8_0`: `d = f16(amax / 127)`; code `q = clamp(round(w / d), -127,
//!     127)` computed as `w * (1 / d)` rounding half away from zero; value
//!     `q * d`.
//!   * `Q4_0`: `d = f16(x_max / -8)` with `x_max` the signed value of largest
//!     magnitude (first on ties); code `c = clamp(floor(w * (1 / d) + 8.5),
//!     0, 15)` (ties up, as gguf-py); value `d * (c - 8)`.
//!   * `Q4_1`: `d = f16((max - min) / 15)`, `m = f16(min)`; code
//!     `c = clamp(floor((w - m) * (1 / d) + 0.5), 0, 15)`; value `d * c + m`.
//!
//!   A zero `d` gives `1 / d = 0`. Codes are the stored ones: `Q8_0` `i8`,
//!   `Q4_0`/`Q4_1` the nibble `0..=15`.
//!
//! gguf-py computes the codes with the unrounded `f32` `1 / d`; the grid uses
//! the stored `f16` `d`, so grid RTN can differ from gguf-py's RTN in rare
//! near-ties (and is never further from the weight on the stored grid).
//! [`PackedMatrix::quantize_rtn`] stays the bit-identical RTN path.
//!
//! # Scale search
//!
//! [`Grid::params_search`] is the GPTQ reference's `Quantizer.find_params(...,
//! mse=True)`: it shrinks the group's RTN range by factors `p = 1, 1 - 1/grid,
//! ...` and keeps the parameters (built by the format's own rule from the
//! shrunk range, then stored as the format stores them) whose grid gives the
//! least `Σ |w - q(w)|^norm` over the group; see [`ScaleSearch`].
//! [`Grid::params_search_weighted`] is the same search on a weighted error
//! `Σ c_i |w_i - q(w_i)|^norm` (GPTQ weights each column by its saliency).

use rayon::prelude::*;

use crate::error::{QuantError, Result, check_len, checked_len};
use crate::format::{Format, PackedMatrix};
use crate::gguf::{GgmlMatrix, GgmlType, QK};
use crate::matrix::{QuantizedMatrix, Scheme};
use crate::{int4, int8};

/// The parameters of one group's grid.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GroupParams {
    /// The step between codes (for GGUF, the stored `f16` value as `f32`).
    pub scale: f32,
    /// The value of code 0 for the affine grids: int4 asymmetric (an `f32`)
    /// and `Q4_1` (the stored `f16` minimum `m`); 0 otherwise.
    pub min: f32,
}

/// Settings of [`Grid::params_search`], the MSE scale search of the GPTQ
/// reference (`quant.py`, `Quantizer.configure(..., mse=True, norm=2.4,
/// grid=100, maxshrink=.8)`); [`Default`] is the reference's.
///
/// For `i = 0, 1, ...` below `round(max_shrink * grid)` (80 by default), the
/// group's RTN range (the absmax of the symmetric formats, the signed
/// extreme of `Q4_0`, `min`/`max` of int4-asym and `Q4_1`) is scaled by
/// `p = 1 - i / grid` (so `p` runs from 1 down to `0.21` by default), the
/// format's parameter rule is applied to the shrunk range, and the
/// parameters whose grid gives the least `Σ |w - q(w)|^norm` over the group
/// are kept (the first, i.e. the widest, on ties; `p = 1` is exactly
/// [`Grid::params`], so the search is never worse than it in this norm).
///
/// Unlike the reference, the search stops early once the error of the
/// clipped weights alone at the current `p` reaches the best error found:
/// clipping only grows as the range shrinks (more weights are clipped, each
/// further; with [`Grid::params_search_weighted`] each by a factor `c_i >=
/// 0`, so still non-decreasing), so no smaller `p` can win. (This
/// is exact when the stored range shrinks monotonically with `p`, as for
/// int8, int4-sym, `Q8_0` and `Q4_0`. For int4-asym and `Q4_1` the grid is
/// `min + q·scale` with `min = p·lo` and `scale = (p·hi - p·lo) / 15`: its
/// bottom end `p·lo` moves monotonically (clipping below grows, or there is
/// none when `lo > 0`), but its top end `min + 15·scale` equals `p·hi` only
/// up to the `f32` rounding of `scale` (and for `Q4_1` the `f16` rounding of
/// `d` and `m`), so the argument holds up to rounding there.) On
/// Student-t weights it evaluates 12-23 of the 80 candidates of a 4-bit
/// group (`p = 1` included), 2-5 of an 8-bit one.
///
/// Norms other than 2 are computed as `exp2(norm · log2 e)` with short
/// polynomials (relative error about `1e-6`), not `powf`, which is several
/// times slower and does not vectorize.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleSearch {
    /// The exponent of the error `Σ |w - q(w)|^norm` that is minimized
    /// (default `2.4`, the reference's `norm`; `2` is the squared error).
    /// Not positive or not finite: no search, [`Grid::params`].
    pub norm: f32,
    /// Shrink steps: `p` moves by `1 / grid` (default 100; 0: no search).
    pub grid: usize,
    /// The largest shrink, `1 - p`, excluded (default `0.8`, the
    /// reference's `maxshrink`; `0`: no search).
    pub max_shrink: f32,
}

impl Default for ScaleSearch {
    fn default() -> Self {
        Self {
            norm: 2.4,
            grid: 100,
            max_shrink: 0.8,
        }
    }
}

impl ScaleSearch {
    /// Number of shrink factors tried (at least 1, `p = 1`).
    pub fn candidates(&self) -> usize {
        if self.grid == 0 || self.max_shrink.is_nan() || self.max_shrink <= 0.0 {
            return 1;
        }
        let n = (self.max_shrink as f64 * self.grid as f64).round();
        // `p = 1 - i / grid` must stay positive.
        (n.min(self.grid as f64) as usize).max(1)
    }

    /// The shrink factor of candidate `i`: `1 - i / grid`.
    fn factor(&self, i: usize) -> f32 {
        if i == 0 {
            1.0
        } else {
            (1.0 - i as f64 / self.grid as f64) as f32
        }
    }
}

/// The error norm of a [`ScaleSearch`] as a type, so each compiles to its
/// own straight loop: [`Squared`] (`norm = 2`) or [`Power`].
trait ErrorNorm: Copy {
    /// The norm of an error `e >= 0`.
    fn of(self, e: f32) -> f32;
}

/// `e²`.
#[derive(Debug, Clone, Copy)]
struct Squared;

impl ErrorNorm for Squared {
    #[inline(always)]
    fn of(self, e: f32) -> f32 {
        e * e
    }
}

/// `(e / a)^norm` by [`pow_fast`], with `a` the magnitude of the group's
/// range: a factor `a^norm` common to all candidates, which keeps the
/// logarithms small.
#[derive(Debug, Clone, Copy)]
struct Power {
    norm: f32,
    inv: f32,
}

impl Power {
    fn new(norm: f32, range: Range) -> Self {
        let a = range.magnitude();
        let inv = if a >= f32::MIN_POSITIVE && a.is_finite() {
            1.0 / a
        } else {
            1.0
        };
        Self { norm, inv }
    }
}

impl ErrorNorm for Power {
    #[inline(always)]
    fn of(self, e: f32) -> f32 {
        pow_fast(e * self.inv, self.norm)
    }
}

/// `x^n` for finite `x >= 0` and `n > 0`, as `exp2(n log2 x)` with short
/// polynomials and no library calls (so it vectorizes): relative error below
/// `1e-6` while `|n log2 x| <= 126` (beyond, `n log2 x` is clamped to that);
/// `0` for `x = 0`.
#[inline(always)]
fn pow_fast(x: f32, n: f32) -> f32 {
    // 2 / ln 2 and its odd Taylor coefficients: log2 m = 2 atanh(t) / ln 2.
    const C1: f32 = 2.885_39;
    const C3: f32 = C1 / 3.0;
    const C5: f32 = C1 / 5.0;
    const C7: f32 = C1 / 7.0;
    const C9: f32 = C1 / 9.0;
    // 1.5 * 2^23: adding and subtracting it rounds to an integer.
    const ROUND: f32 = 12_582_912.0;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1.0;
    }
    // m in [√½, √2]: |t| <= 0.172, so the series to t⁹ is exact to ~1e-9.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let log2_m = t * (C1 + t2 * (C3 + t2 * (C5 + t2 * (C7 + t2 * C9))));
    // n log2 x = n e + n log2 m, with n e split so that its integer part is
    // exact: `n_hi` has 12 significant bits, `e` at most 8.
    let n_hi = f32::from_bits(n.to_bits() & 0xffff_f000);
    let a = n_hi * e;
    let ra = (a + ROUND) - ROUND;
    let rest = (a - ra) + ((n - n_hi) * e + n * log2_m);
    let rr = (rest + ROUND) - ROUND;
    // 2^(rest - rr) = e^f with |f| <= ln(2) / 2: Taylor to f⁶ (~1e-7).
    let f = (rest - rr) * std::f32::consts::LN_2;
    let p = 1.0
        + f * (1.0
            + f * (1.0 / 2.0)
                * (1.0
                    + f * (1.0 / 3.0)
                        * (1.0
                            + f * (1.0 / 4.0)
                                * (1.0 + f * (1.0 / 5.0) * (1.0 + f * (1.0 / 6.0))))));
    // 2^r from the low bits of 2^23 + r + 127 (no float-to-int conversion,
    // which does not vectorize).
    let biased = (ra + rr).clamp(-126.0, 126.0) + (127.0 + 8_388_608.0);
    let scale = f32::from_bits(biased.to_bits() << 23);
    if x > 0.0 { scale * p } else { 0.0 }
}

/// Interleaved partial sums of [`Grid::params_search`]'s errors.
const LANES: usize = 8;

/// The factors `c_i` of the search's error `Σ c_i |w_i - q(w_i)|^norm`:
/// [`Ones`] (the unweighted search, where the product by 1 compiles away)
/// or one per weight (a slice of the group's length).
trait Weights: Copy {
    /// `c_i .. c_{i + LANES}`.
    fn lanes(self, i: usize) -> [f32; LANES];
    /// `c_i`.
    fn at(self, i: usize) -> f32;
}

/// All factors 1.
#[derive(Debug, Clone, Copy)]
struct Ones;

impl Weights for Ones {
    #[inline(always)]
    fn lanes(self, _: usize) -> [f32; LANES] {
        [1.0; LANES]
    }

    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        1.0
    }
}

impl Weights for &[f32] {
    #[inline(always)]
    fn lanes(self, i: usize) -> [f32; LANES] {
        self[i..i + LANES].try_into().unwrap()
    }

    #[inline(always)]
    fn at(self, i: usize) -> f32 {
        self[i]
    }
}

/// The RTN range of a group that [`Grid::params_search`] shrinks.
#[derive(Debug, Clone, Copy)]
enum Range {
    /// int8, int4-sym, `Q8_0`: the largest magnitude.
    Absmax(f32),
    /// `Q4_0`: the signed value of largest magnitude.
    Extreme(f32),
    /// int4-asym, `Q4_1`: the smallest and largest value.
    MinMax(f32, f32),
}

impl Range {
    /// The largest magnitude of the range.
    fn magnitude(self) -> f32 {
        match self {
            Range::Absmax(a) | Range::Extreme(a) => a.abs(),
            Range::MinMax(lo, hi) => lo.abs().max(hi.abs()),
        }
    }
}

/// The per-group grid of a [`Format`] for rows of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    format: Format,
    cols: usize,
}

/// `f32` rounded to the nearest `f16` and back: what a GGUF block stores.
#[inline]
fn f16_round(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

impl Grid {
    /// The grid of `format` for rows of `cols` inputs; fails if the format
    /// does not apply to `cols` (or is not a quantized format).
    pub fn new(format: Format, cols: usize) -> Result<Self> {
        if cols == 0 {
            return Err(QuantError::NoColumns);
        }
        if let Format::Ggml(t @ (GgmlType::F32 | GgmlType::F16)) = format {
            return Err(QuantError::UnknownName {
                what: "quantized format",
                name: t.name().to_owned(),
            });
        }
        format.validate(cols)?;
        Ok(Self { format, cols })
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Inputs per group: the whole row for int8, 32/64/128 for int4, 32 for
    /// GGUF.
    pub fn group_size(&self) -> usize {
        self.format.group_size(self.cols)
    }

    /// Groups per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / self.group_size()
    }

    /// The RTN parameters of one group of weights (see the module docs).
    pub fn params(&self, group: &[f32]) -> GroupParams {
        match self.format {
            Format::Int(s) => {
                let (scale, min) = s.group_params(group);
                GroupParams { scale, min }
            }
            Format::Ggml(t) => {
                let (scale, min) = match t {
                    GgmlType::Q4_0 => (q4_0_scale(group), 0.0),
                    GgmlType::Q4_1 => {
                        let (min, max) = nan_min_max(group);
                        ((max - min) / 15.0, min)
                    }
                    _ => (int8_like_absmax(group) / 127.0, 0.0),
                };
                GroupParams {
                    scale: f16_round(scale),
                    min: f16_round(min),
                }
            }
        }
    }

    /// The parameters of one group chosen by the MSE scale search `search`
    /// (see [`ScaleSearch`]): valid stored parameters of the format, built
    /// from the shrunk range by the same rule as [`params`](Self::params)
    /// (the `f16` rounding of GGUF's `d` and `m`, int4-asym's `f32` minimum
    /// `p·lo`), so [`build`](Self::build) stores exactly the grid that was
    /// evaluated. A group with a non-finite weight, or a zero range, gets
    /// [`params`](Self::params).
    ///
    /// Sequential: callers parallelize over rows or groups.
    pub fn params_search(&self, group: &[f32], search: &ScaleSearch) -> GroupParams {
        self.search(group, Ones, search, true)
    }

    /// [`params_search`](Self::params_search) minimizing the weighted error
    /// `Σ weights_i |w_i - q(w_i)|^norm` over the same candidates, with the
    /// same stored parameters (all-ones weights: exactly `params_search`).
    /// A negative or non-finite weight gives [`params`](Self::params).
    ///
    /// Panics if `weights` and `group` differ in length.
    pub fn params_search_weighted(
        &self,
        group: &[f32],
        search: &ScaleSearch,
        weights: &[f32],
    ) -> GroupParams {
        assert_eq!(weights.len(), group.len(), "one weight per value");
        if !weights.iter().all(|&c| c >= 0.0 && c.is_finite()) {
            return self.params(group);
        }
        self.search(group, weights, search, true)
    }

    /// The search with error factors `weights`, optionally without the early
    /// stop over shrink factors (`prune = false`: the reference's exhaustive
    /// loop). With AVX2, the same code compiled for it (the same results:
    /// only IEEE operations, in the same order).
    fn search<W: Weights>(
        &self,
        group: &[f32],
        weights: W,
        search: &ScaleSearch,
        prune: bool,
    ) -> GroupParams {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.search_avx2(group, weights, search, prune) };
        }
        self.search_fixed(group, weights, search, prune)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn search_avx2<W: Weights>(
        &self,
        group: &[f32],
        weights: W,
        search: &ScaleSearch,
        prune: bool,
    ) -> GroupParams {
        self.search_fixed(group, weights, search, prune)
    }

    /// [`search_in`](Self::search_in) on a copy of the grid whose format is
    /// a constant in each arm, so the per-weight grid functions inline into
    /// one straight loop per format.
    #[inline(always)]
    fn search_fixed<W: Weights>(
        &self,
        group: &[f32],
        weights: W,
        search: &ScaleSearch,
        prune: bool,
    ) -> GroupParams {
        let cols = self.cols;
        let fixed = |format| Grid { format, cols };
        let args = (group, weights, search, prune);
        match self.format {
            Format::Int(Scheme::Int8PerChannel) => {
                fixed(Format::Int(Scheme::Int8PerChannel)).search_in(args)
            }
            Format::Int(Scheme::Int4Sym { group_size }) => {
                fixed(Format::Int(Scheme::Int4Sym { group_size })).search_in(args)
            }
            Format::Int(Scheme::Int4Asym { group_size }) => {
                fixed(Format::Int(Scheme::Int4Asym { group_size })).search_in(args)
            }
            Format::Ggml(GgmlType::Q8_0) => fixed(Format::Ggml(GgmlType::Q8_0)).search_in(args),
            Format::Ggml(GgmlType::Q4_0) => fixed(Format::Ggml(GgmlType::Q4_0)).search_in(args),
            Format::Ggml(GgmlType::Q4_1) => fixed(Format::Ggml(GgmlType::Q4_1)).search_in(args),
            Format::Ggml(_) => self.search_in(args),
        }
    }

    /// The search itself: `p = 1` is [`params`](Self::params); each smaller
    /// `p` is evaluated in full, and once the clipping part of its error
    /// reaches the best error the search stops (`prune`).
    #[inline(always)]
    fn search_in<W: Weights>(
        &self,
        (group, weights, search, prune): (&[f32], W, &ScaleSearch, bool),
    ) -> GroupParams {
        let rtn = self.params(group);
        let n = search.candidates();
        if n <= 1
            || !(search.norm > 0.0 && search.norm.is_finite())
            || rtn.scale == 0.0
            || !group.iter().all(|v| v.is_finite())
        {
            return rtn;
        }
        let range = self.range(group);
        let args = (group, weights, search, prune);
        if search.norm == 2.0 {
            self.search_norm(args, (rtn, range), Squared)
        } else {
            let norm = Power::new(search.norm, range);
            self.search_norm(args, (rtn, range), norm)
        }
    }

    /// [`search_in`](Self::search_in) in the norm `N`.
    #[inline(always)]
    fn search_norm<W: Weights, N: ErrorNorm>(
        &self,
        (group, weights, search, prune): (&[f32], W, &ScaleSearch, bool),
        (rtn, range): (GroupParams, Range),
        norm: N,
    ) -> GroupParams {
        let (mut best, mut best_err) = (rtn, self.error(group, weights, &rtn, norm).0);
        for i in 1..search.candidates() {
            let p = self.params_at(range, search.factor(i));
            let (err, clip) = self.error(group, weights, &p, norm);
            if err < best_err {
                best_err = err;
                best = p;
            }
            if prune && clip >= best_err {
                break;
            }
        }
        best
    }

    /// The range of `group` that [`params`](Self::params) builds its
    /// parameters from.
    fn range(&self, group: &[f32]) -> Range {
        match self.format {
            Format::Int(Scheme::Int4Asym { .. }) => {
                let (min, max) = int4::min_max(group);
                Range::MinMax(min, max)
            }
            Format::Int(_) => Range::Absmax(int8::absmax(group)),
            Format::Ggml(GgmlType::Q4_0) => Range::Extreme(q4_0_extreme(group)),
            Format::Ggml(GgmlType::Q4_1) => {
                let (min, max) = nan_min_max(group);
                Range::MinMax(min, max)
            }
            Format::Ggml(_) => Range::Absmax(int8_like_absmax(group)),
        }
    }

    /// The parameters of `range` shrunk by `p`, by the rule of
    /// [`params`](Self::params) (`p = 1`: exactly `params`).
    fn params_at(&self, range: Range, p: f32) -> GroupParams {
        let (scale, min) = match (self.format, range) {
            (Format::Int(Scheme::Int8PerChannel), Range::Absmax(a)) => {
                (int8::scale_for_absmax(p * a), 0.0)
            }
            (Format::Int(_), Range::Absmax(a)) => (int4::sym_scale(p * a), 0.0),
            (Format::Int(_), Range::MinMax(lo, hi)) => int4::asym_params(p * lo, p * hi),
            (Format::Ggml(_), Range::Extreme(x)) => (f16_round(p * x / -8.0), 0.0),
            (Format::Ggml(_), Range::MinMax(lo, hi)) => {
                (f16_round((p * hi - p * lo) / 15.0), f16_round(p * lo))
            }
            (Format::Ggml(_), Range::Absmax(a)) => (f16_round(p * a / 127.0), 0.0),
            (Format::Int(_), Range::Extreme(_)) => unreachable!("Q4_0 range for an int format"),
        };
        GroupParams { scale, min }
    }

    /// The codes RTN can produce on a grid: `(lowest, highest)`.
    fn code_bounds(&self) -> (i8, i8) {
        match self.format {
            Format::Int(Scheme::Int8PerChannel) | Format::Ggml(GgmlType::Q8_0) => (-127, 127),
            Format::Int(Scheme::Int4Sym { .. }) => (-int4::SYM_QMAX, int4::SYM_QMAX),
            _ => (0, 15),
        }
    }

    /// `(Σ c_i |w_i - q(w_i)|^norm, the part of it from the weights outside
    /// the grid's range)` over `group` on the grid `p`, with `c` the factors
    /// `weights`, summed in [`LANES`] interleaved partial sums.
    #[inline(always)]
    fn error<W: Weights, N: ErrorNorm>(
        &self,
        group: &[f32],
        weights: W,
        p: &GroupParams,
        norm: N,
    ) -> (f32, f32) {
        let (cl, ch) = self.code_bounds();
        let (a, b) = (self.dequantize(cl, p), self.dequantize(ch, p));
        let (lo, hi) = (a.min(b), a.max(b));
        let term = |w, c| self.term(w, c, p, norm, (lo, hi));
        let mut total = [0f32; LANES];
        let mut clip = [0f32; LANES];
        let mut chunks = group.chunks_exact(LANES);
        let rest = chunks.remainder();
        let tail = group.len() - rest.len();
        // The index of each chunk from the chunks left, which is not
        // computed at all when unweighted.
        while let Some(v) = chunks.next() {
            let c = weights.lanes(tail - LANES * (chunks.len() + 1));
            for k in 0..LANES {
                let (e, x) = term(v[k], c[k]);
                total[k] += e;
                clip[k] += x;
            }
        }
        let (mut total, mut clip) = (total.iter().sum::<f32>(), clip.iter().sum::<f32>());
        for (j, &w) in rest.iter().enumerate() {
            let (e, x) = term(w, weights.at(tail + j));
            total += e;
            clip += x;
        }
        (total, clip)
    }

    /// `c |w - q(w)|^norm`, and that again if `w` is outside `lo..=hi`.
    #[inline(always)]
    fn term<N: ErrorNorm>(
        &self,
        w: f32,
        c: f32,
        p: &GroupParams,
        norm: N,
        (lo, hi): (f32, f32),
    ) -> (f32, f32) {
        let e = c * norm.of((w - self.fake_quantize_fast(w, p)).abs());
        (e, if w < lo || w > hi { e } else { 0.0 })
    }

    /// [`fake_quantize`](Self::fake_quantize) without the round trip
    /// through the integer code, whose saturating conversions do not
    /// vectorize: the same value for every finite `w` (up to the sign of a
    /// zero), the same `f32` operations in the same order.
    #[inline(always)]
    fn fake_quantize_fast(&self, w: f32, p: &GroupParams) -> f32 {
        let d = p.scale;
        match self.format {
            Format::Int(Scheme::Int4Asym { .. }) => {
                if d == 0.0 {
                    return p.min;
                }
                let r = ((w - p.min) / d).round();
                r.clamp(0.0, int4::ASYM_QMAX as f32) * d + p.min
            }
            Format::Int(s) => {
                if d == 0.0 {
                    return 0.0;
                }
                let r = (w / d).round();
                let q = match s {
                    Scheme::Int8PerChannel => int8::QMAX as f32,
                    _ => int4::SYM_QMAX as f32,
                };
                r.clamp(-q, q) * d
            }
            Format::Ggml(GgmlType::Q4_0) => {
                d * ((w * inverse(d) + 8.5).floor().clamp(0.0, 15.0) - 8.0)
            }
            Format::Ggml(GgmlType::Q4_1) => {
                d * ((w - p.min) * inverse(d) + 0.5).floor().clamp(0.0, 15.0) + p.min
            }
            Format::Ggml(_) => (w * inverse(d)).round().clamp(-127.0, 127.0) * d,
        }
    }

    /// The code of `w` on the grid `p` (nearest, clamped to the grid).
    #[inline(always)]
    pub fn quantize(&self, w: f32, p: &GroupParams) -> i8 {
        match self.format {
            Format::Int(s) => s.quantize_value(w, p.scale, p.min),
            Format::Ggml(GgmlType::Q4_0) => {
                (w * inverse(p.scale) + 8.5).floor().clamp(0.0, 15.0) as i8
            }
            Format::Ggml(GgmlType::Q4_1) => ((w - p.min) * inverse(p.scale) + 0.5)
                .floor()
                .clamp(0.0, 15.0) as i8,
            // Q8_0; `round` is half away from zero, `as` maps NaN to 0.
            Format::Ggml(_) => (w * inverse(p.scale)).round().clamp(-127.0, 127.0) as i8,
        }
    }

    /// The value of code `q` on the grid `p`, exactly as the packed format
    /// dequantizes it.
    #[inline(always)]
    pub fn dequantize(&self, q: i8, p: &GroupParams) -> f32 {
        match self.format {
            Format::Int(s) => s.dequantize_value(q, p.scale, p.min),
            Format::Ggml(GgmlType::Q4_0) => p.scale * (q as i32 - 8) as f32,
            Format::Ggml(GgmlType::Q4_1) => p.scale * q as f32 + p.min,
            Format::Ggml(_) => q as f32 * p.scale,
        }
    }

    /// `w` rounded onto the grid: `dequantize(quantize(w))`.
    #[inline(always)]
    pub fn fake_quantize(&self, w: f32, p: &GroupParams) -> f32 {
        self.dequantize(self.quantize(w, p), p)
    }

    /// RTN on the grid: the codes (row-major) and the parameters
    /// (`[rows, groups_per_row]`) of a row-major `[rows, cols]` matrix.
    pub fn quantize_rtn(
        &self,
        weights: &[f32],
        rows: usize,
    ) -> Result<(Vec<i8>, Vec<GroupParams>)> {
        self.round_to_nearest(weights, rows, |g| self.params(g))
    }

    /// [`quantize_rtn`](Self::quantize_rtn) with every group's parameters
    /// from [`params_search`](Self::params_search).
    pub fn quantize_search(
        &self,
        weights: &[f32],
        rows: usize,
        search: &ScaleSearch,
    ) -> Result<(Vec<i8>, Vec<GroupParams>)> {
        self.round_to_nearest(weights, rows, |g| self.params_search(g, search))
    }

    /// Rounds every group to the nearest code on its grid `rule(group)`.
    fn round_to_nearest(
        &self,
        weights: &[f32],
        rows: usize,
        rule: impl Fn(&[f32]) -> GroupParams + Sync,
    ) -> Result<(Vec<i8>, Vec<GroupParams>)> {
        check_len("weights", checked_len(rows, self.cols)?, weights.len())?;
        let g = self.group_size();
        let mut codes = vec![0i8; weights.len()];
        let mut params = vec![GroupParams::default(); rows * self.groups_per_row()];
        codes
            .par_chunks_mut(g)
            .zip(params.par_iter_mut())
            .zip(weights.par_chunks(g))
            .for_each(|((c, p), w)| {
                *p = rule(w);
                for (c, &v) in c.iter_mut().zip(w) {
                    *c = self.quantize(v, p);
                }
            });
        Ok((codes, params))
    }

    /// Packs row-major codes and their `[rows, groups_per_row]` parameters
    /// into the format's own layout. Codes must be within the format's
    /// storage range (int: [`Scheme::code_range`]; `Q8_0`: any `i8`;
    /// `Q4_0`/`Q4_1`: `0..=15`).
    pub fn build(&self, rows: usize, codes: &[i8], params: &[GroupParams]) -> Result<PackedMatrix> {
        let cols = self.cols;
        check_len("codes", checked_len(rows, cols)?, codes.len())?;
        check_len(
            "group parameters",
            rows * self.groups_per_row(),
            params.len(),
        )?;
        match self.format {
            Format::Int(s) => {
                let scales = params.iter().map(|p| p.scale).collect();
                let mins = if s.is_asymmetric() {
                    params.iter().map(|p| p.min).collect()
                } else {
                    Vec::new()
                };
                QuantizedMatrix::from_codes(rows, cols, s, codes, scales, mins)
                    .map(PackedMatrix::Int)
            }
            Format::Ggml(t) => {
                if t != GgmlType::Q8_0
                    && let Some(&q) = codes.iter().find(|&&q| !(0..=15).contains(&q))
                {
                    return Err(QuantError::CodeOutOfRange {
                        code: q as i32,
                        min: 0,
                        max: 15,
                        scheme: t.name().to_owned(),
                    });
                }
                let ts = t.type_size();
                let mut data = vec![0u8; checked_len(codes.len() / QK, ts)?];
                data.par_chunks_mut(ts)
                    .zip(codes.par_chunks(QK))
                    .zip(params.par_iter())
                    .for_each(|((o, c), p)| pack_block(t, p, c, o));
                GgmlMatrix::from_bytes(t, rows, cols, data).map(PackedMatrix::Ggml)
            }
        }
    }
}

/// Writes one GGUF block (layouts in [`crate::gguf`]).
fn pack_block(t: GgmlType, p: &GroupParams, codes: &[i8], out: &mut [u8]) {
    let d = half::f16::from_f32(p.scale).to_le_bytes();
    out[..2].copy_from_slice(&d);
    let qs = match t {
        GgmlType::Q8_0 => {
            for (o, &q) in out[2..].iter_mut().zip(codes) {
                *o = q as u8;
            }
            return;
        }
        GgmlType::Q4_1 => {
            out[2..4].copy_from_slice(&half::f16::from_f32(p.min).to_le_bytes());
            &mut out[4..]
        }
        _ => &mut out[2..],
    };
    // Low nibbles hold elements 0..16, high nibbles 16..32.
    let (lo, hi) = codes.split_at(QK / 2);
    for ((o, &l), &h) in qs.iter_mut().zip(lo).zip(hi) {
        *o = (l as u8 & 0x0f) | ((h as u8) << 4);
    }
}

/// `Q8_0`'s `amax` (NaN propagates, as numpy's `max`).
fn int8_like_absmax(x: &[f32]) -> f32 {
    if x.iter().any(|v| v.is_nan()) {
        return f32::NAN;
    }
    int8::absmax(x)
}

/// `Q4_0`'s `d = x[argmax |x|] / -8` (first maximum, or first NaN).
fn q4_0_scale(x: &[f32]) -> f32 {
    if x.is_empty() {
        0.0
    } else {
        q4_0_extreme(x) / -8.0
    }
}

/// `Q4_0`'s `x[argmax |x|]` (first maximum, or first NaN; 0 if empty).
fn q4_0_extreme(x: &[f32]) -> f32 {
    let mut best = 0usize;
    for (j, v) in x.iter().enumerate() {
        if v.is_nan() {
            best = j;
            break;
        }
        if v.abs() > x[best].abs() {
            best = j;
        }
    }
    x.get(best).copied().unwrap_or(0.0)
}

/// `Q4_1`'s `(min, max)`: the first of tied values, NaN propagates.
fn nan_min_max(x: &[f32]) -> (f32, f32) {
    let Some(&first) = x.first() else {
        return (0.0, 0.0);
    };
    let (mut min, mut max) = (first, first);
    for &v in x {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn all_formats() -> Vec<Format> {
        [
            "int8",
            "int4-sym-g32",
            "int4-sym-g64",
            "int4-sym-g128",
            "int4-asym-g32",
        ]
        .iter()
        .chain(&["int4-asym-g64", "int4-asym-g128", "q8_0", "q4_0", "q4_1"])
        .map(|n| n.parse().unwrap())
        .collect()
    }

    fn weights(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let v = rng.random_range(-1.0f32..1.0) * 0.05;
                if i % 97 == 3 { v * 20.0 } else { v }
            })
            .collect()
    }

    fn sq_err(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
    }

    #[test]
    fn built_matrix_dequantizes_to_the_grid_values() {
        let (rows, cols) = (16, 256);
        for seed in 0..3 {
            let w = weights(seed, rows * cols);
            for f in all_formats() {
                let grid = Grid::new(f, cols).unwrap();
                let (codes, params) = grid.quantize_rtn(&w, rows).unwrap();
                let g = grid.group_size();
                let ours: Vec<f32> = codes
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| grid.dequantize(q, &params[i / g]))
                    .collect();
                let packed = grid.build(rows, &codes, &params).unwrap();
                assert_eq!(packed.format(), f);
                let deq = packed.dequantize();
                assert!(
                    ours.iter()
                        .zip(&deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{f}"
                );
                let rtn = PackedMatrix::quantize_rtn(&w, rows, cols, f).unwrap();
                if let Format::Int(_) = f {
                    assert_eq!(packed, rtn, "{f}");
                } else {
                    // Same stored scales as gguf-py, and nearly the same error.
                    let (a, b) = (sq_err(&w, &deq), sq_err(&w, &rtn.dequantize()));
                    assert!((a - b).abs() <= 0.01 * b, "{f}: grid {a} rtn {b}");
                    let ts = match f {
                        Format::Ggml(t) => t.type_size(),
                        _ => unreachable!(),
                    };
                    let scale_bytes = |m: &PackedMatrix| match m {
                        PackedMatrix::Ggml(m) => m
                            .data()
                            .chunks(ts)
                            .map(|b| b[..if ts == 20 { 4 } else { 2 }].to_vec())
                            .collect::<Vec<_>>(),
                        _ => unreachable!(),
                    };
                    assert_eq!(scale_bytes(&packed), scale_bytes(&rtn), "{f}");
                }
            }
        }
    }

    #[test]
    fn codes_are_nearest_on_the_stored_grid() {
        let cols = 256;
        let w = weights(9, cols);
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            let g = grid.group_size();
            for grp in w.chunks(g) {
                let p = grid.params(grp);
                let (lo, hi) = match f {
                    Format::Int(s) if !s.is_asymmetric() => (-(s.code_range().1), s.code_range().1),
                    Format::Int(_) | Format::Ggml(GgmlType::Q4_0 | GgmlType::Q4_1) => (0, 15),
                    Format::Ggml(_) => (-127, 127),
                };
                for &v in grp {
                    let best = (lo..=hi)
                        .map(|q| (grid.dequantize(q, &p) - v).abs())
                        .fold(f32::INFINITY, f32::min);
                    let got = (grid.fake_quantize(v, &p) - v).abs();
                    assert!(got <= best * (1.0 + 1e-5) + 1e-12, "{f}: {v} {got} {best}");
                }
            }
        }
    }

    /// [`weights`] for an even `seed`, [`student_t`] for an odd one.
    fn uniform_or_student_t(seed: u64, n: usize) -> Vec<f32> {
        if seed.is_multiple_of(2) {
            weights(seed, n)
        } else {
            student_t(seed, n)
        }
    }

    /// Student-t weights with 5 degrees of freedom (heavy tails, as trained
    /// weights), scale 0.02.
    fn student_t(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut normal = move || {
            let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        (0..n)
            .map(|_| {
                let chi2: f64 = (0..5).map(|_| normal().powi(2)).sum();
                (0.02 * normal() / (chi2 / 5.0).sqrt()) as f32
            })
            .collect()
    }

    /// `Σ |w - q(w)|^norm` of a group on the grid `p`, in `f64`.
    fn group_error(grid: &Grid, g: &[f32], p: &GroupParams, norm: f64) -> f64 {
        g.iter()
            .map(|&w| ((w - grid.fake_quantize(w, p)) as f64).abs().powf(norm))
            .sum()
    }

    /// `Σ c_i |w_i - q(w_i)|^norm` of a group on the grid `p`, in `f64`.
    fn weighted_error(grid: &Grid, g: &[f32], c: &[f32], p: &GroupParams, norm: f64) -> f64 {
        g.iter()
            .zip(c)
            .map(|(&w, &c)| c as f64 * ((w - grid.fake_quantize(w, p)) as f64).abs().powf(norm))
            .sum()
    }

    /// Log-uniform factors in `[1e-2, 1e2]`, a few of them 0.
    fn saliency(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let c = 10f32.powf(rng.random_range(-2.0..2.0));
                if i % 53 == 7 { 0.0 } else { c }
            })
            .collect()
    }

    #[test]
    fn unit_weights_are_the_unweighted_search() {
        let cols = 256;
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            for (seed, norm) in [(0, 2.4), (1, 2.0), (2, 3.0), (3, 2.4)] {
                let search = ScaleSearch {
                    norm,
                    ..ScaleSearch::default()
                };
                let w = uniform_or_student_t(seed, 8 * cols);
                for g in w.chunks(grid.group_size()) {
                    let want = grid.params_search(g, &search);
                    // A power of two scales every error exactly.
                    for c in [1.0, 4.0] {
                        let c = vec![c; g.len()];
                        assert_eq!(grid.params_search_weighted(g, &search, &c), want, "{f}");
                    }
                }
            }
        }
    }

    #[test]
    fn weighted_search_is_never_worse_than_min_max() {
        let cols = 256;
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            for norm in [2.0f32, 2.4] {
                let search = ScaleSearch {
                    norm,
                    ..ScaleSearch::default()
                };
                let (mut total_plain, mut total_weighted) = (0.0, 0.0);
                for seed in 0..6 {
                    let w = uniform_or_student_t(seed, 8 * cols);
                    let c = saliency(seed + 100, w.len());
                    let g = grid.group_size();
                    for (grp, c) in w.chunks(g).zip(c.chunks(g)) {
                        let pw = grid.params_search_weighted(grp, &search, c);
                        let err = |p: GroupParams| weighted_error(&grid, grp, c, &p, norm as f64);
                        let (e0, ew) = (err(grid.params(grp)), err(pw));
                        // Up to the `f32` sums (and `pow_fast` for 2.4).
                        assert!(ew <= e0 * (1.0 + 1e-5), "{f} norm {norm}: {ew} > {e0}");
                        total_plain += err(grid.params_search(grp, &search));
                        total_weighted += ew;
                    }
                }
                // The same candidates: the unweighted choice is one of them.
                assert!(
                    total_weighted <= total_plain * (1.0 + 1e-5),
                    "{f} norm {norm}: weighted {total_weighted} unweighted {total_plain}"
                );
            }
        }
    }

    #[test]
    fn bad_or_zero_weights_give_min_max() {
        let cols = 128;
        let w = student_t(6, cols);
        let d = ScaleSearch::default();
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            let g = &w[..grid.group_size()];
            let want = grid.params(g);
            let mut c = vec![1.0; g.len()];
            // All factors 0: every candidate ties, the first (`p = 1`) wins.
            assert_eq!(
                grid.params_search_weighted(g, &d, &vec![0.0; g.len()]),
                want
            );
            for bad in [-1.0, f32::NAN, f32::INFINITY] {
                c[3] = bad;
                assert_eq!(grid.params_search_weighted(g, &d, &c), want, "{f} {bad}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "one weight per value")]
    fn weights_of_another_length_panic() {
        let grid = Grid::new("q4_0".parse().unwrap(), 32).unwrap();
        grid.params_search_weighted(&[0.5; 32], &ScaleSearch::default(), &[1.0]);
    }

    #[test]
    fn pow_fast_is_close_to_powf() {
        assert_eq!(pow_fast(0.0, 2.4), 0.0);
        let mut worst = 0f64;
        for n in [2.4f32, 0.5, 1.5, 3.0, 4.0] {
            for i in 0..20_000 {
                // 1e-9 ..= 10, log-spaced, plus exact powers of two.
                let x = 10f64.powf(-9.0 + 10.0 * i as f64 / 19_999.0) as f32;
                for x in [x, 2f32.powi(i % 40 - 30)] {
                    let want = (x as f64).powf(n as f64);
                    let rel = (pow_fast(x, n) as f64 - want).abs() / want;
                    worst = worst.max(rel);
                }
            }
        }
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn fast_fake_quantize_is_fake_quantize() {
        let cols = 256;
        let mut rng = StdRng::seed_from_u64(11);
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            let g = grid.group_size();
            let mut checked = 0;
            for seed in 0..4 {
                let w = if seed % 2 == 0 {
                    weights(seed, 4 * cols)
                } else {
                    student_t(seed, 4 * cols)
                };
                for grp in w.chunks(g) {
                    let range = grid.range(grp);
                    let mut ps: Vec<GroupParams> = (0..80)
                        .map(|i| grid.params_at(range, 1.0 - i as f32 / 100.0))
                        .collect();
                    ps.push(GroupParams::default());
                    ps.push(GroupParams {
                        min: 0.01,
                        ..GroupParams::default()
                    });
                    ps.push(GroupParams {
                        scale: 0.003,
                        min: -0.02,
                    });
                    for p in &ps {
                        // The weights, ties between codes and both ends of
                        // the grid, and random values over and beyond it.
                        let mut vals: Vec<f32> = grp.to_vec();
                        for q in -130..=130 {
                            let v = grid.dequantize(q.clamp(-128, 127) as i8, p);
                            let half = p.scale * 0.5 * (q as f32 / 130.0).signum();
                            vals.extend([v, v + half, v - half, -v]);
                        }
                        let a = range.magnitude() * 1.5;
                        vals.extend((0..64).map(|_| rng.random_range(-a..=a)));
                        vals.extend([0.0, -0.0, f32::MAX, -f32::MAX, 1e-30, -1e-30]);
                        for &v in &vals {
                            let (x, y) = (grid.fake_quantize(v, p), grid.fake_quantize_fast(v, p));
                            assert!(x == y, "{f} {p:?}: {v} gives {x} and {y}");
                            checked += 1;
                        }
                    }
                }
            }
            assert!(checked > 100_000);
        }
    }

    #[test]
    fn scale_search_is_never_worse_than_min_max() {
        let cols = 256;
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            for norm in [2.0f32, 2.4] {
                let search = ScaleSearch {
                    norm,
                    ..ScaleSearch::default()
                };
                let (mut total_rtn, mut total_search) = (0.0, 0.0);
                for seed in 0..6 {
                    let w = uniform_or_student_t(seed, 8 * cols);
                    for g in w.chunks(grid.group_size()) {
                        let (p0, ps) = (grid.params(g), grid.params_search(g, &search));
                        let e0 = group_error(&grid, g, &p0, norm as f64);
                        let es = group_error(&grid, g, &ps, norm as f64);
                        // Up to the `f32` sums (and `pow_fast` for 2.4).
                        assert!(es <= e0 * (1.0 + 1e-5), "{f} norm {norm}: {es} > {e0}");
                        total_rtn += e0;
                        total_search += es;
                    }
                }
                // The 4-bit grids are coarse enough for shrinking to pay.
                if !matches!(
                    f,
                    Format::Int(Scheme::Int8PerChannel) | Format::Ggml(GgmlType::Q8_0)
                ) {
                    assert!(
                        total_search < 0.99 * total_rtn,
                        "{f} norm {norm}: {total_search} vs {total_rtn}"
                    );
                }
            }
        }
    }

    /// The early stop against the exhaustive loop, unweighted and with
    /// factors `>= 0` (for which the clipped part still only grows).
    #[test]
    fn early_stop_matches_the_exhaustive_search() {
        let cols = 256;
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            // (groups, groups that differ): unweighted, then weighted.
            let mut counts = [(0, 0); 2];
            for seed in 0..8 {
                let w = if seed % 2 == 0 {
                    weights(seed, 16 * cols)
                } else {
                    student_t(seed, 16 * cols)
                };
                let (c, ones) = (saliency(seed + 200, w.len()), vec![1f32; w.len()]);
                let search = ScaleSearch {
                    norm: [2.0, 2.4][seed as usize / 4],
                    ..ScaleSearch::default()
                };
                let g = grid.group_size();
                for ((grp, c), one) in w.chunks(g).zip(c.chunks(g)).zip(ones.chunks(g)) {
                    let weighted = grid.search(grp, c, &search, true);
                    assert_eq!(weighted, grid.params_search_weighted(grp, &search, c));
                    assert_eq!(weighted, grid.search_fixed(grp, c, &search, true), "{f}");
                    let runs = [
                        (
                            one,
                            grid.search(grp, Ones, &search, true),
                            grid.search(grp, Ones, &search, false),
                        ),
                        (c, weighted, grid.search(grp, c, &search, false)),
                    ];
                    for ((factors, fast, full), (groups, differ)) in
                        runs.into_iter().zip(&mut counts)
                    {
                        *groups += 1;
                        if fast != full {
                            *differ += 1;
                            let n = search.norm as f64;
                            let (a, b) = (
                                weighted_error(&grid, grp, factors, &fast, n),
                                weighted_error(&grid, grp, factors, &full, n),
                            );
                            assert!(a <= b * 1.001, "{f}: {a} vs exhaustive {b}");
                        }
                    }
                }
            }
            // Exact where the stored range shrinks monotonically with `p`;
            // up to rounding for int4-asym and `Q4_1` (identical here too).
            let exact = !matches!(
                f,
                Format::Int(Scheme::Int4Asym { .. }) | Format::Ggml(GgmlType::Q4_1)
            );
            for (groups, differ) in counts {
                let allowed = if exact { 0 } else { groups / 100 };
                assert!(differ <= allowed, "{f}: {differ} of {groups} groups differ");
            }
        }
    }

    #[test]
    fn portable_search_is_the_same() {
        let cols = 256;
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            for (seed, norm) in [(0, 2.4), (1, 2.0), (2, 2.4), (3, 3.0)] {
                let search = ScaleSearch {
                    norm,
                    ..ScaleSearch::default()
                };
                let w = uniform_or_student_t(seed, 8 * cols);
                for g in w.chunks(grid.group_size()) {
                    assert_eq!(
                        grid.search_fixed(g, Ones, &search, true),
                        grid.params_search(g, &search),
                        "{f}"
                    );
                }
            }
        }
    }

    #[test]
    fn searched_params_are_stored_exactly() {
        let (rows, cols) = (16, 256);
        for seed in 0..3 {
            let w = student_t(seed, rows * cols);
            for f in all_formats() {
                let grid = Grid::new(f, cols).unwrap();
                let (codes, params) = grid
                    .quantize_search(&w, rows, &ScaleSearch::default())
                    .unwrap();
                let g = grid.group_size();
                for (p, grp) in params.iter().zip(w.chunks(g)) {
                    assert_eq!(*p, grid.params_search(grp, &ScaleSearch::default()));
                    if let Format::Ggml(_) = f {
                        assert_eq!(f16_round(p.scale).to_bits(), p.scale.to_bits(), "{f}");
                        assert_eq!(f16_round(p.min).to_bits(), p.min.to_bits(), "{f}");
                    }
                }
                // Some 4-bit groups were shrunk (8-bit grids are too fine for
                // shrinking to pay).
                let (_, rtn) = grid.quantize_rtn(&w, rows).unwrap();
                let fine = matches!(
                    f,
                    Format::Int(Scheme::Int8PerChannel) | Format::Ggml(GgmlType::Q8_0)
                );
                assert!(fine || params != rtn, "{f}");
                let ours: Vec<f32> = codes
                    .iter()
                    .enumerate()
                    .map(|(i, &q)| grid.dequantize(q, &params[i / g]))
                    .collect();
                let deq = grid.build(rows, &codes, &params).unwrap().dequantize();
                assert!(
                    ours.iter()
                        .zip(&deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{f}"
                );
            }
        }
    }

    #[test]
    fn no_search_gives_min_max() {
        let cols = 128;
        let w = student_t(5, cols);
        let mut odd = w.clone();
        odd[7] = f32::NAN;
        let off = [
            ScaleSearch {
                grid: 0,
                ..ScaleSearch::default()
            },
            ScaleSearch {
                max_shrink: 0.0,
                ..ScaleSearch::default()
            },
            ScaleSearch {
                norm: f32::NAN,
                ..ScaleSearch::default()
            },
            ScaleSearch {
                norm: 0.0,
                ..ScaleSearch::default()
            },
        ];
        for f in all_formats() {
            let grid = Grid::new(f, cols).unwrap();
            let g = grid.group_size();
            for s in &off {
                assert_eq!(grid.params_search(&w[..g], s), grid.params(&w[..g]), "{f}");
            }
            let d = ScaleSearch::default();
            for grp in [&odd[..g], &[0.0; 128][..g], &[]] {
                let (a, b) = (grid.params_search(grp, &d), grid.params(grp));
                assert!(
                    a.scale.to_bits() == b.scale.to_bits() && a.min.to_bits() == b.min.to_bits(),
                    "{f}"
                );
            }
            // Every candidate at p = 1 is `params` itself.
            for grp in w.chunks(g) {
                assert_eq!(
                    grid.params_at(grid.range(grp), 1.0),
                    grid.params(grp),
                    "{f}"
                );
            }
        }
        assert_eq!(ScaleSearch::default().candidates(), 80);
        let wide = ScaleSearch {
            max_shrink: 3.0,
            ..ScaleSearch::default()
        };
        assert_eq!(wide.candidates(), 100);
        assert!(wide.factor(99) > 0.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Grid::new(Format::Ggml(GgmlType::F16), 32).is_err());
        assert!(Grid::new("q4_0".parse().unwrap(), 48).is_err());
        assert!(Grid::new("int4-sym-g128".parse().unwrap(), 576).is_err());
        assert!(Grid::new("int8".parse().unwrap(), 0).is_err());
        let grid = Grid::new("q4_1".parse().unwrap(), 32).unwrap();
        let p = [GroupParams::default()];
        assert!(grid.build(1, &[16; 32], &p).is_err());
        assert!(grid.build(1, &[0; 31], &p).is_err());
        assert!(grid.build(1, &[0; 32], &[]).is_err());
        assert!(grid.quantize_rtn(&[0.0; 31], 1).is_err());
        assert!(grid.params(&[]).scale == 0.0);
    }
}
