//! Distillation divergences against a teacher's full logits, `τ² · D(p_T, p_S)` per row with
//! `p = softmax(z / τ)`, as one backend operation with its own backward: forward KL
//! KL(p_T ‖ p_S), reverse KL KL(p_S ‖ p_T) and the generalized Jensen–Shannon JSD_β, the
//! losses of `distill student kd` with an online teacher.
//!
//! Per row, with `s = log p_S`, `t = max(log p_T, LOG_FLOOR)`, `q = e^s` and `p = e^t`, the
//! loss is `τ² Σ_j ℓ_j` and its gradient in the student's logits `g·τ·(h_v − q_v Σ_j h_j)`,
//! with `h = ∂(Σ ℓ)/∂s`:
//! * forward: `ℓ = p (t − s)`, `h = −p`;
//! * reverse: `ℓ = q (s − t)`, `h = q (s − t + 1)`;
//! * JSD_β: with `log M = log(β p + (1−β) q)`, `ℓ = β p (t − log M) + (1−β) q (s − log M)`,
//!   `h = (1−β) q (s − log M)`.
//!
//! The teacher is a constant (no gradient). Composed from burn's operations (WGPU) these are
//! ten or more passes over `[rows, vocab]` each way; fused on the CPU a row is read four times
//! forward (two log-sum-exps and the sum) and four times backward.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Backend, Cube, Dispatch, Flex, TensorMetadata, backend_extension, get_or_init_device_settings,
};
use burn::prelude::*;
use rayon::prelude::*;
use std::borrow::Cow;

use super::simd::{exp, log_sum_exp};
use super::top_k_kl::LOG_FLOOR;
use super::{all_f32, differentiable, rewrite_rows, values};

/// Which divergence between the teacher's and the student's softened distributions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Divergence {
    /// KL(p_T ‖ p_S), mode-covering.
    Forward,
    /// KL(p_S ‖ p_T), mode-seeking.
    Reverse,
    /// JSD_β with teacher weight β in (0, 1) in the mixture.
    Jsd(f64),
}

/// `student [rows, vocab]` and `teacher [rows, vocab]` logits → `[rows]`: each row's τ²-scaled
/// divergence, differentiable in `student` only.
pub fn divergence(
    student: Tensor<2>,
    teacher: Tensor<2>,
    kind: Divergence,
    temperature: f64,
) -> Tensor<1> {
    assert_eq!(student.dims(), teacher.dims(), "student vs teacher logits");
    Tensor::from_dispatch(<Dispatch as DivergenceOps>::divergence(
        student.into_dispatch(),
        teacher.into_dispatch(),
        kind,
        temperature,
    ))
}

/// The backend extension behind [`divergence`]: fused on [`Flex`], composed elsewhere.
#[backend_extension(Flex, Cube, Autodiff)]
pub trait DivergenceOps: Backend {
    /// `student [rows, vocab]`, `teacher [rows, vocab]` → `[rows]`.
    fn divergence(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        kind: Divergence,
        temperature: f64,
    ) -> FloatTensor<Self> {
        composed::<Self>(student, teacher, kind, temperature)
    }

    /// The gradient with respect to `student` for the output gradient `grad` `[rows]`.
    fn divergence_backward(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        kind: Divergence,
        temperature: f64,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_backward::<Self>(student, teacher, kind, temperature, grad)
    }
}

/// `log_softmax(x / τ)` along the rows, from burn's operations.
fn log_softmax<B: Backend>(x: FloatTensor<B>, tau: f64) -> FloatTensor<B> {
    let u = B::float_mul_scalar(x, (1.0 / tau).into());
    let shifted = B::float_sub(u.clone(), B::float_max_dim(u, 1));
    let lse = B::float_log(B::float_sum_dim(B::float_exp(shifted.clone()), 1));
    B::float_sub(shifted, lse)
}

