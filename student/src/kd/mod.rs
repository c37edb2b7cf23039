//! Knowledge-distillation losses: the student learns the teacher's softened next-token
//! distribution (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
//! arXiv:1503.02531), mixed with the usual cross-entropy on the hard next-token targets.
//!
//! * [`ForwardKlConfig`]: KL(p_T ‖ p_S), mode-covering, the classic choice.
//! * [`ReverseKlConfig`]: KL(p_S ‖ p_T), mode-seeking (MiniLLM, Gu et al. 2024).
//! * [`JsdConfig`]: the generalized Jensen–Shannon divergence JSD_β of GKD (Agarwal et al.
//!   2024, arXiv:2306.13649), between the two.
//!
//! **Temperature.** Both distributions are softened at the same τ, p = softmax(z / τ), and
//! every divergence is multiplied by τ² so that its gradients keep their scale as τ changes
//! (Hinton). The hard-label cross-entropy is always at τ = 1.
//!
//! **Teacher signal.** A chunk of positions gets either the teacher's full logits or a cached
//! top-k ([`TeacherSignal`]). Teacher tensors are constants: they are taken off autodiff and
//! moved to the student's device, so no gradient flows into them.
//!
//! **Top-k tail.** With a top-k teacher both distributions are compared over k + 1 outcomes:
//! the k cached tokens and one tail bucket holding the rest of the vocabulary.
//! * teacher tail = 1 − Σ exp(logprobs), all the cache knows;
//! * student tail = Σ_{j ∉ ids} p_S,j. This equals 1 − Σ_{j ∈ ids} p_S,j but sums the
//!   complement, so it does not cancel catastrophically when the k tokens hold nearly all the
//!   mass.
//!
//! Both tails are clamped below at [`TAIL_FLOOR`] (1e-8 of the total mass) before their log is
//! taken. With k = V the tail is empty, both buckets sit at the floor, contribute nothing, and
//! the loss equals the full-logit loss. Teacher log-probabilities are clamped below at −10⁴ so
//! a masked (−∞) teacher token gives 0 · finite, not NaN.
//!
//! **Chunking.** [`chunked_kd_loss`] computes the loss a few rows at a time so that the
//! `[positions, vocab]` logits never all exist at once; see its documentation.

mod forward_kl;
mod jsd;
mod reverse_kl;
#[cfg(test)]
mod testing;

pub use forward_kl::ForwardKlConfig;
pub use jsd::JsdConfig;
pub use reverse_kl::ReverseKlConfig;

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;
use burn::tensor::activation::log_softmax;
use distill_model::fused::row_nll;
use serde::{Deserialize, Serialize};

use distill_model::fused::top_k_kl::LOG_FLOOR;
pub use distill_model::fused::top_k_kl::TAIL_FLOOR;

/// The divergence between teacher and student, as written in TOML:
/// `[kd.loss] kind = "forward_kl" | "reverse_kl" | "jsd"` with the loss's fields beside `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Divergence {
    /// KL(p_T ‖ p_S), see [`ForwardKlConfig`].
    ForwardKl(ForwardKlConfig),
    /// KL(p_S ‖ p_T), see [`ReverseKlConfig`].
    ReverseKl(ReverseKlConfig),
    /// JSD_β, see [`JsdConfig`].
    Jsd(JsdConfig),
}

impl Default for Divergence {
    fn default() -> Self {
        Self::ForwardKl(ForwardKlConfig::default())
    }
}

impl Divergence {
    /// The softening temperature τ.
    pub fn temperature(&self) -> f64 {
        match self {
            Self::ForwardKl(c) => c.temperature,
            Self::ReverseKl(c) => c.temperature,
            Self::Jsd(c) => c.temperature,
        }
    }

    /// Per-position divergence `[N]` (τ²-scaled) of student logits `[N, V]` from `teacher`.
    pub fn divergence(&self, student_logits: Tensor<2>, teacher: &TeacherSignal) -> Tensor<1> {
        match self {
            Self::ForwardKl(c) => c.divergence(student_logits, teacher),
            Self::ReverseKl(c) => c.divergence(student_logits, teacher),
            Self::Jsd(c) => c.divergence(student_logits, teacher),
        }
    }
}

