//! Sparsity masks: the 0/1 patterns that keep pruned weights at zero while a pruned model
//! trains. The optimizer moves every weight, zeros included (their gradients are not zero), so
//! a distillation task multiplies each masked weight by its mask after every step
//! ([`TrainTask::after_step`](distill_model::train::TrainTask::after_step)).

use burn::module::Param;
use burn::prelude::*;
use distill_model::LlamaForCausalLM;

/// One linear layer's mask.
#[derive(Debug, Clone)]
struct LayerMask {
    /// HF module name (`model.layers.0.self_attn.q_proj`).
    name: String,
    /// `[out, in]`, 1 where the weight is kept, 0 where pruned; without autodiff, on the
    /// weight's device.
    keep: Tensor<2>,
}

/// Smallest fraction of exact zeros that marks a layer as pruned. A dense model may hold a few
/// stray zeros (a dequantized GGUF file does); freezing those is not worth a mask.
pub const MIN_LAYER_SPARSITY: f64 = 0.01;

/// The masks of every linear layer whose dense weight was pruned (at least
/// [`MIN_LAYER_SPARSITY`] of it exactly zero) when the masks were taken. A dense model has
/// none, and [`apply`](Self::apply) is then free.
#[derive(Debug, Clone, Default)]
pub struct SparsityMasks {
    layers: Vec<LayerMask>,
    zeros: usize,
    weights: usize,
}

impl SparsityMasks {
    /// Masks from the exact zeros of `model`'s dense linear weights (every decoder linear
    /// layer and an untied `lm_head`; packed layers are skipped). Only layers with at least
    /// [`MIN_LAYER_SPARSITY`] zeros get a mask.
    pub fn from_zeros(model: &LlamaForCausalLM) -> Self {
        let mut masks = Self::default();
        for (name, lin) in model.linears() {
            let Some(w) = &lin.weight else { continue };
            let values = lin.weight_values();
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            masks.weights += values.len();
            if (zeros as f64) < MIN_LAYER_SPARSITY * values.len() as f64 || zeros == 0 {
                continue;
            }
            masks.zeros += zeros;
            let keep: Vec<f32> = values.iter().map(|&v| f32::from(v != 0.0)).collect();
            let keep = Tensor::<2>::from_data(TensorData::new(keep, lin.dims()), &w.val().device());
            masks.layers.push(LayerMask {
                name,
                keep: keep.inner(),
            });
        }
        masks
    }

    /// Multiplies each masked weight by its mask. The parameter keeps its id (so optimizer
    /// state still matches) and its gradient requirement. A layer whose shape no longer
    /// matches its mask is left alone, with a warning.
    pub fn apply(&self, mut model: LlamaForCausalLM) -> LlamaForCausalLM {
        for m in &self.layers {
            let Some(lin) = model.linear_mut(&m.name) else {
                tracing::warn!("sparsity mask for `{}`: no such layer", m.name);
                continue;
            };
            if lin.weight.is_none() || lin.dims() != m.keep.dims() {
                tracing::warn!(
                    "sparsity mask for `{}`: the layer is not dense {:?}",
                    m.name,
                    m.keep.dims()
                );
                continue;
            }
            lin.weight = lin.weight.take().map(|w| mask_param(w, &m.keep));
        }
        model
    }

    /// Fraction of zeros among the dense linear weights the masks were taken from (0 for a
    /// model without linear layers).
    pub fn sparsity(&self) -> f64 {
        self.zeros as f64 / self.weights.max(1) as f64
    }

    /// Whether no layer is masked.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Names of the masked layers, in module order.
    pub fn layers(&self) -> impl Iterator<Item = &str> {
        self.layers.iter().map(|m| m.name.as_str())
    }
}

