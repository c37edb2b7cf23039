//! PPO's clipped objectives (PPO2, as in TRL's `PPOTrainer.loss`): the clipped surrogate for the
//! policy and the clipped value loss, each a mean over the response tokens a mask selects.

use burn::prelude::*;

/// What one minibatch's forward gives the losses, `[batch, response]` each.
pub struct PpoInputs {
    /// log π(token) under the policy being trained.
    pub logprobs: Tensor<2>,
    /// log π(token) when the rollout was made.
    pub old_logprobs: Tensor<2>,
    /// Whitened advantages.
    pub advantages: Tensor<2>,
    /// Value predictions of the policy being trained.
    pub values: Tensor<2>,
    /// Value predictions when the rollout was made.
    pub old_values: Tensor<2>,
    /// GAE returns (the value targets).
    pub returns: Tensor<2>,
    /// 1 on response tokens, 0 on padding.
    pub mask: Tensor<2>,
}

/// The losses and their diagnostics.
pub struct PpoLosses {
    /// mean(max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))), ρ = exp(log π − log π_old).
    pub policy: Tensor<1>,
    /// ½·mean(max((V − R)², (clip(V, V_old ± ε_v) − R)²)).
    pub value: Tensor<1>,
    /// Share of tokens where the clipped surrogate was the larger (the clip was active).
    pub clip_frac: Tensor<1>,
}

fn masked_mean(x: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let total = mask.clone().sum().clamp_min(1e-12);
    (x * mask).sum().div(total)
}

/// The clipped policy and value losses with `cliprange` ε and `cliprange_value` ε_v.
pub fn ppo_losses(inputs: PpoInputs, cliprange: f64, cliprange_value: f64) -> PpoLosses {
    let PpoInputs {
        logprobs,
        old_logprobs,
        advantages,
        values,
        old_values,
        returns,
        mask,
    } = inputs;
    let v_clipped = values
        .clone()
        .max_pair(old_values.clone().sub_scalar(cliprange_value))
        .min_pair(old_values.add_scalar(cliprange_value));
    let vf1 = (values - returns.clone()).square();
    let vf2 = (v_clipped - returns).square();
    let value = masked_mean(vf1.max_pair(vf2), mask.clone()).mul_scalar(0.5);

    let ratio = (logprobs - old_logprobs).exp();
    let pg1 = advantages.clone().neg() * ratio.clone();
    let pg2 = advantages.neg() * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let clip_frac = masked_mean(pg2.clone().greater(pg1.clone()).float(), mask.clone());
    let policy = masked_mean(pg1.max_pair(pg2), mask);
    PpoLosses {
        policy,
        value,
        clip_frac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(device: &Device, v: [[f32; 3]; 1]) -> Tensor<2> {
        Tensor::from_data(v, device)
    }

    #[test]
    fn clipped_losses_match_hand_computed_values() {
        let device = Device::flex();
        // Three tokens, the last one padding.
        // Token 0: ρ = e^0.5 ≈ 1.6487, A = 1: −A·ρ = −1.6487, clipped −1.2 → max −1.2 (clipped).
        // Token 1: ρ = e^−0.5 ≈ 0.6065, A = 2: −1.2131 vs −1.6 → max −1.2131 (not clipped).
        let losses = ppo_losses(
            PpoInputs {
                logprobs: t(&device, [[-0.5, -1.5, 9.0]]),
                old_logprobs: t(&device, [[-1.0, -1.0, 0.0]]),
                advantages: t(&device, [[1.0, 2.0, 5.0]]),
                values: t(&device, [[1.0, 0.0, 3.0]]),
                old_values: t(&device, [[0.5, 0.1, 0.0]]),
                returns: t(&device, [[2.0, -1.0, 7.0]]),
                mask: t(&device, [[1.0, 1.0, 0.0]]),
            },
            0.2,
            0.2,
        );
        let scalar = |x: Tensor<1>| f64::from(x.into_scalar::<f32>());
        let pg = (-1.2 + -(2.0 * (-0.5f64).exp())) / 2.0;
        assert!((scalar(losses.policy) - pg).abs() < 1e-6);
        assert!((scalar(losses.clip_frac) - 0.5).abs() < 1e-7);
        // Token 0: V = 1 clipped to 0.7; (1 − 2)² = 1 vs (0.7 − 2)² = 1.69 → 1.69.
        // Token 1: V = 0 within 0.1 ± 0.2; (0 + 1)² = 1 both → 1.
        let vf = 0.5 * (1.69 + 1.0) / 2.0;
        assert!((scalar(losses.value) - vf).abs() < 1e-6);
    }
}
