//! RMSNorm over the last dimension, `y = x · r ⊙ w` with `r = 1 / sqrt(mean(x²) + eps)`, as one
//! backend operation with its own backward: per row, `dx = r·g⊙w − x·(r³/n)·Σ g⊙w⊙x`, and
//! `dw = Σ_rows g ⊙ x·r`. Fused on the CPU it is two passes over the rows forward and three
//! backward, where burn's composed norm takes six forward and a dozen backward.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use super::{all_f32, differentiable, simd, values, values_mut};

/// `x / sqrt(mean(x², last dim) + eps) ⊙ weight`, differentiable in `x` and `weight`.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    assert_eq!(
        x.dims()[D - 1],
        weight.dims()[0],
        "rms_norm: the weight's length differs from the last dimension"
    );
    Tensor::from_dispatch(<Dispatch as RmsNormOps>::rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

/// The backend extension behind [`rms_norm`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait RmsNormOps: Backend {
    /// `x / sqrt(mean(x², last dim) + eps) ⊙ weight`.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        composed::<Self>(x, weight, eps)
    }

    /// The gradients of `x` and `weight` for the output gradient `grad`.
    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, weight, grad, eps)
    }
}

/// `x` as `[rows, n]`, with its own shape.
fn as_rows<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, Shape) {
    let shape = x.shape();
    let n = shape[shape.num_dims() - 1];
    let rows = shape.num_elements() / n.max(1);
    (B::float_reshape(x, [rows, n].into()), shape)
}

/// `[rows, 1]`: `1 / sqrt(mean(x²) + eps)` of `[rows, n]`.
fn inv_rms<B: Backend>(x: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x), 1);
    B::float_recip(B::float_sqrt(B::float_add_scalar(ms, eps.into())))
}

/// [`RmsNormOps::rms_norm`] from burn's operations.
fn composed<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, eps: f64) -> FloatTensor<B> {
    let (x, shape) = as_rows::<B>(x);
    let n = shape[shape.num_dims() - 1];
    let r = inv_rms::<B>(x.clone(), eps);
    let w = B::float_reshape(weight, [1, n].into());
    B::float_reshape(B::float_mul(B::float_mul(x, r), w), shape)
}

/// [`RmsNormOps::rms_norm_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    eps: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (x, shape) = as_rows::<B>(x);
    let (grad, _) = as_rows::<B>(grad);
    let n = shape[shape.num_dims() - 1];
    let r = inv_rms::<B>(x.clone(), eps);
    let w = B::float_reshape(weight, [1, n].into());
    let d_w = B::float_sum_dim(
        B::float_mul(B::float_mul(grad.clone(), x.clone()), r.clone()),
        0,
    );
    let gw = B::float_mul(grad, w);
    let dot = B::float_sum_dim(B::float_mul(gw.clone(), x.clone()), 1);
    // r³/n · Σ g⊙w⊙x, per row
    let r3 = B::float_mul(B::float_mul(r.clone(), r.clone()), r.clone());
    let c = B::float_mul(B::float_div_scalar(r3, (n as f64).into()), dot);
    let d_x = B::float_sub(B::float_mul(gw, r), B::float_mul(x, c));
    (
        B::float_reshape(d_x, shape),
        B::float_reshape(d_w, [n].into()),
    )
}

impl RmsNormOps for Cube {}

/// Rows go to threads in batches of at least this many elements.
const MIN_ELEMENTS: usize = 16_384;

/// The row length and the elements of one thread task (whole rows).
fn task_len(x: &FlexTensor) -> (usize, usize) {
    let shape = x.shape();
    let n = shape[shape.num_dims() - 1].max(1);
    (n, MIN_ELEMENTS.div_ceil(n) * n)
}

impl RmsNormOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        if !all_f32(&[&x, &weight]) {
            return composed::<Flex>(x, weight, eps);
        }
        let mut x = x.to_contiguous();
        let weight = weight.to_contiguous();
        let w = values(&weight);
        let (_, task) = task_len(&x);
        values_mut(&mut x)
            .par_chunks_mut(task)
            .for_each(|x| simd::rms_norm(x, w, eps as f32));
        x
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[&x, &weight, &grad]) {
            return composed_backward::<Flex>(x, weight, grad, eps);
        }
        let x = x.to_contiguous();
        let weight = weight.to_contiguous();
        let mut grad = grad.to_contiguous();
        let (n, task) = task_len(&x);
        let (x, w) = (values(&x), values(&weight));
        // The input gradient overwrites the output gradient; each task sums its rows' weight
        // gradients, and the tasks' sums are added in order, so the result does not depend on
        // the scheduling.
        let partial: Vec<Vec<f32>> = values_mut(&mut grad)
            .par_chunks_mut(task)
            .zip(x.par_chunks(task))
            .map(|(g, x)| {
                let mut dw = vec![0f32; n];
                simd::rms_norm_backward(x, w, g, &mut dw, eps as f32);
                dw
            })
            .collect();
        let mut dw = vec![0f32; n];
        for p in &partial {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        (grad, FlexTensor::from_data(TensorData::new(dw, [n])))
    }
}