/// `w ⊙ keep` as a parameter with `w`'s id and gradient requirement. The product is detached,
/// so the parameter stays a leaf the optimizer can update.
pub(crate) fn mask_param(w: Param<Tensor<2>>, keep: &Tensor<2>) -> Param<Tensor<2>> {
    w.map(|t| {
        let require_grad = t.is_require_grad();
        let device = t.device();
        let keep = if keep.device() == device {
            keep.clone()
        } else {
            keep.clone().to_device(&device).inner()
        };
        let out = t.detach().mul(keep).detach();
        if require_grad {
            out.require_grad()
        } else {
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prune::unstructured::{Score, UnstructuredConfig, prune_unstructured};
    use distill_model::LlamaConfig;
    use distill_model::loss::cross_entropy;
    use distill_model::train::{TrainConfig, TrainControl, TrainTask, train};
    use rand::{Rng, SeedableRng};

    /// Next-token cross-entropy on fixed random ids, masking after each step when given masks.
    struct NextToken {
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        masks: Option<SparsityMasks>,
    }

    impl NextToken {
        fn new(vocab: u32, device: &Device, masks: Option<SparsityMasks>) -> Self {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut ids = |n: usize| -> Tensor<2, Int> {
                let v: Vec<i64> = (0..n).map(|_| rng.random_range(0..vocab) as i64).collect();
                Tensor::from_data(TensorData::new(v, [2, 8]), device)
            };
            Self {
                inputs: ids(16),
                targets: ids(16),
                masks,
            }
        }
    }

    impl TrainTask<LlamaForCausalLM> for NextToken {
        fn train_loss(&mut self, model: &LlamaForCausalLM, _index: usize) -> Tensor<1> {
            let logits = model.forward(self.inputs.clone(), &distill_model::Layout::causal(2, 8));
            cross_entropy(logits, self.targets.clone(), None)
        }
        fn valid_batches(&self) -> usize {
            0
        }
        fn valid_loss(&mut self, model: &LlamaForCausalLM, index: usize) -> Tensor<1> {
            self.train_loss(model, index)
        }
        fn after_step(&mut self, model: LlamaForCausalLM) -> LlamaForCausalLM {
            match &self.masks {
                Some(m) => m.apply(model),
                None => model,
            }
        }
    }

    fn weights(model: &LlamaForCausalLM) -> Vec<(String, Vec<f32>)> {
        model
            .linears()
            .into_iter()
            .map(|(n, l)| (n, l.weight_values()))
            .collect()
    }

    /// Trains 3 steps of AdamW (large learning rate, weight decay on) from the pruned model.
    fn trained(model: LlamaForCausalLM, masks: Option<SparsityMasks>) -> LlamaForCausalLM {
        let device = model.model.embed_tokens.weight.val().device();
        let mut task = NextToken::new(64, &device, masks);
        let config = TrainConfig {
            steps: 3,
            batch_size: 2,
            seq_len: 8,
            learning_rate: 0.05,
            warmup_steps: 0,
            weight_decay: 0.1,
            grad_clip: 0.0,
            eval_every: 0,
            checkpoint_every: 3,
            max_loss_ratio: 1e6,
            ..TrainConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let control = TrainControl::quiet();
        train(model, &mut task, &config, dir.path(), &control)
            .unwrap()
            .model
    }

    #[test]
    fn a_dense_model_has_no_masks() {
        let device = Device::flex();
        let mut model = LlamaConfig::llama(64, 32, 48, 1, 4, 2).init(&device, 0);
        // A few stray zeros (under MIN_LAYER_SPARSITY) do not make a layer pruned.
        let name = "model.layers.0.self_attn.q_proj";
        let lin = model.linear_mut(name).unwrap();
        let mut w = lin.weight_values();
        w[..5].fill(0.0);
        lin.set_dense(name, w, [32, 32], &device);
        let masks = SparsityMasks::from_zeros(&model);
        assert!(masks.is_empty());
        assert_eq!(masks.sparsity(), 0.0);
    }

    #[test]
    fn masks_survive_an_optimizer_step() {
        let device = Device::flex().autodiff();
        let config = LlamaConfig::llama(64, 32, 48, 2, 4, 2);
        let mut model = config.init(&device, 1);
        let magnitude = UnstructuredConfig {
            score: Score::Magnitude,
            ..UnstructuredConfig::default()
        };
        prune_unstructured(&mut model, &magnitude, &[], &device).unwrap();
        let masks = SparsityMasks::from_zeros(&model);
        assert_eq!(masks.layers().count(), 2 * 7);
        assert!(
            (masks.sparsity() - 0.5).abs() < 1e-12,
            "{}",
            masks.sparsity()
        );

        // Applying keeps the parameter's id and its gradient requirement.
        let q = &model.model.layers[0].self_attn.q_proj;
        let id = q.weight.as_ref().unwrap().id;
        let applied = masks.apply(model.clone());
        let w = applied.model.layers[0].self_attn.q_proj.weight.as_ref();
        assert_eq!(w.unwrap().id, id);
        assert!(w.unwrap().val().is_require_grad());

        let before = weights(&model);
        let zeros_of = |after: &[(String, Vec<f32>)]| {
            let (mut still_zero, mut moved_zero, mut moved_kept) = (0, 0, 0);
            for ((_, b), (_, a)) in before.iter().zip(after) {
                for (b, a) in b.iter().zip(a) {
                    match (*b == 0.0, *a == 0.0) {
                        (true, true) => still_zero += 1,
                        (true, false) => moved_zero += 1,
                        (false, _) if a != b => moved_kept += 1,
                        _ => {}
                    }
                }
            }
            (still_zero, moved_zero, moved_kept)
        };

        let masked = weights(&trained(model.clone(), Some(masks)));
        let (still, moved, kept_moved) = zeros_of(&masked);
        assert_eq!(moved, 0, "pruned weights moved despite the masks");
        assert!(still > 0);
        assert!(
            kept_moved > still / 2,
            "kept weights barely trained: {kept_moved}"
        );

        // Without the masks the same run brings pruned weights back.
        let unmasked = weights(&trained(model, None));
        let (_, moved, _) = zeros_of(&unmasked);
        assert!(
            moved > still / 2,
            "only {moved} pruned weights moved without masks"
        );
    }
}
