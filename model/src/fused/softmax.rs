//! Softmax over the last dimension as one backend operation with its own backward,
//! `dx = y ⊙ (g − Σ g ⊙ y)` from the saved output `y`: attention's softmax. Fused on the CPU it
//! reads the scores twice and writes them once, in place, where burn's composed softmax makes
//! five passes forward and more backward.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::{simd, values, values_mut};

/// Softmax of `x` over its last dimension, differentiable.
pub fn row_softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as RowSoftmaxOps>::row_softmax(x.into_dispatch()))
}

/// The backend extension behind [`row_softmax`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait RowSoftmaxOps: Backend {
    /// Softmax over the last dimension.
    fn row_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let last = x.shape().num_dims() - 1;
        Self::softmax(x, last)
    }

    /// The input gradient for the output `y` and output gradient `grad`.
    fn row_softmax_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_backward::<Self>(y, grad)
    }
}

/// [`RowSoftmaxOps::row_softmax_backward`] from burn's operations.
fn composed_backward<B: Backend>(y: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let last = y.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(y.clone(), grad.clone()), last);
    B::float_mul(y, B::float_sub(grad, dot))
}

impl RowSoftmaxOps for Cube {}

impl RowSoftmaxOps for Flex {
    fn row_softmax(x: FlexTensor) -> FlexTensor {
        if x.dtype() != DType::F32 {
            let last = x.shape().num_dims() - 1;
            return <Flex as burn::backend::ops::ActivationOps<Flex>>::softmax(x, last);
        }
        let mut x = x.to_contiguous();
        let n = row_len(&x);
        values_mut(&mut x)
            .par_chunks_mut(n)
            .with_min_len(MIN_ELEMENTS.div_ceil(n))
            .for_each(simd::softmax);
        x
    }

    fn row_softmax_backward(y: FlexTensor, grad: FlexTensor) -> FlexTensor {
        if y.dtype() != DType::F32 || grad.dtype() != DType::F32 {
            return composed_backward::<Flex>(y, grad);
        }
        let y = y.to_contiguous();
        let mut grad = grad.to_contiguous();
        let n = row_len(&y);
        let y = values(&y);
        values_mut(&mut grad)
            .par_chunks_mut(n)
            .zip(y.par_chunks(n))
            .with_min_len(MIN_ELEMENTS.div_ceil(n))
            .for_each(|(g, y)| simd::softmax_backward(y, g));
        grad
    }
}

/// Rows go to threads in batches of at least this many elements (decoding has short rows).
const MIN_ELEMENTS: usize = 4096;

/// The length of the last dimension.
fn row_len(x: &FlexTensor) -> usize {
    let shape = x.shape();
    shape[shape.num_dims() - 1].max(1)
}

impl<B: RowSoftmaxOps, C: CheckpointStrategy> RowSoftmaxOps for Autodiff<B, C> {
    fn row_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RowSoftmaxBackward;

        impl<B: RowSoftmaxOps> Backward<B, 1> for RowSoftmaxBackward {
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::row_softmax_backward(ops.state, grad));
                }
            }
        }

        match RowSoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::row_softmax(x.into_primitive());
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::row_softmax(x.into_primitive())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use burn::tensor::activation::softmax;

    /// Output and input gradient through autodiff against burn's softmax, on attention-shaped
    /// scores with blocked (−1e9) entries.
    #[test]
    fn fused_softmax_and_gradient_match_burn() {
        let device = Device::flex().autodiff();
        let shape = [2, 3, 5, 19];
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n)
            .map(|i| {
                if i % 19 > 15 {
                    -1e9
                } else {
                    ((i * 7919 % 1000) as f32 - 500.0) / 60.0
                }
            })
            .collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 4.0).collect();
        let run = |fused: bool| {
            let x =
                Tensor::<4>::from_data(TensorData::new(x.clone(), shape), &device).require_grad();
            let g = Tensor::<4>::from_data(TensorData::new(g.clone(), shape), &device);
            let y = if fused {
                row_softmax(x.clone())
            } else {
                softmax(x.clone(), 3)
            };
            let grads = (y.clone() * g).sum().backward();
            let dx: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            (y.into_data().try_to_vec::<f32>().unwrap(), dx)
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
        assert!(max_abs_diff(&y, &y_ref) < 1e-6, "softmax differs");
        assert!(max_abs_diff(&dx, &dx_ref) < 1e-5, "gradient differs");
        assert!(
            y.iter().skip(17).step_by(19).all(|&p| p == 0.0),
            "blocked entries get 0"
        );
    }

    /// The composed backward (what WGPU runs) against the fused one.
    #[test]
    fn composed_backward_matches_the_fused_one() {
        let (rows, n) = (4, 23);
        let mut y: Vec<f32> = (0..rows * n).map(|i| (i % 5) as f32).collect();
        y.chunks_mut(n).for_each(simd::softmax);
        let g: Vec<f32> = (0..rows * n).map(|i| (i % 3) as f32 - 1.0).collect();
        let t = |v: &Vec<f32>| FlexTensor::from_data(TensorData::new(v.clone(), [rows, n]));
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let fused = v(Flex::row_softmax_backward(t(&y), t(&g)));
        let composed = v(composed_backward::<Flex>(t(&y), t(&g)));
        assert!(max_abs_diff(&fused, &composed) < 1e-6);
    }
}
