//! Per-row negative log-likelihood, `logsumexp(xᵢ) − xᵢ[tᵢ]`, as one backend operation with its
//! own backward, `gᵢ · (softmax(xᵢ) − onehot(tᵢ))`: the cross-entropy of every training loop.
//! Composed, it was 40% of a pretraining step with a 49k-token vocabulary; fused on the CPU it
//! reads the logits twice forward and writes the gradient over them backward.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use rayon::prelude::*;

use super::simd::{log_sum_exp, scaled_exp};
use super::{all_f32, checked_ids, differentiable, rewrite_rows, values};

/// `logits [rows, vocab]`, `targets [rows]` → `[rows]`: each row's negative log-likelihood of
/// its target, differentiable in `logits`.
pub fn row_nll(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as RowNllOps>::row_nll(
        logits.into_dispatch(),
        targets.into_dispatch(),
    ))
}

/// The backend extension behind [`row_nll`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait RowNllOps: Backend {
    /// `logits [rows, vocab]`, `targets [rows]` → `[rows]`.
    fn row_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        composed_row_nll::<Self>(logits, targets)
    }

    /// The gradient of `row_nll` with respect to `logits` for the output gradient `grad`
    /// `[rows]`: `[rows, vocab]`.
    fn row_nll_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_row_nll_backward::<Self>(logits, targets, grad)
    }
}

/// [`RowNllOps::row_nll`] from burn's operations.
fn composed_row_nll<B: Backend>(logits: FloatTensor<B>, targets: IntTensor<B>) -> FloatTensor<B> {
    let rows = logits.shape()[0];
    let max = B::float_max_dim(B::float_detach(logits.clone()), 1);
    let shifted = B::float_sub(logits, max);
    let lse = B::float_log(B::float_sum_dim(B::float_exp(shifted.clone()), 1));
    let picked = B::float_gather(1, shifted, B::int_reshape(targets, [rows, 1].into()));
    B::float_reshape(B::float_sub(lse, picked), [rows].into())
}

/// [`RowNllOps::row_nll_backward`] from burn's operations.
fn composed_row_nll_backward<B: Backend>(
    logits: FloatTensor<B>,
    targets: IntTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let rows = logits.shape()[0];
    let grad = B::float_reshape(grad, [rows, 1].into());
    let scaled = B::float_mul(B::softmax(logits, 1), grad.clone());
    B::float_scatter(
        1,
        scaled,
        B::int_reshape(targets, [rows, 1].into()),
        B::float_neg(grad),
        IndexingUpdateOp::Add,
    )
}

impl RowNllOps for Cube {}

impl RowNllOps for Flex {
    fn row_nll(logits: FlexTensor, targets: FlexTensor) -> FlexTensor {
        if !all_f32(&[&logits]) {
            return composed_row_nll::<Flex>(logits, targets);
        }
        let logits = logits.to_contiguous();
        let (rows, vocab) = dims_of(&logits);
        let x = values(&logits);
        let t = checked_ids(targets, rows, vocab, "row_nll");
        let out: Vec<f32> = x
            .par_chunks(vocab)
            .zip(t.par_iter())
            .map(|(row, &t)| log_sum_exp(row) - row[t])
            .collect();
        FlexTensor::from_data(TensorData::new(out, [rows]))
    }

    fn row_nll_backward(logits: FlexTensor, targets: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if !all_f32(&[&logits, &grad]) {
            return composed_row_nll_backward::<Flex>(logits, targets, grad);
        }
        // The gradient replaces the logits, which the graph no longer needs: in place, or
        // row by row into a fresh buffer when they are shared.
        let logits = logits.to_contiguous();
        let (rows, vocab) = dims_of(&logits);
        let t = checked_ids(targets, rows, vocab, "row_nll");
        let g = grad.to_contiguous();
        let g = values(&g);
        rewrite_rows(logits, vocab, |i, row| {
            let lse = log_sum_exp(row);
            scaled_exp(row, lse, g[i]);
            row[t[i]] -= g[i];
        })
    }
}

impl<B: RowNllOps, C: CheckpointStrategy> RowNllOps for Autodiff<B, C> {
    fn row_nll(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        differentiable::<B, C, IntTensor<B>, 1>(
            [logits],
            targets,
            |[logits], targets| B::row_nll(logits, targets),
            |[logits], targets, grad| [B::row_nll_backward(logits, targets, grad)],
        )
    }
}

