//! A linear layer's product `y = x·Wᵀ` (`W` is `[out, in]`, `x` is `[..., in]`) as one backend
//! operation with its own backward: `dx = g·W`, `dW = gᵀ·x`.
//!
//! Fused on the CPU it is one `gemm` call each way, written into a fresh `Vec`. burn's CPU
//! matrix product allocates each output as zeroed bytes and then copies them into an aligned
//! buffer (`FlexTensor::empty`): a `memset` and a `memmove` of every output, 12% of a training
//! step. For a few rows (decoding) the forward is the packed-weight kernels' dense product
//! (`distill_quant::cpu::f32_matmul`), which reads the weight, the large operand, in its stored
//! order with rows of it on each thread (across rows it decodes ~15× slower).

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;

use super::gemm::{Mat, gemm_into, parallelism};
use super::{all_f32, differentiable, tensor, values, written};
use distill_quant::cpu::f32_matmul;

/// Rows of `x` up to which the forward reads the weight in its stored order (`(W·xᵀ)ᵀ`).
const WEIGHT_FIRST_MAX_ROWS: usize = 16;

/// `x·Wᵀ` for `weight` `[out, in]` and `x` `[..., in]`: `[..., out]`, differentiable in both.
pub fn linear<const D: usize>(x: Tensor<D>, weight: Tensor<2>) -> Tensor<D> {
    let [_, cols] = weight.dims();
    assert_eq!(
        x.dims()[D - 1],
        cols,
        "linear: the input's last dimension differs from the weight's columns"
    );
    Tensor::from_dispatch(<Dispatch as LinearOps>::matmul_wt(
        x.into_dispatch(),
        weight.into_dispatch(),
    ))
}

/// The backend extension behind [`linear`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait LinearOps: Backend {
    /// `x·Wᵀ`.
    fn matmul_wt(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::<Self>(x, weight)
    }

    /// The gradients of `x` and `weight` for the output gradient `grad`.
    fn matmul_wt_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, weight, grad)
    }
}

/// `[rows, last]` of `x`'s shape.
fn rows_of(shape: &Shape) -> (usize, usize) {
    let last = shape[shape.num_dims() - 1];
    (shape.num_elements() / last.max(1), last)
}

/// `shape` with its last dimension replaced by `last`.
fn with_last(shape: &Shape, last: usize) -> Shape {
    let mut dims = shape.to_vec();
    *dims.last_mut().expect("at least one dimension") = last;
    dims.into()
}

/// [`LinearOps::matmul_wt`] from burn's operations.
fn composed<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let (rows, cols) = rows_of(&shape);
    let out = weight.shape()[0];
    let x = B::float_reshape(x, [rows, cols].into());
    let y = if rows <= WEIGHT_FIRST_MAX_ROWS {
        B::float_transpose(B::float_matmul(weight, B::float_transpose(x)))
    } else {
        B::float_matmul(x, B::float_transpose(weight))
    };
    B::float_reshape(y, with_last(&shape, out))
}

/// [`LinearOps::matmul_wt_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let shape = x.shape();
    let (rows, cols) = rows_of(&shape);
    let out = weight.shape()[0];
    let g = B::float_reshape(grad, [rows, out].into());
    let dx = B::float_matmul(g.clone(), weight);
    let dw = B::float_matmul(
        B::float_transpose(g),
        B::float_reshape(x, [rows, cols].into()),
    );
    (B::float_reshape(dx, shape), dw)
}

impl LinearOps for Cube {}