/// The student's and the (floored) teacher's log-probabilities, and for JSD `log M`.
fn composed_logs<B: Backend>(
    student: FloatTensor<B>,
    teacher: FloatTensor<B>,
    kind: Divergence,
    tau: f64,
) -> (FloatTensor<B>, FloatTensor<B>, Option<FloatTensor<B>>) {
    let s = log_softmax::<B>(student, tau);
    let t = B::float_clamp_min(log_softmax::<B>(teacher, tau), LOG_FLOOR.into());
    let log_m = match kind {
        Divergence::Jsd(beta) => {
            let a = B::float_add_scalar(t.clone(), beta.ln().into());
            let b = B::float_add_scalar(s.clone(), (1.0 - beta).ln().into());
            // max(a, b) + log(1 + e^−|a−b|); the maximum by a mask, since (a + b + |a − b|) / 2
            // cancels where the teacher's floored log-probability is −1e4.
            let device = a.device();
            let bool_dtype = get_or_init_device_settings::<B>(&device).bool_dtype;
            let a_above = B::float_greater(a.clone(), b.clone(), bool_dtype);
            let gap = B::float_abs(B::float_sub(a.clone(), b.clone()));
            let top = B::float_mask_where(b, a_above, a);
            Some(B::float_add(
                top,
                B::float_log1p(B::float_exp(B::float_neg(gap))),
            ))
        }
        _ => None,
    };
    (s, t, log_m)
}

/// `Σ_j e^a_j (a_j − b_j)` per row, `[rows, 1]`.
fn kl<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    B::float_sum_dim(B::float_mul(B::float_exp(a.clone()), B::float_sub(a, b)), 1)
}

/// [`DivergenceOps::divergence`] from burn's operations.
fn composed<B: Backend>(
    student: FloatTensor<B>,
    teacher: FloatTensor<B>,
    kind: Divergence,
    tau: f64,
) -> FloatTensor<B> {
    let rows = student.shape()[0];
    let (s, t, log_m) = composed_logs::<B>(student, teacher, kind, tau);
    let loss = match (kind, log_m) {
        (Divergence::Forward, _) => kl::<B>(t, s),
        (Divergence::Reverse, _) => kl::<B>(s, t),
        (Divergence::Jsd(beta), Some(m)) => B::float_add(
            B::float_mul_scalar(kl::<B>(t, m.clone()), beta.into()),
            B::float_mul_scalar(kl::<B>(s, m), (1.0 - beta).into()),
        ),
        (Divergence::Jsd(_), None) => unreachable!("composed_logs gives log M for JSD"),
    };
    B::float_reshape(B::float_mul_scalar(loss, (tau * tau).into()), [rows].into())
}

/// [`DivergenceOps::divergence_backward`] from burn's operations.
fn composed_backward<B: Backend>(
    student: FloatTensor<B>,
    teacher: FloatTensor<B>,
    kind: Divergence,
    tau: f64,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let rows = student.shape()[0];
    let (s, t, log_m) = composed_logs::<B>(student, teacher, kind, tau);
    let q = B::float_exp(s.clone());
    let h = match (kind, log_m) {
        (Divergence::Forward, _) => B::float_neg(B::float_exp(t)),
        (Divergence::Reverse, _) => B::float_mul(
            q.clone(),
            B::float_add_scalar(B::float_sub(s, t), 1.0.into()),
        ),
        (Divergence::Jsd(beta), Some(m)) => B::float_mul_scalar(
            B::float_mul(q.clone(), B::float_sub(s, m)),
            (1.0 - beta).into(),
        ),
        (Divergence::Jsd(_), None) => unreachable!("composed_logs gives log M for JSD"),
    };
    let d = B::float_sub(h.clone(), B::float_mul(q, B::float_sum_dim(h, 1)));
    let g = B::float_mul_scalar(B::float_reshape(grad, [rows, 1].into()), tau.into());
    B::float_mul(d, g)
}

impl DivergenceOps for Cube {}

/// `z / τ`, borrowed when τ is 1.
fn scaled(z: &[f32], tau: f32) -> Cow<'_, [f32]> {
    if tau == 1.0 {
        Cow::Borrowed(z)
    } else {
        Cow::Owned(z.iter().map(|&z| z / tau).collect())
    }
}

/// One row of the teacher at temperature τ: `w = z_T / τ` and its log-sum-exp, so that
/// `t_j = max(w_j − lse, LOG_FLOOR)`.
struct TeacherRow<'a> {
    w: Cow<'a, [f32]>,
    lse: f32,
}

impl<'a> TeacherRow<'a> {
    fn new(z: &'a [f32], tau: f32) -> Self {
        let w = scaled(z, tau);
        let lse = log_sum_exp(&w);
        Self { w, lse }
    }

