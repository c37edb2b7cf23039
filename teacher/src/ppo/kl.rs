//! The KL coefficient β of the reward's penalty: fixed, or adapted toward a target KL with the
//! proportional controller of Ziegler et al. 2019, "Fine-Tuning Language Models from Human
//! Preferences" (TRL's `AdaptiveKLController`).

use serde::{Deserialize, Serialize};

/// β and how it moves; saved with each checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    /// The current coefficient β.
    #[serde(with = "super::exact")]
    pub value: f64,
    /// The KL (nats per sequence) β steers toward; `None` keeps β fixed.
    #[serde(with = "super::exact::option")]
    pub target: Option<f64>,
    /// Samples over which a full proportional correction is applied.
    #[serde(with = "super::exact")]
    pub horizon: f64,
}

impl KlController {
    /// A controller starting at `init`, adaptive when `target` is given.
    pub fn new(init: f64, target: Option<f64>, horizon: f64) -> Self {
        Self {
            value: init,
            target,
            horizon,
        }
    }

    /// After a batch of `n` samples whose mean KL was `current`:
    /// β ← β·(1 + clip((KL − target)/target, −0.2, 0.2)·n/horizon).
    pub fn update(&mut self, current: f64, n: usize) {
        if let Some(target) = self.target {
            let error = ((current - target) / target).clamp(-0.2, 0.2);
            self.value *= 1.0 + error * n as f64 / self.horizon;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_beta_follows_the_clipped_proportional_rule() {
        let mut c = KlController::new(0.2, Some(6.0), 10_000.0);
        // KL 9: error 0.5, clipped to 0.2; 256 samples → ×(1 + 0.2·0.0256).
        c.update(9.0, 256);
        assert!((c.value - 0.2 * 1.00512).abs() < 1e-15, "{}", c.value);
        // KL 5.4: error −0.1 → ×(1 − 0.1·0.0256).
        let before = c.value;
        c.update(5.4, 256);
        assert!((c.value - before * (1.0 - 0.00256)).abs() < 1e-15);
        let mut fixed = KlController::new(0.2, None, 10_000.0);
        fixed.update(100.0, 256);
        assert_eq!(fixed.value, 0.2);
    }
}
