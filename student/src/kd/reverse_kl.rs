//! Reverse KL distillation, KL(p_S ‖ p_T) on temperature-softened distributions, scaled by τ²
//! (as in MiniLLM, Gu et al. 2024, arXiv:2306.08543). Mode-seeking: the student is pushed to
//! put its mass where the teacher is confident, and may ignore the teacher's minor modes.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use distill_model::fused::Divergence;

use super::{TeacherSignal, against_logits, kl, top_k_log_probs};

/// Reverse KL: `τ² · Σ_v p_S,v (log p_S,v − log p_T,v)` with `p = softmax(z / τ)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReverseKlConfig {
    /// Softening temperature τ of both distributions; the loss is scaled by τ². Default 1.0.
    pub temperature: f64,
}

impl Default for ReverseKlConfig {
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

impl ReverseKlConfig {
    /// Per-position KL(p_S ‖ p_T) `[N]`, τ²-scaled, of student logits `[N, V]`; differentiable
    /// with respect to the student logits only.
    pub fn divergence(&self, student_logits: Tensor<2>, teacher: &TeacherSignal) -> Tensor<1> {
        let tau = self.temperature;
        match teacher {
            TeacherSignal::Logits(z) => against_logits(student_logits, z, Divergence::Reverse, tau),
            TeacherSignal::TopK { ids, logprobs } => {
                let (t, s) = top_k_log_probs(student_logits, ids, logprobs, tau);
                kl(s, t).mul_scalar(tau * tau)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kd::testing::*;

    /// KL(p_S ‖ p_T) over any outcomes, from log-probabilities.
    fn reference(t: &[f64], s: &[f64]) -> f64 {
        t.iter().zip(s).map(|(t, s)| s.exp() * (s - t)).sum()
    }

    fn config(temperature: f64) -> ReverseKlConfig {
        ReverseKlConfig { temperature }
    }

    #[test]
    fn matches_a_hand_computed_value() {
        // V = 3, τ = 2: p = softmax(z / 2), loss = 4 · Σ p_S (ln p_S − ln p_T).
        let (zs, zt) = ([1.0, 2.0, 0.0], [0.5, 0.0, 2.0]);
        let ps = softmax64(&[0.5, 1.0, 0.0]);
        let pt = softmax64(&[0.25, 0.0, 1.0]);
        let want = 4.0 * (0..3).map(|i| ps[i] * (ps[i] / pt[i]).ln()).sum::<f64>();
        let got = full_value(|z, t| config(2.0).divergence(z, t), &[&zs], &[&zt]);
        assert_rel(got, want, 1e-6);
        // The τ² factor: at τ = 2 the loss is 4 × the τ = 1 loss of the halved logits.
        let halved = full_value(
            |z, t| config(1.0).divergence(z, t),
            &[&[0.5, 1.0, 0.0]],
            &[&[0.25, 0.0, 1.0]],
        );
        assert_rel(got, 4.0 * halved, 1e-6);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check_gradients(|z, t| config(1.5).divergence(z, t), reference, 1.5);
    }

    #[test]
    fn zero_only_when_student_equals_teacher() {
        check_zero_at_teacher(|z, t| config(1.5).divergence(z, t), 1.5);
    }
}