    /// `t_j`.
    #[inline(always)]
    fn t(&self, j: usize) -> f32 {
        (self.w[j] - self.lse).max(LOG_FLOOR as f32)
    }
}

/// `log(β e^t + (1−β) e^s)`, from `ln β` and `ln(1−β)`, without overflow or underflow to −∞
/// when both are tiny.
#[inline(always)]
fn log_mixture(t: f32, s: f32, ln_beta: f32, ln_rest: f32) -> f32 {
    let (a, b) = (t + ln_beta, s + ln_rest);
    a.max(b) + (-(a - b).abs()).exp().ln_1p()
}

/// `(ℓ_j, h_j)` of one token (see the module doc), from `s_j` and `t_j`.
#[inline(always)]
fn terms(kind: Divergence, s: f32, t: f32) -> (f32, f32) {
    let (q, p) = (exp(s), exp(t));
    match kind {
        Divergence::Forward => (p * (t - s), -p),
        Divergence::Reverse => (q * (s - t), q * (s - t + 1.0)),
        Divergence::Jsd(beta) => {
            let beta32 = beta as f32;
            let m = log_mixture(t, s, beta32.ln(), (1.0 - beta32).ln());
            let rest = (1.0 - beta32) * q * (s - m);
            (beta32 * p * (t - m) + rest, rest)
        }
    }
}

impl DivergenceOps for Flex {
    fn divergence(
        student: FlexTensor,
        teacher: FlexTensor,
        kind: Divergence,
        temperature: f64,
    ) -> FlexTensor {
        if !all_f32(&[&student, &teacher]) {
            return composed::<Flex>(student, teacher, kind, temperature);
        }
        let (student, teacher) = (student.to_contiguous(), teacher.to_contiguous());
        let (rows, vocab) = dims_of(&student, &teacher);
        let tau = temperature as f32;
        let out: Vec<f32> = values(&student)
            .par_chunks(vocab)
            .zip(values(&teacher).par_chunks(vocab))
            .map(|(zs, zt)| {
                let (u, teacher) = (scaled(zs, tau), TeacherRow::new(zt, tau));
                let lse = log_sum_exp(&u);
                let sum: f64 = (0..vocab)
                    .map(|j| terms(kind, u[j] - lse, teacher.t(j)).0 as f64)
                    .sum();
                (sum * temperature * temperature) as f32
            })
            .collect();
        FlexTensor::from_data(TensorData::new(out, [rows]))
    }

    fn divergence_backward(
        student: FlexTensor,
        teacher: FlexTensor,
        kind: Divergence,
        temperature: f64,
        grad: FlexTensor,
    ) -> FlexTensor {
        if !all_f32(&[&student, &teacher, &grad]) {
            return composed_backward::<Flex>(student, teacher, kind, temperature, grad);
        }
        let (student, teacher) = (student.to_contiguous(), teacher.to_contiguous());
        let (_, vocab) = dims_of(&student, &teacher);
        let zt = values(&teacher);
        let grad = grad.to_contiguous();
        let g = values(&grad);
        let tau = temperature as f32;
        rewrite_rows(student, vocab, |i, row| {
            // The row becomes u = z / τ, then its gradient, value by value.
            if tau != 1.0 {
                row.iter_mut().for_each(|z| *z /= tau);
            }
            let teacher = TeacherRow::new(&zt[i * vocab..(i + 1) * vocab], tau);
            let lse = log_sum_exp(row);
            let h_sum: f64 = (0..vocab)
                .map(|j| terms(kind, row[j] - lse, teacher.t(j)).1 as f64)
                .sum();
            let (h_sum, scale) = (h_sum as f32, g[i] * tau);
            for (j, v) in row.iter_mut().enumerate() {
                let s = *v - lse;
                *v = scale * (terms(kind, s, teacher.t(j)).1 - exp(s) * h_sum);
            }
        })
    }
}

impl<B: DivergenceOps, C: CheckpointStrategy> DivergenceOps for Autodiff<B, C> {
    fn divergence(
        student: FloatTensor<Self>,
        teacher: FloatTensor<Self>,
        kind: Divergence,
        temperature: f64,
    ) -> FloatTensor<Self> {
        differentiable::<B, C, (FloatTensor<B>, Divergence, f64), 1>(
            [student],
            (teacher.into_primitive(), kind, temperature),
            |[student], (teacher, kind, tau)| B::divergence(student, teacher, kind, tau),
            |[student], (teacher, kind, tau), grad| {
                [B::divergence_backward(student, teacher, kind, tau, grad)]
            },
        )
    }
}

