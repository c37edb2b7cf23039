//! AWQ-style activation-aware scaling (Lin et al. 2023, "AWQ:
//! Activation-aware Weight Quantization for LLM Compression and
//! Acceleration"; the reference `auto_scale.py` `search_module_scale`),
//! a per-input-channel pre-step to RTN or GPTQ.
//!
//! Input channels with large activations matter most to the output. AWQ
//! multiplies the weights' input columns by `s_i > 1` for those channels
//! (so their weights get relatively finer grid steps) and divides the
//! channel by `s_i` upstream, which leaves the float layer unchanged:
//! `W x = (W diag(s)) (diag(1/s) x)`.
//!
//! [`awq_search`] tries `s = mean|x|^α` for `α = k / grid`, `k = 0..grid`
//! (normalized as the reference: clamped below at `1e-4`, then divided by
//! `sqrt(max(s) · min(s))`), quantizes `W diag(s)` with RTN in the target
//! format, and measures the output error of `Q(W diag(s)) diag(1/s)` against
//! `W` on the calibration inputs. It keeps the `α` of least error (summed
//! over all layers sharing the input, e.g. q, k and v); `α = 0` is `s = 1`,
//! plain RTN, so the result is never worse than RTN on the calibration data.
//! The reference's weight-clipping search is not done.
//!
//! The caller folds `1 / s` into the op producing the input (e.g. an RMSNorm
//! weight) and multiplies the layers' columns by `s` ([`scale_columns`]); a
//! following GPTQ then uses the [`Hessian`] of the scaled inputs
//! ([`Hessian::scale_inputs`] with `1 / s`).

use rayon::prelude::*;

use crate::error::{Result, check_len, checked_len};
use crate::format::{Format, PackedMatrix};
use crate::gptq::{Hessian, quadratic_form};
use crate::grid::Grid;

/// AWQ settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AwqConfig {
    /// Number of `α` values tried, `α = k / grid` for `k = 0..grid`
    /// (default 20, the reference's `n_grid`; 0 counts as 1).
    pub grid: usize,
}

impl Default for AwqConfig {
    fn default() -> Self {
        Self { grid: 20 }
    }
}

/// The weights of one linear layer reading the shared input: row-major
/// `[rows, cols]`.
#[derive(Debug, Clone, Copy)]
pub struct AwqLayer<'a> {
    /// Row-major `[rows, cols]` weights.
    pub weights: &'a [f32],
    /// Output channels.
    pub rows: usize,
}

/// The outcome of [`awq_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct AwqResult {
    /// The per-input-channel scales `s` of the best `α` (`cols` values).
    pub scales: Vec<f32>,
    /// The best `α`.
    pub alpha: f32,
    /// Output error at the best `α`: `Σ_layers Σ_t ||ΔW x_t||² / N` (see
    /// [`Hessian::output_error`]).
    pub error: f64,
    /// The same error for plain RTN (`α = 0`).
    pub rtn_error: f64,
    /// The error of every `α` tried, in order.
    pub errors: Vec<f64>,
}

