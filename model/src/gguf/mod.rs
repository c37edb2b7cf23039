//! GGUF files (llama.cpp's format), read and written: Llama and Qwen2 decoders in `F32`, `F16`,
//! `Q8_0`, `Q4_0` and `Q4_1`, with their byte-level BPE tokenizer and chat template.
//!
//! * [`load`] reads a file into a [`ModelDir`]: hyper-parameters from `{arch}.*` metadata,
//!   weights dequantized bit-exactly (by `distill_quant::gguf`), llama.cpp names mapped to HF
//!   ones and, for Llama, the converter's query/key row permutation undone.
//! * [`save`] writes a [`ModelDir`] that llama.cpp loads and chats with; [`model_metadata`],
//!   [`model_tensors`] and [`write_gguf`] are its parts, so a quantizer can swap in the exact
//!   blocks it evaluated ([`GgufTensor::from_hf_bytes`]).
//! * [`GgufFile`] is the lower level: metadata and tensor infos of any GGUF v2/v3 file.
//!
//! Layout: GGUF lists dims innermost first, so an HF `[out, in]` matrix has dims `[in, out]`
//! with the same bytes, row after row. llama.cpp's converter permutes the rows of Llama's
//! `q_proj` and `k_proj` (weights and biases; heads of `k_proj` are the key/value heads) so its
//! interleaved RoPE matches HF's rotate-half one ([`permute_qk`]); Qwen2 is written unpermuted
//! (llama.cpp runs it with the rotate-half "NeoX" RoPE).

mod file;
mod names;
mod vocab;

pub use distill_quant::gguf::GgmlType;
pub use file::{DEFAULT_ALIGNMENT, GgufFile, GgufTensor, MetaValue, TensorInfo, write_gguf};
pub use names::{Direction, gguf_name, hf_name, permute_qk};
pub use vocab::{TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNUSED, TOKEN_USER_DEFINED};

use crate::checkpoint::{ModelDir, named_tensors};
use crate::config::{Architecture, ConfigError, LlamaConfig};
use crate::llama::{Init, LlamaForCausalLM, ParamSource};
use crate::tokenizer::TokenizerError;
use burn::prelude::*;
use distill_quant::gguf::quantize_matrix;
use distill_quant::{Format, PackedMatrix};
use serde_json::json;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// A GGUF file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// A problem with the whole file.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A missing or malformed metadata key.
    #[error("{path}: key `{key}`: {reason}")]
    Key {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// A problem with one tensor.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// Hyper-parameters that do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tokenizer that cannot be rebuilt.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The storage type of a whole file (`general.file_type`), as llama.cpp's converter and
/// `llama-quantize` pick per tensor:
///
/// * norms and biases (1-D) stay `F32`;
/// * matrices take the requested type, except that under `Q4_0`/`Q4_1` the output projection,
///   and a tied embedding (which is also the output projection), are `Q8_0`: llama.cpp gives
///   them `Q6_K`, falling back to `Q8_0` when rows are not a multiple of 256 (as in SmolLM2's
///   files); an untied embedding takes the requested type;
/// * a quantized type needs rows that are a multiple of 32 values; others fall back to `F16`,
///   as llama.cpp's converter does.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufDtype {
    /// Everything in `F32` (`ALL_F32`, file type 0).
    #[default]
    F32,
    /// Matrices in `F16` (`MOSTLY_F16`, 1).
    F16,
    /// Matrices in `Q8_0` (`MOSTLY_Q8_0`, 7).
    Q8_0,
    /// Matrices in `Q4_0` (`MOSTLY_Q4_0`, 2).
    Q4_0,
    /// Matrices in `Q4_1` (`MOSTLY_Q4_1`, 3).
    Q4_1,
}

impl GgufDtype {
    /// Every file type this module writes.
    pub const ALL: [Self; 5] = [Self::F32, Self::F16, Self::Q8_0, Self::Q4_0, Self::Q4_1];

