//! The policy PPO trains: the language model with a scalar value head on its final hidden
//! states (TRL's `AutoModelForCausalLMWithValueHead`, head `v_head.summary`), optionally with
//! LoRA adapters (Hu et al. 2021) on chosen linear layers.
//!
//! LoRA is burn's own ([`Module::apply_lora`]): it reparameterizes any `Param<Tensor<2>>`, so
//! our HF-layout [`Linear`] takes it unchanged. Every base parameter is frozen; a weight
//! `W [out, in]` is used as `W + (lora_alpha / r)·a·b` with `a [out, r]` drawn N(0, 1/r²) from
//! the run's seed and `b [r, in]` zero, so training starts at the SFT model. (burn names the
//! factors for its `[in, out]` layout; on ours the zero factor is the input side.) Saving
//! merges the adapters into the weights.

use super::rollout::RolloutBatch;
use burn::module::{Lora, Module, ModuleMapper, Param, ParamGroup};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use distill_model::LlamaForCausalLM;
use distill_model::llama::{FreshInit, Init, Linear, ParamSource};
use serde::{Deserialize, Serialize};

/// LoRA settings, with PEFT's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter. Default 16.
    pub r: usize,
    /// The update is scaled by `lora_alpha / r`. Default 32.
    pub lora_alpha: f64,
    /// Linear layers adapted, by module name (`q_proj`, `k_proj`, `v_proj`, `o_proj`,
    /// `gate_proj`, `up_proj`, `down_proj`). Default `["q_proj", "v_proj"]` (PEFT's for Llama).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            lora_alpha: 32.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
        }
    }
}

impl LoraConfig {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        const KNOWN: [&str; 7] = [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ];
        if self.r == 0 {
            return Err("lora.r must be at least 1".into());
        }
        if self.target_modules.is_empty() {
            return Err("lora.target_modules is empty".into());
        }
        if let Some(bad) = self
            .target_modules
            .iter()
            .find(|m| !KNOWN.contains(&m.as_str()))
        {
            return Err(format!(
                "lora.target_modules: unknown module `{bad}` (use {})",
                KNOWN.join(", ")
            ));
        }
        Ok(())
    }
}

/// The language model and its value head.
#[derive(Module, Debug)]
pub struct PolicyWithValueHead {
    /// The causal LM (its adapted weights carry LoRA adapters when enabled).
    pub lm: LlamaForCausalLM,
    /// `v_head.summary`: `[1, hidden]` weight and a bias.
    pub v_head: Linear,
}

/// What a forward over a [`RolloutBatch`] gives, `[batch, response_width]` each.
pub struct ResponseForward {
    /// log π of each response token.
    pub logprobs: Tensor<2>,
    /// Value of the state before each response token.
    pub values: Tensor<2>,
    /// log-softmax over the vocabulary at each response position, `[batch, response, vocab]`.
    pub log_dist: Tensor<3>,
}

impl PolicyWithValueHead {
    /// Wraps `lm` (on the training device) with a fresh value head: weight N(0, 1/(3·hidden)),
    /// the spread of torch's default `Linear` init, from `seed`; bias 0.
    pub fn new(lm: LlamaForCausalLM, seed: u64) -> Self {
        let device = lm.model.embed_tokens.weight.val().device();
        let hidden = lm.model.norm.weight.val().dims()[0];
        let mut init = FreshInit {
            device,
            std: (1.0 / (3.0 * hidden as f64)).sqrt(),
            seed,
        };
        let v_head = match Linear::build(&mut init, "v_head.summary", hidden, 1, true) {
            Ok(l) => l,
            Err(never) => match never {},
        };
        Self { lm, v_head }
    }