/// AWQ's scales for exponent `alpha`: `s_i = max(mean_abs_i^α, 1e-4)`,
/// divided by `sqrt(max(s) · min(s))`. All ones for `α = 0`.
pub fn awq_scales(mean_abs: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = mean_abs.iter().map(|&m| m.powf(alpha).max(1e-4)).collect();
    let (lo, hi) = s
        .iter()
        .fold((f32::INFINITY, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (hi * lo).sqrt();
    s.into_iter().map(|v| v / norm).collect()
}

/// Multiplies column `c` of the row-major `[rows, cols]` `weights` by `s[c]`
/// in place (`W ← W diag(s)`).
pub fn scale_columns(weights: &mut [f32], rows: usize, cols: usize, s: &[f32]) -> Result<()> {
    check_len("weights", checked_len(rows, cols)?, weights.len())?;
    check_len("column scales", cols, s.len())?;
    if cols > 0 {
        weights.par_chunks_mut(cols).for_each(|row| {
            row.iter_mut().zip(s).for_each(|(w, s)| *w *= s);
        });
    }
    Ok(())
}

/// Searches AWQ's scaling exponent for `layers` (all reading the input
/// `stats` was accumulated on) quantized with RTN into `format`.
pub fn awq_search(
    layers: &[AwqLayer<'_>],
    stats: &Hessian,
    format: Format,
    config: &AwqConfig,
) -> Result<AwqResult> {
    let cols = stats.cols();
    Grid::new(format, cols)?;
    for l in layers {
        check_len("weights", checked_len(l.rows, cols)?, l.weights.len())?;
    }
    let mean_abs = stats.mean_abs();
    let gram: Vec<f32> = stats.matrix().iter().map(|&v| (v / 2.0) as f32).collect();
    let error_at = |s: &[f32]| -> Result<f64> {
        let mut total = 0.0;
        for l in layers {
            let mut ws = l.weights.to_vec();
            scale_columns(&mut ws, l.rows, cols, s)?;
            let mut delta = PackedMatrix::quantize_rtn(&ws, l.rows, cols, format)?.dequantize();
            delta
                .par_chunks_mut(cols)
                .zip(l.weights.par_chunks(cols))
                .for_each(|(d, w)| {
                    for ((d, &w), &s) in d.iter_mut().zip(w).zip(s) {
                        *d = w - *d / s;
                    }
                });
            total += quadratic_form(&delta, l.rows, cols, &gram);
        }
        Ok(total)
    };
    let n = config.grid.max(1);
    let mut errors = Vec::with_capacity(n);
    let mut best = (0, f64::INFINITY);
    for k in 0..n {
        let e = error_at(&awq_scales(&mean_abs, k as f32 / n as f32))?;
        if e < best.1 {
            best = (k, e);
        }
        errors.push(e);
    }
    let alpha = best.0 as f32 / n as f32;
    Ok(AwqResult {
        scales: awq_scales(&mean_abs, alpha),
        alpha,
        error: errors[best.0],
        rtn_error: errors[0],
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A layer whose inputs have a few high-magnitude channels.
    fn layer(seed: u64, rows: usize, cols: usize, tokens: usize) -> (Vec<f32>, Hessian) {
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0) * 0.05)
            .collect();
        let loud: Vec<f32> = (0..cols)
            .map(|c| if c % 37 == 5 { 30.0 } else { 1.0 })
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| rng.random_range(-1.0f32..1.0) * loud[i % cols])
            .collect();
        let mut h = Hessian::new(cols);
        h.add(&x, tokens).unwrap();
        (w, h)
    }

    #[test]
    fn awq_beats_rtn_on_int4_and_alpha_zero_is_rtn() {
        let (rows, cols) = (48, 256);
        for seed in 0..3 {
            let (w, h) = layer(seed, rows, cols, 512);
            let w2: Vec<f32> = w.iter().rev().copied().collect();
            let layers = [
                AwqLayer { weights: &w, rows },
                AwqLayer { weights: &w2, rows },
            ];
            for name in [
                "int4-sym-g32",
                "int4-sym-g64",
                "int4-sym-g128",
                "int4-asym-g32",
                "int4-asym-g64",
                "int4-asym-g128",
                "q4_0",
                "q4_1",
            ] {
                let f: Format = name.parse().unwrap();
                let r = awq_search(&layers, &h, f, &AwqConfig::default()).unwrap();
                assert_eq!(r.errors.len(), 20);
                assert!(r.alpha > 0.0, "{name}");
                assert!(
                    r.error < 0.9 * r.rtn_error,
                    "{name} {} {}",
                    r.error,
                    r.rtn_error
                );
                // α = 0 is plain RTN, exactly.
                let rtn: f64 = layers
                    .iter()
                    .map(|l| {
                        let q = PackedMatrix::quantize_rtn(l.weights, rows, cols, f).unwrap();
                        let d: Vec<f32> = l
                            .weights
                            .iter()
                            .zip(q.dequantize())
                            .map(|(a, b)| a - b)
                            .collect();
                        h.output_error(&d, rows).unwrap()
                    })
                    .sum();
                // Equal up to the summation order of parallel reductions.
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
                assert!(close(r.rtn_error, rtn), "{name}: {} vs {rtn}", r.rtn_error);
                // The returned scales give the returned error.
                assert!(r.scales.iter().all(|&s| s > 0.0 && s.is_finite()));
                let awq: f64 = layers
                    .iter()
                    .map(|l| {
                        let mut ws = l.weights.to_vec();
                        scale_columns(&mut ws, rows, cols, &r.scales).unwrap();
                        let q = PackedMatrix::quantize_rtn(&ws, rows, cols, f).unwrap();
                        let d: Vec<f32> = l
                            .weights
                            .iter()
                            .zip(q.dequantize())
                            .enumerate()
                            .map(|(i, (a, b))| a - b / r.scales[i % cols])
                            .collect();
                        h.output_error(&d, rows).unwrap()
                    })
                    .sum();
                assert!(close(awq, r.error), "{name}: {awq} vs {}", r.error);
            }
        }
        let ones = awq_scales(&[0.0, 3.0, 1e-9, 7.5], 0.0);
        assert_eq!(ones, [1.0; 4]);
        let one = AwqConfig { grid: 1 };
        let (w, h) = layer(9, 4, 64, 64);
        let f = "int4-sym-g32".parse().unwrap();
        let r = awq_search(
            &[AwqLayer {
                weights: &w,
                rows: 4,
            }],
            &h,
            f,
            &one,
        )
        .unwrap();
        assert_eq!(
            (r.alpha, r.scales, r.error),
            (0.0, vec![1.0; 64], r.rtn_error)
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let h = Hessian::new(64);
        let f = "int8".parse().unwrap();
        let w = vec![0.0; 63];
        assert!(
            awq_search(
                &[AwqLayer {
                    weights: &w,
                    rows: 1
                }],
                &h,
                f,
                &AwqConfig::default()
            )
            .is_err()
        );
        let q4 = "int4-sym-g128".parse().unwrap();
        assert!(awq_search(&[], &h, q4, &AwqConfig::default()).is_err());
        assert!(scale_columns(&mut [0.0; 6], 2, 3, &[1.0; 2]).is_err());
        assert!(scale_columns(&mut [0.0; 6], 3, 3, &[1.0; 3]).is_err());
        let mut w = [1.0, 2.0, 3.0, 4.0];
        scale_columns(&mut w, 2, 2, &[2.0, 0.5]).unwrap();
        assert_eq!(w, [2.0, 1.0, 6.0, 2.0]);
    }
}