    /// llama.cpp's `general.file_type` (`llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
        }
    }

    /// The tensor type this file type gives the HF parameter `hf_name` of `shape`.
    pub fn tensor_type(self, hf_name: &str, shape: &[usize], tied: bool) -> GgmlType {
        if shape.len() < 2 {
            return GgmlType::F32;
        }
        let output =
            hf_name == "lm_head.weight" || (tied && hf_name == "model.embed_tokens.weight");
        let ty = match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 | Self::Q4_1 if output => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
        };
        let row = shape.last().copied().unwrap_or(0);
        if row.is_multiple_of(ty.block_size()) {
            ty
        } else {
            GgmlType::F16
        }
    }
}

impl fmt::Display for GgufDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
        })
    }
}

impl std::str::FromStr for GgufDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown GGUF type `{s}`: use f32, f16, q8_0, q4_0 or q4_1"))
    }
}

/// The number of query/key heads whose rows llama.cpp permutes in `hf_name`, if any.
fn qk_heads(config: &LlamaConfig, hf_name: &str) -> Option<usize> {
    if config.architecture != Architecture::Llama {
        return None;
    }
    let module = hf_name.rsplit_once('.')?.0;
    if module.ends_with("self_attn.q_proj") {
        Some(config.num_attention_heads)
    } else if module.ends_with("self_attn.k_proj") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Hyper-parameters from `general.architecture` and the `{arch}.*` keys; vocabulary size from
/// the token list, tied embeddings when `output.weight` is absent, biases when present.
pub fn read_config(file: &GgufFile) -> Result<LlamaConfig, GgufError> {
    let path = file.path();
    let key_err = |key: &str, reason: &str| GgufError::Key {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let arch_name = file
        .get("general.architecture")
        .ok_or_else(|| key_err("general.architecture", "missing"))?
        .as_str()
        .ok_or_else(|| key_err("general.architecture", "expected a string"))?;
    let architecture = match arch_name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => {
            return Err(key_err(
                "general.architecture",
                &format!("`{other}` is not supported (distill reads llama and qwen2)"),
            ));
        }
    };
    let opt = |k: &str| file.get(&format!("{arch_name}.{k}"));
    let int = |k: &str, default: Option<usize>| -> Result<usize, GgufError> {
        let full = format!("{arch_name}.{k}");
        match (file.get(&full), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(key_err(&full, "missing")),
            (Some(v), _) => v
                .as_u64()
                .filter(|&x| x > 0 && x <= u32::MAX as u64)
                .map(|x| x as usize)
                .ok_or_else(|| key_err(&full, &format!("{v:?}: expected a positive integer"))),
        }
    };
    let float = |k: &str, default: Option<f64>| -> Result<f64, GgufError> {
        let full = format!("{arch_name}.{k}");
        match (file.get(&full), default) {
            (None, Some(d)) => Ok(d),
            (None, None) => Err(key_err(&full, "missing")),
            (Some(v), _) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| key_err(&full, &format!("{v:?}: expected a positive float"))),
        }
    };
    let hidden_size = int("embedding_length", None)?;
    let num_attention_heads = int("attention.head_count", None)?;
    let head_dim = int(
        "attention.key_length",
        Some(hidden_size / num_attention_heads),
    )?;
    if int("attention.value_length", Some(head_dim))? != head_dim {
        return Err(key_err(
            &format!("{arch_name}.attention.value_length"),
            "differs from the key length",
        ));
    }
    if int("rope.dimension_count", Some(head_dim))? != head_dim {
        return Err(key_err(
            &format!("{arch_name}.rope.dimension_count"),
            "partial RoPE (rotary dims ≠ head dim) is not supported",
        ));
    }
    if let Some(t) = opt("rope.scaling.type").and_then(MetaValue::as_str)
        && t != "none"
    {
        return Err(key_err(
            &format!("{arch_name}.rope.scaling.type"),
            &format!("RoPE scaling `{t}` is not supported"),
        ));
    }
    let vocab_size = match file.get("tokenizer.ggml.tokens") {
        Some(v) => v
            .as_array()
            .map(<[MetaValue]>::len)
            .ok_or_else(|| key_err("tokenizer.ggml.tokens", "expected an array"))?,
        None => match opt("vocab_size") {
            Some(_) => int("vocab_size", None)?,
            None => file
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1))
                .map(|&d| d as usize)
                .ok_or_else(|| key_err("tokenizer.ggml.tokens", "missing"))?,
        },
    };
    let has = |name: &str| file.tensor(name).is_some();
    let token_id = |k: &str| file.get(k).and_then(MetaValue::as_u64).map(|x| x as u32);
    let config = LlamaConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: int("feed_forward_length", None)?,
        num_hidden_layers: int("block_count", None)?,
        num_attention_heads,
        num_key_value_heads: int("attention.head_count_kv", Some(num_attention_heads))?,
        head_dim,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", None)?,
        rope_theta: float("rope.freq_base", Some(10_000.0))?,
        max_position_embeddings: int("context_length", Some(2048))?,
        tie_word_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        initializer_range: 0.02,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
    };
    config.validate().map_err(|reason| GgufError::File {
        path: path.to_path_buf(),
        reason,
    })?;
    Ok(config)
}

