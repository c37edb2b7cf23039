//! The model configuration, read from and written to Hugging Face `config.json`.
//!
//! One struct covers `LlamaForCausalLM` and `Qwen2ForCausalLM`: Qwen2 is a Llama with biases on
//! the query, key and value projections. Field names follow `config.json`, so the serde mapping
//! is nearly one to one.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;

/// The decoder families this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM, TinyLlama, ...).
    Llama,
    /// `Qwen2ForCausalLM`: q/k/v projections carry biases, the output projection does not.
    Qwen2,
}

impl Architecture {
    /// The HF class name, as written in `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    /// The HF `model_type`, also the GGUF `general.architecture`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// Sizes and options of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Which family: decides the bias layout.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Inner width of the gated MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Longest position the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Biases on the MLP projections.
    pub mlp_bias: bool,
    /// Standard deviation of the weights of a model trained from scratch.
    pub initializer_range: f64,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id(s).
    pub eos_token_id: Vec<u32>,
}

/// A `config.json` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    /// A key is missing or holds the wrong kind of value.
    #[error("{path}: key `{key}`: {reason}")]
    Key {
        path: String,
        key: String,
        reason: String,
    },
    /// The values do not fit together.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// The architecture is not one this crate runs.
    #[error(
        "{path}: unknown architecture {found}: distill runs LlamaForCausalLM and Qwen2ForCausalLM"
    )]
    UnknownArchitecture { path: String, found: String },
}

