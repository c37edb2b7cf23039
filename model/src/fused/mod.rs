//! Fused operations for the CPU backend, each a burn backend extension with its own backward.
//!
//! burn composes cross-entropy, attention, SiLU, RMSNorm and RoPE from elementwise operations and
//! products: a dozen passes over the tensor forward and backward, each single-threaded with a
//! scalar `exp`; the top-k forward KL of distillation is the same story over the vocabulary,
//! and its matrix product zeroes and then copies every output ([`linear`]).
//! On [`Flex`] (burn's CPU backend) these operations take one to three passes, rows in parallel
//! (rayon), vectorized ([`simd`]); on the other backends (WGPU) they are the same maths composed
//! from burn's operations.
//!
//! [`Flex`]: burn::backend::Flex

pub mod attention;
pub mod divergence;
mod gemm;
pub mod linear;
pub mod nll;
pub mod rms_norm;
pub mod rope;
pub mod simd;
pub mod swiglu;
pub mod top_k_kl;

pub use attention::attention;
pub use divergence::{Divergence, divergence};
pub use linear::linear;
pub use nll::row_nll;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use swiglu::swiglu;
pub use top_k_kl::top_k_forward_kl;

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::prelude::{Shape, TensorData};
use burn::tensor::DType;
use std::fmt::Debug;
use std::mem::MaybeUninit;

/// The autodiff side of a fused operation differentiable in its `N` float inputs, whose
/// backward reads those inputs and `extra` (token ids, a parameter): `forward(inputs, extra)`,
/// and `backward(inputs, extra, grad)` gives the inputs' gradients.
fn differentiable<B, C, S, const N: usize>(
    inputs: [FloatTensor<Autodiff<B, C>>; N],
    extra: S,
    forward: fn([FloatTensor<B>; N], S) -> FloatTensor<B>,
    backward: BackwardFn<B, S, N>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: Backend,
    C: CheckpointStrategy,
    S: Clone + Send + Debug + 'static,
{
    let nodes = inputs.each_ref().map(|x| x.node());
    match (FusedBackward { backward })
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let inputs = inputs.map(|x| x.into_primitive());
            let out = forward(inputs.clone(), extra.clone());
            prep.finish((inputs, extra), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(inputs.map(|x| x.into_primitive()), extra)),
    }
}

/// `(inputs, extra, grad) -> the inputs' gradients`.
type BackwardFn<B, S, const N: usize> =
    fn([FloatTensor<B>; N], S, FloatTensor<B>) -> [FloatTensor<B>; N];

#[derive(Debug)]
struct FusedBackward<B: Backend, S, const N: usize> {
    backward: BackwardFn<B, S, N>,
}

impl<B: Backend, S, const N: usize> Backward<B, N> for FusedBackward<B, S, N>
where
    S: Clone + Send + Debug + 'static,
{
    type State = ([FloatTensor<B>; N], S);

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<B>(&ops.node);
        let (inputs, extra) = ops.state;
        let d = (self.backward)(inputs, extra, grad);
        for (node, g) in ops.parents.into_iter().zip(d) {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// An f32 tensor of `values` (taken over without a copy).
fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// A fresh f32 tensor of `shape` whose values `fill` writes, without zeroing them first.
///
/// # Safety
/// `fill` must write every value.
unsafe fn written(shape: Shape, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> FlexTensor {
    let n = shape.num_elements();
    let mut v = Vec::<f32>::with_capacity(n);
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `fill` wrote all `n` values.
    unsafe { v.set_len(n) };
    tensor(v, shape)
}

/// Each row of the contiguous f32 `x` `[rows, width]` rewritten by `f(row index, row)`, in
/// parallel: in place when `x` is unique, else into a fresh buffer, each row copied there just
/// before `f` runs on it (one pass while the row is in cache, rather than a copy of the whole
/// tensor first). The backward passes that turn logits into their gradient use it: the graph
/// may still hold the logits.
fn rewrite_rows(x: FlexTensor, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> FlexTensor {
    use rayon::prelude::*;
    if x.is_unique() {
        let mut x = x;
        values_mut(&mut x)
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(i, row)| f(i, row));
        return x;
    }
    let src = values(&x);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(width)
            .zip(src.par_chunks(width))
            .enumerate()
            .for_each(|(i, (out, src))| f(i, out.write_copy_of_slice(src)));
    };
    // SAFETY: every row of the output is written by `write_copy_of_slice`.
    unsafe { written(x.shape(), fill) }
}

/// Whether every tensor is f32 (the fused kernels' type; others take the composed path).
fn all_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// The values of a contiguous f32 tensor.
fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>().expect("a contiguous f32 tensor")
}

/// The values of a contiguous f32 tensor, to overwrite in place (copied first if shared).
fn values_mut(x: &mut FlexTensor) -> &mut [f32] {
    let (start, end) = x
        .layout()
        .contiguous_offsets()
        .expect("a contiguous tensor");
    &mut x.storage_mut::<f32>()[start..end]
}

/// Token ids as indices, `count` of them, each checked against the vocabulary (`op` names the
/// operation in the panic message).
fn checked_ids(ids: FlexTensor, count: usize, vocab: usize, op: &str) -> Vec<usize> {
    let ids: Vec<usize> = ids
        .into_data()
        .iter::<i64>()
        .map(|id| {
            assert!(
                (0..vocab as i64).contains(&id),
                "{op}: id {id} outside the vocabulary of {vocab}"
            );
            id as usize
        })
        .collect();
    assert_eq!(ids.len(), count, "{op}: {count} ids expected");
    ids
}

/// Deterministic values in [−1, 1), for the tests.
#[cfg(test)]
fn values_for(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

/// The largest elementwise difference, for the tests.
#[cfg(test)]
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}