impl LinearOps for Flex {
    fn matmul_wt(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &weight]) {
            return composed::<Flex>(x, weight);
        }
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let shape = x.shape();
        let (rows, cols) = rows_of(&shape);
        let out = weight.shape()[0];
        let (xv, wv) = (values(&x), values(&weight));
        if rows <= WEIGHT_FIRST_MAX_ROWS {
            // Decoding: the weight read row by row, rows of it on each thread.
            let mut y = vec![0f32; rows * out];
            f32_matmul(wv, out, cols, xv, rows, &mut y).expect("shapes checked above");
            return tensor(y, with_last(&shape, out));
        }
        let par = parallelism(rows * out * cols);
        let (x, w) = (Mat::rows(xv.as_ptr(), cols), Mat::rows(wv.as_ptr(), cols));
        // SAFETY: `x` is `rows × cols` and `W` is `out × cols`, contiguous; the product writes
        // all of `y`, `rows × out`.
        unsafe {
            written(with_last(&shape, out), |y| {
                let y = Mat::rows(y.as_mut_ptr().cast(), out);
                gemm_into(rows, out, cols, y, false, x, w.t(), 1.0, par)
            })
        }
    }

    fn matmul_wt_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[&x, &weight, &grad]) {
            return composed_backward::<Flex>(x, weight, grad);
        }
        let [x, weight, grad] = [x, weight, grad].map(|t| t.to_contiguous());
        let shape = x.shape();
        let (rows, cols) = rows_of(&shape);
        let out = weight.shape()[0];
        let (xv, wv, gv) = (values(&x), values(&weight), values(&grad));
        let par = parallelism(rows * out * cols);
        let g = Mat::rows(gv.as_ptr(), out);
        let (x, w) = (Mat::rows(xv.as_ptr(), cols), Mat::rows(wv.as_ptr(), cols));
        // SAFETY: `g` is `rows × out`, `W` is `out × cols`, `x` is `rows × cols`, contiguous;
        // each product writes all of its output.
        unsafe {
            let dx = written(shape, |dx| {
                let dx = Mat::rows(dx.as_mut_ptr().cast(), cols);
                gemm_into(rows, cols, out, dx, false, g, w, 1.0, par)
            });
            let dw = written([out, cols].into(), |dw| {
                let dw = Mat::rows(dw.as_mut_ptr().cast(), cols);
                gemm_into(out, cols, rows, dw, false, g.t(), x, 1.0, par)
            });
            (dx, dw)
        }
    }
}

impl<B: LinearOps, C: CheckpointStrategy> LinearOps for Autodiff<B, C> {
    fn matmul_wt(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        differentiable::<B, C, (), 2>(
            [x, weight],
            (),
            |[x, w], ()| B::matmul_wt(x, w),
            |[x, w], (), grad| {
                let (dx, dw) = B::matmul_wt_backward(x, w, grad);
                [dx, dw]
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{max_abs_diff, values_for};
    use super::*;

    /// Output and both gradients through autodiff against burn's `x.matmul(Wᵀ)`, for a few rows
    /// (the weight-first product) and for many.
    #[test]
    fn fused_linear_and_gradients_match_burn() {
        let device = Device::flex().autodiff();
        let (out, cols) = (37, 29);
        for rows in [3usize, 40] {
            let run = |fused: bool| {
                let x = Tensor::<3>::from_data(
                    TensorData::new(values_for(rows * cols, 1), [1, rows, cols]),
                    &device,
                )
                .require_grad();
                let w = Tensor::<2>::from_data(
                    TensorData::new(values_for(out * cols, 2), [out, cols]),
                    &device,
                )
                .require_grad();
                let y = if fused {
                    linear(x.clone(), w.clone())
                } else {
                    x.clone().matmul(w.clone().transpose().unsqueeze())
                };
                let g = Tensor::<3>::from_data(
                    TensorData::new(values_for(rows * out, 3), [1, rows, out]),
                    &device,
                );
                let grads = (y.clone() * g).sum().backward();
                let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
                let dw: Vec<f32> = w.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
                [v(y), v(x.grad(&grads).unwrap()), dw]
            };
            let (fused, burn) = (run(true), run(false));
            for (name, (a, b)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&burn)) {
                let diff = max_abs_diff(a, b);
                assert!(diff < 1e-4, "{rows} rows: {name} differs by {diff}");
            }
        }
    }

    /// The composed backward (what WGPU runs) against the fused one.
    #[test]
    fn composed_backward_matches_the_fused_one() {
        let (rows, out, cols) = (21, 13, 11);
        let t = |n: usize, shape: [usize; 2], seed| {
            FlexTensor::from_data(TensorData::new(values_for(n, seed), shape))
        };
        let (x, w, g) = (
            t(rows * cols, [rows, cols], 4),
            t(out * cols, [out, cols], 5),
            t(rows * out, [rows, out], 6),
        );
        let fused = Flex::matmul_wt_backward(x.clone(), w.clone(), g.clone());
        let composed = composed_backward::<Flex>(x, w, g);
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        assert!(max_abs_diff(&v(fused.0), &v(composed.0)) < 1e-5);
        assert!(max_abs_diff(&v(fused.1), &v(composed.1)) < 1e-5);
    }
}