    /// Attaches LoRA adapters to the target layers and freezes the rest of the LM; the value
    /// head stays trainable. The `a` factors are drawn from `seed`.
    pub fn with_lora(self, config: &LoraConfig, seed: u64) -> Self {
        let pattern = format!(r"\.({})\.weight$", config.target_modules.join("|"));
        let group = ParamGroup::from_regex(&pattern).expect("module names form a valid regex");
        let lora = Lora::new(config.r, config.lora_alpha).set_param_group(group);
        let device = self.lm.model.embed_tokens.weight.val().device();
        let mut seeded = SeededLoraA {
            path: Vec::new(),
            init: FreshInit {
                device,
                std: 1.0 / config.r as f64,
                seed,
            },
        };
        Self {
            lm: self.lm.apply_lora(lora).map(&mut seeded),
            v_head: self.v_head,
        }
    }

    /// The LM with adapters merged, on the plain (non-autodiff) device: what rollouts sample
    /// from and what is saved.
    pub fn merged_lm(&self) -> LlamaForCausalLM {
        self.lm.valid().materialize()
    }

    /// Log-probabilities, values and distributions at the response positions of `batch`.
    pub fn forward(&self, batch: &RolloutBatch) -> ResponseForward {
        let hidden = response_hidden(&self.lm, batch);
        let [b, r, _] = hidden.dims();
        let values = self.v_head.forward(hidden.clone()).reshape([b, r]);
        let (logprobs, log_dist) = token_logprobs(&self.lm, hidden, batch);
        ResponseForward {
            logprobs,
            values,
            log_dist,
        }
    }
}

/// Final hidden states at the positions that predict the response tokens, `[batch, response,
/// hidden]`.
fn response_hidden(lm: &LlamaForCausalLM, batch: &RolloutBatch) -> Tensor<3> {
    let device = lm.model.embed_tokens.weight.val().device();
    let (ids, layout) = batch.inputs(&device);
    lm.hidden_states(ids, &layout)
        .narrow(1, batch.prompt_width - 1, batch.response_width)
}

/// log π of the response tokens, and the full log-distribution, from `hidden`.
fn token_logprobs(
    lm: &LlamaForCausalLM,
    hidden: Tensor<3>,
    batch: &RolloutBatch,
) -> (Tensor<2>, Tensor<3>) {
    let [b, r, _] = hidden.dims();
    let log_dist = log_softmax(lm.head(hidden), 2);
    let targets = batch.response_ids(&log_dist.device()).reshape([b, r, 1]);
    let logprobs = log_dist.clone().gather(2, targets).reshape([b, r]);
    (logprobs, log_dist)
}

/// log π(·) over the vocabulary at each response position of `batch`, `[batch, response,
/// vocab]`.
pub fn response_log_dist(lm: &LlamaForCausalLM, batch: &RolloutBatch) -> Tensor<3> {
    token_logprobs(lm, response_hidden(lm, batch), batch).1
}

/// log π of `batch`'s response tokens under `lm` (the frozen reference).
pub fn response_logprobs(lm: &LlamaForCausalLM, batch: &RolloutBatch) -> Tensor<2> {
    token_logprobs(lm, response_hidden(lm, batch), batch).0
}

/// Entropy of each position's distribution, `[batch, response]`, from its log-softmax.
pub fn entropy(log_dist: Tensor<3>) -> Tensor<2> {
    let [b, r, _] = log_dist.dims();
    (log_dist.clone().exp() * log_dist)
        .sum_dim(2)
        .neg()
        .reshape([b, r])
}

/// Redraws every LoRA `a` factor from a generator seeded by the run's seed and the factor's
/// path, so runs are reproducible (burn draws them from the device's shared RNG).
struct SeededLoraA {
    path: Vec<String>,
    init: FreshInit,
}

