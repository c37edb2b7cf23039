//! The language-modelling loss: next-token cross-entropy, optionally over selected positions.

use crate::fused::row_nll;
use burn::prelude::*;

/// Mean cross-entropy of `logits` `[batch, seq, vocab]` against `targets` `[batch, seq]`.
/// With `weights` `[batch, seq]` (1 for positions that count, 0 for the rest) the mean runs
/// over the weighted positions only, as SFT's response-only loss needs.
pub fn cross_entropy(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    weights: Option<Tensor<2>>,
) -> Tensor<1> {
    let [b, s, v] = logits.dims();
    let nll = row_nll(logits.reshape([b * s, v]), targets.reshape([b * s]));
    match weights {
        None => nll.mean(),
        Some(w) => {
            let w = w.reshape([b * s]);
            let total = w.clone().sum().clamp_min(1e-12);
            (nll * w).sum().div(total)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computed_value() {
        let device = Device::flex();
        // One position, logits [0, ln 3]: p(target=1) = 3/4.
        let logits = Tensor::<3>::from_data([[[0.0f32, 3f32.ln()]]], &device);
        let targets = Tensor::<2, Int>::from_data([[1i64]], &device);
        let loss = cross_entropy(logits, targets, None).into_scalar::<f32>();
        assert!((loss - (4.0f32 / 3.0).ln()).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn weights_select_positions() {
        let device = Device::flex();
        let logits = Tensor::<3>::from_data([[[0.0f32, 0.0], [5.0, -5.0]]], &device);
        let targets = Tensor::<2, Int>::from_data([[0i64, 1]], &device);
        let w = Tensor::<2>::from_data([[1.0f32, 0.0]], &device);
        let loss = cross_entropy(logits, targets, Some(w)).into_scalar::<f32>();
        assert!((loss - 2f32.ln()).abs() < 1e-6, "{loss}");
    }
}
