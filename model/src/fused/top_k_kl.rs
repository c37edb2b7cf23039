//! Forward KL from a cached top-k teacher, `τ² · KL(p_T ‖ p_S)` over k + 1 outcomes (the k
//! cached tokens and one tail bucket for the rest of the vocabulary), as one backend operation
//! with its own backward: the distillation loss of `distill student kd` with a top-k cache.
//!
//! Per row, with `u = z / τ`, `q = softmax(u)`, teacher log-probabilities `t_k` (floored at
//! [`LOG_FLOOR`]) and `p_k = exp(t_k)`:
//! * teacher tail `T = max(1 − Σ p_k, TAIL_FLOOR)`; student tail `S = Σ_{j ∉ ids} q_j`, summed
//!   over the complement so it does not cancel, and floored the same way;
//! * loss `= τ² · [Σ_k p_k (t_k − log q_k) + T (log T − log max(S, TAIL_FLOOR))]`;
//! * gradient `∂/∂z_j = g·τ · (q_j·W − p_j)` for `j ∈ ids` and `g·τ · q_j·(W − c·T/S)` for the
//!   rest, with `W = Σ p_k + c·T` and `c = 1` when `S` is above the floor (else the floored log
//!   is constant and `c = 0`).
//!
//! Composed from burn's operations this is a dozen passes over the `[rows, vocab]` logits each
//! way (a vocabulary mask built by a scatter, log-softmax, the masked tail, and their
//! backward); fused on the CPU it reads a row three times forward and writes the gradient over
//! the logits backward.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension, get_or_init_device_settings,
};
use burn::prelude::*;
use burn::tensor::{FloatDType, IndexingUpdateOp};
use rayon::prelude::*;

use super::simd::{exp_sum, log_sum_exp, scaled_exp};
use super::{all_f32, checked_ids, differentiable, rewrite_rows, values};

/// Smallest tail mass used in a log: an empty or numerically negative tail sits here on both
/// sides and so adds nothing to the divergence.
pub const TAIL_FLOOR: f64 = 1e-8;

/// Smallest teacher log-probability: keeps a masked (−∞) teacher token from producing NaN.
pub const LOG_FLOOR: f64 = -1e4;

/// `logits [rows, vocab]`, the teacher's top-k `ids [rows, k]` (distinct within a row) and its
/// log-probabilities at them `[rows, k]` (at temperature τ) → `[rows]`: each row's τ²-scaled
/// KL(p_T ‖ p_S) over the k tokens and the tail, differentiable in `logits` only.
pub fn top_k_forward_kl(
    logits: Tensor<2>,
    ids: Tensor<2, Int>,
    teacher_logprobs: Tensor<2>,
    temperature: f64,
) -> Tensor<1> {
    Tensor::from_dispatch(<Dispatch as TopKForwardKlOps>::top_k_forward_kl(
        logits.into_dispatch(),
        ids.into_dispatch(),
        teacher_logprobs.into_dispatch(),
        temperature,
    ))
}

/// The backend extension behind [`top_k_forward_kl`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait TopKForwardKlOps: Backend {
    /// `logits [rows, vocab]`, `ids [rows, k]`, `teacher [rows, k]` → `[rows]`.
    fn top_k_forward_kl(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        teacher: FloatTensor<Self>,
        temperature: f64,
    ) -> FloatTensor<Self> {
        composed::<Self>(logits, ids, teacher, temperature)
    }

    /// The gradient with respect to `logits` for the output gradient `grad` `[rows]`.
    fn top_k_forward_kl_backward(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        teacher: FloatTensor<Self>,
        temperature: f64,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_backward::<Self>(logits, ids, teacher, temperature, grad)
    }
}

