//! Every setting of `teacher ppo`, as in its TOML file. Names follow TRL's `PPOConfig` (and
//! PEFT's for LoRA); defaults are TRL's where they suit a small model on 2 CPU cores.

use super::policy::LoraConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// PPO-ptx: the pretraining next-token loss mixed into each update (InstructGPT), which keeps
/// the policy's language modelling from drifting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PtxConfig {
    /// Pretraining text: `.jsonl` of `{"text"}` lines or plain text.
    pub data: PathBuf,
    /// γ_ptx, the weight of the next-token loss. Default 1.0.
    pub coef: f64,
    /// Tokens per pretraining window. Default 64.
    pub seq_len: usize,
    /// Windows per update. Default 4.
    pub batch_size: usize,
}

impl Default for PtxConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            coef: 1.0,
            seq_len: 64,
            batch_size: 4,
        }
    }
}

/// Everything `teacher ppo` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// The SFT model (HF directory): the policy starts from it and it stays the frozen
    /// reference of the KL penalty. Default `runs/sft/model` (`teacher sft`'s).
    pub policy: PathBuf,
    /// The reward model (HF directory). Default `runs/reward/model` (`teacher reward`'s).
    pub reward_model: PathBuf,
    /// Prompts, JSON Lines of `{"id"?, "prompt"}`, each sent as the user's turn through the
    /// policy's chat template. Default `assets/questions/prompts.train.jsonl`.
    pub prompts: PathBuf,
    /// The question set's `facts.jsonl`: its gold judge scores each answer for the log (never
    /// trained on); the prompts then need ids it knows. Default none (no gold column).
    pub gold_facts: Option<PathBuf>,
    /// Held-out prompts, as `prompts` and with ids `gold_facts` knows, for choosing the step
    /// to keep: the policy answers them (as `select_samples` says) before the first step and
    /// every `select_every` steps, and `OUT/model` is the policy of the evaluation with the highest
    /// mean gold score (the earliest on a tie; step 0 is the SFT policy itself). The gold score
    /// peaks at a modest KL and then falls as the policy over-optimizes the reward model (Gao
    /// et al. 2022, arXiv:2210.10760). Default none: `OUT/model` is the last step's policy.
    pub select_prompts: Option<PathBuf>,
    /// Steps between evaluations on `select_prompts` (the last step is always evaluated).
    /// Default 10.
    pub select_every: usize,
    /// How the policy answers `select_prompts`: 0 greedily; n > 0 with n answers per prompt
    /// sampled at temperature 1, as rollouts are (PPO raises the reward of sampled answers,
    /// which greedy ones need not share), with the same seeds at every evaluation. Default 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub select_samples: usize,
    /// Output folder: `model/`, `checkpoints/`, `ppo_log.csv`, `ppo_log.svg`, and with
    /// `select_prompts` `select_log.csv`. Default `runs/ppo`.
    pub out: PathBuf,
    /// Rollout-and-update steps. Default 40.
    pub steps: usize,
    /// Responses per rollout. Default 8.
    pub batch_size: usize,
    /// Answers sampled to each prompt of a rollout (`batch_size / answers_per_prompt`
    /// prompts a step; it must divide `batch_size`). With more than one, each answer's reward
    /// model score has the mean score of the prompt's other answers subtracted before the KL
    /// penalty and GAE (the leave-one-out baseline of RLOO, Ahmadian et al. 2024,
    /// arXiv:2402.14740): the advantages then compare answers to one prompt, as best-of-n
    /// does, instead of prompts with each other, whose scores differ far more by question
    /// kind than by answer. The log's `score` stays the raw score. Default 1.
    #[serde(skip_serializing_if = "is_one")]
    pub answers_per_prompt: usize,
    /// Responses per gradient step. Default 4.
    pub mini_batch_size: usize,
    /// Passes over each rollout batch. Default 4.
    pub ppo_epochs: usize,
    /// Adam learning rate (constant). Default 1.41e-5 (TRL's).
    pub learning_rate: f64,
    /// Largest global gradient norm per update; 0 turns clipping off. Default 1.0.
    pub max_grad_norm: f64,
    /// Prompts longer than this many tokens are skipped. Default 64.
    pub max_prompt_length: usize,
    /// Most tokens per response (a stop token ends one earlier). Default 48.
    pub max_new_tokens: usize,
    /// Discount γ. Default 1.0.
    pub gamma: f64,
    /// GAE λ. Default 0.95.
    pub lam: f64,
    /// Policy ratio clip ε. Default 0.2.
    pub cliprange: f64,
    /// Value clip ε_v around the rollout's values. Default 0.2.
    pub cliprange_value: f64,
    /// Weight of the value loss. Default 0.1.
    pub vf_coef: f64,
    /// Initial KL coefficient β. Default 0.2.
    pub init_kl_coef: f64,
    /// Adapt β toward `target` (else β stays at `init_kl_coef`). Default true.
    pub adap_kl_ctrl: bool,
    /// Target KL, nats per response (summed over its tokens). Default 6.
    pub target: f64,
    /// Samples over which β makes a full proportional correction. Default 10000 (TRL's; with 8
    /// samples a step β moves at most 0.016% per step: lower it for short runs).
    pub horizon: f64,
    /// LoRA adapters instead of full fine-tuning; absent: full fine-tuning.
    pub lora: Option<LoraConfig>,
    /// PPO-ptx; absent: off.
    pub ptx: Option<PtxConfig>,
    /// Checkpoint every this many steps (and at the end). Default 5.
    pub checkpoint_every: usize,
    /// Seed of the value head, LoRA, prompt order, sampling and minibatches. Default 42.
    pub seed: u64,
}

