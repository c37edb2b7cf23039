//! From a rollout's scores to PPO's targets: per-token rewards with the KL penalty,
//! generalized advantage estimation (Schulman et al. 2016), and whitening. Plain host code
//! over one response at a time: responses are short, and this is the part worth reading.

/// Per-token rewards of one response: −β·(log π − log π_ref) at every token (the sampled-token
/// KL estimate), plus the reward model's `score` at the last token. Returns the rewards and the
/// response's summed KL estimate.
pub fn token_rewards(
    score: f32,
    logprobs: &[f32],
    ref_logprobs: &[f32],
    beta: f64,
) -> (Vec<f32>, f64) {
    let mut kl_sum = 0.0;
    let mut rewards: Vec<f32> = logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(&lp, &rlp)| {
            let kl = f64::from(lp) - f64::from(rlp);
            kl_sum += kl;
            (-beta * kl) as f32
        })
        .collect();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    (rewards, kl_sum)
}

/// Advantages and returns of one response (its tokens only, the last one terminal):
/// δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, returns = A + V.
pub fn gae(rewards: &[f32], values: &[f32], gamma: f64, lam: f64) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    assert_eq!(values.len(), n, "one value per reward");
    let mut advantages = vec![0.0f32; n];
    let mut next_advantage = 0.0f64;
    for t in (0..n).rev() {
        let next_value = if t + 1 < n {
            f64::from(values[t + 1])
        } else {
            0.0
        };
        let delta = f64::from(rewards[t]) + gamma * next_value - f64::from(values[t]);
        next_advantage = delta + gamma * lam * next_advantage;
        advantages[t] = next_advantage as f32;
    }
    let returns = advantages.iter().zip(values).map(|(a, v)| a + v).collect();
    (advantages, returns)
}

/// Shifts and scales `values` (all responses' advantages together) to mean 0 and variance 1
/// (the unbiased variance, as torch's `var` in TRL's `whiten`).
pub fn whiten(values: &mut [f32]) {
    let n = values.len();
    if n < 2 {
        return;
    }
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1) as f64;
    let scale = 1.0 / (var + 1e-8).sqrt();
    for v in values {
        *v = ((f64::from(*v) - mean) * scale) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewards_put_the_score_on_the_last_token() {
        let (r, kl) = token_rewards(2.0, &[-1.0, -2.0, -0.5], &[-1.5, -2.0, -1.0], 0.1);
        // KL per token: 0.5, 0, 0.5.
        let expected = [-0.05, 0.0, -0.05 + 2.0];
        for (a, b) in r.iter().zip(expected) {
            assert!((a - b).abs() < 1e-7, "{r:?}");
        }
        assert!((kl - 1.0).abs() < 1e-12);
    }

    #[test]
    fn gae_matches_a_hand_computation() {
        // γ = 0.9, λ = 0.8, three tokens.
        let rewards = [1.0f32, 0.0, 2.0];
        let values = [0.5f32, 1.0, 1.5];
        // δ2 = 2 − 1.5 = 0.5
        // δ1 = 0 + 0.9·1.5 − 1.0 = 0.35
        // δ0 = 1 + 0.9·1.0 − 0.5 = 1.4
        // A2 = 0.5, A1 = 0.35 + 0.72·0.5 = 0.71, A0 = 1.4 + 0.72·0.71 = 1.9112
        let (adv, ret) = gae(&rewards, &values, 0.9, 0.8);
        let want = [1.9112f32, 0.71, 0.5];
        for (a, b) in adv.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{adv:?}");
        }
        for ((r, a), v) in ret.iter().zip(want).zip(values) {
            assert!((r - (a + v)).abs() < 1e-6, "{ret:?}");
        }
        // γ = λ = 1: the advantage is the reward-to-go minus the value.
        let (adv, _) = gae(&rewards, &values, 1.0, 1.0);
        for (t, a) in adv.iter().enumerate() {
            let to_go: f32 = rewards[t..].iter().sum();
            assert!((a - (to_go - values[t])).abs() < 1e-6, "{adv:?}");
        }
    }

    #[test]
    fn whitening_gives_zero_mean_unit_variance() {
        let mut v = vec![1.0f32, 2.0, 3.0, 4.0];
        whiten(&mut v);
        // mean 2.5, unbiased variance 5/3.
        let s = (5.0f64 / 3.0).sqrt();
        let want = [-1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s];
        for (a, b) in v.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "{v:?}");
        }
    }
}
