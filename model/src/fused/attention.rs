//! Scaled dot-product attention with an additive mask and grouped KV heads, as one backend
//! operation with its own backward: `out = softmax(scale · q·kᵀ + bias) · v`, and from the saved
//! probabilities `p`: `dv = pᵀ·g`, `ds = p ⊙ (g·vᵀ − rowsum(p ⊙ g·vᵀ))`, `dq = scale · ds·k`,
//! `dk = scale · dsᵀ·q` (a KV head sums over the query heads that share it).
//!
//! Fused on the CPU, each head is a few `gemm` calls on blocks of 64 query rows: a block reads
//! only the keys up to the last one any of its rows may see (half the products for a causal
//! mask), the mask is added in the softmax's pass, grouped KV heads are read in place instead
//! of expanded, and the output is written straight into `[batch, seq, heads · head_dim]`, the
//! layout the output projection reads. burn composes it from a scaling, an expanded copy of
//! the keys and values, two batched products, a broadcast addition, a softmax and a transposing
//! copy, each with its own backward.

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
use gemm::Parallelism;
use rayon::prelude::*;

use super::gemm::{Mat, gemm_into};
use super::{all_f32, simd, tensor, values};
use crate::layout::BLOCKED;

/// `softmax(scale · q·kᵀ + bias) · v`, differentiable in `q`, `k` and `v`: `q` is
/// `[batch, heads, seq, head_dim]`, `k` and `v` are `[batch, kv_heads, keys, head_dim]` with
/// `heads` a multiple of `kv_heads` (query head `h` reads KV head `h / (heads / kv_heads)`),
/// and `bias` is `[batch, 1, seq, keys]` (0 where a key may be seen, −1e9 where not). Returns
/// `[batch, seq, heads · head_dim]`.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Tensor<4>,
    scale: f64,
) -> Tensor<3> {
    let [b, nh, s, d] = q.dims();
    let [kb, nkv, t, kd] = k.dims();
    assert!(
        kb == b && kd == d && v.dims() == k.dims(),
        "attention: q {:?}, k {:?} and v {:?} do not fit",
        q.dims(),
        k.dims(),
        v.dims()
    );
    assert!(
        nkv > 0 && nh % nkv == 0,
        "attention: {nh} query heads over {nkv} KV heads"
    );
    assert_eq!(bias.dims(), [b, 1, s, t], "attention: the bias's shape");
    Tensor::from_dispatch(<Dispatch as AttentionOps>::masked_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        bias.into_dispatch(),
        scale,
    ))
}

/// The backend extension behind [`attention`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait AttentionOps: Backend {
    /// The attention output `[batch, seq, heads · head_dim]`.
    fn masked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        Self::masked_attention_probs(q, k, v, bias, scale).0
    }

    /// The output and the attention probabilities `[batch, heads, seq, keys]` the backward
    /// reads.
    fn masked_attention_probs(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed::<Self>(q, k, v, bias, scale)
    }

    /// The gradients of `q`, `k` and `v` for the output gradient `grad`.
    fn masked_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        _bias: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(q, k, v, probs, grad, scale)
    }
}

/// `[batch, kv_heads, keys, head_dim]` repeated for each query head of a group:
/// `[batch, heads, keys, head_dim]`.
fn expand_kv<B: Backend>(x: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let [b, nkv, t, d] = dims4(&x.shape());
    if heads == nkv {
        return x;
    }
    let x = B::float_reshape(x, [b, nkv, 1, t, d].into());
    let x = B::float_expand(x, [b, nkv, heads / nkv, t, d].into());
    B::float_reshape(x, [b, heads, t, d].into())
}

/// The sum over each group's query heads: `[batch, heads, keys, head_dim]` to
/// `[batch, kv_heads, keys, head_dim]`.
fn sum_groups<B: Backend>(x: FloatTensor<B>, kv_heads: usize) -> FloatTensor<B> {
    let [b, nh, t, d] = dims4(&x.shape());
    if nh == kv_heads {
        return x;
    }
    let x = B::float_reshape(x, [b, kv_heads, nh / kv_heads, t, d].into());
    B::float_reshape(B::float_sum_dim(x, 2), [b, kv_heads, t, d].into())
}

fn dims4(shape: &Shape) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