impl LlamaConfig {
    /// A config with Llama defaults for the given sizes.
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: Vec::new(),
        }
    }

    /// Reads an HF `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: name.clone(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: name.clone(),
            source,
        })?;
        Self::from_hf_json(&value, &name)
    }

    /// Parses an HF `config.json` value; `origin` names the file in errors.
    pub fn from_hf_json(v: &Value, origin: &str) -> Result<Self, ConfigError> {
        let key_err = |key: &str, reason: &str| ConfigError::Key {
            path: origin.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let class = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .or_else(|| v.get("model_type").and_then(Value::as_str))
            .ok_or_else(|| key_err("architectures", "missing"))?;
        let architecture = match class {
            "LlamaForCausalLM" | "llama" => Architecture::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Architecture::Qwen2,
            other => {
                return Err(ConfigError::UnknownArchitecture {
                    path: origin.to_string(),
                    found: other.to_string(),
                });
            }
        };
        let usize_key = |key: &str| -> Result<usize, ConfigError> {
            v.get(key)
                .ok_or_else(|| key_err(key, "missing"))?
                .as_u64()
                .map(|x| x as usize)
                .filter(|&x| x > 0)
                .ok_or_else(|| key_err(key, "expected a positive integer"))
        };
        let opt_usize = |key: &str| -> Result<Option<usize>, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => usize_key(key).map(Some),
            }
        };
        let f64_key = |key: &str, default: f64| -> Result<f64, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| key_err(key, "expected a number")),
            }
        };
        let bool_key = |key: &str, default: bool| -> Result<bool, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_bool()
                    .ok_or_else(|| key_err(key, "expected true or false")),
            }
        };

        let hidden_size = usize_key("hidden_size")?;
        let num_attention_heads = usize_key("num_attention_heads")?;
        if let Some(act) = v.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(key_err(
                "hidden_act",
                &format!("`{act}` is not supported, only silu"),
            ));
        }
        // transformers 5 nests RoPE under `rope_parameters`; 4.x writes `rope_theta` and
        // `rope_scaling` at the top level.
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        let rope_theta = match rope.and_then(|r| r.get("rope_theta")) {
            Some(t) => t
                .as_f64()
                .ok_or_else(|| key_err("rope_parameters.rope_theta", "expected a number"))?,
            None => f64_key("rope_theta", 10_000.0)?,
        };
        let rope_type = rope
            .and_then(|r| r.get("rope_type"))
            .or_else(|| v.get("rope_scaling").and_then(|s| s.get("rope_type")))
            .or_else(|| v.get("rope_scaling").and_then(|s| s.get("type")))
            .and_then(Value::as_str);
        if let Some(t) = rope_type
            && t != "default"
        {
            return Err(key_err(
                "rope_parameters.rope_type",
                &format!("RoPE scaling `{t}` is not supported"),
            ));
        }
        let (qkv_bias, o_bias, mlp_bias) = match architecture {
            Architecture::Llama => {
                let attn = bool_key("attention_bias", false)?;
                (attn, attn, bool_key("mlp_bias", false)?)
            }
            Architecture::Qwen2 => (true, false, false),
        };
        let eos_token_id = match v.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids
                .iter()
                .map(|x| x.as_u64().map(|x| x as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| key_err("eos_token_id", "expected token ids"))?,
            Some(x) => vec![
                x.as_u64()
                    .ok_or_else(|| key_err("eos_token_id", "expected a token id"))?
                    as u32,
            ],
        };
        let config = Self {
            architecture,
            vocab_size: usize_key("vocab_size")?,
            hidden_size,
            intermediate_size: usize_key("intermediate_size")?,
            num_hidden_layers: usize_key("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads),
            head_dim: opt_usize("head_dim")?.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: f64_key("rms_norm_eps", 1e-6)?,
            rope_theta,
            max_position_embeddings: opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: bool_key(
                "tie_word_embeddings",
                architecture == Architecture::Llama,
            )?,
            qkv_bias,
            o_bias,
            mlp_bias,
            initializer_range: f64_key("initializer_range", 0.02)?,
            bos_token_id: v
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_id,
        };
        config.validate().map_err(|reason| ConfigError::Invalid {
            path: origin.to_string(),
            reason,
        })?;
        Ok(config)
    }

    /// Checks the sizes fit together.
    pub fn validate(&self) -> Result<(), String> {
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "{} query heads cannot be grouped over {} key/value heads",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        let layout_ok = match self.architecture {
            Architecture::Llama => self.qkv_bias == self.o_bias,
            Architecture::Qwen2 => self.qkv_bias && !self.o_bias && !self.mlp_bias,
        };
        if !layout_ok {
            return Err(format!(
                "{} cannot have biases on q/k/v {}, on o {} and on the MLP {}",
                self.architecture.hf_class(),
                self.qkv_bias,
                self.o_bias,
                self.mlp_bias
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        Ok(())
    }

    /// Parameters in the model, counting a tied embedding once.
    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }

    /// The HF `config.json` value for this config, readable by transformers 4.x and 5.x.
    pub fn to_hf_json(&self, dtype: &str) -> Value {
        let mut v = json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("object literal");
        match self.architecture {
            Architecture::Llama => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
                obj.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Architecture::Qwen2 => {
                obj.insert("use_sliding_window".into(), json!(false));
            }
        }
        if let Some(bos) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(bos));
        }
        match self.eos_token_id.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), json!(one));
            }
            many => {
                obj.insert("eos_token_id".into(), json!(many));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_transformers_5_rope_parameters() {
        let v = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
            "tie_word_embeddings": false, "attention_bias": true
        });
        let c = LlamaConfig::from_hf_json(&v, "config.json").unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.head_dim, 16);
        assert!(c.qkv_bias && c.o_bias && !c.mlp_bias && !c.tie_word_embeddings);
        let back = LlamaConfig::from_hf_json(&c.to_hf_json("float32"), "x").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn qwen2_has_qkv_bias_only() {
        let v = json!({
            "architectures": ["Qwen2ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "rope_theta": 1e6
        });
        let c = LlamaConfig::from_hf_json(&v, "config.json").unwrap();
        assert!(c.qkv_bias && !c.o_bias && !c.mlp_bias);
        assert_eq!(c.rope_theta, 1e6);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let unknown = json!({"architectures": ["GPT2LMHeadModel"]});
        let e = LlamaConfig::from_hf_json(&unknown, "dir/config.json").unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
        let missing = json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64});
        let e = LlamaConfig::from_hf_json(&missing, "dir/config.json").unwrap_err();
        assert!(e.to_string().contains("dir/config.json"), "{e}");
        let scaled = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}
        });
        let e = LlamaConfig::from_hf_json(&scaled, "c.json").unwrap_err();
        assert!(e.to_string().contains("llama3"), "{e}");
        let groups = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 3
        });
        assert!(LlamaConfig::from_hf_json(&groups, "c.json").is_err());
    }
}