/// What both composed directions need.
struct Parts<B: Backend> {
    /// Student softmax `q` `[rows, vocab]`.
    q: FloatTensor<B>,
    /// `S` above the floor, as 1.0 / 0.0 `[rows, 1]`.
    c: FloatTensor<B>,
    /// Teacher tail `T` `[rows, 1]`.
    t_tail: FloatTensor<B>,
    /// Student tail `max(S, TAIL_FLOOR)` `[rows, 1]`.
    s_tail: FloatTensor<B>,
    /// Teacher probabilities `p_k` `[rows, k]`.
    p: FloatTensor<B>,
    /// Teacher log-probabilities, floored at [`LOG_FLOOR`], `[rows, k]`.
    t: FloatTensor<B>,
    /// Student log-probabilities at the ids, `log q_k` `[rows, k]`.
    log_q_k: FloatTensor<B>,
}

/// The softmaxes, tails and teacher probabilities, from burn's operations.
fn composed_parts<B: Backend>(
    logits: FloatTensor<B>,
    ids: IntTensor<B>,
    teacher: FloatTensor<B>,
    tau: f64,
) -> Parts<B> {
    let shape = logits.shape();
    let (rows, vocab) = (shape[0], shape[1]);
    let k = teacher.shape()[1];
    let device = logits.device();
    let dtype = FloatDType::from(logits.dtype());
    let u = B::float_mul_scalar(logits, (1.0 / tau).into());
    let shifted = B::float_sub(u.clone(), B::float_max_dim(u, 1));
    let e = B::float_exp(shifted.clone());
    let sum = B::float_sum_dim(e.clone(), 1);
    let log_q_k = B::float_sub(
        B::float_gather(1, shifted, ids.clone()),
        B::float_log(sum.clone()),
    );
    let q = B::float_div(e, sum);
    let in_top_k = B::float_scatter(
        1,
        B::float_zeros([rows, vocab].into(), &device, dtype),
        ids,
        B::float_ones([rows, k].into(), &device, dtype),
        IndexingUpdateOp::Add,
    );
    let outside = B::float_sub(q.clone(), B::float_mul(q.clone(), in_top_k));
    let s_raw = B::float_sum_dim(outside, 1);
    let bool_dtype = get_or_init_device_settings::<B>(&device).bool_dtype;
    let above = B::float_greater_elem(s_raw.clone(), TAIL_FLOOR.into(), bool_dtype);
    let c = B::bool_into_float(above, dtype);
    let s_tail = B::float_clamp_min(s_raw, TAIL_FLOOR.into());
    let t = B::float_clamp_min(teacher, LOG_FLOOR.into());
    let p = B::float_exp(t.clone());
    let t_tail = B::float_clamp_min(
        B::float_add_scalar(B::float_neg(B::float_sum_dim(p.clone(), 1)), 1.0.into()),
        TAIL_FLOOR.into(),
    );
    Parts {
        q,
        c,
        t_tail,
        s_tail,
        p,
        t,
        log_q_k,
    }
}

/// [`TopKForwardKlOps::top_k_forward_kl`] from burn's operations.
fn composed<B: Backend>(
    logits: FloatTensor<B>,
    ids: IntTensor<B>,
    teacher: FloatTensor<B>,
    tau: f64,
) -> FloatTensor<B> {
    let rows = logits.shape()[0];
    let Parts {
        t_tail,
        s_tail,
        p,
        t,
        log_q_k,
        ..
    } = composed_parts::<B>(logits, ids, teacher, tau);
    let top = B::float_sum_dim(B::float_mul(p, B::float_sub(t, log_q_k)), 1);
    let tail = B::float_mul(
        t_tail.clone(),
        B::float_sub(B::float_log(t_tail), B::float_log(s_tail)),
    );
    let loss = B::float_mul_scalar(B::float_add(top, tail), (tau * tau).into());
    B::float_reshape(loss, [rows].into())
}

