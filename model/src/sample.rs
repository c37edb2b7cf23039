//! Drawing the next token from a row of logits: greedy, or temperature + top-k + top-p
//! sampling, reproducible from a seed.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// How to pick the next token. The default is greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 (or anything not positive) means greedy argmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 means no limit.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// 1.0 (or more) means no limit. At least one token is always kept.
    pub top_p: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Whether this config always picks the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature.is_nan() || self.temperature <= 0.0 || self.top_k == 1
    }
}

/// Draws token ids from logits according to a [`SamplingConfig`], with its own seeded RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose random generator is seeded from `config.seed`.
    pub fn new(config: SamplingConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Self { config, rng }
    }

    /// The config this sampler was built from.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Picks the next token id from one row of logits.
    ///
    /// Greedy sampling returns the first index of the largest logit and draws nothing from
    /// the RNG; otherwise exactly one uniform number is drawn per call. NaN logits are never
    /// picked; an empty or all-NaN row yields 0.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.config.is_greedy() {
            return argmax(logits);
        }
        let candidates = self.distribution(logits);
        let u: f64 = self.rng.random();
        let total: f64 = candidates.iter().map(|&(_, p)| p).sum();
        let mut target = u * total;
        for &(id, p) in &candidates {
            if target < p {
                return id;
            }
            target -= p;
        }
        // Rounding left a sliver past the last candidate.
        candidates.last().map_or(0, |&(id, _)| id)
    }

    /// The candidate tokens with their renormalized probabilities after temperature, top-k and
    /// top-p. Greedy configs, and rows whose largest logit is not finite, give the argmax alone.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        let greedy = || vec![(argmax(logits), 1.0)];
        if self.config.is_greedy() {
            return greedy();
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| !x.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return greedy();
        }
        let temperature = f64::from(self.config.temperature);
        let mut scaled: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, x)| !x.is_nan() && **x > f32::NEG_INFINITY)
            .map(|(i, &x)| (i as u32, f64::from(x) / temperature))
            .collect();

        // Most likely first; ties keep the lower id first, so the order is total.
        let by_score = |a: &(u32, f64), b: &(u32, f64)| -> Ordering {
            b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
        };
        let top_k = self.config.top_k;
        let top_p = f64::from(self.config.top_p);
        let use_top_p = top_p < 1.0; // false for NaN
        if top_k > 0 && top_k < scaled.len() {
            scaled.select_nth_unstable_by(top_k - 1, by_score);
            scaled.truncate(top_k);
            scaled.sort_unstable_by(by_score);
        } else if use_top_p {
            scaled.sort_unstable_by(by_score);
        }

        // Stable softmax in f64.
        let max_score = scaled
            .iter()
            .map(|&(_, s)| s)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for entry in &mut scaled {
            entry.1 = (entry.1 - max_score).exp();
            sum += entry.1;
        }
        for entry in &mut scaled {
            entry.1 /= sum;
        }

        if use_top_p {
            // `scaled` is sorted, most likely first.
            let mut mass = 0.0;
            let mut keep = scaled.len();
            for (i, &(_, p)) in scaled.iter().enumerate() {
                mass += p;
                if mass >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            scaled.truncate(keep.max(1));
            let kept: f64 = scaled.iter().map(|&(_, p)| p).sum();
            for entry in &mut scaled {
                entry.1 /= kept;
            }
        }
        scaled
    }
}

impl From<SamplingConfig> for Sampler {
    fn from(config: SamplingConfig) -> Self {
        Self::new(config)
    }
}

