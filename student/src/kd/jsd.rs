//! Generalized Jensen–Shannon distillation JSD_β, as in GKD (Agarwal et al. 2024, "On-Policy
//! Distillation of Language Models: Learning from Self-Generated Mistakes", arXiv:2306.13649).
//!
//! With M = β·p_T + (1−β)·p_S, JSD_β = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M), on
//! temperature-softened distributions and scaled by τ². It is bounded (by the entropy of
//! (β, 1−β)) and symmetric at β = 0.5. Limits: as β → 0, JSD_β ≈ β·KL(p_T ‖ p_S) (forward KL
//! times β); as β → 1, JSD_β ≈ (1−β)·KL(p_S ‖ p_T) (reverse KL times 1−β). At either end the
//! loss itself vanishes, so β is kept inside (0, 1) and the endpoints are not special-cased.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use distill_model::fused::Divergence;

use super::{TeacherSignal, against_logits, kl, top_k_log_probs};

/// JSD_β: `τ² · [β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M)]` with `M = β·p_T + (1−β)·p_S`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsdConfig {
    /// Teacher weight β in the mixture M, in (0, 1): small β behaves like forward KL, large β
    /// like reverse KL. Default 0.5 (the symmetric Jensen–Shannon divergence).
    pub beta: f64,
    /// Softening temperature τ of both distributions; the loss is scaled by τ². Default 1.0.
    pub temperature: f64,
}

impl Default for JsdConfig {
    fn default() -> Self {
        Self {
            beta: 0.5,
            temperature: 1.0,
        }
    }
}

impl JsdConfig {
    /// Per-position JSD_β `[N]`, τ²-scaled, of student logits `[N, V]`; differentiable with
    /// respect to the student logits only.
    pub fn divergence(&self, student_logits: Tensor<2>, teacher: &TeacherSignal) -> Tensor<1> {
        let (tau, beta) = (self.temperature, self.beta);
        let (t, s) = match teacher {
            TeacherSignal::Logits(z) => {
                return against_logits(student_logits, z, Divergence::Jsd(beta), tau);
            }
            TeacherSignal::TopK { ids, logprobs } => {
                top_k_log_probs(student_logits, ids, logprobs, tau)
            }
        };
        // log M = logsumexp(ln β + t, ln(1−β) + s), shifted by a constant max so that tokens
        // both sides give ~0 probability do not underflow to log 0.
        let a = t.clone().add_scalar(beta.ln());
        let b = s.clone().add_scalar((1.0 - beta).ln());
        let top = a.clone().max_pair(b.clone()).detach();
        let m = ((a - top.clone()).exp() + (b - top.clone()).exp()).log() + top;
        (kl(t, m.clone()).mul_scalar(beta) + kl(s, m).mul_scalar(1.0 - beta)).mul_scalar(tau * tau)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kd::testing::*;

    /// JSD_β over any outcomes, from log-probabilities.
    fn reference(beta: f64, t: &[f64], s: &[f64]) -> f64 {
        let (pt, ps): (Vec<f64>, Vec<f64>) = (
            t.iter().map(|x| x.exp()).collect(),
            s.iter().map(|x| x.exp()).collect(),
        );
        let m: Vec<f64> = (0..t.len())
            .map(|i| beta * pt[i] + (1.0 - beta) * ps[i])
            .collect();
        (0..t.len())
            .map(|i| {
                beta * pt[i] * (pt[i] / m[i]).ln() + (1.0 - beta) * ps[i] * (ps[i] / m[i]).ln()
            })
            .sum()
    }

    fn config(beta: f64, temperature: f64) -> JsdConfig {
        JsdConfig { beta, temperature }
    }

    #[test]
    fn matches_a_hand_computed_value() {
        // V = 3, τ = 2, β = 0.3: p = softmax(z / 2), m = 0.3 p_T + 0.7 p_S,
        // loss = 4 · Σ [0.3 p_T ln(p_T / m) + 0.7 p_S ln(p_S / m)].
        let (zs, zt) = ([1.0, 2.0, 0.0], [0.5, 0.0, 2.0]);
        let ps = softmax64(&[0.5, 1.0, 0.0]);
        let pt = softmax64(&[0.25, 0.0, 1.0]);
        let want = 4.0
            * (0..3)
                .map(|i| {
                    let m = 0.3 * pt[i] + 0.7 * ps[i];
                    0.3 * pt[i] * (pt[i] / m).ln() + 0.7 * ps[i] * (ps[i] / m).ln()
                })
                .sum::<f64>();
        let got = full_value(|z, t| config(0.3, 2.0).divergence(z, t), &[&zs], &[&zt]);
        // f32 arithmetic: the mixture's log costs JSD a few more bits than the KLs.
        assert_rel(got, want, 1e-5);
        // The τ² factor: at τ = 2 the loss is 4 × the τ = 1 loss of the halved logits.
        let halved = full_value(
            |z, t| config(0.3, 1.0).divergence(z, t),
            &[&[0.5, 1.0, 0.0]],
            &[&[0.25, 0.0, 1.0]],
        );
        assert_rel(got, 4.0 * halved, 1e-5);
    }

    #[test]
    fn small_and_large_beta_approach_forward_and_reverse_kl() {
        let (zs, zt): (&[f64], &[f64]) = (&[1.0, 2.0, 0.0, -1.0], &[0.5, 0.0, 2.0, 1.0]);
        let jsd = |beta| full_value(|z, t| config(beta, 1.0).divergence(z, t), &[zs], &[zt]);
        let (t, s) = (log_softmax64(zt), log_softmax64(zs));
        let forward: f64 = (0..4).map(|i| t[i].exp() * (t[i] - s[i])).sum();
        let reverse: f64 = (0..4).map(|i| s[i].exp() * (s[i] - t[i])).sum();
        assert_rel(jsd(1e-3) / 1e-3, forward, 2e-2);
        assert_rel(jsd(1.0 - 1e-3) / 1e-3, reverse, 2e-2);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        check_gradients(
            |z, t| config(0.3, 1.5).divergence(z, t),
            |t, s| reference(0.3, t, s),
            1.5,
        );
    }

    #[test]
    fn zero_only_when_student_equals_teacher() {
        check_zero_at_teacher(|z, t| config(0.5, 1.5).divergence(z, t), 1.5);
    }
}
