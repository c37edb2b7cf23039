//! Shared test helpers for the distillation losses: f64 references and the checks every
//! divergence runs.

use super::{TAIL_FLOOR, TeacherSignal};
use burn::prelude::*;

/// softmax in f64.
pub fn softmax64(z: &[f64]) -> Vec<f64> {
    log_softmax64(z).into_iter().map(f64::exp).collect()
}

/// log_softmax in f64.
pub fn log_softmax64(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    z.iter().map(|x| x - lse).collect()
}

/// Asserts |got − want| ≤ tol · |want|.
pub fn assert_rel(got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs(),
        "got {got}, want {want} (relative tolerance {tol})"
    );
}

/// A `[rows, cols]` tensor of `rows`.
pub fn matrix(rows: &[&[f64]], device: &Device) -> Tensor<2> {
    let cols = rows[0].len();
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as f32))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), cols]), device)
}

/// Reads a tensor as f64s.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    let v = t.into_data().try_to_vec::<f32>().unwrap();
    v.into_iter().map(|x| x as f64).collect()
}

/// Σ over rows of `f(student, full teacher logits)`, on the plain CPU device.
pub fn full_value(
    f: impl Fn(Tensor<2>, &TeacherSignal) -> Tensor<1>,
    zs: &[&[f64]],
    zt: &[&[f64]],
) -> f64 {
    let device = Device::flex();
    let teacher = TeacherSignal::Logits(matrix(zt, &device));
    values(f(matrix(zs, &device), &teacher)).iter().sum()
}

/// Deterministic pseudo-random logits `[n][v]` in about [−3, 3].
pub fn pseudo_logits(n: usize, v: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            (0..v)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 11) as f64 / (1u64 << 53) as f64) * 6.0 - 3.0
                })
                .collect()
        })
        .collect()
}

/// Rows as slices.
pub fn rows(m: &[Vec<f64>]) -> Vec<&[f64]> {
    m.iter().map(|r| r.as_slice()).collect()
}

/// A cache's top-k of teacher logits: ids of the k largest and their log-probabilities at τ.
pub fn top_k(zt: &[Vec<f64>], k: usize, tau: f64) -> (Vec<Vec<usize>>, Vec<Vec<f64>>) {
    zt.iter()
        .map(|z| {
            let mut ids: Vec<usize> = (0..z.len()).collect();
            ids.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
            ids.truncate(k);
            let scaled: Vec<f64> = z.iter().map(|x| x / tau).collect();
            let lp = log_softmax64(&scaled);
            let lps = ids.iter().map(|&i| lp[i]).collect();
            (ids, lps)
        })
        .unzip()
}

/// The top-k teacher signal of [`top_k`]'s output, on `device`.
pub fn top_k_signal(ids: &[Vec<usize>], lps: &[Vec<f64>], device: &Device) -> TeacherSignal {
    let (n, k) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.iter().flatten().map(|&i| i as i64).collect();
    TeacherSignal::TopK {
        ids: Tensor::from_data(TensorData::new(flat, [n, k]), device),
        logprobs: matrix(&rows(lps), device),
    }
}

/// Teacher and student log-probabilities over the k + 1 top-k outcomes, in f64, with the
/// tails as the module doc states: 1 − Σ over the k ids, floored at [`TAIL_FLOOR`].
pub fn buckets(zs: &[f64], ids: &[usize], lps: &[f64], tau: f64) -> (Vec<f64>, Vec<f64>) {
    let scaled: Vec<f64> = zs.iter().map(|x| x / tau).collect();
    let ps = softmax64(&scaled);
    let mut t = lps.to_vec();
    let mut s: Vec<f64> = ids.iter().map(|&i| ps[i].ln()).collect();
    let t_tail = 1.0 - lps.iter().map(|x| x.exp()).sum::<f64>();
    let s_tail = 1.0 - ids.iter().map(|&i| ps[i]).sum::<f64>();
    t.push(t_tail.max(TAIL_FLOOR).ln());
    s.push(s_tail.max(TAIL_FLOOR).ln());
    (t, s)
}