/// The distillation settings (`[kd]` in TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KdConfig {
    /// The divergence and its settings. Default: forward KL at τ = 1.
    pub loss: Divergence,
    /// Weight of the distillation term: total = alpha · KD + (1 − alpha) · CE on the hard
    /// next-token targets. Default 1.0 (pure distillation).
    pub alpha: f64,
    /// Positions per chunk of [`chunked_kd_loss`]: bounds the `[chunk_rows, vocab]` logits held
    /// at once. Default 256.
    pub chunk_rows: usize,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self {
            loss: Divergence::default(),
            alpha: 1.0,
            chunk_rows: 256,
        }
    }
}

impl KdConfig {
    /// Checks every value's range; the error names the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(format!("kd.alpha = {}: must be in [0, 1]", self.alpha));
        }
        if self.chunk_rows == 0 {
            return Err("kd.chunk_rows = 0: must be at least 1".into());
        }
        let t = self.loss.temperature();
        if !(t > 0.0 && t.is_finite()) {
            return Err(format!("kd.loss.temperature = {t}: must be finite and > 0"));
        }
        if let Divergence::Jsd(c) = &self.loss
            && !(c.beta > 0.0 && c.beta < 1.0)
        {
            return Err(format!("kd.loss.beta = {}: must be in (0, 1)", c.beta));
        }
        Ok(())
    }
}

/// What the teacher says about a chunk of N positions. Its tensors may live on any device,
/// with or without autodiff: they are used as constants on the student's device.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // tensors are handles: boxing would only add an allocation
pub enum TeacherSignal {
    /// The teacher's raw logits `[N, V]`, before temperature.
    Logits(Tensor<2>),
    /// A cached top-k: token ids `[N, k]` (distinct within a row) and the teacher's
    /// log-probabilities at those ids `[N, k]`, already at the loss's temperature:
    /// `log_softmax(z / τ)` picked at `ids`.
    TopK {
        /// Token ids `[N, k]`.
        ids: Tensor<2, Int>,
        /// Log-probabilities at temperature τ `[N, k]`.
        logprobs: Tensor<2>,
    },
}

impl TeacherSignal {
    /// The number of positions N.
    pub fn rows(&self) -> usize {
        match self {
            Self::Logits(z) => z.dims()[0],
            Self::TopK { ids, .. } => ids.dims()[0],
        }
    }
}

/// `x` as a constant on `device`: off autodiff (no gradient, no graph) and moved if needed.
fn constant<const D: usize, K: burn::tensor::kind::Autodiff>(
    x: Tensor<D, K>,
    device: &Device,
) -> Tensor<D, K> {
    let x = x.without_autodiff();
    if x.device() == device.clone().without_autodiff() {
        x
    } else {
        x.to_device(device)
    }
}

/// The divergence `kind` against full teacher logits `z` as one fused operation
/// ([`distill_model::fused::divergence`]).
fn against_logits(
    student_logits: Tensor<2>,
    z: &Tensor<2>,
    kind: distill_model::fused::Divergence,
    temperature: f64,
) -> Tensor<1> {
    let z = constant(z.clone(), &student_logits.device());
    distill_model::fused::divergence(student_logits, z, kind, temperature)
}

/// Teacher and student log-probabilities `[N, k + 1]` over a top-k teacher's k cached tokens
/// `ids` and the tail bucket (see the module doc). Only the student's part carries gradients.
fn top_k_log_probs(
    student_logits: Tensor<2>,
    ids: &Tensor<2, Int>,
    logprobs: &Tensor<2>,
    temperature: f64,
) -> (Tensor<2>, Tensor<2>) {
    let device = student_logits.device();
    let [n, v] = student_logits.dims();
    let k = ids.dims()[1];
    assert_eq!(ids.dims()[0], n, "teacher rows vs student rows");
    assert_eq!(logprobs.dims(), [n, k], "top-k logprobs vs ids");
    let s = log_softmax(student_logits.div_scalar(temperature), 1);
    let ids = constant(ids.clone(), &device);
    let t = constant(logprobs.clone(), &device).clamp_min(LOG_FLOOR);
    let t_tail = t.clone().exp().sum_dim(1).neg().add_scalar(1.0);
    let t_tail = t_tail.clamp_min(TAIL_FLOOR).log();
    let base = ids.device();
    let in_top_k = Tensor::<2>::zeros([n, v], &base)
        .scatter(
            1,
            ids.clone(),
            Tensor::ones([n, k], &base),
            IndexingUpdateOp::Add,
        )
        .greater_elem(0.5);
    let s_tail = s.clone().exp().mask_fill(in_top_k, 0.0).sum_dim(1);
    let s_tail = s_tail.clamp_min(TAIL_FLOOR).log();
    let s_k = s.gather(1, ids);
    (
        Tensor::cat(vec![t, t_tail], 1),
        Tensor::cat(vec![s_k, s_tail], 1),
    )
}

