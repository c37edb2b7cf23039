//! Percentile-bootstrap confidence intervals (Efron & Tibshirani 1993, ch. 13) for a mean over
//! items, and for the paired difference of two models' means over the same items: the items
//! (prompts, questions) are resampled with replacement, the statistic is recomputed on each
//! resample, and the interval is the resamples' `(1 − level)/2` and `(1 + level)/2` quantiles.
//! Pairing resamples each item's difference, so what both models find hard cancels out.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A point estimate with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The statistic on the items as they are.
    pub estimate: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

impl Interval {
    /// Whether the whole interval lies above zero (a gain that resampling does not undo).
    pub fn above_zero(&self) -> bool {
        self.low > 0.0
    }
}

/// The mean of `values` with its `level` (e.g. 0.95) percentile-bootstrap interval over
/// `samples` resamples drawn from `seed`. Empty input gives NaNs.
pub fn mean_interval(values: &[f64], samples: usize, level: f64, seed: u64) -> Interval {
    let n = values.len();
    if n == 0 {
        return Interval {
            estimate: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..samples.max(1))
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    Interval {
        estimate: values.iter().sum::<f64>() / n as f64,
        low: quantile(&means, tail),
        high: quantile(&means, 1.0 - tail),
    }
}

/// The mean gain `after − before` over paired items, with its interval (as [`mean_interval`]
/// over the per-item differences).
pub fn paired_difference(
    before: &[f64],
    after: &[f64],
    samples: usize,
    level: f64,
    seed: u64,
) -> Interval {
    assert_eq!(before.len(), after.len(), "paired values");
    let diffs: Vec<f64> = before.iter().zip(after).map(|(b, a)| a - b).collect();
    mean_interval(&diffs, samples, level, seed)
}

/// The `q` quantile of sorted `values`, interpolated linearly between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-normal draws (sum of 12 uniforms − 6) with a given mean and sd.
    fn draws(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| mean + sd * ((0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0))
            .collect()
    }

    #[test]
    fn interval_matches_the_normal_approximation() {
        // For n = 400 draws with sd 2, the 95% interval is about ±1.96·2/√400 = ±0.196
        // around the sample mean; the bootstrap's should agree within 10%.
        let x = draws(400, 1.0, 2.0, 1);
        let ci = mean_interval(&x, 4000, 0.95, 7);
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        let half = 1.96 * sd / n.sqrt();
        assert!((ci.estimate - mean).abs() < 1e-12);
        assert!(ci.low < mean && mean < ci.high, "{ci:?}");
        let got = (ci.high - ci.low) / 2.0;
        assert!((got / half - 1.0).abs() < 0.1, "half-width {got} vs {half}");
    }

    #[test]
    fn pairing_cancels_what_both_share() {
        // Item difficulty (sd 3) is shared; the gain is 0.3 with noise 0.2 per item. Unpaired,
        // the difficulty swamps the gain; paired, the interval is tight and above zero.
        let difficulty = draws(300, 0.0, 3.0, 2);
        let noise = draws(300, 0.0, 0.2, 3);
        let after: Vec<f64> = difficulty
            .iter()
            .zip(&noise)
            .map(|(d, e)| d + 0.3 + e)
            .collect();
        let gain = paired_difference(&difficulty, &after, 2000, 0.95, 4);
        assert!(gain.above_zero() && gain.high < 0.4, "{gain:?}");
        let spread = |x: &[f64]| {
            let ci = mean_interval(x, 2000, 0.95, 4);
            ci.high - ci.low
        };
        assert!(spread(&after) > 10.0 * (gain.high - gain.low));
    }

    #[test]
    fn constant_values_have_a_point_interval_and_seeds_reproduce() {
        let ci = mean_interval(&[0.5; 50], 100, 0.95, 0);
        assert_eq!((ci.estimate, ci.low, ci.high), (0.5, 0.5, 0.5));
        let x = draws(50, 0.0, 1.0, 5);
        assert_eq!(
            mean_interval(&x, 500, 0.9, 9),
            mean_interval(&x, 500, 0.9, 9)
        );
        assert_ne!(
            mean_interval(&x, 500, 0.9, 9),
            mean_interval(&x, 500, 0.9, 10)
        );
        assert!(mean_interval(&[], 10, 0.95, 0).estimate.is_nan());
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.625) - 2.5).abs() < 1e-12);
    }
}
