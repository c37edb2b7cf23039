//! The gated MLP's activation, `silu(gate) ⊙ up`, as one backend operation with its own
//! backward: `d gate = g ⊙ up ⊙ σ(gate) ⊙ (1 + gate ⊙ (1 − σ(gate)))`, `d up = g ⊙ silu(gate)`.
//! Fused on the CPU it is one pass forward and one backward, where burn's composed `silu` and
//! product take three forward and six backward.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use super::{all_f32, differentiable, simd, tensor, values, written};

/// `silu(gate) ⊙ up` for tensors of one shape, differentiable in both.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(
        gate.dims(),
        up.dims(),
        "swiglu: gate and up differ in shape"
    );
    Tensor::from_dispatch(<Dispatch as SwigluOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// The backend extension behind [`swiglu`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait SwigluOps: Backend {
    /// `silu(gate) ⊙ up`.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        composed::<Self>(gate, up)
    }

    /// The gradients of `gate` and `up` for the output gradient `grad`.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(gate, up, grad)
    }
}

/// [`SwigluOps::swiglu`] from burn's operations.
fn composed<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let silu = B::float_mul(gate.clone(), B::sigmoid(gate));
    B::float_mul(silu, up)
}

/// [`SwigluOps::swiglu_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let sig = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate.clone(), sig.clone());
    let d_up = B::float_mul(grad.clone(), silu);
    // σ(1 + gate·(1 − σ)) = σ + silu − silu·σ
    let one_minus = B::float_add_scalar(B::float_neg(sig.clone()), 1.0.into());
    let slope = B::float_mul(
        sig,
        B::float_add_scalar(B::float_mul(gate, one_minus), 1.0.into()),
    );
    let d_gate = B::float_mul(B::float_mul(grad, up), slope);
    (d_gate, d_up)
}

impl SwigluOps for Cube {}

/// Elements per thread task.
const MIN_ELEMENTS: usize = 16_384;

impl SwigluOps for Flex {
    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        if !all_f32(&[&gate, &up]) {
            return composed::<Flex>(gate, up);
        }
        let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
        let (g, u) = (values(&gate), values(&up));
        // SAFETY: the chunks of `out` cover it, and each is written whole.
        unsafe {
            written(up.shape(), |out| {
                out.par_chunks_mut(MIN_ELEMENTS)
                    .zip(g.par_chunks(MIN_ELEMENTS).zip(u.par_chunks(MIN_ELEMENTS)))
                    .for_each(|(o, (g, u))| simd::swiglu(g, u, o))
            })
        }
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[&gate, &up, &grad]) {
            return composed_backward::<Flex>(gate, up, grad);
        }
        let [gate, up, grad] = [gate, up, grad].map(|t| t.to_contiguous());
        let (a, u, g) = (values(&gate), values(&up), values(&grad));
        let n = a.len();
        let (mut d_gate, mut d_up) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
        d_gate.spare_capacity_mut()[..n]
            .par_chunks_mut(MIN_ELEMENTS)
            .zip(d_up.spare_capacity_mut()[..n].par_chunks_mut(MIN_ELEMENTS))
            .zip(a.par_chunks(MIN_ELEMENTS).zip(u.par_chunks(MIN_ELEMENTS)))
            .zip(g.par_chunks(MIN_ELEMENTS))
            .for_each(|(((dg, du), (a, u)), g)| simd::swiglu_backward(a, u, g, dg, du));
        // SAFETY: the chunks cover both outputs, and each was written whole.
        unsafe {
            d_gate.set_len(n);
            d_up.set_len(n);
        }
        (tensor(d_gate, gate.shape()), tensor(d_up, up.shape()))
    }
}

impl<B: SwigluOps, C: CheckpointStrategy> SwigluOps for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        differentiable::<B, C, (), 2>(
            [gate, up],
            (),
            |[gate, up], ()| B::swiglu(gate, up),
            |[gate, up], (), grad| {
                let (d_gate, d_up) = B::swiglu_backward(gate, up, grad);
                [d_gate, d_up]
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use burn::tensor::activation::silu;

    /// Output and both gradients through autodiff against burn's `silu(gate) * up`, on more
    /// elements than one thread task and values from −20 to 20.
    #[test]
    fn fused_swiglu_and_gradients_match_burn() {
        let device = Device::flex().autodiff();
        let shape = [3, 7, 1000];
        let n: usize = shape.iter().product();
        let vals = |k: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * k % 4001) as f32 - 2000.0) / 100.0)
                .collect()
        };
        let (gate, up, g) = (vals(7919), vals(104_729), vals(31));
        let run = |fused: bool| {
            let t =
                |v: &Vec<f32>| Tensor::<3>::from_data(TensorData::new(v.clone(), shape), &device);
            let (a, b) = (t(&gate).require_grad(), t(&up).require_grad());
            let y = if fused {
                swiglu(a.clone(), b.clone())
            } else {
                silu(a.clone()) * b.clone()
            };
            let grads = (y.clone() * t(&g)).sum().backward();
            let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
            (v(y), v(a.grad(&grads).unwrap()), v(b.grad(&grads).unwrap()))
        };
        let (fused, reference) = (run(true), run(false));
        assert!(
            max_abs_diff(&fused.0, &reference.0) < 1e-4,
            "output differs"
        );
        assert!(
            max_abs_diff(&fused.1, &reference.1) < 1e-3,
            "gate gradient differs"
        );
        assert!(
            max_abs_diff(&fused.2, &reference.2) < 1e-4,
            "up gradient differs"
        );
    }

    /// The composed backward (what WGPU runs) against the fused one.
    #[test]
    fn composed_backward_matches_the_fused_one() {
        let n = 50;
        let v =
            |k: usize| -> Vec<f32> { (0..n).map(|i| ((i * k % 41) as f32 - 20.0) / 4.0).collect() };
        let t = |v: Vec<f32>| FlexTensor::from_data(TensorData::new(v, [n]));
        let out = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let (a, b) = Flex::swiglu_backward(t(v(3)), t(v(5)), t(v(7)));
        let (c, d) = composed_backward::<Flex>(t(v(3)), t(v(5)), t(v(7)));
        assert!(max_abs_diff(&out(a), &out(c)) < 1e-5);
        assert!(max_abs_diff(&out(b), &out(d)) < 1e-5);
    }
}