/// `(rows, vocab)` of two `[rows, vocab]` logit tensors of the same shape.
fn dims_of(student: &FlexTensor, teacher: &FlexTensor) -> (usize, usize) {
    let (s, t) = (student.shape(), teacher.shape());
    assert_eq!(s.num_dims(), 2, "divergence takes [rows, vocab] logits");
    assert_eq!(s, t, "student and teacher logits differ in shape");
    (s[0], s[1])
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Student and teacher logits `[rows, vocab]` of spread `scale`, seeded; the teacher's
    /// first token of each row far below the rest, so its log-probability hits the floor.
    fn case(rows: usize, vocab: usize, scale: f32, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut draw = || -> Vec<f32> {
            (0..rows * vocab)
                .map(|_| scale * (rng.random::<f32>() - 0.5))
                .collect()
        };
        let (s, mut t) = (draw(), draw());
        for r in 0..rows {
            t[r * vocab] = -3e4;
        }
        (s, t)
    }

    /// The fused CPU op against the composed one (what WGPU runs), loss and gradient, for each
    /// divergence at two temperatures, with a SmolLM2-sized vocabulary among the shapes.
    #[test]
    fn fused_matches_composed() {
        let kinds = [
            Divergence::Forward,
            Divergence::Reverse,
            Divergence::Jsd(0.5),
            Divergence::Jsd(0.1),
        ];
        for (rows, vocab, scale, tau, seed) in [
            (6usize, 301usize, 12.0f32, 1.0f64, 1u64),
            (3, 1003, 20.0, 2.0, 2),
            (2, 49_152, 30.0, 1.0, 3),
        ] {
            let (zs, zt) = case(rows, vocab, scale, seed);
            let g: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32).collect();
            let t = |v: &[f32], shape: &[usize]| {
                FlexTensor::from_data(TensorData::new(v.to_vec(), shape.to_vec()))
            };
            let v = |t: FlexTensor| t.into_data().try_to_vec::<f32>().unwrap();
            for kind in kinds {
                let (s, z) = (|| t(&zs, &[rows, vocab]), || t(&zt, &[rows, vocab]));
                let fused = v(Flex::divergence(s(), z(), kind, tau));
                let composed = v(composed::<Flex>(s(), z(), kind, tau));
                let scale = composed.iter().fold(1f32, |m, x| m.max(x.abs()));
                let d = max_abs_diff(&fused, &composed);
                assert!(
                    d <= 2e-5 * scale,
                    "{kind:?} {rows}x{vocab} τ {tau}: loss {fused:?} vs {composed:?}"
                );
                let grad = || t(&g, &[rows]);
                let fused = v(Flex::divergence_backward(s(), z(), kind, tau, grad()));
                let composed = v(composed_backward::<Flex>(s(), z(), kind, tau, grad()));
                let scale = composed.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = max_abs_diff(&fused, &composed);
                assert!(
                    d <= 1e-5 * scale.max(1e-3),
                    "{kind:?} {rows}x{vocab} τ {tau}: gradient differs by {d} (max {scale})"
                );
            }
        }
    }

    /// Through autodiff the teacher gets no gradient and the student's is the backward's.
    #[test]
    fn only_the_student_gets_a_gradient() {
        let device = Device::flex().autodiff();
        let (zs, zt) = case(3, 17, 6.0, 4);
        let s = Tensor::<2>::from_data(TensorData::new(zs, [3, 17]), &device).require_grad();
        let t = Tensor::<2>::from_data(TensorData::new(zt, [3, 17]), &device).require_grad();
        let grads = divergence(s.clone(), t.clone(), Divergence::Jsd(0.3), 1.5)
            .sum()
            .backward();
        assert!(t.grad(&grads).is_none(), "a gradient reached the teacher");
        let g = s
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(g.iter().any(|x| x.abs() > 1e-4), "{g:?}");
        // Each row's gradient sums to zero: softmax logits are shift-invariant.
        for row in g.chunks(17) {
            assert!(row.iter().sum::<f32>().abs() < 1e-5, "{row:?}");
        }
    }
}
