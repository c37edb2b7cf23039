//! Fused operations for the CPU backend, each a burn backend extension with its own backward.
//!
//! burn composes cross-entropy, softmax and SiLU from elementwise operations: a dozen passes over
//! the tensor forward and backward, each single-threaded with a scalar `exp`. On [`Flex`]
//! (burn's CPU backend) these operations take two or three passes, rows in parallel (rayon),
//! `exp` vectorized ([`simd`]); on the other backends (WGPU) they are the same maths composed
//! from burn's operations.
//!
//! [`Flex`]: burn::backend::Flex

pub mod nll;
pub mod simd;
pub mod softmax;
pub mod swiglu;

pub use nll::row_nll;
pub use softmax::row_softmax;
pub use swiglu::swiglu;