impl<B: RmsNormOps, C: CheckpointStrategy> RmsNormOps for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        differentiable::<B, C, f64, 2>(
            [x, weight],
            eps,
            |[x, w], eps| B::rms_norm(x, w, eps),
            |[x, w], eps, grad| {
                let (d_x, d_w) = B::rms_norm_backward(x, w, grad, eps);
                [d_x, d_w]
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `n` values from −1 to 1, row `i` scaled by `10^(i % 7 − 3)`: 1e-3 (where `eps`
    /// matters) to 1e3.
    fn rows(rows: usize, n: usize, k: usize) -> Vec<f32> {
        (0..rows * n)
            .map(|i| {
                let scale = 10f32.powi((i / n % 7) as i32 - 3);
                scale * ((i * k % 2001) as f32 - 1000.0) / 1000.0
            })
            .collect()
    }

    /// The largest difference of each row relative to that row's largest reference value.
    fn max_rel_diff(a: &[f32], b: &[f32], n: usize) -> f32 {
        assert_eq!(a.len(), b.len());
        a.chunks(n)
            .zip(b.chunks(n))
            .map(|(a, b)| {
                let scale = b.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
                super::super::max_abs_diff(a, b) / scale
            })
            .fold(0f32, f32::max)
    }

    /// Output and both gradients through autodiff against burn's composed norm (what
    /// `RmsNorm::forward` was), on 5 thread tasks of rows with magnitudes from 1e-3 to 1e3.
    #[test]
    fn fused_rms_norm_and_gradients_match_burn() {
        let device = Device::flex().autodiff();
        let (shape, n, eps) = ([2, 105, 384], 384, 1e-5);
        let (x, g) = (rows(210, n, 7919), rows(210, n, 31));
        let w: Vec<f32> = (0..n).map(|i| 0.5 + (i * 37 % 101) as f32 / 50.0).collect();
        let run = |fused: bool| {
            let x =
                Tensor::<3>::from_data(TensorData::new(x.clone(), shape), &device).require_grad();
            let w = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), &device).require_grad();
            let y = if fused {
                rms_norm(x.clone(), w.clone(), eps)
            } else {
                let rms = x.clone().square().mean_dim(2).add_scalar(eps).sqrt();
                x.clone().div(rms).mul(w.clone().unsqueeze())
            };
            let g = Tensor::<3>::from_data(TensorData::new(g.clone(), shape), &device);
            let grads = (y.clone() * g).sum().backward();
            let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
            let dw = w.grad(&grads).unwrap().into_data().try_to_vec::<f32>();
            (v(y), v(x.grad(&grads).unwrap()), dw.unwrap())
        };
        let (fused, reference) = (run(true), run(false));
        let dy = max_rel_diff(&fused.0, &reference.0, n);
        let dx = max_rel_diff(&fused.1, &reference.1, n);
        let dw = max_rel_diff(&fused.2, &reference.2, n);
        println!("rms_norm fused vs burn, relative: output {dy:e}, dx {dx:e}, dweight {dw:e}");
        assert!(dy < 1e-6, "output differs by {dy}");
        assert!(dx < 2e-6, "input gradient differs by {dx}");
        assert!(dw < 2e-6, "weight gradient differs by {dw}");
        assert_eq!(run(true), fused, "the same run to run");
    }

    /// The composed path (what WGPU runs) against the fused one, forward and backward.
    #[test]
    fn composed_path_matches_the_fused_one() {
        let (r, n, eps) = (9, 37, 1e-6);
        let t = |v: Vec<f32>, shape: Vec<usize>| FlexTensor::from_data(TensorData::new(v, shape));
        let x = t(rows(r, n, 13), vec![3, 3, n]);
        let g = t(rows(r, n, 5), vec![3, 3, n]);
        let w = t((0..n).map(|i| i as f32 / 10.0 - 1.0).collect(), vec![n]);
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let fused = v(Flex::rms_norm(x.clone(), w.clone(), eps));
        let composed = v(composed::<Flex>(x.clone(), w.clone(), eps));
        let dy = max_rel_diff(&fused, &composed, n);
        let (a, b) = Flex::rms_norm_backward(x.clone(), w.clone(), g.clone(), eps);
        let (c, d) = composed_backward::<Flex>(x, w, g, eps);
        let dx = max_rel_diff(&v(a), &v(c), n);
        let dw = max_rel_diff(&v(b), &v(d), n);
        println!("rms_norm composed vs fused, relative: output {dy:e}, dx {dx:e}, dweight {dw:e}");
        assert!(dy < 1e-6 && dx < 2e-6 && dw < 2e-6, "{dy} / {dx} / {dw}");
    }
}