/// Parameters read by HF name from a GGUF file, dequantized and unpermuted.
struct GgufSource<'a> {
    file: &'a GgufFile,
    config: &'a LlamaConfig,
    device: Device,
    used: HashSet<String>,
}

impl GgufSource<'_> {
    fn values(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, GgufError> {
        let err = |tensor: &str, reason: String| GgufError::Tensor {
            path: self.file.path().to_path_buf(),
            tensor: tensor.to_string(),
            reason,
        };
        let gguf = gguf_name(name).ok_or_else(|| err(name, "has no GGUF name".into()))?;
        let info = self
            .file
            .tensor(&gguf)
            .ok_or_else(|| err(&gguf, format!("missing (HF `{name}`)")))?;
        if info.shape() != shape {
            return Err(err(
                &gguf,
                format!(
                    "dims {:?} (HF shape {:?}), expected HF shape {shape:?}",
                    info.dims,
                    info.shape()
                ),
            ));
        }
        let values = self.file.dequantize(info)?;
        self.used.insert(gguf.clone());
        match qk_heads(self.config, name) {
            Some(heads) => {
                let row = shape[1..].iter().product();
                permute_qk(&values, row, heads, Direction::ToHf).map_err(|e| err(&gguf, e))
            }
            None => Ok(values),
        }
    }
}

impl ParamSource for GgufSource<'_> {
    type Error = GgufError;

    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<D>, GgufError> {
        let values = self.values(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}

/// Builds the model of an opened GGUF file for `config`, warning about unused tensors.
pub fn load_model(
    file: &GgufFile,
    config: &LlamaConfig,
    device: &Device,
) -> Result<LlamaForCausalLM, GgufError> {
    let mut source = GgufSource {
        file,
        config,
        device: device.clone(),
        used: HashSet::new(),
    };
    let model = LlamaForCausalLM::build(config, &mut source)?;
    let unused: Vec<&str> = file
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !source.used.contains(*n))
        .collect();
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} tensors were not used: {unused:?}",
            file.path().display(),
            unused.len()
        );
    }
    Ok(model)
}

