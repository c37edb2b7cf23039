//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
//! Generative Pre-trained Transformers"), following the reference
//! `gptq.py` `GPTQ.fasterquant`, on any [`Format`] through its [`Grid`].
//!
//! For one linear layer `y = W x` with `W[rows = out, cols = in]`, GPTQ
//! quantizes `W` one input column at a time and, after each column, spreads
//! that column's rounding error over the not yet quantized columns so as to
//! minimize the output error `||(W - Ŵ) Xᵀ||²` on calibration inputs `X`.
//! It only needs the layer's input [`Hessian`] `H = 2 XᵀX / N`.
//!
//! As in the reference:
//! * inputs that never fire (`H_ii = 0`) get `H_ii = 1` and a zeroed weight
//!   column ("dead" columns);
//! * `H` is dampened by `damp * mean(diag H)` on the diagonal;
//! * `Hinv` is the upper Cholesky factor of `H⁻¹` (computed in `f64`; if the
//!   Cholesky factorization fails the dampening is multiplied by 10 and
//!   retried, see [`GptqStats`]);
//! * columns are processed in blocks of `block_size` with the error of a
//!   block applied to the remaining columns at once (`W[:, i2:] -= Err ·
//!   Hinv[i1:i2, i2:]`, one `gemm`), rows in parallel inside a block;
//! * with `act_order` the columns are processed in order of decreasing
//!   `H_ii`.
//!
//! Group parameters (scales, minima): our formats store contiguous
//! groups along the row, so a group's parameters must describe its
//! columns in the original order. Without `act_order` they are computed
//! lazily when GPTQ reaches each group's first column, from the current,
//! error-updated weights of the group (the reference default; the int8
//! "group" is the whole row, so its scale comes from the original weights).
//! With `act_order`, or with `static_groups`, all group parameters are
//! computed up front from the original weights ("static groups", the
//! reference's `static_groups=True`), so the processing order does not
//! matter to the packing.
//!
//! With [`GptqConfig::scale_search`] the group parameters (lazy or static)
//! come from the MSE scale search [`Grid::params_search`] instead of the
//! format's min/max rule (the reference's `Quantizer.configure(...,
//! mse=True)`).
//!
//! With [`GptqConfig::weighted_search`] as well, that search weights each
//! column's error by GPTQ's own saliency: GPTQ's loss for rounding column
//! `c` is `(w_c - q_c)² / U_cc²` with `U` the upper Cholesky factor `Hinv`
//! of `H⁻¹` (in the processing order; with `act_order` column `c` is at its
//! permuted position), so the search minimizes `Σ_c |w_c - q_c|^norm /
//! U_cc²` over the group ([`Grid::params_search_weighted`]), for static and
//! lazy groups alike. (The factors are scaled to mean 1 over the layer, which
//! does not change the choice.)

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::error::{QuantError, Result, check_len, checked_len};
use crate::format::{Format, PackedMatrix};
use crate::grid::{Grid, GroupParams, ScaleSearch};

/// Running statistics of a linear layer's inputs: `H = 2 XᵀX / N` over all
/// `N` calibration tokens seen (the GPTQ Hessian), plus the per-channel
/// mean `|x|` (the AWQ activation statistic).
///
/// Stored as `f64` sums (`Σ x xᵀ`, `Σ |x|`) and a token count, so
/// [`add`](Self::add) in any batching and [`merge`](Self::merge) give the
/// same running average as the reference's incremental update. (The
/// reference's `nsamples` counts sequences, ours tokens: a constant factor
/// on `H`, to which GPTQ is invariant since its dampening is relative.)
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian {
    cols: usize,
    /// `Σ x xᵀ`, `[cols, cols]` row-major; only the upper triangle is kept.
    sum: Vec<f64>,
    /// `Σ |x|` per input channel.
    abs_sum: Vec<f64>,
    samples: usize,
}

/// Rows of `XᵀX` per `gemm` call in [`Hessian::add`] (only the blocks on or
/// above the diagonal are computed).
const GRAM_BLOCK: usize = 256;