/// [`AttentionOps::masked_attention_probs`] from burn's operations.
fn composed<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    bias: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [b, nh, s, d] = dims4(&q.shape());
    let k = expand_kv::<B>(k, nh);
    let scores = B::float_matmul(
        B::float_mul_scalar(q, scale.into()),
        B::float_swap_dims(k, 2, 3),
    );
    let probs = B::softmax(B::float_add(scores, bias), 3);
    let out = B::float_matmul(probs.clone(), expand_kv::<B>(v, nh));
    let out = B::float_reshape(B::float_swap_dims(out, 1, 2), [b, s, nh * d].into());
    (out, probs)
}

/// [`AttentionOps::masked_attention_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    probs: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f64,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [b, nh, s, d] = dims4(&q.shape());
    let nkv = k.shape()[1];
    let g = B::float_swap_dims(B::float_reshape(grad, [b, s, nh, d].into()), 1, 2);
    let dv = B::float_matmul(B::float_swap_dims(probs.clone(), 2, 3), g.clone());
    let dp = B::float_matmul(g, B::float_swap_dims(expand_kv::<B>(v, nh), 2, 3));
    let dot = B::float_sum_dim(B::float_mul(probs.clone(), dp.clone()), 3);
    let ds = B::float_mul_scalar(B::float_mul(probs, B::float_sub(dp, dot)), scale.into());
    let dq = B::float_matmul(ds.clone(), expand_kv::<B>(k, nh));
    let dk = B::float_matmul(B::float_swap_dims(ds, 2, 3), q);
    (dq, sum_groups::<B>(dk, nkv), sum_groups::<B>(dv, nkv))
}

impl AttentionOps for Cube {}

/// Query rows per block: each block's products stop at the last key one of its rows may see.
const BLOCK_ROWS: usize = 64;

/// The shapes of one attention call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    keys: usize,
    head_dim: usize,
}