/// [`TopKForwardKlOps::top_k_forward_kl_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    logits: FloatTensor<B>,
    ids: IntTensor<B>,
    teacher: FloatTensor<B>,
    tau: f64,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let rows = logits.shape()[0];
    let Parts {
        q,
        c,
        t_tail,
        s_tail,
        p,
        ..
    } = composed_parts::<B>(logits, ids.clone(), teacher, tau);
    let ct = B::float_mul(c, t_tail);
    let w = B::float_add(B::float_sum_dim(p.clone(), 1), ct.clone());
    let ratio = B::float_div(ct, s_tail);
    // Every token as if outside the top k, then the top k corrected by q·(c·T/S) − p.
    let outside = B::float_mul(q.clone(), B::float_sub(w, ratio.clone()));
    let q_k = B::float_gather(1, q, ids.clone());
    let fix = B::float_sub(B::float_mul(q_k, ratio), p);
    let d = B::float_scatter(1, outside, ids, fix, IndexingUpdateOp::Add);
    let g = B::float_mul_scalar(B::float_reshape(grad, [rows, 1].into()), tau.into());
    B::float_mul(d, g)
}

impl TopKForwardKlOps for Cube {}

/// One row's teacher side: `p_k`, `Σ p_k`, `Σ p_k·t_k` and the tail `T`.
struct TeacherRow {
    p: Vec<f32>,
    mass: f64,
    p_t: f64,
    tail: f64,
}

impl TeacherRow {
    fn new(t: &[f32]) -> Self {
        let t: Vec<f64> = t.iter().map(|&t| (t as f64).max(LOG_FLOOR)).collect();
        let p: Vec<f64> = t.iter().map(|t| t.exp()).collect();
        let p_t = p.iter().zip(&t).map(|(p, t)| p * t).sum();
        let mass = p.iter().sum::<f64>();
        Self {
            p: p.iter().map(|&p| p as f32).collect(),
            mass,
            p_t,
            tail: (1.0 - mass).max(TAIL_FLOOR),
        }
    }
}

/// `(log-sum-exp of u, Σ_{j ∉ ids} exp(u_j − lse))` of a row `u` and its top-k ids: the tail
/// sums the gaps between the sorted ids.
fn lse_and_tail(u: &[f32], ids: &[usize]) -> (f32, f64) {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let lse = log_sum_exp(u);
    let mut tail = 0f64;
    let mut from = 0;
    for &id in sorted.iter().chain(std::iter::once(&u.len())) {
        tail += exp_sum(&u[from..id], lse) as f64;
        from = id + 1;
    }
    (lse, tail)
}

impl TopKForwardKlOps for Flex {
    fn top_k_forward_kl(
        logits: FlexTensor,
        ids: FlexTensor,
        teacher: FlexTensor,
        temperature: f64,
    ) -> FlexTensor {
        if !all_f32(&[&logits, &teacher]) {
            return composed::<Flex>(logits, ids, teacher, temperature);
        }
        let logits = logits.to_contiguous();
        let (rows, vocab, k) = dims_of(&logits, &teacher);
        let ids = checked_ids(ids, rows * k, vocab, "top_k_forward_kl");
        let teacher = teacher.to_contiguous();
        let t = values(&teacher);
        let tau = temperature as f32;
        let out: Vec<f32> = values(&logits)
            .par_chunks(vocab)
            .zip(ids.par_chunks(k).zip(t.par_chunks(k)))
            .map(|(z, (ids, t))| {
                let scaled: Vec<f32>;
                let u = if tau == 1.0 {
                    z
                } else {
                    scaled = z.iter().map(|&z| z / tau).collect();
                    &scaled
                };
                let (lse, s) = lse_and_tail(u, ids);
                let teacher = TeacherRow::new(t);
                // Σ p_k (t_k − log q_k), log q_k = u_k − lse.
                let cross: f64 = ids
                    .iter()
                    .zip(&teacher.p)
                    .map(|(&id, &p)| p as f64 * (u[id] - lse) as f64)
                    .sum();
                let t_tail = teacher.tail;
                let kl = teacher.p_t - cross + t_tail * (t_tail.ln() - s.max(TAIL_FLOOR).ln());
                (kl * (temperature * temperature)) as f32
            })
            .collect();
        FlexTensor::from_data(TensorData::new(out, [rows]))
    }