impl Hessian {
    /// An empty accumulator for inputs of `cols` channels.
    pub fn new(cols: usize) -> Self {
        Self {
            cols,
            sum: vec![0.0; cols * cols],
            abs_sum: vec![0.0; cols],
            samples: 0,
        }
    }

    /// Input channels.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Calibration tokens accumulated.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Adds a batch of `tokens` inputs, `x` row-major `[tokens, cols]`.
    /// `XᵀX` is one `f32` `gemm` per batch (upper triangle only), summed
    /// into `f64`.
    pub fn add(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let n = self.cols;
        check_len("Hessian inputs", checked_len(tokens, n)?, x.len())?;
        if tokens == 0 || n == 0 {
            return Ok(());
        }
        let mut g = vec![0f32; n * n];
        for i0 in (0..n).step_by(GRAM_BLOCK) {
            let m = GRAM_BLOCK.min(n - i0);
            // SAFETY: dst is rows i0..i0+m, columns i0..n of the n×n `g`;
            // lhs (m × tokens) reads X[k, i0 + i] and rhs (tokens × (n - i0))
            // reads X[k, i0 + j], all inside the `tokens * n` slice `x`.
            unsafe {
                gemm(
                    m,
                    n - i0,
                    tokens,
                    g.as_mut_ptr().add(i0 * n + i0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr().add(i0),
                    n as isize,
                    1,
                    x.as_ptr().add(i0),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(0),
                );
            }
        }
        self.sum
            .par_chunks_mut(n)
            .zip(g.par_chunks(n))
            .enumerate()
            .for_each(|(i, (s, g))| {
                for (s, &g) in s[i..].iter_mut().zip(&g[i..]) {
                    *s += g as f64;
                }
            });
        let abs = x
            .par_chunks(n * 64)
            .map(|chunk| {
                let mut a = vec![0f64; n];
                for row in chunk.chunks_exact(n) {
                    for (a, &v) in a.iter_mut().zip(row) {
                        *a += v.abs() as f64;
                    }
                }
                a
            })
            .reduce(
                || vec![0f64; n],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        self.abs_sum.iter_mut().zip(&abs).for_each(|(s, a)| *s += a);
        self.samples += tokens;
        Ok(())
    }

    /// Adds another accumulator's inputs (of the same width).
    pub fn merge(&mut self, other: &Hessian) -> Result<()> {
        check_len("Hessian columns", self.cols, other.cols)?;
        self.sum
            .iter_mut()
            .zip(&other.sum)
            .for_each(|(a, b)| *a += b);
        self.abs_sum
            .iter_mut()
            .zip(&other.abs_sum)
            .for_each(|(a, b)| *a += b);
        self.samples += other.samples;
        Ok(())
    }

    /// Makes the statistics those of the inputs `x_i * factors[i]` (for AWQ:
    /// factors `1 / s` once `s` is folded into the layer).
    pub fn scale_inputs(&mut self, factors: &[f32]) -> Result<()> {
        let n = self.cols;
        check_len("input scale factors", n, factors.len())?;
        self.sum.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let fi = factors[i] as f64;
            for (s, &fj) in row[i..].iter_mut().zip(&factors[i..]) {
                *s *= fi * fj as f64;
            }
        });
        for (s, &f) in self.abs_sum.iter_mut().zip(factors) {
            *s *= (f as f64).abs();
        }
        Ok(())
    }