impl Dims {
    fn of(q: &FlexTensor, k: &FlexTensor) -> Self {
        let [batch, heads, seq, head_dim] = dims4(&q.shape());
        let [_, kv_heads, keys, _] = dims4(&k.shape());
        Self {
            batch,
            heads,
            kv_heads,
            seq,
            keys,
            head_dim,
        }
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Multiply-adds of the forward's two products, without skipped keys.
    fn macs(&self) -> usize {
        2 * self.batch * self.heads * self.seq * self.keys * self.head_dim
    }
}

/// Below this many multiply-adds the heads run on the calling thread: handing a decoding
/// step's few small heads to the thread pool costs more than they take.
const PARALLEL_MACS: usize = 1 << 18;

/// `task(i)` for `i < n`, on the thread pool when the call does `macs` multiply-adds or more.
fn for_each_task(n: usize, macs: usize, task: impl Fn(usize) + Sync + Send) {
    if macs >= PARALLEL_MACS {
        (0..n).into_par_iter().for_each(task);
    } else {
        (0..n).for_each(task);
    }
}

/// The query blocks of each sequence: `(first row, end row, keys to read)`. A block reads the
/// keys up to the last one that any of its rows may see (a row that may see none reads all,
/// as the composed softmax does); past it every key is masked and gets probability 0.
fn blocks(bias: &[f32], dims: Dims) -> Vec<Vec<(usize, usize, usize)>> {
    let (s, t) = (dims.seq, dims.keys);
    (0..dims.batch)
        .map(|bi| {
            let row_end = |i: usize| {
                let row = &bias[(bi * s + i) * t..(bi * s + i + 1) * t];
                row.iter().rposition(|&x| x > BLOCKED).map_or(t, |j| j + 1)
            };
            (0..s)
                .step_by(BLOCK_ROWS)
                .map(|i0| {
                    let i1 = (i0 + BLOCK_ROWS).min(s);
                    (i0, i1, (i0..i1).map(row_end).max().unwrap_or(t))
                })
                .collect()
        })
        .collect()
}

/// A pointer the parallel tasks share; each writes its own elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks write disjoint elements (see each use).
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

impl AttentionOps for Flex {
    fn masked_attention_probs(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        scale: f64,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[&q, &k, &v, &bias]) {
            return composed::<Flex>(q, k, v, bias, scale);
        }
        let (q, k, v, bias) = (
            q.to_contiguous(),
            k.to_contiguous(),
            v.to_contiguous(),
            bias.to_contiguous(),
        );
        let x = Dims::of(&q, &k);
        let (s, t, d, nh) = (x.seq, x.keys, x.head_dim, x.heads);
        let blocks = blocks(values(&bias), x);
        let (qv, kv, vv, bv) = (values(&q), values(&k), values(&v), values(&bias));
        let out_len = x.batch * s * nh * d;
        let mut out = Vec::<f32>::with_capacity(out_len);
        let mut probs = vec![0f32; x.batch * nh * s * t];
        let (o, p) = (
            Shared(out.spare_capacity_mut().as_mut_ptr().cast()),
            Shared(probs.as_mut_ptr()),
        );
        for_each_task(x.batch * nh, x.macs(), |bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let kvh = bi * x.kv_heads + h / x.group();
            let (qh, kg, vg) = (
                &qv[bh * s * d..],
                &kv[kvh * t * d..(kvh + 1) * t * d],
                &vv[kvh * t * d..(kvh + 1) * t * d],
            );
            for &(i0, i1, e) in &blocks[bi] {
                let ph = p.at((bh * s + i0) * t);
                // SAFETY: this task alone writes head `bh`'s probabilities and output columns;
                // the reads stay inside q's head, the group's keys and values (`e ≤ t` rows).
                unsafe {
                    let q_blk = Mat::rows(qh[i0 * d..].as_ptr(), d);
                    gemm_into(
                        i1 - i0,
                        e,
                        d,
                        Mat::rows(ph, t),
                        false,
                        q_blk,
                        Mat::rows(kg.as_ptr(), d).t(),
                        scale as f32,
                        Parallelism::None,
                    );
                    for i in i0..i1 {
                        let row = std::slice::from_raw_parts_mut(ph.add((i - i0) * t), e);
                        let mask = &bv[(bi * s + i) * t..][..e];
                        row.iter_mut().zip(mask).for_each(|(x, m)| *x += m);
                        simd::softmax(row);
                    }
                    let dst = o.at((bi * s + i0) * nh * d + h * d);
                    gemm_into(
                        i1 - i0,
                        d,
                        e,
                        Mat::rows(dst, nh * d),
                        false,
                        Mat::rows(ph, t),
                        Mat::rows(vg.as_ptr(), d),
                        1.0,
                        Parallelism::None,
                    );
                }
            }
        });
        // SAFETY: every head wrote its `head_dim` columns of every row of `out`.
        unsafe { out.set_len(out_len) };
        (
            tensor(out, [x.batch, s, nh * d].into()),
            tensor(probs, [x.batch, nh, s, t].into()),
        )
    }

    fn masked_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        bias: FlexTensor,
        probs: FlexTensor,
        grad: FlexTensor,
        scale: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        if !all_f32(&[&q, &k, &v, &bias, &probs, &grad]) {
            return composed_backward::<Flex>(q, k, v, probs, grad, scale);
        }
        let [q, k, v, bias, probs, grad] = [q, k, v, bias, probs, grad].map(|x| x.to_contiguous());
        let x = Dims::of(&q, &k);
        let (s, t, d, nh) = (x.seq, x.keys, x.head_dim, x.heads);
        let blocks = blocks(values(&bias), x);
        let (qv, kv, vv, pv, gv) = (
            values(&q),
            values(&k),
            values(&v),
            values(&probs),
            values(&grad),
        );
        let dq_len = x.batch * nh * s * d;
        let mut dq = Vec::<f32>::with_capacity(dq_len);
        let mut dk = vec![0f32; x.batch * x.kv_heads * t * d];
        let mut dv = vec![0f32; x.batch * x.kv_heads * t * d];
        let (dq_p, dk_p, dv_p) = (
            Shared(dq.spare_capacity_mut().as_mut_ptr().cast()),
            Shared(dk.as_mut_ptr()),
            Shared(dv.as_mut_ptr()),
        );
        let scale = scale as f32;
        // One task per KV head: it alone accumulates that head's key and value gradients, over
        // the query heads of its group in order.
        for_each_task(x.batch * x.kv_heads, 2 * x.macs(), |bg| {
            let bi = bg / x.kv_heads;
            let (kg, vg) = (&kv[bg * t * d..][..t * d], &vv[bg * t * d..][..t * d]);
            let (dkg, dvg) = (dk_p.at(bg * t * d), dv_p.at(bg * t * d));
            let mut ds = vec![0f32; BLOCK_ROWS.min(s) * t];
            for h in (bg % x.kv_heads) * x.group()..(bg % x.kv_heads + 1) * x.group() {
                let bh = bi * nh + h;
                for &(i0, i1, e) in &blocks[bi] {
                    let rows = i1 - i0;
                    let p_blk = &pv[(bh * s + i0) * t..][..rows * t];
                    let g_blk = Mat::rows(gv[(bi * s + i0) * nh * d + h * d..].as_ptr(), nh * d);
                    let q_blk = Mat::rows(qv[(bh * s + i0) * d..].as_ptr(), d);
                    // SAFETY: this task alone writes the group's dk/dv and its heads' dq rows;
                    // reads stay inside the block's rows and the first `e ≤ t` keys.
                    unsafe {
                        let p_mat = Mat::rows(p_blk.as_ptr(), t);
                        gemm_into(
                            e,
                            d,
                            rows,
                            Mat::rows(dvg, d),
                            true,
                            p_mat.t(),
                            g_blk,
                            1.0,
                            Parallelism::None,
                        );
                        let dp = ds.as_mut_ptr();
                        gemm_into(
                            rows,
                            e,
                            d,
                            Mat::rows(dp, t),
                            false,
                            g_blk,
                            Mat::rows(vg.as_ptr(), d).t(),
                            1.0,
                            Parallelism::None,
                        );
                        for r in 0..rows {
                            simd::softmax_backward(&p_blk[r * t..][..e], &mut ds[r * t..][..e]);
                        }
                        let ds_mat = Mat::rows(ds.as_ptr(), t);
                        let dq_blk = dq_p.at((bh * s + i0) * d);
                        gemm_into(
                            rows,
                            d,
                            e,
                            Mat::rows(dq_blk, d),
                            false,
                            ds_mat,
                            Mat::rows(kg.as_ptr(), d),
                            scale,
                            Parallelism::None,
                        );
                        gemm_into(
                            e,
                            d,
                            rows,
                            Mat::rows(dkg, d),
                            true,
                            ds_mat.t(),
                            q_blk,
                            scale,
                            Parallelism::None,
                        );
                    }
                }
            }
        });
        // SAFETY: every block of every query head wrote its rows of `dq`.
        unsafe { dq.set_len(dq_len) };
        (
            tensor(dq, q.shape()),
            tensor(dk, k.shape()),
            tensor(dv, v.shape()),
        )
    }
}