    fn top_k_forward_kl_backward(
        logits: FlexTensor,
        ids: FlexTensor,
        teacher: FlexTensor,
        temperature: f64,
        grad: FlexTensor,
    ) -> FlexTensor {
        if !all_f32(&[&logits, &teacher, &grad]) {
            return composed_backward::<Flex>(logits, ids, teacher, temperature, grad);
        }
        // The gradient replaces the logits, which the graph no longer needs: in place, or row
        // by row into a fresh buffer when they are shared.
        let logits = logits.to_contiguous();
        let (rows, vocab, k) = dims_of(&logits, &teacher);
        let ids = checked_ids(ids, rows * k, vocab, "top_k_forward_kl");
        let teacher = teacher.to_contiguous();
        let t = values(&teacher);
        let grad = grad.to_contiguous();
        let g = values(&grad);
        let tau = temperature as f32;
        rewrite_rows(logits, vocab, |i, row| {
            let (ids, t, g) = (&ids[i * k..(i + 1) * k], &t[i * k..(i + 1) * k], g[i]);
            if tau != 1.0 {
                row.iter_mut().for_each(|z| *z /= tau);
            }
            let (lse, s) = lse_and_tail(row, ids);
            let teacher = TeacherRow::new(t);
            let ct = if s > TAIL_FLOOR { teacher.tail } else { 0.0 };
            let w = teacher.mass + ct;
            let ratio = ct / s.max(TAIL_FLOOR);
            let q_k: Vec<f32> = ids.iter().map(|&id| (row[id] - lse).exp()).collect();
            let gt = g * tau;
            scaled_exp(row, lse, gt * (w - ratio) as f32);
            for ((&id, &q), &p) in ids.iter().zip(&q_k).zip(&teacher.p) {
                row[id] = gt * (q * w as f32 - p);
            }
        })
    }
}

impl<B: TopKForwardKlOps, C: CheckpointStrategy> TopKForwardKlOps for Autodiff<B, C> {
    fn top_k_forward_kl(
        logits: FloatTensor<Self>,
        ids: IntTensor<Self>,
        teacher: FloatTensor<Self>,
        temperature: f64,
    ) -> FloatTensor<Self> {
        differentiable::<B, C, (IntTensor<B>, FloatTensor<B>, f64), 1>(
            [logits],
            (ids, teacher.into_primitive(), temperature),
            |[logits], (ids, teacher, tau)| B::top_k_forward_kl(logits, ids, teacher, tau),
            |[logits], (ids, teacher, tau), grad| {
                [B::top_k_forward_kl_backward(
                    logits, ids, teacher, tau, grad,
                )]
            },
        )
    }
}

