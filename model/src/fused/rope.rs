//! Rotary position embeddings in HF's "rotate half" form, `y = x ⊙ cos + rotate_half(x) ⊙ sin`
//! with `rotate_half([x₁, x₂]) = [−x₂, x₁]`, as one backend operation with its own backward, the
//! rotation back: `dx = g ⊙ cos + [u₂, −u₁]` for `u = g ⊙ sin`. Fused on the CPU it is one pass
//! forward and one backward, where burn's composed form takes seven and more.

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
use burn::tensor::Slice;
use rayon::prelude::*;

use super::{all_f32, simd, values, values_mut};

/// `x ⊙ cos + rotate_half(x) ⊙ sin` for `x [batch, heads, seq, head_dim]` and tables
/// `[batch, 1, seq, head_dim]`, differentiable in `x` (the tables get no gradient).
pub fn rope(x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
    let [b, _, s, d] = x.dims();
    assert!(d % 2 == 0, "rope: odd head_dim {d}");
    assert!(
        cos.dims() == [b, 1, s, d] && sin.dims() == [b, 1, s, d],
        "rope: tables {:?} / {:?} for x {:?}",
        cos.dims(),
        sin.dims(),
        x.dims()
    );
    Tensor::from_dispatch(<Dispatch as RopeOps>::rope(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
}

/// The backend extension behind [`rope`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait RopeOps: Backend {
    /// `x ⊙ cos + rotate_half(x) ⊙ sin`.
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed::<Self>(x, cos, sin)
    }

    /// The gradient of `x` for the output gradient `grad`.
    fn rope_backward(
        grad: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_backward::<Self>(grad, cos, sin)
    }
}

/// The two halves of the last dimension of a 4-D tensor.
fn halves<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let h = x.shape()[3] / 2;
    let half =
        |r: std::ops::Range<usize>| [Slice::from(..), Slice::from(..), Slice::from(..), r.into()];
    (
        B::float_slice(x.clone(), &half(0..h)),
        B::float_slice(x, &half(h..2 * h)),
    )
}

/// [`RopeOps::rope`] from burn's operations (what `Rope::apply` was).
fn composed<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    let (x1, x2) = halves::<B>(x.clone());
    let rotated = B::float_cat(vec![B::float_neg(x2), x1], 3);
    B::float_add(B::float_mul(x, cos), B::float_mul(rotated, sin))
}

/// [`RopeOps::rope_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    grad: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
) -> FloatTensor<B> {
    let (u1, u2) = halves::<B>(B::float_mul(grad.clone(), sin));
    let rotated = B::float_cat(vec![u2, B::float_neg(u1)], 3);
    B::float_add(B::float_mul(grad, cos), rotated)
}

impl RopeOps for Cube {}

/// Heads go to threads in batches of at least this many elements (decoding has one position).
const MIN_ELEMENTS: usize = 16_384;

/// `x ← f(x, cos, sin)` head by head, each `[seq, head_dim]` head against its batch's tables.
fn per_head(
    x: FlexTensor,
    cos: FlexTensor,
    sin: FlexTensor,
    f: fn(&mut [f32], &[f32], &[f32], usize),
) -> FlexTensor {
    let mut x = x.to_contiguous();
    let (cos, sin) = (cos.to_contiguous(), sin.to_contiguous());
    let shape = x.shape();
    let (heads, head, d) = (shape[1], (shape[2] * shape[3]).max(1), shape[3]);
    let (c, s) = (values(&cos), values(&sin));
    values_mut(&mut x)
        .par_chunks_mut(head)
        .enumerate()
        .with_min_len(MIN_ELEMENTS.div_ceil(head))
        .for_each(|(i, x)| {
            let t = i / heads * head;
            f(x, &c[t..t + head], &s[t..t + head], d);
        });
    x
}

impl RopeOps for Flex {
    fn rope(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &cos, &sin]) {
            return composed::<Flex>(x, cos, sin);
        }
        per_head(x, cos, sin, simd::rope)
    }

    fn rope_backward(grad: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        if !all_f32(&[&grad, &cos, &sin]) {
            return composed_backward::<Flex>(grad, cos, sin);
        }
        per_head(grad, cos, sin, simd::rope_backward)
    }
}