/// `[rows, vocab]` of 2-D logits.
fn dims_of(logits: &FlexTensor) -> (usize, usize) {
    let shape = logits.shape();
    assert_eq!(shape.num_dims(), 2, "row_nll takes [rows, vocab] logits");
    (shape[0], shape[1])
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use burn::tensor::activation::log_softmax;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Logits `[rows, vocab]` of spread `scale` and targets, seeded.
    fn case(rows: usize, vocab: usize, scale: f32, seed: u64) -> (Vec<f32>, Vec<i64>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = (0..rows * vocab)
            .map(|_| scale * (rng.random::<f32>() - 0.5))
            .collect();
        let t = (0..rows)
            .map(|_| rng.random_range(0..vocab as i64))
            .collect();
        (x, t)
    }

    /// Loss and gradient through autodiff: the fused op against log-softmax and gather, with
    /// per-row weights on the loss so every row's gradient differs.
    #[test]
    fn fused_loss_and_gradient_match_log_softmax() {
        let device = Device::flex().autodiff();
        for (rows, vocab, scale) in [
            (37usize, 1003usize, 16.0f32),
            (5, 16, 1.0),
            (3, 49_152, 40.0),
        ] {
            let (x, t) = case(rows, vocab, scale, rows as u64);
            let w: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 / rows as f32).collect();
            let x = || {
                Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, vocab]), &device)
                    .require_grad()
            };
            let t = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [rows]), &device);
            let w = Tensor::<1>::from_data(TensorData::new(w, [rows]), &device);

            let fused_x = x();
            let fused = row_nll(fused_x.clone(), t.clone());
            let fused_grad = fused_x
                .grad(&(fused.clone() * w.clone()).sum().backward())
                .unwrap();

            let ref_x = x();
            let picked = log_softmax(ref_x.clone(), 1).gather(1, t.clone().reshape([rows, 1]));
            let reference = picked.reshape([rows]).neg();
            let ref_grad = ref_x
                .grad(&(reference.clone() * w).sum().backward())
                .unwrap();

            let v = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            let (a, b) = (v(fused), v(reference));
            let tol = 2e-6 * b.iter().fold(1f32, |m, x| m.max(x.abs()));
            assert!(
                max_abs_diff(&a, &b) <= tol,
                "{rows}x{vocab}: loss {a:?} vs {b:?}"
            );
            let g = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
            let d = max_abs_diff(&g(fused_grad), &g(ref_grad));
            assert!(d < 1e-6, "{rows}x{vocab}: gradient differs by {d}");
        }
    }

    /// The composed path (what WGPU runs) against the fused one, forward and backward.
    #[test]
    fn composed_path_matches_the_fused_one() {
        let (rows, vocab) = (9, 301);
        let (x, t) = case(rows, vocab, 12.0, 7);
        let g: Vec<f32> = (0..rows).map(|i| i as f32 - 4.0).collect();
        let x = FlexTensor::from_data(TensorData::new(x, [rows, vocab]));
        let t = FlexTensor::from_data(TensorData::new(t, [rows]));
        let g = FlexTensor::from_data(TensorData::new(g, [rows]));
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let fused = v(Flex::row_nll(x.clone(), t.clone()));
        let composed = v(composed_row_nll::<Flex>(x.clone(), t.clone()));
        assert!(
            max_abs_diff(&fused, &composed) < 1e-5,
            "{fused:?} vs {composed:?}"
        );
        let fused = v(Flex::row_nll_backward(x.clone(), t.clone(), g.clone()));
        let composed = v(composed_row_nll_backward::<Flex>(x, t, g));
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
    }

    /// The backward writes unique logits in place and reads shared ones into a fresh buffer,
    /// leaving them as they were: the two give the same bits.
    #[test]
    fn backward_of_shared_and_unique_logits_agree() {
        let (rows, vocab) = (7, 523);
        let (x, t) = case(rows, vocab, 20.0, 11);
        let g: Vec<f32> = (0..rows).map(|i| 0.25 * i as f32 - 0.5).collect();
        let x = FlexTensor::from_data(TensorData::new(x, [rows, vocab]));
        let t = FlexTensor::from_data(TensorData::new(t, [rows]));
        let g = FlexTensor::from_data(TensorData::new(g, [rows]));
        let v = |t: &FlexTensor| t.clone().into_data().try_to_vec::<f32>().unwrap();
        let before = v(&x);
        let shared = Flex::row_nll_backward(x.clone(), t.clone(), g.clone());
        assert_eq!(v(&x), before, "the shared logits were changed");
        let unique = FlexTensor::from_data(TensorData::new(before, [rows, vocab]));
        assert!(unique.is_unique());
        let in_place = Flex::row_nll_backward(unique, t, g);
        assert_eq!(v(&shared), v(&in_place));
    }
}