/// `d Σ f / d student` by burn's autodiff, and Σ f, with the teacher on the autodiff
/// device as well (it must stay a constant).
fn autodiff_gradient(
    f: &impl Fn(Tensor<2>, &TeacherSignal) -> Tensor<1>,
    zs: &[Vec<f64>],
    teacher: &TeacherSignal,
) -> (f64, Vec<f64>) {
    let device = Device::flex().autodiff();
    let z = matrix(&rows(zs), &device).require_grad();
    let loss = f(z.clone(), teacher).sum();
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    if let TeacherSignal::Logits(t) = teacher {
        assert!(t.grad(&grads).is_none(), "a gradient reached the teacher");
    }
    (value, values(z.grad(&grads).unwrap()))
}

/// Central finite differences of `loss` at `zs`, step 1e-3, in f64.
fn finite_differences(loss: impl Fn(&[Vec<f64>]) -> f64, zs: &[Vec<f64>]) -> Vec<f64> {
    let h = 1e-3;
    let mut out = Vec::new();
    for r in 0..zs.len() {
        for c in 0..zs[r].len() {
            let (mut up, mut down) = (zs.to_vec(), zs.to_vec());
            up[r][c] += h;
            down[r][c] -= h;
            out.push((loss(&up) - loss(&down)) / (2.0 * h));
        }
    }
    out
}

fn assert_gradients_close(got: &[f64], want: &[f64]) {
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * scale,
            "gradient {i}: autodiff {g}, finite differences {w} (max |grad| {scale})"
        );
    }
}

/// Checks `f`'s value and gradient against `reference(teacher log-probs, student log-probs)`
/// (unscaled, one position) times τ², with full logits and with a top-2 teacher.
pub fn check_gradients(
    f: impl Fn(Tensor<2>, &TeacherSignal) -> Tensor<1>,
    reference: impl Fn(&[f64], &[f64]) -> f64,
    tau: f64,
) {
    let (zs, zt) = (pseudo_logits(3, 5, 1), pseudo_logits(3, 5, 2));
    let scaled = |z: &[f64]| z.iter().map(|x| x / tau).collect::<Vec<_>>();
    let ad = Device::flex().autodiff();

    let full = |zs: &[Vec<f64>]| -> f64 {
        let rows = zs.iter().zip(&zt);
        let per_row =
            rows.map(|(s, t)| reference(&log_softmax64(&scaled(t)), &log_softmax64(&scaled(s))));
        tau * tau * per_row.sum::<f64>()
    };
    let teacher = TeacherSignal::Logits(matrix(&rows(&zt), &ad).require_grad());
    let (value, grad) = autodiff_gradient(&f, &zs, &teacher);
    assert_rel(value, full(&zs), 1e-5);
    assert_gradients_close(&grad, &finite_differences(full, &zs));

    let (ids, lps) = top_k(&zt, 2, tau);
    let topk = |zs: &[Vec<f64>]| -> f64 {
        let per_row = (0..zs.len()).map(|r| {
            let (t, s) = buckets(&zs[r], &ids[r], &lps[r], tau);
            reference(&t, &s)
        });
        tau * tau * per_row.sum::<f64>()
    };
    let teacher = top_k_signal(&ids, &lps, &Device::flex());
    let (value, grad) = autodiff_gradient(&f, &zs, &teacher);
    assert_rel(value, topk(&zs), 1e-5);
    assert_gradients_close(&grad, &finite_differences(topk, &zs));
}

/// Checks that `f` is ~0 per position when the student's logits are the teacher's (full
/// logits and a top-2 teacher with its tail) and clearly positive otherwise.
pub fn check_zero_at_teacher(f: impl Fn(Tensor<2>, &TeacherSignal) -> Tensor<1>, tau: f64) {
    let device = Device::flex();
    let (zt, other) = (pseudo_logits(3, 6, 3), pseudo_logits(3, 6, 4));
    let (ids, lps) = top_k(&zt, 2, tau);
    let signals = [
        TeacherSignal::Logits(matrix(&rows(&zt), &device)),
        top_k_signal(&ids, &lps, &device),
    ];
    for teacher in &signals {
        for v in values(f(matrix(&rows(&zt), &device), teacher)) {
            assert!(v.abs() < 1e-6, "divergence {v} between equal distributions");
        }
        for v in values(f(matrix(&rows(&other), &device), teacher)) {
            assert!(v > 1e-3, "divergence {v} between different distributions");
        }
    }
}
