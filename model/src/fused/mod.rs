//! Fused operations for the CPU backend, each a burn backend extension with its own backward.
//!
//! burn composes cross-entropy, softmax, SiLU, RMSNorm and RoPE from elementwise operations: a
//! dozen passes over the tensor forward and backward, each single-threaded with a scalar `exp`.
//! The top-k forward KL of distillation is the same story over the vocabulary.
//! On [`Flex`] (burn's CPU backend) these operations take one to three passes, rows in parallel
//! (rayon), vectorized ([`simd`]); on the other backends (WGPU) they are the same maths composed
//! from burn's operations.
//!
//! [`Flex`]: burn::backend::Flex

pub mod nll;
pub mod rms_norm;
pub mod rope;
pub mod simd;
pub mod softmax;
pub mod swiglu;
pub mod top_k_kl;

pub use nll::row_nll;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use softmax::row_softmax;
pub use swiglu::swiglu;
pub use top_k_kl::top_k_forward_kl;

use burn::backend::flex::FlexTensor;

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

/// The largest elementwise difference, for the tests.
#[cfg(test)]
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}