    /// `H = 2 XᵀX / N`, `[cols, cols]` row-major (all zeros with no samples).
    pub fn matrix(&self) -> Vec<f64> {
        let n = self.cols;
        let k = if self.samples == 0 {
            0.0
        } else {
            2.0 / self.samples as f64
        };
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v = self.sum[i * n + j] * k;
                h[i * n + j] = v;
                h[j * n + i] = v;
            }
        }
        h
    }

    /// The mean squared output error `Σ_t ||Δ x_t||² / N` of replacing the
    /// layer's weights by `W - Δ`, for `delta` = `Δ` row-major
    /// `[rows, cols]`: `Σ_r δ_r (XᵀX / N) δ_rᵀ`, on the inputs seen.
    pub fn output_error(&self, delta: &[f32], rows: usize) -> Result<f64> {
        check_len(
            "weight difference",
            checked_len(rows, self.cols)?,
            delta.len(),
        )?;
        let half: Vec<f32> = self.matrix().iter().map(|&v| (v / 2.0) as f32).collect();
        Ok(quadratic_form(delta, rows, self.cols, &half))
    }

    /// Mean `|x|` per input channel (zeros with no samples).
    pub fn mean_abs(&self) -> Vec<f32> {
        let k = 1.0 / self.samples.max(1) as f64;
        self.abs_sum.iter().map(|&s| (s * k) as f32).collect()
    }
}

/// GPTQ settings; [`Default`] is the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqConfig {
    /// Dampening added to `H`'s diagonal, as a fraction of its mean diagonal
    /// (default `0.01`, the reference's `percdamp`). Negative counts as 0.
    pub damp: f64,
    /// Columns per lazy-update block (default 128; 0 counts as 1).
    pub block_size: usize,
    /// Process columns in order of decreasing `H_ii` (default `false`);
    /// implies `static_groups`.
    pub act_order: bool,
    /// Compute every group's parameters up front from the original weights
    /// instead of lazily at the group's first column (default `false`).
    pub static_groups: bool,
    /// Choose each group's parameters (scale, and the minimum of int4-asym and
    /// `Q4_1`) by
    /// the MSE scale search [`Grid::params_search`] (the reference's
    /// `mse=True`, whose settings are [`ScaleSearch::default`]) instead of
    /// the format's min/max rule [`Grid::params`] (default `None`).
    ///
    /// It helps most with lazy groups, fitted to the error-updated weights.
    /// Static groups (`act_order`, `static_groups`) are fitted to the
    /// original weights, which GPTQ's updates then move, so a tighter grid
    /// clips more: on Student-t weights the search still lowers the output
    /// error, but on the uniform-weight layers of the tests it raised it by
    /// up to 5% for some 4-bit formats.
    pub scale_search: Option<ScaleSearch>,
    /// With `scale_search`: weight each column's error in the search by
    /// GPTQ's saliency `1 / U_cc²` (see the module docs) instead of
    /// weighting all columns alike (default `false`; no effect without
    /// `scale_search`).
    pub weighted_search: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        Self {
            damp: 0.01,
            block_size: 128,
            act_order: false,
            static_groups: false,
            scale_search: None,
            weighted_search: false,
        }
    }
}

/// What happened during [`gptq_quantize`].
#[derive(Debug, Clone, PartialEq)]
pub struct GptqStats {
    /// The reference's loss: `Σ (w - q)² / Hinv_ii² / 2` over all weights.
    pub loss: f64,
    /// The relative dampening finally used (`damp`, or more after retries).
    pub damp: f64,
    /// Cholesky failures retried with 10× the dampening (up to 8).
    pub damp_retries: usize,
    /// Input channels with `H_ii = 0`, whose weights were zeroed.
    pub dead_columns: usize,
    /// `true` if `H` could not be factorized at any dampening (non-finite
    /// entries): then no error was propagated, which is RTN on the grid.
    pub hessian_fallback: bool,
}

/// The result of [`gptq_quantize`].
#[derive(Debug, Clone, PartialEq)]
pub struct GptqResult {
    /// The quantized matrix in the requested format.
    pub packed: PackedMatrix,
    /// The quantized weights GPTQ chose, row-major; exactly
    /// `packed.dequantize()`.
    pub dequantized: Vec<f32>,
    /// Loss and numerical details.
    pub stats: GptqStats,
}

/// Most retries of a failed Cholesky factorization.
const MAX_DAMP_RETRIES: usize = 8;