/// Whether `n` is 0 (a key left at that default is not written, so recipes' stage keys stay
/// as they were before the key existed).
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Whether `n` is 1 (as [`is_zero`]).
fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            policy: PathBuf::from("runs/sft/model"),
            reward_model: PathBuf::from("runs/reward/model"),
            prompts: PathBuf::from("assets/questions/prompts.train.jsonl"),
            gold_facts: None,
            select_prompts: None,
            select_every: 10,
            select_samples: 0,
            out: PathBuf::from("runs/ppo"),
            steps: 40,
            batch_size: 8,
            answers_per_prompt: 1,
            mini_batch_size: 4,
            ppo_epochs: 4,
            learning_rate: 1.41e-5,
            max_grad_norm: 1.0,
            max_prompt_length: 64,
            max_new_tokens: 48,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            init_kl_coef: 0.2,
            adap_kl_ctrl: true,
            target: 6.0,
            horizon: 10_000.0,
            lora: None,
            ptx: None,
            checkpoint_every: 5,
            seed: 42,
        }
    }
}

impl PpoConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the file and key.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, String> {
        distill_model::fsutil::read_toml(path)
    }

    /// Checks the settings make sense; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        crate::at_least_one(&[
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("mini_batch_size", self.mini_batch_size),
            ("ppo_epochs", self.ppo_epochs),
            ("max_prompt_length", self.max_prompt_length),
            ("max_new_tokens", self.max_new_tokens),
            ("checkpoint_every", self.checkpoint_every),
            ("select_every", self.select_every),
        ])?;
        if self.answers_per_prompt == 0 || !self.batch_size.is_multiple_of(self.answers_per_prompt)
        {
            return Err(format!(
                "answers_per_prompt ({}) must be at least 1 and divide batch_size ({})",
                self.answers_per_prompt, self.batch_size
            ));
        }
        if self.mini_batch_size > self.batch_size {
            return Err(format!(
                "mini_batch_size ({}) exceeds batch_size ({})",
                self.mini_batch_size, self.batch_size
            ));
        }
        let finite_positive = [
            ("learning_rate", self.learning_rate),
            ("target", self.target),
            ("horizon", self.horizon),
        ];
        for (key, v) in finite_positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key} must be a positive number"));
            }
        }
        let nonnegative = [
            ("max_grad_norm", self.max_grad_norm),
            ("cliprange", self.cliprange),
            ("cliprange_value", self.cliprange_value),
            ("vf_coef", self.vf_coef),
            ("init_kl_coef", self.init_kl_coef),
        ];
        for (key, v) in nonnegative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{key} must be a number ≥ 0"));
            }
        }
        for (key, v) in [("gamma", self.gamma), ("lam", self.lam)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{key} must be in [0, 1]"));
            }
        }
        if self.select_prompts.is_some() && self.gold_facts.is_none() {
            return Err("select_prompts needs gold_facts: the gold score chooses the step".into());
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if let Some(ptx) = &self.ptx {
            if ptx.data.as_os_str().is_empty() {
                return Err("ptx.data is not set".into());
            }
            if ptx.seq_len == 0 || ptx.batch_size == 0 {
                return Err("ptx.seq_len and ptx.batch_size must be at least 1".into());
            }
            if !(ptx.coef.is_finite() && ptx.coef >= 0.0) {
                return Err("ptx.coef must be a number ≥ 0".into());
            }
        }
        Ok(())
    }

    /// Gradient steps per rollout: `ppo_epochs × ⌈batch_size / mini_batch_size⌉`.
    pub fn updates_per_step(&self) -> usize {
        self.ppo_epochs * self.batch_size.div_ceil(self.mini_batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_may_name_some_keys_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ppo.toml");
        std::fs::write(&path, "steps = 3\n[lora]\nr = 4\n").unwrap();
        let c = PpoConfig::from_toml_file(&path).unwrap();
        assert_eq!(c.steps, 3);
        assert_eq!(c.lora.as_ref().unwrap().r, 4);
        assert_eq!(c.lora.unwrap().target_modules, ["q_proj", "v_proj"]);
        assert_eq!(c.batch_size, 8);
        std::fs::write(&path, "stepz = 3\n").unwrap();
        let e = PpoConfig::from_toml_file(&path).unwrap_err();
        assert!(e.contains("ppo.toml") && e.contains("stepz"), "{e}");
        let bad = PpoConfig {
            mini_batch_size: 16,
            ..PpoConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("mini_batch_size"));
        assert!(PpoConfig::default().validate().is_ok());
    }

    #[test]
    fn the_man_page_config_is_valid() {
        // Cargo's runtime value: the build-time one names the checkout that built the binary.
        let crate_dir = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
        let path = std::path::Path::new(&crate_dir).join("../configs/ppo-manpages.toml");
        let c = PpoConfig::from_toml_file(&path).unwrap();
        c.validate().unwrap();
        assert!(c.gold_facts.is_some() && c.max_new_tokens <= 48 && c.max_prompt_length <= 64);
    }
}