/// KL(p_a ‖ p_b) per row, `Σ_c exp(a)·(a − b)`, from log-probabilities `[N, C]`.
fn kl(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    (a.clone().exp() * (a - b)).sum_dim(1).squeeze_dim(1)
}

/// The loss of one chunk, summed over its positions so that chunks add.
#[derive(Debug, Clone)]
pub struct KdTerms {
    /// `alpha · Σ KD + (1 − alpha) · Σ CE`, shape `[1]`, in the student's graph.
    pub loss: Tensor<1>,
    /// Σ over counted positions of the (τ²-scaled) divergence.
    pub kd: f64,
    /// Σ over counted positions of the hard-label cross-entropy.
    pub ce: f64,
    /// Σ of the weights: the number of counted positions when weights are 0/1.
    pub count: f64,
}

/// The distillation loss of one chunk of N positions: student logits `[N, V]`, the teacher's
/// signal for the same positions, the hard next-token `targets` `[N]` and optional `weights`
/// `[N]` (1 for positions that count, 0 for the rest; `None`: all count). Without a teacher
/// (plain fine-tuning, which needs `alpha = 0`) the distillation term is zero.
pub fn kd_loss(
    config: &KdConfig,
    student_logits: Tensor<2>,
    teacher: Option<&TeacherSignal>,
    targets: Tensor<1, Int>,
    weights: Option<Tensor<1>>,
) -> KdTerms {
    let device = student_logits.device();
    let n = student_logits.dims()[0];
    let kd = match teacher {
        Some(t) => config.loss.divergence(student_logits.clone(), t),
        None => {
            assert_eq!(config.alpha, 0.0, "distillation without a teacher signal");
            Tensor::zeros([n], &device)
        }
    };
    let ce = row_nll(student_logits, constant(targets, &device));
    let (kd, ce, count) = match weights {
        None => (
            kd.sum(),
            ce.sum(),
            Tensor::from_data([n as f32], &device.inner()),
        ),
        Some(w) => {
            let w = constant(w, &device);
            ((kd * w.clone()).sum(), (ce * w.clone()).sum(), w.sum())
        }
    };
    let loss = kd.clone().mul_scalar(config.alpha) + ce.clone().mul_scalar(1.0 - config.alpha);
    // One read for the three logged numbers.
    let logged = Tensor::cat(vec![kd.inner(), ce.inner(), count], 0)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 loss terms");
    KdTerms {
        loss,
        kd: logged[0] as f64,
        ce: logged[1] as f64,
        count: logged[2] as f64,
    }
}

/// The loss over all positions, from [`chunked_kd_loss`].
#[derive(Debug, Clone)]
pub struct KdOutput {
    /// Mean of `alpha · KD + (1 − alpha) · CE` over the counted positions, shape `[1]`; its
    /// gradients are those of the unchunked loss.
    pub loss: Tensor<1>,
    /// Mean divergence over the counted positions.
    pub kd: f64,
    /// Mean hard-label cross-entropy over the counted positions.
    pub ce: f64,
    /// Σ of the weights: the number of counted positions when weights are 0/1.
    pub count: f64,
}

/// A fresh leaf holding `x`'s values, whose gradient a backward pass keeps.
fn leaf(x: Tensor<2>) -> Tensor<2> {
    // `set_require_grad(false)` starts a new lineage without the source's distributed-parameter
    // link, so a chunk's backward never synchronises anything.
    x.set_require_grad(false).require_grad()
}