impl ModuleMapper for SeededLoraA {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        if !path.ends_with("lora.a") {
            return param;
        }
        param.map(|t| {
            let fresh = match self.init.float(&path, t.dims(), Init::Normal) {
                Ok(x) => x,
                Err(never) => match never {},
            };
            if t.is_require_grad() {
                fresh.require_grad()
            } else {
                fresh
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_model::LlamaConfig;

    fn tiny(device: &Device) -> LlamaForCausalLM {
        let mut c = LlamaConfig::llama(24, 16, 32, 2, 4, 2);
        c.initializer_range = 0.2;
        c.init(device, 5)
    }

    #[test]
    fn response_logprobs_equal_single_sequence_forwards() {
        let device = Device::flex();
        let lm = tiny(&device);
        let batch = RolloutBatch::new(
            vec![vec![3, 4, 5], vec![6]],
            vec![vec![7, 8], vec![9, 10, 11]],
        );
        let got: Vec<f32> = response_logprobs(&lm, &batch)
            .into_data()
            .try_to_vec()
            .unwrap();
        for (row, (p, r)) in batch.prompts.iter().zip(&batch.responses).enumerate() {
            let seq: Vec<i64> = p.iter().chain(r).map(|&t| i64::from(t)).collect();
            let n = seq.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(seq, [1, n]), &device);
            let logits = lm.forward(ids, &distill_model::Layout::causal(1, n));
            let logp: Vec<f32> = log_softmax(logits, 2).into_data().try_to_vec().unwrap();
            for (k, &tok) in r.iter().enumerate() {
                let pos = p.len() - 1 + k;
                let want = logp[pos * 24 + tok as usize];
                let have = got[row * 3 + k];
                assert!(
                    (want - have).abs() < 1e-5,
                    "row {row} token {k}: {want} vs {have}"
                );
            }
        }
    }

    #[test]
    fn lora_starts_at_the_base_trains_only_adapters_and_merges() {
        let device = Device::flex().autodiff();
        let base = tiny(&device);
        let config = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            target_modules: vec!["q_proj".into(), "down_proj".into()],
        };
        let policy = PolicyWithValueHead::new(tiny(&device), 1).with_lora(&config, 9);
        let batch = RolloutBatch::new(vec![vec![1, 2]], vec![vec![3, 4]]);
        let before = policy.forward(&batch).logprobs.inner();
        let plain = response_logprobs(&base.valid(), &batch);
        let diff = (before.clone() - plain).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");

        let out = policy.forward(&batch);
        let loss = out.logprobs.sum() + out.values.sum();
        let grads = loss.backward();
        let q = &policy.lm.model.layers[0].self_attn.q_proj;
        let w = q.weight.as_ref().unwrap();
        let adapter = w.adapter().expect("q_proj is adapted");
        assert!(adapter.b.val().grad(&grads).is_some());
        assert!(w.base().grad(&grads).is_none());
        let k = policy.lm.model.layers[0].self_attn.k_proj.weight.as_ref();
        assert!(k.unwrap().adapter().is_none());
        let norm = &policy.lm.model.norm.weight;
        assert!(norm.val().grad(&grads).is_none());
        let head = policy.v_head.weight.as_ref().unwrap();
        assert!(head.val().grad(&grads).is_some());

        // Seeded: the same seed draws the same adapters.
        let again = PolicyWithValueHead::new(tiny(&device), 1).with_lora(&config, 9);
        let a1 = adapter.a.val().into_data();
        let a2 = again.lm.model.layers[0].self_attn.q_proj.weight.as_ref();
        assert_eq!(a1, a2.unwrap().adapter().unwrap().a.val().into_data());

        // A nonzero `b` changes the model; merging keeps the change.
        let bumped = again.lm.map(&mut BumpB(Vec::new()));
        let merged = bumped.valid().materialize();
        let adapted = response_logprobs(&bumped.valid(), &batch);
        let merged_lp = response_logprobs(&merged, &batch);
        let change = (adapted.clone() - before).abs().max().into_scalar::<f32>();
        assert!(change > 1e-4, "{change}");
        let diff = (adapted - merged_lp).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-5, "{diff}");
        assert!(
            merged.model.layers[0]
                .self_attn
                .q_proj
                .weight
                .as_ref()
                .unwrap()
                .adapter()
                .is_none()
        );
    }

    /// Sets every LoRA `b` factor to 0.1.
    struct BumpB(Vec<String>);

    impl ModuleMapper for BumpB {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.0.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.0.join(".").ends_with("lora.b") {
                param.map(|t| t.ones_like().mul_scalar(0.1))
            } else {
                param
            }
        }
    }
}