impl<B: RopeOps, C: CheckpointStrategy> RopeOps for Autodiff<B, C> {
    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct RopeBackward;

        impl<B: RopeOps> Backward<B, 1> for RopeBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (cos, sin) = ops.state;
                if let Some(node) = parent {
                    grads.register::<B>(node.id, B::rope_backward(grad, cos, sin));
                }
            }
        }

        let (cos, sin) = (cos.into_primitive(), sin.into_primitive());
        match RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::rope(x.into_primitive(), cos.clone(), sin.clone());
                prep.finish((cos, sin), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::rope(x.into_primitive(), cos, sin)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;

    /// Tables `[batch, 1, seq, d]` as `Rope::new` makes them, positions offset per batch row.
    fn tables(b: usize, s: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in (0..b).flat_map(|r| (0..s).map(move |p| p + 3 * r)) {
            for i in (0..d).map(|i| i % (d / 2)) {
                let angle = p as f32 * 10_000f32.powf(-2.0 * i as f32 / d as f32);
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        (cos, sin)
    }

    fn vals(n: usize, k: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * k % 2001) as f32 - 1000.0) / 100.0)
            .collect()
    }

    /// Output and gradient through autodiff against burn's composed rotation, on more heads
    /// than one thread task and a strided (head-transposed) input, as attention gives it.
    #[test]
    fn fused_rope_and_gradient_match_burn() {
        let device = Device::flex().autodiff();
        let (b, h, s, d) = (2, 6, 50, 64);
        let (cos, sin) = tables(b, s, d);
        let (x, g) = (vals(b * h * s * d, 7919), vals(b * h * s * d, 31));
        let run = |fused: bool| {
            let t = |v: &Vec<f32>, shape: [usize; 4]| {
                Tensor::<4>::from_data(TensorData::new(v.clone(), shape), &device)
            };
            let x = t(&x, [b, s, h, d]).require_grad();
            let (cos, sin) = (t(&cos, [b, 1, s, d]), t(&sin, [b, 1, s, d]));
            let heads = x.clone().swap_dims(1, 2);
            let y = if fused {
                rope(heads, cos, sin)
            } else {
                let x1 = heads.clone().narrow(3, 0, d / 2);
                let x2 = heads.clone().narrow(3, d / 2, d / 2);
                heads * cos + Tensor::cat(vec![x2.neg(), x1], 3) * sin
            };
            let grads = (y.clone() * t(&g, [b, h, s, d])).sum().backward();
            let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            (v(y), v(x.grad(&grads).unwrap()))
        };
        let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
        let (dy, dg) = (max_abs_diff(&y, &y_ref), max_abs_diff(&dx, &dx_ref));
        println!("rope fused vs burn: max |Δ| output {dy:e}, gradient {dg:e}");
        assert!(
            dy < 1e-5 && dg < 1e-5,
            "output differs by {dy}, gradient by {dg}"
        );
    }

    /// The composed path (what WGPU runs) against the fused one, forward and backward; and the
    /// backward undoes the forward (a rotation's transpose is its inverse).
    #[test]
    fn composed_path_matches_the_fused_one() {
        let (b, h, s, d) = (2, 3, 5, 8);
        let (cos, sin) = tables(b, s, d);
        let t = |v: Vec<f32>, shape: [usize; 4]| FlexTensor::from_data(TensorData::new(v, shape));
        let (c, sn) = (t(cos, [b, 1, s, d]), t(sin, [b, 1, s, d]));
        let x = vals(b * h * s * d, 13);
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        let x_t = || t(x.clone(), [b, h, s, d]);
        let fused = v(Flex::rope(x_t(), c.clone(), sn.clone()));
        let composed = v(composed::<Flex>(x_t(), c.clone(), sn.clone()));
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let fused = v(Flex::rope_backward(x_t(), c.clone(), sn.clone()));
        let composed = v(composed_backward::<Flex>(x_t(), c.clone(), sn.clone()));
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let rotated = Flex::rope(x_t(), c.clone(), sn.clone());
        let back = v(Flex::rope_backward(rotated, c, sn));
        assert!(max_abs_diff(&back, &x) < 1e-4);
    }
}