impl<B: AttentionOps, C: CheckpointStrategy> AttentionOps for Autodiff<B, C> {
    fn masked_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct AttentionBackward {
            scale: f64,
        }

        impl<B: AttentionOps> Backward<B, 3> for AttentionBackward {
            type State = [FloatTensor<B>; 5];

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let [q, k, v, bias, probs] = ops.state;
                let (dq, dk, dv) =
                    B::masked_attention_backward(q, k, v, bias, probs, grad, self.scale);
                for (node, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let bias = bias.into_primitive();
        match (AttentionBackward { scale })
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let [q, k, v] = [q, k, v].map(|x| x.into_primitive());
                let (out, probs) =
                    B::masked_attention_probs(q.clone(), k.clone(), v.clone(), bias.clone(), scale);
                prep.finish([q, k, v, bias, probs], out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::masked_attention(
                q.into_primitive(),
                k.into_primitive(),
                v.into_primitive(),
                bias,
                scale,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{max_abs_diff, values_for};
    use super::*;
    use crate::layout::Layout;
    use burn::tensor::activation::softmax;

    /// The attention as the model composed it before: expanded KV heads, scaled scores, the
    /// bias, burn's softmax, the product with the values and the transposing reshape.
    fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, bias: Tensor<4>) -> Tensor<3> {
        let [b, nh, s, d] = q.dims();
        let [_, nkv, t, _] = k.dims();
        let expand = |x: Tensor<4>| {
            x.unsqueeze_dim::<5>(2)
                .expand([b, nkv, nh / nkv, t, d])
                .reshape([b, nh, t, d])
        };
        let scores = q
            .mul_scalar(1.0 / (d as f64).sqrt())
            .matmul(expand(k).swap_dims(2, 3))
            + bias;
        softmax(scores, 3)
            .matmul(expand(v))
            .swap_dims(1, 2)
            .reshape([b, s, nh * d])
    }

    /// Output and the three gradients through autodiff, fused against the reference: grouped
    /// heads (4 over 2), two blocks of query rows, past keys and a padded sequence, so blocks
    /// read different numbers of keys.
    #[test]
    fn fused_attention_and_gradients_match_the_composed_one() {
        let device = Device::flex().autodiff();
        let (b, nh, nkv, d, s, past) = (2, 4, 2, 16, 70, 5);
        let t = past + s;
        let mut mask = vec![true; b * t];
        mask[t..t + 9].iter_mut().for_each(|m| *m = false);
        let mut cache = crate::layout::KvCache::new(1, b);
        cache.extend(b, past, Some(&[&mask[..past], &mask[t..t + past]].concat()));
        let layout = cache.extend(b, s, Some(&[&mask[past..t], &mask[t + past..]].concat()));
        let bias = layout.attention_bias(&device);
        let g = values_for(b * s * nh * d, 4);
        let run = |fused: bool| {
            let t4 = |n: usize, shape: [usize; 4], seed| {
                Tensor::<4>::from_data(TensorData::new(values_for(n, seed), shape), &device)
                    .require_grad()
            };
            let q = t4(b * nh * s * d, [b, nh, s, d], 1);
            let k = t4(b * nkv * t * d, [b, nkv, t, d], 2);
            let v = t4(b * nkv * t * d, [b, nkv, t, d], 3);
            let scale = 1.0 / (d as f64).sqrt();
            let out = if fused {
                attention(q.clone(), k.clone(), v.clone(), bias.clone(), scale)
            } else {
                reference(q.clone(), k.clone(), v.clone(), bias.clone())
            };
            let g = Tensor::<3>::from_data(TensorData::new(g.clone(), [b, s, nh * d]), &device);
            let grads = (out.clone() * g).sum().backward();
            let v4 = |x: Tensor<4>| x.into_data().try_to_vec::<f32>().unwrap();
            [
                out.into_data().try_to_vec::<f32>().unwrap(),
                v4(q.grad(&grads).unwrap()),
                v4(k.grad(&grads).unwrap()),
                v4(v.grad(&grads).unwrap()),
            ]
        };
        let (fused, reference) = (run(true), run(false));
        for (name, (a, b)) in ["output", "dq", "dk", "dv"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-5, "{name} differs by {diff}");
        }
        // Not all zero: the comparison means something.
        assert!(fused[2].iter().any(|x| x.abs() > 1e-3));
    }

    /// The composed backward (what WGPU runs) against the fused one, on the same probabilities.
    #[test]
    fn composed_backward_matches_the_fused_one() {
        let (b, nh, nkv, s, d) = (1, 6, 3, 9, 8);
        let t = |n: usize, shape: [usize; 4], seed| {
            FlexTensor::from_data(TensorData::new(values_for(n, seed), shape))
        };
        let (q, k, v) = (
            t(b * nh * s * d, [b, nh, s, d], 5),
            t(b * nkv * s * d, [b, nkv, s, d], 6),
            t(b * nkv * s * d, [b, nkv, s, d], 7),
        );
        let bias = FlexTensor::from_data(
            Layout::causal(b, s)
                .attention_bias(&Device::flex())
                .into_data(),
        );
        let g = FlexTensor::from_data(TensorData::new(
            values_for(b * s * nh * d, 8),
            [b, s, nh * d],
        ));
        let (_, probs) =
            Flex::masked_attention_probs(q.clone(), k.clone(), v.clone(), bias.clone(), 0.3);
        let fused = Flex::masked_attention_backward(
            q.clone(),
            k.clone(),
            v.clone(),
            bias,
            probs.clone(),
            g.clone(),
            0.3,
        );
        let composed = composed_backward::<Flex>(q, k, v, probs, g, 0.3);
        let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in [fused.0, fused.1, fused.2]
            .into_iter()
            .zip([composed.0, composed.1, composed.2])
        {
            assert!(max_abs_diff(&v(a), &v(b)) < 1e-5);
        }
    }
}