/// `(rows, vocab, k)` of `[rows, vocab]` logits and `[rows, k]` teacher log-probabilities.
fn dims_of(logits: &FlexTensor, teacher: &FlexTensor) -> (usize, usize, usize) {
    let (l, t) = (logits.shape(), teacher.shape());
    assert_eq!(
        l.num_dims(),
        2,
        "top_k_forward_kl takes [rows, vocab] logits"
    );
    assert_eq!(
        t.num_dims(),
        2,
        "top_k_forward_kl takes [rows, k] teacher log-probs"
    );
    assert_eq!(l[0], t[0], "top_k_forward_kl: teacher rows vs student rows");
    (l[0], l[1], t[1])
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::index::sample;
    use rand::{Rng, SeedableRng};

    /// Logits `[rows, vocab]`, distinct top-k ids and teacher log-probabilities summing below
    /// one (a tail left), seeded.
    fn case(rows: usize, vocab: usize, k: usize, seed: u64) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let z = (0..rows * vocab)
            .map(|_| 8.0 * (rng.random::<f32>() - 0.5))
            .collect();
        let mut ids = Vec::new();
        let mut lp = Vec::new();
        for _ in 0..rows {
            ids.extend(sample(&mut rng, vocab, k).iter().map(|i| i as i64));
            let w: Vec<f32> = (0..k).map(|_| rng.random::<f32>() + 0.01).collect();
            let mass = 0.5 + 0.45 * rng.random::<f32>();
            let sum: f32 = w.iter().sum();
            lp.extend(w.iter().map(|w| (mass * w / sum).ln()));
        }
        (z, ids, lp)
    }

    /// The fused CPU op against the composed one (what WGPU runs), loss and gradient, at two
    /// temperatures and with a k that leaves the tail nearly empty.
    #[test]
    fn fused_matches_composed() {
        for (rows, vocab, k, tau, seed) in [
            (7usize, 301usize, 5usize, 1.0f64, 1u64),
            (4, 1003, 32, 2.0, 2),
            (3, 40, 39, 1.0, 3),
        ] {
            let (z, ids, lp) = case(rows, vocab, k, seed);
            let g: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32).collect();
            let z = || FlexTensor::from_data(TensorData::new(z.clone(), [rows, vocab]));
            let ids = || FlexTensor::from_data(TensorData::new(ids.clone(), [rows, k]));
            let lp = || FlexTensor::from_data(TensorData::new(lp.clone(), [rows, k]));
            let g = || FlexTensor::from_data(TensorData::new(g.clone(), [rows]));
            let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();

            let fused = v(Flex::top_k_forward_kl(z(), ids(), lp(), tau));
            let composed = v(composed::<Flex>(z(), ids(), lp(), tau));
            let scale = composed.iter().fold(1f32, |m, x| m.max(x.abs()));
            let d = max_abs_diff(&fused, &composed);
            assert!(
                d <= 2e-5 * scale,
                "{rows}x{vocab} k {k}: loss differs by {d}"
            );

            let fused = v(Flex::top_k_forward_kl_backward(z(), ids(), lp(), tau, g()));
            let composed = v(composed_backward::<Flex>(z(), ids(), lp(), tau, g()));
            let d = max_abs_diff(&fused, &composed);
            assert!(d < 1e-5, "{rows}x{vocab} k {k}: gradient differs by {d}");
        }
    }

    /// The backward rewrites unique logits in place and copies shared ones row by row into a
    /// fresh buffer, leaving them as they were: the two give the same bits.
    #[test]
    fn backward_of_shared_and_unique_logits_agree() {
        let (rows, vocab, k, tau) = (5, 407, 8, 2.0);
        let (z, ids, lp) = case(rows, vocab, k, 9);
        let g: Vec<f32> = (0..rows).map(|i| 1.0 - 0.3 * i as f32).collect();
        let ids = FlexTensor::from_data(TensorData::new(ids, [rows, k]));
        let lp = FlexTensor::from_data(TensorData::new(lp, [rows, k]));
        let g = FlexTensor::from_data(TensorData::new(g, [rows]));
        let v = |t: &FlexTensor| t.clone().into_data().try_to_vec::<f32>().unwrap();
        let shared = FlexTensor::from_data(TensorData::new(z.clone(), [rows, vocab]));
        let kept = shared.clone();
        let copied =
            Flex::top_k_forward_kl_backward(shared, ids.clone(), lp.clone(), tau, g.clone());
        assert_eq!(v(&kept), z, "the shared logits were changed");
        let unique = FlexTensor::from_data(TensorData::new(z, [rows, vocab]));
        assert!(unique.is_unique());
        let in_place = Flex::top_k_forward_kl_backward(unique, ids, lp, tau, g);
        assert_eq!(v(&copied), v(&in_place));
    }
}