/// The index of the first largest logit, ignoring NaN; 0 for an empty or all-NaN row.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed,
        }
    }

    const LOGITS: [f32; 8] = [0.5, 2.0, -1.0, 1.5, 2.0, 0.0, -3.0, 1.0];

    fn softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let w: Vec<f64> = logits
            .iter()
            .map(|&x| ((x as f64 - max) / temperature).exp())
            .collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    }

    #[test]
    fn default_is_greedy() {
        let c = SamplingConfig::default();
        assert_eq!(c.temperature, 0.0);
        assert_eq!(c.top_k, 0);
        assert_eq!(c.top_p, 1.0);
        assert!(c.is_greedy());
        // Missing fields take their defaults.
        let c: SamplingConfig = serde_json::from_str(r#"{"temperature": 0.7}"#).unwrap();
        assert_eq!(c.top_p, 1.0);
        assert!(!c.is_greedy());
    }

    #[test]
    fn greedy_picks_first_argmax() {
        let mut s = Sampler::new(SamplingConfig::default());
        assert_eq!(s.sample(&LOGITS), 1);
        assert_eq!(s.sample(&[3.0, -1.0, 7.5, 7.5]), 2);
        assert_eq!(s.sample(&[f32::NAN, -1.0, f32::NAN, -0.5]), 3);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(s.sample(&[]), 0);
        assert_eq!(argmax(&[1.0, f32::INFINITY, 2.0]), 1);
    }

    #[test]
    fn top_k_one_equals_greedy() {
        let rows: Vec<Vec<f32>> = (0..50)
            .map(|r| {
                (0..100)
                    .map(|i| ((i * 37 + r * 11) % 101) as f32 / 7.0)
                    .collect()
            })
            .collect();
        for temperature in [0.1, 1.0, 5.0, 100.0] {
            let mut s = Sampler::new(config(temperature, 1, 1.0, 7));
            for row in &rows {
                assert_eq!(s.sample(row), argmax(row));
            }
            let mut s = Sampler::new(config(temperature, 1, 0.5, 7));
            assert_eq!(s.sample(&LOGITS), 1);
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let draw = |seed| {
            let mut s = Sampler::new(config(1.0, 0, 1.0, seed));
            (0..200).map(|_| s.sample(&LOGITS)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        // A clone continues identically.
        let mut a = Sampler::new(config(0.8, 5, 0.9, 9));
        a.sample(&LOGITS);
        let mut b = a.clone();
        for _ in 0..50 {
            assert_eq!(a.sample(&LOGITS), b.sample(&LOGITS));
        }
    }

    #[test]
    fn top_p_never_draws_excluded_tokens() {
        // Probabilities ~ [0.5, 0.3, 0.15, 0.05]: top_p 0.75 keeps exactly ids 0 and 1.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(config(1.0, 0, 0.75, 3));
        let kept: Vec<u32> = s.distribution(&logits).iter().map(|&(id, _)| id).collect();
        assert_eq!(kept, vec![0, 1]);
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > 0, "{counts:?}");

        // top_p so small that no token reaches it alone still keeps the most likely one.
        let mut s = Sampler::new(config(1.0, 0, 0.0, 3));
        for _ in 0..100 {
            assert_eq!(s.sample(&logits), 0);
        }
        // top_k and top_p combine: top_k 3 then top_p 0.9 of the renormalized three.
        let s = Sampler::new(config(1.0, 3, 0.9, 3));
        let kept: Vec<u32> = s.distribution(&logits).iter().map(|&(id, _)| id).collect();
        assert_eq!(kept, vec![0, 1, 2]);
        let s = Sampler::new(config(1.0, 3, 0.8, 3));
        let kept: Vec<u32> = s.distribution(&logits).iter().map(|&(id, _)| id).collect();
        assert_eq!(kept, vec![0, 1]);
    }

    #[test]
    fn top_k_keeps_the_k_largest() {
        let s = Sampler::new(config(2.0, 3, 1.0, 0));
        let mut kept: Vec<u32> = s.distribution(&LOGITS).iter().map(|&(id, _)| id).collect();
        kept.sort_unstable();
        assert_eq!(kept, vec![1, 3, 4]);
        let total: f64 = s.distribution(&LOGITS).iter().map(|&(_, p)| p).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn empirical_frequencies_match_softmax() {
        let mut s = Sampler::new(config(1.0, 0, 1.0, 1234));
        let n = 20_000;
        let mut counts = [0usize; LOGITS.len()];
        for _ in 0..n {
            counts[s.sample(&LOGITS) as usize] += 1;
        }
        for (i, p) in softmax(&LOGITS, 1.0).into_iter().enumerate() {
            let freq = counts[i] as f64 / n as f64;
            assert!((freq - p).abs() < 0.02, "token {i}: {freq} vs {p}");
        }
        // Temperature sharpens the distribution the same way.
        let probs: Vec<f64> = {
            let mut d = Sampler::new(config(0.5, 0, 1.0, 0)).distribution(&LOGITS);
            d.sort_by_key(|&(id, _)| id);
            d.into_iter().map(|(_, p)| p).collect()
        };
        for (a, b) in probs.iter().zip(softmax(&LOGITS, 0.5)) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn extreme_logits_are_stable() {
        let mut s = Sampler::new(config(1.0, 0, 1.0, 5));
        let logits = [1e30f32, -1e30, 1e30 - 1.0, f32::NEG_INFINITY, f32::NAN];
        for _ in 0..100 {
            let id = s.sample(&logits);
            assert!(id == 0 || id == 2, "{id}");
        }
        // Masked (-inf) and NaN entries are never drawn.
        let logits = [0.0, f32::NEG_INFINITY, 0.0, f32::NAN];
        for _ in 0..1000 {
            let id = s.sample(&logits);
            assert!(id == 0 || id == 2, "{id}");
        }
        // +inf dominates: falls back to the argmax.
        assert_eq!(s.sample(&[0.0, f32::INFINITY, 1.0]), 1);
        assert_eq!(s.sample(&[]), 0);
        assert_eq!(s.sample(&[f32::NAN]), 0);
    }
}