/// Loads a GGUF file as a model directory: config, weights (dequantized to `f32`), tokenizer
/// (`None` for a vocabulary other than byte-level BPE), and a generation config with the
/// special token ids.
pub fn load(path: &Path, device: &Device) -> Result<ModelDir, GgufError> {
    let file = GgufFile::open(path)?;
    let config = read_config(&file)?;
    let model = load_model(&file, &config, device)?;
    let tokenizer = vocab::read_tokenizer(&file, config.max_position_embeddings)?;
    let mut generation = json!({});
    for (field, key) in [
        ("bos_token_id", "tokenizer.ggml.bos_token_id"),
        ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ("pad_token_id", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(id) = file.get(key).and_then(MetaValue::as_u64) {
            generation[field] = json!(id);
        }
    }
    let generation_config = generation
        .as_object()
        .is_some_and(|o| !o.is_empty())
        .then_some(generation);
    Ok(ModelDir {
        config,
        model,
        tokenizer,
        generation_config,
    })
}

impl GgufTensor {
    /// Wraps an HF parameter already encoded as `ggml_type` (rows in HF order, e.g. the blocks
    /// a quantizer evaluated): renames it and, for Llama's `q_proj`/`k_proj`, permutes its rows
    /// as llama.cpp's converter does.
    pub fn from_hf_bytes(
        hf_name: &str,
        shape: &[usize],
        ggml_type: GgmlType,
        bytes: Vec<u8>,
        config: &LlamaConfig,
    ) -> Result<Self, String> {
        let name = gguf_name(hf_name).ok_or_else(|| format!("`{hf_name}` has no GGUF name"))?;
        let (&row, outer) = shape
            .split_last()
            .ok_or_else(|| format!("`{hf_name}`: a tensor needs a dimension"))?;
        let row_bytes = ggml_type.row_bytes(row).map_err(|e| e.to_string())?;
        let rows: usize = outer.iter().product();
        if rows.checked_mul(row_bytes) != Some(bytes.len()) {
            return Err(format!(
                "`{hf_name}`: {} bytes, but {ggml_type} shape {shape:?} takes {}",
                bytes.len(),
                rows * row_bytes
            ));
        }
        let bytes = match qk_heads(config, hf_name) {
            // A bias is one row of values: permute single values.
            Some(heads) if outer.is_empty() && !ggml_type.is_quantized() => {
                permute_qk(&bytes, ggml_type.type_size(), heads, Direction::ToGguf)?
            }
            Some(heads) if !outer.is_empty() => {
                permute_qk(&bytes, row_bytes, heads, Direction::ToGguf)?
            }
            Some(_) => return Err(format!("`{hf_name}`: a quantized bias cannot be permuted")),
            None => bytes,
        };
        Ok(Self {
            name,
            ggml_type,
            dims: shape.iter().rev().map(|&d| d as u64).collect(),
            bytes,
        })
    }

    /// Encodes HF parameter values (`shape`, row-major) as `ggml_type`, see
    /// [`from_hf_bytes`](Self::from_hf_bytes).
    pub fn from_hf(
        hf_name: &str,
        shape: &[usize],
        values: &[f32],
        ggml_type: GgmlType,
        config: &LlamaConfig,
    ) -> Result<Self, String> {
        let row = shape.last().copied().unwrap_or(0);
        let rows = shape[..shape.len().saturating_sub(1)].iter().product();
        let bytes = quantize_matrix(ggml_type, values, rows, row)
            .map_err(|e| format!("`{hf_name}`: {e}"))?;
        Self::from_hf_bytes(hf_name, shape, ggml_type, bytes, config)
    }
}

/// Every parameter of `m` encoded for a `dtype` file, in llama.cpp's names and layout.
///
/// A packed weight already in the GGML type that `dtype` gives it is written as it is, so the
/// file holds exactly the bits that were evaluated; any other packed weight is dequantized and
/// encoded afresh (with a warning). In a model with packed weights the dense matrices (the
/// token embedding) are kept in `F32`, as they were evaluated.
pub fn model_tensors(m: &ModelDir, dtype: GgufDtype) -> Result<Vec<GgufTensor>, String> {
    let tied = m.config.tie_word_embeddings;
    let exact_dense = !m.model.packed_weights().is_empty();
    let mut out = named_tensors(&m.model)
        .into_iter()
        .map(|(name, data)| {
            let shape = data.shape().to_vec();
            let values = data
                .try_to_vec::<f32>()
                .map_err(|e| format!("`{name}`: {e:?}"))?;
            let ty = if exact_dense {
                GgmlType::F32
            } else {
                dtype.tensor_type(&name, &shape, tied)
            };
            GgufTensor::from_hf(&name, &shape, &values, ty, &m.config)
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (name, p) in m.model.packed_weights() {
        let shape = [p.rows(), p.cols()];
        let ty = dtype.tensor_type(&name, &shape, tied);
        let tensor = match p {
            PackedMatrix::Ggml(g) if g.ty() == ty => {
                GgufTensor::from_hf_bytes(&name, &shape, ty, g.data().to_vec(), &m.config)?
            }
            _ => {
                tracing::warn!(
                    "`{name}` is packed as {}; the file stores it re-encoded as {ty}",
                    p.format()
                );
                GgufTensor::from_hf(&name, &shape, &p.dequantize(), ty, &m.config)?
            }
        };
        out.push(tensor);
    }
    Ok(out)
}

/// The GGUF file type that keeps `m`'s packed weights as they are, if they all share one GGML
/// type (`None` for a dense model or one packed in the crate's own int8/int4 formats).
pub fn packed_file_type(m: &ModelDir) -> Option<GgufDtype> {
    let mut types = m
        .model
        .packed_weights()
        .into_iter()
        .map(|(_, p)| p.format());
    let first = types.next()?;
    if types.any(|t| t != first) {
        return None;
    }
    match first {
        Format::Ggml(GgmlType::Q8_0) => Some(GgufDtype::Q8_0),
        Format::Ggml(GgmlType::Q4_0) => Some(GgufDtype::Q4_0),
        Format::Ggml(GgmlType::Q4_1) => Some(GgufDtype::Q4_1),
        _ => None,
    }
}

/// The metadata llama.cpp needs to load and chat with `m`: `general.*`, the `{arch}.*`
/// hyper-parameters and, with a tokenizer, `tokenizer.ggml.*` and `tokenizer.chat_template`.
pub fn model_metadata(
    m: &ModelDir,
    dtype: GgufDtype,
    name: &str,
    path: &Path,
) -> Result<Vec<(String, MetaValue)>, GgufError> {
    let c = &m.config;
    let arch = c.architecture.model_type();
    let u32_of = |x: usize| MetaValue::U32(x as u32);
    let mut out: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::String(arch.into()),
        ),
        ("general.type".into(), MetaValue::String("model".into())),
        ("general.name".into(), MetaValue::String(name.into())),
        ("general.alignment".into(), u32_of(DEFAULT_ALIGNMENT)),
        (
            "general.file_type".into(),
            MetaValue::U32(dtype.file_type()),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
    ];
    let hyper = [
        ("block_count", u32_of(c.num_hidden_layers)),
        ("context_length", u32_of(c.max_position_embeddings)),
        ("embedding_length", u32_of(c.hidden_size)),
        ("feed_forward_length", u32_of(c.intermediate_size)),
        ("attention.head_count", u32_of(c.num_attention_heads)),
        ("attention.head_count_kv", u32_of(c.num_key_value_heads)),
        ("attention.key_length", u32_of(c.head_dim)),
        ("attention.value_length", u32_of(c.head_dim)),
        ("rope.dimension_count", u32_of(c.head_dim)),
        ("rope.freq_base", MetaValue::F32(c.rope_theta as f32)),
        (
            "attention.layer_norm_rms_epsilon",
            MetaValue::F32(c.rms_norm_eps as f32),
        ),
        ("vocab_size", u32_of(c.vocab_size)),
    ];
    out.extend(hyper.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    if let Some(tok) = &m.tokenizer {
        out.extend(vocab::tokenizer_metadata(
            tok,
            c.vocab_size,
            c.bos_token_id,
            c.eos_token_id.first().copied(),
            path,
        )?);
    }
    Ok(out)
}

/// Writes `m` as a GGUF file of `dtype` (see [`GgufDtype`] for the type of each tensor),
/// atomically; `general.name` is the file stem.
pub fn save(path: &Path, m: &ModelDir, dtype: GgufDtype) -> Result<(), GgufError> {
    let name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let metadata = model_metadata(m, dtype, &name, path)?;
    let tensors = model_tensors(m, dtype).map_err(|reason| GgufError::File {
        path: path.to_path_buf(),
        reason,
    })?;
    write_gguf(path, &metadata, &tensors)
}

#[cfg(test)]
mod tests;