/// GPTQ-quantizes the row-major `[rows, cols]` `weights` of a linear layer
/// whose inputs gave `hessian`, into `format`.
///
/// Fails (never panics) on mismatched lengths, a format that does not fit
/// `cols`, or a Hessian with no samples.
pub fn gptq_quantize(
    weights: &[f32],
    rows: usize,
    cols: usize,
    hessian: &Hessian,
    format: Format,
    config: &GptqConfig,
) -> Result<GptqResult> {
    let grid = Grid::new(format, cols)?;
    check_len("weights", checked_len(rows, cols)?, weights.len())?;
    check_len("Hessian columns", cols, hessian.cols())?;
    if hessian.samples() == 0 {
        return Err(QuantError::Length {
            what: "Hessian calibration tokens (at least)",
            expected: 1,
            actual: 0,
        });
    }
    let n = cols;
    let (gs, gpr) = (grid.group_size(), grid.groups_per_row());
    let mut h = hessian.matrix();
    let mut w = weights.to_vec();

    let mut dead_columns = 0;
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
            dead_columns += 1;
            w.iter_mut().skip(i).step_by(n).for_each(|v| *v = 0.0);
        }
    }

    let mut perm: Vec<usize> = (0..n).collect();
    if config.act_order {
        perm.sort_by(|&a, &b| h[b * n + b].total_cmp(&h[a * n + a]));
        h = (0..n * n)
            .map(|k| h[perm[k / n] * n + perm[k % n]])
            .collect();
    }

    let mean_diag = (0..n).map(|i| h[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = config.damp.max(0.0);
    let mut damp_retries = 0;
    let hinv = loop {
        let mut hd = h.clone();
        for i in 0..n {
            hd[i * n + i] += damp * mean_diag;
        }
        if let Some(u) = inverse_cholesky_upper(&hd, n) {
            break Some(u);
        }
        if damp_retries == MAX_DAMP_RETRIES {
            break None;
        }
        damp_retries += 1;
        damp = if damp > 0.0 { damp * 10.0 } else { 1e-4 };
    };
    let hessian_fallback = hinv.is_none();
    // The search's factor of each original column: 1 / U_cc², mean 1.
    let saliency: Option<Vec<f32>> = (config.weighted_search && config.scale_search.is_some())
        .then(|| {
            let mut s = vec![1f64; n];
            if let Some(u) = &hinv {
                for (i, &c) in perm.iter().enumerate() {
                    s[c] = 1.0 / (u[i * n + i] * u[i * n + i]);
                }
            }
            let mean = s.iter().sum::<f64>() / n as f64;
            s.iter().map(|&v| (v / mean) as f32).collect()
        });
    let hinv: Vec<f32> = match hinv {
        Some(u) => u.iter().map(|&v| v as f32).collect(),
        None => (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect(),
    };

    // The parameters of group `g` (columns `g * gs..` in the original order)
    // from its current weights.
    let group_params = |g: usize, values: &[f32]| match (&config.scale_search, &saliency) {
        (Some(s), Some(c)) => grid.params_search_weighted(values, s, &c[g * gs..(g + 1) * gs]),
        (Some(s), None) => grid.params_search(values, s),
        (None, _) => grid.params(values),
    };
    let static_groups = config.static_groups || config.act_order;
    let mut params = vec![GroupParams::default(); rows * gpr];
    if static_groups {
        params
            .par_chunks_mut(gpr)
            .zip(w.par_chunks(n))
            .for_each(|(p, wr)| {
                for (k, (p, g)) in p.iter_mut().zip(wr.chunks_exact(gs)).enumerate() {
                    *p = group_params(k, g);
                }
            });
    }
    if config.act_order {
        w.par_chunks_mut(n).for_each(|row| {
            let orig = row.to_vec();
            for (v, &p) in row.iter_mut().zip(&perm) {
                *v = orig[p];
            }
        });
    }

    let bs = config.block_size.max(1);
    let mut codes = vec![0i8; rows * n];
    let mut deq = vec![0f32; rows * n];
    let mut losses = vec![0f64; rows];
    let mut err = vec![0f32; rows * bs];
    for i1 in (0..n).step_by(bs) {
        let i2 = (i1 + bs).min(n);
        w.par_chunks_mut(n)
            .zip(codes.par_chunks_mut(n))
            .zip(deq.par_chunks_mut(n))
            .zip(params.par_chunks_mut(gpr))
            .zip(err.par_chunks_mut(bs))
            .zip(losses.par_iter_mut())
            .for_each(|(((((wr, cr), dr), pr), er), loss)| {
                for i in i1..i2 {
                    let orig = perm[i];
                    let g = orig / gs;
                    if !static_groups && i % gs == 0 {
                        pr[g] = group_params(g, &wr[i..i + gs]);
                    }
                    let x = wr[i];
                    let q = grid.quantize(x, &pr[g]);
                    let v = grid.dequantize(q, &pr[g]);
                    cr[orig] = q;
                    dr[orig] = v;
                    let u = &hinv[i * n..(i + 1) * n];
                    let e = (x - v) / u[i];
                    *loss += (e as f64).powi(2) / 2.0;
                    for (wv, &uv) in wr[i + 1..i2].iter_mut().zip(&u[i + 1..i2]) {
                        *wv -= e * uv;
                    }
                    er[i - i1] = e;
                }
            });
        if i2 < n && rows > 0 {
            // SAFETY: dst is W[:, i2..n] (row stride n) inside `w`; lhs is
            // the first `i2 - i1` columns of the `[rows, bs]` `err`; rhs is
            // Hinv[i1..i2, i2..n] inside the n×n `hinv`.
            unsafe {
                gemm(
                    rows,
                    n - i2,
                    i2 - i1,
                    w.as_mut_ptr().add(i2),
                    1,
                    n as isize,
                    true,
                    err.as_ptr(),
                    1,
                    bs as isize,
                    hinv.as_ptr().add(i1 * n + i2),
                    1,
                    n as isize,
                    1.0,
                    -1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(0),
                );
            }
        }
    }

    let packed = grid.build(rows, &codes, &params)?;
    Ok(GptqResult {
        packed,
        dequantized: deq,
        stats: GptqStats {
            loss: losses.iter().sum(),
            damp,
            damp_retries,
            dead_columns,
            hessian_fallback,
        },
    })
}

/// `Σ_r δ_r G δ_rᵀ` for row-major `delta` `[rows, n]` and symmetric `g`
/// `[n, n]` (one `f32` `gemm`, the sum in `f64`).
pub(crate) fn quadratic_form(delta: &[f32], rows: usize, n: usize, g: &[f32]) -> f64 {
    if rows == 0 || n == 0 {
        return 0.0;
    }
    let mut f = vec![0f32; rows * n];
    // SAFETY: f = delta · g with all three row-major and fully in bounds.
    unsafe {
        gemm(
            rows,
            n,
            n,
            f.as_mut_ptr(),
            1,
            n as isize,
            false,
            delta.as_ptr(),
            1,
            n as isize,
            g.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
    f.par_chunks(n)
        .zip(delta.par_chunks(n))
        .map(|(f, d)| {
            f.iter()
                .zip(d)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
        })
        .sum()
}

/// `Σ a_i b_i` with four independent sums (so it vectorizes).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (ac, bc) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The upper triangular `U` with `Uᵀ U = H⁻¹` (the Cholesky factor of the
/// inverse, as `torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)`),
/// or `None` if the symmetric `n × n` `h` is not numerically positive
/// definite.
///
/// With `J` the reversal permutation, the lower Cholesky factor `M` of
/// `J H J` gives `H = R Rᵀ` with `R = J M J` upper triangular, so
/// `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J M⁻¹ J`: one Cholesky factorization and
/// one triangular inverse, both blocked with `f64` `gemm` updates.
pub(crate) fn inverse_cholesky_upper(h: &[f64], n: usize) -> Option<Vec<f64>> {
    // J H J is `h` with its row-major entries reversed; so is J M⁻¹ J.
    let mut m: Vec<f64> = h.iter().rev().copied().collect();
    if !cholesky_lower(&mut m, n) {
        return None;
    }
    let mut u = lower_inverse(&m, n);
    u.reverse();
    Some(u)
}

/// Block size of the blocked Cholesky factorization and inverse.
const CHOL_BLOCK: usize = 128;

/// `dst -= lhs · rhs` for row-major blocks given by pointers and row strides
/// (`rhs_t`: `rhs` is read transposed, i.e. `rhs[l][j]` at `rhs + j * rs`).
///
/// # Safety
/// Every pointer must address its `m × k`, `k × n` or `m × n` block with the
/// given row stride, and `dst` must not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_sub(
    (m, n, k): (usize, usize, usize),
    dst: *mut f64,
    dst_rs: usize,
    lhs: *const f64,
    lhs_rs: usize,
    rhs: *const f64,
    rhs_rs: usize,
    rhs_t: bool,
) {
    let (rhs_cs, rhs_rs) = if rhs_t {
        (rhs_rs as isize, 1)
    } else {
        (1, rhs_rs as isize)
    };
    // SAFETY: guaranteed by the caller.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            true,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs,
            rhs_rs,
            1.0,
            -1.0,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// In-place lower Cholesky factor of the symmetric `n × n` row-major `a`
/// (read from its lower triangle; the upper one is left as garbage), blocked
/// right-looking. `false` if a pivot is not positive and finite.
fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    for k0 in (0..n).step_by(CHOL_BLOCK) {
        let k1 = (k0 + CHOL_BLOCK).min(n);
        // The diagonal block (its Schur complement is in place).
        for j in k0..k1 {
            let (top, bottom) = a.split_at_mut((j + 1) * n);
            let rj = &mut top[j * n..];
            let d = rj[j] - dot(&rj[k0..j], &rj[k0..j]);
            if !(d > 0.0 && d.is_finite()) {
                return false;
            }
            let ljj = d.sqrt();
            rj[j] = ljj;
            let rj = &rj[k0..j];
            for ri in bottom.chunks_mut(n).take(k1 - j - 1) {
                ri[j] = (ri[j] - dot(&ri[k0..j], rj)) / ljj;
            }
        }
        if k1 == n {
            break;
        }
        // The panel below it: L[k1.., k0..k1] = A[k1.., k0..k1] L_kk⁻ᵀ.
        let (top, bottom) = a.split_at_mut(k1 * n);
        let top = &*top;
        bottom.par_chunks_mut(n).for_each(|ri| {
            for j in k0..k1 {
                let lj = &top[j * n + k0..j * n + j + 1];
                ri[j] = (ri[j] - dot(&ri[k0..j], &lj[..j - k0])) / lj[j - k0];
            }
        });
        // The trailing matrix: A[k1.., k1..] -= P Pᵀ with P = L[k1.., k0..k1].
        let p = a.as_mut_ptr();
        // SAFETY: all blocks lie in the n×n `a`; dst (columns k1..) and the
        // panel (columns k0..k1) are disjoint.
        unsafe {
            let panel = p.add(k1 * n + k0) as *const f64;
            gemm_sub(
                (n - k1, n - k1, k1 - k0),
                p.add(k1 * n + k1),
                n,
                panel,
                n,
                panel,
                n,
                true,
            );
        }
    }
    true
}

/// `M⁻¹` (lower triangular, row-major) of the lower triangular `n × n` `m`
/// (its upper triangle is ignored), by blocked forward substitution on `I`.
fn lower_inverse(m: &[f64], n: usize) -> Vec<f64> {
    let mut x = vec![0f64; n * n];
    for k0 in (0..n).step_by(CHOL_BLOCK) {
        let k1 = (k0 + CHOL_BLOCK).min(n);
        for i in k0..k1 {
            x[i * n + i] = 1.0;
        }
        if k0 > 0 {
            let p = x.as_mut_ptr();
            // SAFETY: X[k0..k1, ..k0] -= M[k0..k1, ..k0] X[..k0, ..k0]; the
            // rows of `x` read (..k0) and written (k0..k1) are disjoint.
            unsafe {
                gemm_sub(
                    (k1 - k0, k0, k0),
                    p.add(k0 * n),
                    n,
                    m.as_ptr().add(k0 * n),
                    n,
                    p as *const f64,
                    n,
                    false,
                );
            }
        }
        for i in k0..k1 {
            let (done, rest) = x.split_at_mut(i * n);
            let xi = &mut rest[..k1];
            for l in k0..i {
                let c = m[i * n + l];
                for (v, &xl) in xi.iter_mut().zip(&done[l * n..l * n + k1]) {
                    *v -= c * xl;
                }
            }
            let d = m[i * n + i];
            xi.iter_mut().for_each(|v| *v /= d);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>();
            }
            h[i * n + i] += 0.1;
        }
        h
    }

    #[test]
    fn inverse_cholesky_is_the_factor_of_the_inverse() {
        for n in [1, 2, 5, 37, 300] {
            let h = spd(n, n as u64);
            let u = inverse_cholesky_upper(&h, n).unwrap();
            for a in 0..n {
                assert!(u[a * n + a] > 0.0);
                for b in 0..a {
                    assert_eq!(u[a * n + b], 0.0);
                }
            }
            // H (Uᵀ U) = I.
            let mut hinv = vec![0f64; n * n];
            for k in 0..n {
                for j in 0..n {
                    hinv[k * n + j] = (0..n).map(|l| u[l * n + k] * u[l * n + j]).sum();
                }
            }
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|k| h[i * n + k] * hinv[k * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-8, "{n} {i} {j} {v}");
                }
            }
        }
        assert!(inverse_cholesky_upper(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(inverse_cholesky_upper(&[f64::NAN], 1).is_none());
    }

    #[test]
    fn hessian_matches_direct_sums_in_any_batching() {
        let (tokens, cols) = (300, 290);
        let mut rng = StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut whole = Hessian::new(cols);
        whole.add(&x, tokens).unwrap();
        let mut a = Hessian::new(cols);
        let mut b = Hessian::new(cols);
        a.add(&x[..100 * cols], 100).unwrap();
        b.add(&x[100 * cols..], 200).unwrap();
        a.add(&[], 0).unwrap();
        a.merge(&b).unwrap();
        assert_eq!(a.samples(), tokens);
        let (h1, h2) = (whole.matrix(), a.matrix());
        for i in 0..cols {
            for j in 0..cols {
                let want: f64 = (0..tokens)
                    .map(|t| x[t * cols + i] as f64 * x[t * cols + j] as f64)
                    .sum::<f64>()
                    * 2.0
                    / tokens as f64;
                assert!((h1[i * cols + j] - want).abs() < 1e-5, "{i} {j}");
                assert!((h2[i * cols + j] - want).abs() < 1e-5, "{i} {j}");
            }
            let m: f64 = (0..tokens)
                .map(|t| x[t * cols + i].abs() as f64)
                .sum::<f64>()
                / tokens as f64;
            assert!((whole.mean_abs()[i] as f64 - m).abs() < 1e-5);
        }
        // Scaling the inputs scales the statistics.
        let f: Vec<f32> = (0..cols).map(|i| 0.5 + i as f32 / cols as f32).collect();
        let xs: Vec<f32> = x.iter().enumerate().map(|(k, v)| v * f[k % cols]).collect();
        let mut direct = Hessian::new(cols);
        direct.add(&xs, tokens).unwrap();
        whole.scale_inputs(&f).unwrap();
        for (p, q) in whole.matrix().iter().zip(direct.matrix()) {
            assert!((p - q).abs() < 1e-5);
        }
        for (p, q) in whole.mean_abs().iter().zip(direct.mean_abs()) {
            assert!((p - q).abs() < 1e-5);
        }
        assert!(whole.add(&x[..10], 1).is_err());
        assert!(whole.merge(&Hessian::new(3)).is_err());
        assert!(whole.scale_inputs(&[1.0]).is_err());
    }
}