/// The mean distillation loss over N positions, computed `config.chunk_rows` positions at a
/// time, with the output head `logits = hidden · head_weightᵀ` applied per chunk.
///
/// * `hidden`: the student's final normed hidden states `[N, H]`, part of its graph when
///   training (on an autodiff device); on a plain device the loss is only evaluated.
/// * `head_weight`: the output head `[V, H]`, HF layout (the embedding when tied).
/// * `teacher(range)`: the teacher's signal for positions `range`; called once per chunk that
///   has a counted position, in order.
/// * `targets` `[N]` and `weights` `[N]` (1: counts, 0: ignored; `None`: all count).
///
/// **Memory.** Full-vocabulary logits for every position would dominate memory
/// (N × V floats, plus as much again for softmax intermediates in the graph). Here each chunk's
/// logits are built from detached leaf copies of its hidden rows and of the head weight, its
/// loss is back-propagated at once, and only the gradients are kept: `d loss / d hidden`
/// `[chunk, H]` per chunk and `d loss / d head_weight` `[V, H]` summed over chunks. The chunk's
/// graph and logits are then freed, so at most `chunk_rows × V` logits exist at a time and what
/// outlives a chunk is the size of `hidden` and of the head weight.
///
/// **Gradients.** The returned loss is the surrogate
/// `S = Σ(hidden ⊙ G_h) + Σ(head_weight ⊙ G_W)`, with `G_h`, `G_W` the gathered gradients as
/// constants, shifted to the true value: `loss = S − detach(S) + value`. Its value is the mean
/// loss and, since ∂S/∂hidden = G_h and ∂S/∂head_weight = G_W, one backward pass through it
/// gives every student parameter (through `hidden`, and the head directly; a tied embedding
/// gets both contributions) the gradient of the unchunked mean loss.
pub fn chunked_kd_loss(
    config: &KdConfig,
    hidden: Tensor<2>,
    head_weight: Tensor<2>,
    mut teacher: Option<&mut dyn FnMut(Range<usize>) -> TeacherSignal>,
    targets: &[u32],
    weights: Option<&[f32]>,
) -> KdOutput {
    let [n, h] = hidden.dims();
    assert_eq!(
        head_weight.dims()[1],
        h,
        "head weight [V, H] vs hidden [N, H]"
    );
    assert_eq!(targets.len(), n, "targets vs hidden rows");
    if let Some(w) = weights {
        assert_eq!(w.len(), n, "weights vs hidden rows");
    }
    let device = hidden.device();
    let base = device.clone().inner();
    // Gradients are gathered only for inputs in a graph (false off autodiff: evaluation).
    let (want_h, want_w) = (hidden.is_tracked(), head_weight.is_tracked());
    let count: f64 = weights.map_or(n as f64, |w| w.iter().map(|&x| x as f64).sum());
    let scale = if count > 0.0 { 1.0 / count } else { 0.0 };

    let w_leaf = if want_w {
        leaf(head_weight.clone())
    } else {
        head_weight.clone().inner()
    };
    let (mut kd_sum, mut ce_sum) = (0.0, 0.0);
    let mut grad_h = Vec::new();
    let mut grad_w: Option<Tensor<2>> = None;
    for start in (0..n).step_by(config.chunk_rows.max(1)) {
        let rows = start..(start + config.chunk_rows).min(n);
        let chunk_w = weights.map(|w| &w[rows.clone()]);
        if chunk_w.is_some_and(|w| w.iter().all(|&x| x == 0.0)) {
            if want_h {
                grad_h.push(Tensor::zeros([rows.len(), h], &base));
            }
            continue;
        }
        let x = hidden.clone().slice([rows.clone()]);
        let x = if want_h { leaf(x) } else { x.inner() };
        let logits = x.clone().matmul(w_leaf.clone().transpose());
        let ids: Vec<i64> = targets[rows.clone()].iter().map(|&t| t as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), &base);
        let chunk_w =
            chunk_w.map(|w| Tensor::<1>::from_data(TensorData::new(w.to_vec(), [w.len()]), &base));
        let signal = teacher.as_mut().map(|t| t(rows.clone()));
        let terms = kd_loss(config, logits, signal.as_ref(), ids, chunk_w);
        kd_sum += terms.kd;
        ce_sum += terms.ce;
        if want_h || want_w {
            let grads = terms.loss.mul_scalar(scale).backward();
            if want_h {
                grad_h.push(x.grad(&grads).expect("gradient of the hidden chunk"));
            }
            if want_w {
                let g = w_leaf.grad(&grads).expect("gradient of the head weight");
                grad_w = Some(match grad_w {
                    Some(acc) => acc + g,
                    None => g,
                });
            }
        }
    }

    let value = (config.alpha * kd_sum + (1.0 - config.alpha) * ce_sum) * scale;
    let mut surrogate: Option<Tensor<1>> = None;
    if want_h && n > 0 {
        surrogate = Some((hidden * Tensor::cat(grad_h, 0)).sum());
    }
    if let Some(g) = grad_w {
        let s = (head_weight * g).sum();
        surrogate = Some(match surrogate {
            Some(acc) => acc + s,
            None => s,
        });
    }
    let loss = match surrogate {
        Some(s) => (s.clone() - s.detach()).add_scalar(value),
        None => Tensor::from_data([value as f32], &device),
    };
    KdOutput {
        loss,
        kd: kd_sum * scale,
        ce: ce_sum * scale,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn divergences(tau: f64) -> [Divergence; 3] {
        [
            Divergence::ForwardKl(ForwardKlConfig { temperature: tau }),
            Divergence::ReverseKl(ReverseKlConfig { temperature: tau }),
            Divergence::Jsd(JsdConfig {
                beta: 0.3,
                temperature: tau,
            }),
        ]
    }

    #[test]
    fn top_k_with_every_token_equals_full_logits() {
        let device = Device::flex();
        let (zs, zt) = (pseudo_logits(3, 6, 5), pseudo_logits(3, 6, 6));
        let (ids, lps) = top_k(&zt, 6, 1.5);
        let full = TeacherSignal::Logits(matrix(&rows(&zt), &device));
        let topk = top_k_signal(&ids, &lps, &device);
        for d in divergences(1.5) {
            let a = values(d.divergence(matrix(&rows(&zs), &device), &full));
            let b = values(d.divergence(matrix(&rows(&zs), &device), &topk));
            for (a, b) in a.iter().zip(&b) {
                assert_rel(*b, *a, 1e-5);
            }
        }
    }

    #[test]
    fn top_k_compares_k_tokens_and_a_tail_bucket() {
        // V = 4, τ = 2, the teacher's top 2 are tokens 2 and 3. Outcomes: {2}, {3}, {0, 1}.
        let (zs, zt) = ([1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 2.0, 1.0]);
        let ps = softmax64(&zs.map(|x| x / 2.0));
        let pt = softmax64(&zt.map(|x| x / 2.0));
        let t = [pt[2], pt[3], 1.0 - pt[2] - pt[3]];
        let s = [ps[2], ps[3], 1.0 - ps[2] - ps[3]];
        let m: Vec<f64> = (0..3).map(|i| 0.3 * t[i] + 0.7 * s[i]).collect();
        let forward: f64 = (0..3).map(|i| t[i] * (t[i] / s[i]).ln()).sum();
        let reverse: f64 = (0..3).map(|i| s[i] * (s[i] / t[i]).ln()).sum();
        let jsd: f64 = (0..3)
            .map(|i| 0.3 * t[i] * (t[i] / m[i]).ln() + 0.7 * s[i] * (s[i] / m[i]).ln())
            .sum();

        let device = Device::flex();
        let (ids, lps) = top_k(&[zt.to_vec()], 2, 2.0);
        assert_eq!(ids[0], [2, 3]);
        let topk = top_k_signal(&ids, &lps, &device);
        let full = TeacherSignal::Logits(matrix(&[&zt], &device));
        for (d, want) in divergences(2.0).iter().zip([forward, reverse, jsd]) {
            let got = values(d.divergence(matrix(&[&zs], &device), &topk))[0];
            assert_rel(got, 4.0 * want, 1e-5);
            let full = values(d.divergence(matrix(&[&zs], &device), &full))[0];
            assert!((full - got).abs() > 1e-3, "top-2 {got} vs full {full}");
        }
    }

    #[test]
    fn alpha_mixes_divergence_and_cross_entropy() {
        use distill_model::loss::cross_entropy;
        let device = Device::flex();
        let (zs, zt) = (pseudo_logits(4, 5, 7), pseudo_logits(4, 5, 8));
        let logits = matrix(&rows(&zs), &device);
        let teacher = TeacherSignal::Logits(matrix(&rows(&zt), &device));
        let targets = Tensor::<1, Int>::from_data([0i64, 3, 4, 1], &device);
        let weights = Tensor::<1>::from_data([1.0f32, 0.0, 1.0, 1.0], &device);
        let run = |alpha: f64, w: Option<Tensor<1>>| {
            let config = KdConfig {
                alpha,
                ..KdConfig::default()
            };
            kd_loss(&config, logits.clone(), Some(&teacher), targets.clone(), w)
        };
        let ce = |w: Option<Tensor<2>>| {
            let l = logits.clone().reshape([1, 4, 5]);
            values(cross_entropy(l, targets.clone().reshape([1, 4]), w))[0]
        };
        let kd = values(
            KdConfig::default()
                .loss
                .divergence(logits.clone(), &teacher),
        );

        let pure_ce = run(0.0, None);
        assert_eq!(pure_ce.count, 4.0);
        assert_rel(values(pure_ce.loss)[0] / 4.0, ce(None), 1e-6);
        assert_rel(pure_ce.ce / 4.0, ce(None), 1e-6);
        let weighted = run(0.0, Some(weights.clone()));
        assert_eq!(weighted.count, 3.0);
        let ce_w = ce(Some(weights.clone().reshape([1, 4])));
        assert_rel(values(weighted.loss)[0] / 3.0, ce_w, 1e-6);

        let pure_kd = run(1.0, None);
        assert_rel(values(pure_kd.loss)[0], kd.iter().sum(), 1e-6);
        assert_rel(pure_kd.kd, kd.iter().sum(), 1e-6);
        let weighted = run(1.0, Some(weights));
        assert_rel(values(weighted.loss)[0], kd[0] + kd[2] + kd[3], 1e-6);

        let mixed = run(0.25, None);
        let want = 0.25 * kd.iter().sum::<f64>() + 0.75 * 4.0 * ce(None);
        assert_rel(values(mixed.loss)[0], want, 1e-6);
    }

    /// Value and gradients (with respect to `a` and `w`) of the mean loss of
    /// `logits = (x · a) · wᵀ`, chunked or by plain autodiff on the whole batch.
    fn head_loss(
        config: &KdConfig,
        chunked: bool,
        teacher: &dyn Fn(Range<usize>) -> TeacherSignal,
        weights: Option<&[f32]>,
    ) -> (f64, Vec<f64>, Vec<f64>) {
        let device = Device::flex().autodiff();
        let (n, d, h, v) = (10, 4, 6, 7);
        let x = matrix(&rows(&pseudo_logits(n, d, 11)), &device);
        let a = matrix(&rows(&pseudo_logits(d, h, 12)), &device).require_grad();
        let w = matrix(&rows(&pseudo_logits(v, h, 13)), &device).require_grad();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 3) % v as u32).collect();
        let hidden = x.matmul(a.clone());
        let loss = if chunked {
            let out = chunked_kd_loss(
                config,
                hidden,
                w.clone(),
                Some(&mut |r| teacher(r)),
                &targets,
                weights,
            );
            assert_rel(
                values(out.loss.clone().inner())[0],
                {
                    let (kd, ce) = (out.kd, out.ce);
                    config.alpha * kd + (1.0 - config.alpha) * ce
                },
                1e-6,
            );
            out.loss
        } else {
            let logits = hidden.matmul(w.clone().transpose());
            let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device);
            let wt =
                weights.map(|w| Tensor::<1>::from_data(TensorData::new(w.to_vec(), [n]), &device));
            let terms = kd_loss(config, logits, Some(&teacher(0..n)), ids, wt);
            terms.loss.div_scalar(terms.count)
        };
        let value = values(loss.clone().inner())[0];
        let grads = loss.backward();
        (
            value,
            values(a.grad(&grads).unwrap()),
            values(w.grad(&grads).unwrap()),
        )
    }

    fn assert_all_close(got: &[f64], want: &[f64], tol: f64) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "element {i}: {g} vs {w}");
        }
    }

    #[test]
    fn chunked_loss_matches_the_unchunked_loss_and_its_gradients() {
        let device = Device::flex();
        let zt = pseudo_logits(10, 7, 14);
        let full = matrix(&rows(&zt), &device);
        let (ids, lps) = top_k(&zt, 3, 2.0);
        let topk = top_k_signal(&ids, &lps, &device);
        let by_logits = |r: Range<usize>| TeacherSignal::Logits(full.clone().slice([r]));
        let by_top_k = |r: Range<usize>| match &topk {
            TeacherSignal::TopK { ids, logprobs } => TeacherSignal::TopK {
                ids: ids.clone().slice([r.clone()]),
                logprobs: logprobs.clone().slice([r]),
            },
            TeacherSignal::Logits(_) => unreachable!(),
        };
        // Rows 3..6 are all ignored: a chunk with nothing to count.
        let mask = [1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0];
        type Case<'a> = (
            Divergence,
            f64,
            &'a dyn Fn(Range<usize>) -> TeacherSignal,
            Option<&'a [f32]>,
        );
        let cases: [Case; 3] = [
            (
                Divergence::ForwardKl(ForwardKlConfig { temperature: 1.0 }),
                0.7,
                &by_logits,
                None,
            ),
            (
                Divergence::ReverseKl(ReverseKlConfig { temperature: 2.0 }),
                1.0,
                &by_top_k,
                Some(&mask),
            ),
            (
                Divergence::Jsd(JsdConfig {
                    beta: 0.4,
                    temperature: 2.0,
                }),
                0.5,
                &by_top_k,
                Some(&mask),
            ),
        ];
        for (loss, alpha, teacher, weights) in cases {
            let config = |chunk_rows| KdConfig {
                loss: loss.clone(),
                alpha,
                chunk_rows,
            };
            let (v0, a0, w0) = head_loss(&config(256), false, teacher, weights);
            let (v1, a1, w1) = head_loss(&config(256), true, teacher, weights);
            let (v3, a3, w3) = head_loss(&config(3), true, teacher, weights);
            for (v, a, w) in [(v1, &a1, &w1), (v3, &a3, &w3)] {
                assert!((v - v0).abs() <= 1e-5, "{loss:?}: value {v} vs {v0}");
                assert_all_close(a, &a0, 1e-5);
                assert_all_close(w, &w0, 1e-5);
            }
            assert!(a0.iter().any(|g| g.abs() > 1e-3) && w0.iter().any(|g| g.abs() > 1e-3));
        }
    }

    #[test]
    fn chunked_gradients_reach_a_tied_embedding() {
        // hidden = embed(ids) · b, logits = hidden · embedᵀ: the embedding gets both paths.
        let ad = Device::flex().autodiff();
        let (n, h, v) = (10, 5, 8);
        let zt = matrix(&rows(&pseudo_logits(n, v, 21)), &Device::flex());
        let input: Vec<i64> = (0..n as i64).map(|i| (i * 5) % v as i64).collect();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 1) % v as u32).collect();
        let config = |chunk_rows| KdConfig {
            alpha: 0.6,
            chunk_rows,
            ..KdConfig::default()
        };
        let run = |chunk_rows: Option<usize>| {
            let e = matrix(&rows(&pseudo_logits(v, h, 22)), &ad).require_grad();
            let b = matrix(&rows(&pseudo_logits(h, h, 23)), &ad).require_grad();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(input.clone(), [n]), &ad);
            let hidden = e.clone().select(0, ids).matmul(b.clone()).div_scalar(3.0);
            let loss = match chunk_rows {
                Some(c) => {
                    let teacher =
                        &mut |r: Range<usize>| TeacherSignal::Logits(zt.clone().slice([r]));
                    chunked_kd_loss(&config(c), hidden, e.clone(), Some(teacher), &targets, None)
                        .loss
                }
                None => {
                    let logits = hidden.matmul(e.clone().transpose());
                    let t: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
                    let t = Tensor::<1, Int>::from_data(TensorData::new(t, [n]), &ad);
                    let signal = TeacherSignal::Logits(zt.clone());
                    kd_loss(&config(1), logits, Some(&signal), t, None)
                        .loss
                        .div_scalar(n as f64)
                }
            };
            let value = values(loss.clone().inner())[0];
            let grads = loss.backward();
            (
                value,
                values(e.grad(&grads).unwrap()),
                values(b.grad(&grads).unwrap()),
            )
        };
        let (v0, e0, b0) = run(None);
        let (v3, e3, b3) = run(Some(3));
        assert!((v3 - v0).abs() <= 1e-5, "value {v3} vs {v0}");
        assert_all_close(&e3, &e0, 1e-5);
        assert_all_close(&b3, &b0, 1e-5);
    }

    #[test]
    fn chunked_loss_on_a_plain_device_only_evaluates() {
        let device = Device::flex();
        let hidden = matrix(&rows(&pseudo_logits(5, 3, 31)), &device);
        let w = matrix(&rows(&pseudo_logits(4, 3, 32)), &device);
        let zt = matrix(&rows(&pseudo_logits(5, 4, 33)), &device);
        let targets = [0u32, 1, 2, 3, 0];
        let config = KdConfig {
            chunk_rows: 2,
            ..KdConfig::default()
        };
        let teacher = &mut |r: Range<usize>| TeacherSignal::Logits(zt.clone().slice([r]));
        let out = chunked_kd_loss(
            &config,
            hidden.clone(),
            w.clone(),
            Some(teacher),
            &targets,
            None,
        );
        let logits = hidden.matmul(w.transpose());
        let kd = values(
            config
                .loss
                .divergence(logits, &TeacherSignal::Logits(zt.clone())),
        );
        assert_rel(values(out.loss)[0], kd.iter().sum::<f64>() / 5.0, 1e-6);
        assert_eq!(out.count, 5.0);
    }

    #[test]
    fn config_reads_toml_with_defaults() {
        #[derive(Deserialize)]
        struct File {
            kd: KdConfig,
        }
        let text = "[kd]\nalpha = 0.5\n[kd.loss]\nkind = \"jsd\"\nbeta = 0.25\n";
        let kd = toml::from_str::<File>(text).unwrap().kd;
        let jsd = JsdConfig {
            beta: 0.25,
            temperature: 1.0,
        };
        assert_eq!(
            kd,
            KdConfig {
                loss: Divergence::Jsd(jsd),
                alpha: 0.5,
                chunk_rows: 256
            }
        );
        let text = "[kd.loss]\nkind = \"reverse_kl\"\ntemperature = 2.0\n";
        let kd = toml::from_str::<File>(text).unwrap().kd;
        assert_eq!(
            kd.loss,
            Divergence::ReverseKl(ReverseKlConfig { temperature: 2.0 })
        );
        assert_eq!(
            toml::from_str::<File>("[kd]\n").unwrap().kd,
            KdConfig::default()
        );
        assert_eq!(
            KdConfig::default().loss,
            Divergence::ForwardKl(ForwardKlConfig { temperature: 1.0 })
        );
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let bad = [
            "alpha = 1.0\nbeta = 0.5\n",
            "[loss]\nkind = \"forward_kl\"\nbeta = 0.5\n",
            "[loss]\nkind = \"kl\"\n",
        ];
        for text in bad {
            assert!(
                toml::from_str::<KdConfig>(text).is_err(),
                "accepted {text:?}"
            );
        }
    }

    #[test]
    fn validate_names_the_bad_key() {
        assert_eq!(KdConfig::default().validate(), Ok(()));
        let d = KdConfig::default;
        let jsd = |beta, temperature| Divergence::Jsd(JsdConfig { beta, temperature });
        let cold = Divergence::ForwardKl(ForwardKlConfig { temperature: 0.0 });
        let cases = [
            (KdConfig { alpha: 1.5, ..d() }, "kd.alpha"),
            (KdConfig { alpha: -0.1, ..d() }, "kd.alpha"),
            (
                KdConfig {
                    chunk_rows: 0,
                    ..d()
                },
                "kd.chunk_rows",
            ),
            (KdConfig { loss: cold, ..d() }, "kd.loss.temperature"),
            (
                KdConfig {
                    loss: jsd(1.0, 1.0),
                    ..d()
                },
                "kd.loss.beta",
            ),
            (
                KdConfig {
                    loss: jsd(0.5, -1.0),
                    ..d()
                },
                "kd.loss.temperature",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.starts_with(key), "{err}");
        }
    }
}
