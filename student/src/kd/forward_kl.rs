//! Forward KL distillation, KL(p_T ‖ p_S) on temperature-softened distributions, scaled by τ²
//! (Hinton et al. 2015, arXiv:1503.02531). Mode-covering: the student is pushed to put mass
//! wherever the teacher does.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use distill_model::fused::{Divergence, top_k_forward_kl};

use super::{TeacherSignal, against_logits, constant};

/// Forward KL: `τ² · Σ_v p_T,v (log p_T,v − log p_S,v)` with `p = softmax(z / τ)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardKlConfig {
    /// Softening temperature τ of both distributions; the loss is scaled by τ². Default 1.0.
    pub temperature: f64,
}

impl Default for ForwardKlConfig {
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

impl ForwardKlConfig {
    /// Per-position KL(p_T ‖ p_S) `[N]`, τ²-scaled, of student logits `[N, V]`; differentiable
    /// with respect to the student logits only.
    pub fn divergence(&self, student_logits: Tensor<2>, teacher: &TeacherSignal) -> Tensor<1> {
        let tau = self.temperature;
        match teacher {
            TeacherSignal::Logits(z) => against_logits(student_logits, z, Divergence::Forward, tau),
            TeacherSignal::TopK { ids, logprobs } => {
                // One fused operation on the CPU (see `top_k_forward_kl`).
                let device = student_logits.device();
                let (ids, logprobs) = (
                    constant(ids.clone(), &device),
                    constant(logprobs.clone(), &device),
                );
                top_k_forward_kl(student_logits, ids, logprobs, tau)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kd::testing::*;

    /// KL(p_T ‖ p_S) over any outcomes, from log-probabilities.
    fn reference(t: &[f64], s: &[f64]) -> f64 {
        t.iter().zip(s).map(|(t, s)| t.exp() * (t - s)).sum()
    }

    fn config(temperature: f64) -> ForwardKlConfig {
        ForwardKlConfig { temperature }
    }

    #[test]
    fn matches_a_hand_computed_value() {
        // V = 3, τ = 2: p = softmax(z / 2), loss = 4 · Σ p_T (ln p_T − ln p_S).
        let (zs, zt) = ([1.0, 2.0, 0.0], [0.5, 0.0, 2.0]);
        let ps = softmax64(&[0.5, 1.0, 0.0]);
        let pt = softmax64(&[0.25, 0.0, 1.0]);
        let want = 4.0 * (0..3).map(|i| pt[i] * (pt[i] / ps[i]).ln()).sum::<f64>();
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
