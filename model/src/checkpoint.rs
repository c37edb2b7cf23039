//! Hugging Face model directories, both ways: `config.json`, `model.safetensors` (or shards
//! with `model.safetensors.index.json`), the tokenizer files and `generation_config.json`.
//!
//! Safetensors files are memory-mapped and each tensor is converted once, straight from the
//! mapping into a device tensor. Every file is written atomically.

use crate::config::{ConfigError, LlamaConfig};
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::llama::{Init, LlamaForCausalLM, ParamSource};
use crate::quantized::{self, RawTensor};
use crate::tokenizer::{Tokenizer, TokenizerError};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use distill_quant::{Format, PackedMatrix};
use memmap2::Mmap;
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, Metadata, TensorView};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// A checkpoint that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A problem with a whole file.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A problem with one tensor of a file.
    #[error("{path}: tensor `{tensor}`: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// A bad `config.json`.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad tokenizer files.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn file_err(path: &Path, reason: impl ToString) -> CheckpointError {
    CheckpointError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The float types a checkpoint may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreDtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
}

impl StoreDtype {
    /// The name HF writes in `config.json` (`torch_dtype`/`dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    fn safetensors(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::Bf16 => Dtype::BF16,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Self::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

impl std::str::FromStr for StoreDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}`: use f32, f16 or bf16")),
        }
    }
}

/// Decodes little-endian f32, f16 or bf16 bytes to f32.
fn decode(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// One memory-mapped safetensors file with its parsed, validated header.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| file_err(path, e))?;
        // SAFETY: the mapping is read-only; a file changed underneath by another process
        // would give wrong values, not memory unsafety on our side beyond what mmap implies.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| file_err(path, format!("not a valid safetensors file: {e}")))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            header_len,
            metadata,
        })
    }

    fn view(&self, name: &str) -> Option<(Dtype, &[usize], &[u8])> {
        let info = self.metadata.info(name)?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        Some((info.dtype, &info.shape, self.map.get(start..end)?))
    }
}

/// Name, dtype and shape of every tensor of a safetensors file, from its (mapped) header.
pub fn tensor_infos(path: &Path) -> Result<Vec<(String, Dtype, Vec<usize>)>, CheckpointError> {
    let file = MappedFile::open(path)?;
    let mut infos: Vec<_> = file
        .metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| (name, info.dtype, info.shape.clone()))
        .collect();
    infos.sort();
    Ok(infos)
}

/// The quantization header of a safetensors file (see [`quantized`]), if it has one.
pub fn quantization_header(path: &Path) -> Result<Option<Value>, CheckpointError> {
    let file = MappedFile::open(path)?;
    let Some(text) = file
        .metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(quantized::METADATA_KEY))
    else {
        return Ok(None);
    };
    serde_json::from_str(text).map(Some).map_err(|e| {
        file_err(
            path,
            format!("{}: not valid JSON: {e}", quantized::METADATA_KEY),
        )
    })
}

/// Tensors read by name from one or more safetensors files (a sharded checkpoint).
pub struct SafetensorsSource {
    files: Vec<MappedFile>,
    owner: HashMap<String, usize>,
    used: HashSet<String>,
    /// Packed weights named in the files' quantization headers: format and `[rows, cols]`.
    packed: HashMap<String, (Format, [usize; 2])>,
    device: Device,
}

impl SafetensorsSource {
    /// Maps the given files; a tensor name may appear in only one of them.
    pub fn open(paths: &[PathBuf], device: &Device) -> Result<Self, CheckpointError> {
        let mut files = Vec::new();
        let mut owner = HashMap::new();
        let mut packed = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = MappedFile::open(path)?;
            let header = file
                .metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get(quantized::METADATA_KEY));
            if let Some(text) = header {
                let value: Value = serde_json::from_str(text).map_err(|e| {
                    file_err(
                        path,
                        format!("{}: not valid JSON: {e}", quantized::METADATA_KEY),
                    )
                })?;
                let formats = quantized::header_formats(&value).map_err(|e| file_err(path, e))?;
                packed.extend(formats);
            }
            for name in file.metadata.tensors().into_keys() {
                if owner.insert(name.clone(), i).is_some() {
                    return Err(CheckpointError::Tensor {
                        path: path.clone(),
                        tensor: name,
                        reason: "appears in more than one shard".into(),
                    });
                }
            }
            files.push(file);
        }
        Ok(Self {
            files,
            owner,
            used: HashSet::new(),
            packed,
            device: device.clone(),
        })
    }

    /// The safetensors files of a model directory: `model.safetensors`, or the shards that
    /// `model.safetensors.index.json` lists.
    pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = dir.join("model.safetensors.index.json");
        if !index.is_file() {
            return Err(file_err(
                dir,
                "no model.safetensors or model.safetensors.index.json in this directory",
            ));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| file_err(&index, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| file_err(&index, format!("not valid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| file_err(&index, "missing `weight_map` object"))?;
        let mut shards: Vec<String> = Vec::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| CheckpointError::Tensor {
                path: index.clone(),
                tensor: tensor.clone(),
                reason: "shard name is not a string".into(),
            })?;
            if shard.contains('/') || shard.contains("..") {
                return Err(file_err(
                    &index,
                    format!("shard `{shard}` is outside the directory"),
                ));
            }
            if !shards.iter().any(|s| s == shard) {
                shards.push(shard.to_string());
            }
        }
        shards.sort();
        Ok(shards.into_iter().map(|s| dir.join(s)).collect())
    }

    /// Names present in the files but never asked for.
    pub fn unused(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .owner
            .keys()
            .filter(|n| !self.used.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl ParamSource for SafetensorsSource {
    type Error = CheckpointError;

    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<D>, CheckpointError> {
        let Some(&i) = self.owner.get(name) else {
            let path = self
                .files
                .first()
                .map_or_else(PathBuf::new, |f| f.path.clone());
            return Err(CheckpointError::Tensor {
                path,
                tensor: name.into(),
                reason: "missing".into(),
            });
        };
        let file = &self.files[i];
        let err = |reason: String| CheckpointError::Tensor {
            path: file.path.clone(),
            tensor: name.into(),
            reason,
        };
        let (dtype, found, bytes) = file
            .view(name)
            .ok_or_else(|| err("data out of range".into()))?;
        if found != shape {
            return Err(err(format!("shape {found:?}, expected {shape:?}")));
        }
        let values = decode(dtype, bytes)
            .ok_or_else(|| err(format!("dtype {dtype:?}; expected F32, F16 or BF16")))?;
        self.used.insert(name.to_string());
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn packed(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<PackedMatrix>, CheckpointError> {
        let Some(&(format, shape)) = self.packed.get(name) else {
            return Ok(None);
        };
        let path = self
            .owner
            .get(&format!("{name}.qweight"))
            .map_or_else(PathBuf::new, |&i| self.files[i].path.clone());
        let err = |reason: String| CheckpointError::Tensor {
            path: path.clone(),
            tensor: name.into(),
            reason,
        };
        if shape != [rows, cols] {
            return Err(err(format!(
                "packed shape {shape:?}, expected {:?}",
                [rows, cols]
            )));
        }
        let (files, owner) = (&self.files, &self.owner);
        let mut used = Vec::new();
        let m = quantized::decode(name, format, rows, cols, |part| {
            used.push(part.to_string());
            let file = &files[*owner.get(part)?];
            file.view(part).map(|(d, s, b)| (d, s.to_vec(), b))
        })
        .map_err(err)?;
        self.used.extend(used);
        Ok(Some(m))
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}

/// A model directory in memory: the model and what travels with it.
pub struct ModelDir {
    /// Sizes and options.
    pub config: LlamaConfig,
    /// The weights.
    pub model: LlamaForCausalLM,
    /// `tokenizer.json` and `tokenizer_config.json`, when present.
    pub tokenizer: Option<Tokenizer>,
    /// `generation_config.json`, kept as written.
    pub generation_config: Option<Value>,
}

impl ModelDir {
    /// Why this model (called `name`) and `other` (called `other_name`) do not share a
    /// tokenizer, if they don't: a different vocabulary size (of the models or of their
    /// tokenizers), a missing `tokenizer.json`, or a token string that differs for some id.
    pub fn vocabulary_mismatch(
        &self,
        name: &str,
        other: &ModelDir,
        other_name: &str,
    ) -> Option<String> {
        let (a, b) = (self.config.vocab_size, other.config.vocab_size);
        if a != b {
            return Some(format!(
                "vocabulary sizes differ: {a} ({name}) and {b} ({other_name})"
            ));
        }
        let (t, o) = match (&self.tokenizer, &other.tokenizer) {
            (Some(t), Some(o)) => (t, o),
            (None, _) => return Some(format!("the {name} has no tokenizer.json")),
            (_, None) => return Some(format!("the {other_name} has no tokenizer.json")),
        };
        if t.vocab_size() != o.vocab_size() {
            return Some(format!(
                "tokenizers have {} ({name}) and {} ({other_name}) tokens",
                t.vocab_size(),
                o.vocab_size()
            ));
        }
        (0..t.vocab_size() as u32).find_map(|id| {
            let (x, y) = (t.id_to_token(id), o.id_to_token(id));
            (x != y)
                .then(|| format!("token {id} is {x:?} in the {name} and {y:?} in the {other_name}"))
        })
    }
}

/// Builds a model from safetensors files, warning about tensors it did not use.
pub fn load_weights(
    config: &LlamaConfig,
    files: &[PathBuf],
    device: &Device,
) -> Result<LlamaForCausalLM, CheckpointError> {
    let mut source = SafetensorsSource::open(files, device)?;
    let model = LlamaForCausalLM::build(config, &mut source)?;
    let unused = source.unused();
    // A tied checkpoint may carry a copy of the embedding as `lm_head.weight`.
    let ignorable = |n: &String| config.tie_word_embeddings && n == "lm_head.weight";
    let unused: Vec<_> = unused.into_iter().filter(|n| !ignorable(n)).collect();
    if !unused.is_empty() {
        tracing::warn!(
            "{} tensors in the checkpoint were not used: {unused:?}",
            unused.len()
        );
    }
    Ok(model)
}

/// Loads an HF model directory.
pub fn load_dir(dir: &Path, device: &Device) -> Result<ModelDir, CheckpointError> {
    if !dir.is_dir() {
        return Err(file_err(dir, "not a directory"));
    }
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let model = load_weights(&config, &SafetensorsSource::dir_files(dir)?, device)?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Some(Tokenizer::from_dir(dir)?)
    } else {
        None
    };
    let gen_path = dir.join("generation_config.json");
    let generation_config = if gen_path.is_file() {
        let text = std::fs::read_to_string(&gen_path).map_err(|e| file_err(&gen_path, e))?;
        Some(
            serde_json::from_str(&text)
                .map_err(|e| file_err(&gen_path, format!("not valid JSON: {e}")))?,
        )
    } else {
        None
    };
    Ok(ModelDir {
        config,
        model,
        tokenizer,
        generation_config,
    })
}

/// Collects every float parameter with its HF name.
struct NamedTensors {
    path: Vec<String>,
    out: Vec<(String, TensorData)>,
}

impl ModuleVisitor for NamedTensors {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out
            .push((self.path.join("."), param.val().into_data()));
    }
}

/// Every parameter of `model` as `(HF name, data)`, in module order.
pub fn named_tensors<M: Module>(model: &M) -> Vec<(String, TensorData)> {
    let mut visitor = NamedTensors {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.out
}

/// Writes tensors to one safetensors file atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, TensorData)],
    dtype: StoreDtype,
) -> Result<(), CheckpointError> {
    let raw = tensors
        .iter()
        .map(|(name, data)| encode_dense(name, data, dtype).map_err(|e| file_err(path, e)))
        .collect::<Result<Vec<_>, _>>()?;
    save_raw(path, &raw, None)
}

fn encode_dense(name: &str, data: &TensorData, dtype: StoreDtype) -> Result<RawTensor, String> {
    let values = data
        .try_to_vec::<f32>()
        .map_err(|e| format!("tensor `{name}`: {e:?}"))?;
    Ok(RawTensor {
        name: name.to_string(),
        dtype: dtype.safetensors(),
        shape: data.shape().to_vec(),
        bytes: dtype.encode(&values),
    })
}

/// Writes encoded tensors to one safetensors file atomically, with `quant_header` (the
/// [`quantized`] header) in its metadata when given.
pub fn save_raw(
    path: &Path,
    tensors: &[RawTensor],
    quant_header: Option<&Value>,
) -> Result<(), CheckpointError> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.as_str(), v))
                .map_err(|e| file_err(path, format!("tensor `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    if let Some(h) = quant_header {
        metadata.insert(quantized::METADATA_KEY.to_string(), h.to_string());
    }
    let bytes = safetensors::serialize(views.iter().map(|(n, v)| (*n, v)), Some(metadata))
        .map_err(|e| file_err(path, e))?;
    write_atomic(path, |out| std::io::Write::write_all(out, &bytes)).map_err(|e| file_err(path, e))
}

/// How to write a model directory.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Float type of the stored (dense) weights.
    pub dtype: StoreDtype,
    /// Largest shard in bytes; a bigger model is split into shards with an index.
    pub max_shard_bytes: usize,
    /// Write packed (quantized) weights as dense `dtype` tensors, for tools that only read
    /// float checkpoints (transformers). Otherwise they stay packed (see [`quantized`]).
    pub dequantize: bool,
    /// Extra keys for the quantization header (method, calibration), when weights are packed.
    pub quantization: Option<Value>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            dtype: StoreDtype::F32,
            max_shard_bytes: 5 << 30,
            dequantize: false,
            quantization: None,
        }
    }
}

/// Writes an HF model directory that transformers loads with `from_pretrained`.
pub fn save_dir(dir: &Path, m: &ModelDir, options: SaveOptions) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let mut tensors = named_tensors(&m.model)
        .into_iter()
        .map(|(name, data)| encode_dense(&name, &data, options.dtype).map_err(|e| file_err(dir, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let packed = m.model.packed_weights();
    for (name, p) in &packed {
        if options.dequantize {
            let data = TensorData::new(p.dequantize(), [p.rows(), p.cols()]);
            tensors.push(encode_dense(name, &data, options.dtype).map_err(|e| file_err(dir, e))?);
        } else {
            tensors.extend(quantized::encode(name, p));
        }
    }
    let header = (!packed.is_empty() && !options.dequantize).then(|| {
        let extra = options.quantization.clone().unwrap_or(Value::Null);
        quantized::header(&packed, &extra)
    });
    // Greedy shards in module order, as transformers does.
    let mut shards: Vec<Vec<RawTensor>> = vec![Vec::new()];
    let mut size = 0usize;
    let mut total = 0usize;
    for t in tensors {
        let bytes = t.bytes.len();
        if size > 0 && size + bytes > options.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        shards.last_mut().expect("one shard").push(t);
    }
    let stale = SafetensorsSource::dir_files(dir).unwrap_or_default();
    if shards.len() == 1 {
        save_raw(&dir.join("model.safetensors"), &shards[0], header.as_ref())?;
        let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    } else {
        let n = shards.len();
        let mut weight_map = BTreeMap::new();
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            save_raw(&dir.join(&file), shard, header.as_ref())?;
            for t in shard {
                weight_map.insert(t.name.clone(), file.clone());
            }
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = dir.join("model.safetensors.index.json");
        write_json_atomic(&path, &index).map_err(|e| file_err(&path, e))?;
        let _ = std::fs::remove_file(dir.join("model.safetensors"));
    }
    // Shards of an earlier save that this one did not overwrite.
    let written = SafetensorsSource::dir_files(dir)?;
    for old in stale.iter().filter(|p| !written.contains(p)) {
        let _ = std::fs::remove_file(old);
    }
    let config_path = dir.join("config.json");
    write_json_atomic(
        &config_path,
        &m.config.to_hf_json(options.dtype.torch_name()),
    )
    .map_err(|e| file_err(&config_path, e))?;
    if let Some(tokenizer) = &m.tokenizer {
        tokenizer.save_dir(dir)?;
    }
    let generation = m.generation_config.clone().unwrap_or_else(|| {
        let mut g = json!({"_from_model_config": true});
        if let Some(bos) = m.config.bos_token_id {
            g["bos_token_id"] = json!(bos);
        }
        if let Some(&eos) = m.config.eos_token_id.first() {
            g["eos_token_id"] = json!(eos);
        }
        g
    });
    let gen_path = dir.join("generation_config.json");
    write_json_atomic(&gen_path, &generation).map_err(|e| file_err(&gen_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LlamaConfig {
        let mut c = LlamaConfig::llama(50, 16, 24, 2, 4, 2);
        c.tie_word_embeddings = false;
        c.qkv_bias = true;
        c.o_bias = true;
        c
    }

    #[test]
    fn names_match_hf() {
        let device = Device::flex();
        let model = tiny().init(&device, 0);
        let names: Vec<String> = named_tensors(&model).into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"model.embed_tokens.weight".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"model.layers.1.self_attn.q_proj.bias".to_string()));
        assert!(names.contains(&"model.layers.0.mlp.down_proj.weight".to_string()));
        assert!(names.contains(&"model.norm.weight".to_string()));
        assert!(names.contains(&"lm_head.weight".to_string()));
        assert_eq!(names.len(), 1 + 2 * (4 + 4 + 3 + 2) + 1 + 1);
    }

    #[test]
    fn save_load_round_trip_in_every_dtype_and_sharded() {
        let device = Device::flex();
        let config = tiny();
        let model = config.init(&device, 0);
        let original = named_tensors(&model);
        let m = ModelDir {
            config: config.clone(),
            model,
            tokenizer: None,
            generation_config: None,
        };
        for (dtype, tol, shard) in [
            (StoreDtype::F32, 0.0, 1 << 30),
            (StoreDtype::F32, 0.0, 2000),
            (StoreDtype::F16, 1e-3, 1 << 30),
            (StoreDtype::Bf16, 1e-2, 1 << 30),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let options = SaveOptions {
                dtype,
                max_shard_bytes: shard,
                ..SaveOptions::default()
            };
            save_dir(dir.path(), &m, options).unwrap();
            if shard < 1 << 20 {
                assert!(dir.path().join("model.safetensors.index.json").is_file());
            }
            let back = load_dir(dir.path(), &device).unwrap();
            assert_eq!(back.config, config);
            for ((n1, a), (n2, b)) in original.iter().zip(named_tensors(&back.model)) {
                assert_eq!(n1, &n2);
                let a = a.try_to_vec::<f32>().unwrap();
                let b = b.try_to_vec::<f32>().unwrap();
                let diff = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= tol, "{dtype:?} {n1}: {diff}");
            }
        }
    }

    #[test]
    fn truncated_and_corrupted_files_are_errors_not_panics() {
        let device = Device::flex();
        let config = tiny();
        let m = ModelDir {
            model: config.init(&device, 0),
            config,
            tokenizer: None,
            generation_config: None,
        };
        let dir = tempfile::tempdir().unwrap();
        save_dir(dir.path(), &m, SaveOptions::default()).unwrap();
        let file = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&file).unwrap();
        let load = |data: &[u8]| {
            std::fs::write(&file, data).unwrap();
            std::panic::catch_unwind(|| load_dir(dir.path(), &Device::flex()).map(|_| ()))
                .unwrap_or_else(|_| panic!("loading panicked"))
        };
        let mut cuts: Vec<usize> = (0..bytes.len()).step_by(bytes.len() / 150 + 1).collect();
        cuts.extend([1, 7, 8, 9, bytes.len() - 1]);
        for cut in cuts {
            let err = load(&bytes[..cut]).expect_err("a truncated file must not load");
            assert!(err.to_string().contains("model.safetensors"), "{err}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut corrupt = bytes.clone();
            // Mostly the header, where a flipped bit changes structure rather than a value.
            let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            let pos = (state as usize)
                % if state.is_multiple_of(4) {
                    bytes.len()
                } else {
                    header
                };
            corrupt[pos] ^= 1 << (state >> 61);
            let _ = load(&corrupt);
        }
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(load(&huge).is_err());
        std::fs::write(&file, &bytes).unwrap();

        // A config that disagrees with the weights names the tensor and both shapes.
        let mut wrong = m.config.clone();
        wrong.intermediate_size += 1;
        write_json_atomic(
            &dir.path().join("config.json"),
            &wrong.to_hf_json("float32"),
        )
        .unwrap();
        let err = load_dir(dir.path(), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gate_proj.weight") && err.contains("shape"),
            "{err}"
        );
        // A missing tensor is named too.
        let mut more = m.config.clone();
        more.num_hidden_layers += 1;
        write_json_atomic(&dir.path().join("config.json"), &more.to_hf_json("float32")).unwrap();
        let err = load_dir(dir.path(), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.2") && err.contains("missing"),
            "{err}"
        );
    }

    /// A file written before asymmetric int4 stored f32 minima (header version 1, `NAME.zeros`
    /// as U8 zero points) is refused, naming the file and asking to re-quantize; mislabelled as
    /// version 2 it is refused when the weight is read. Its other formats still load.
    #[test]
    fn int4_asym_with_zero_points_is_refused() {
        let (rows, cols) = (2, 64);
        let name = "model.layers.0.mlp.up_proj.weight";
        let raw = |suffix: &str, dtype, width: usize, bytes: Vec<u8>| RawTensor {
            name: format!("{name}.{suffix}"),
            dtype,
            shape: vec![rows, width],
            bytes,
        };
        // What version 1 wrote for int4-asym-g32: codes, f32 scales, u8 zero points.
        let old = [
            raw("qweight", Dtype::U8, cols / 2, vec![0x5a; rows * cols / 2]),
            raw(
                "scales",
                Dtype::F32,
                2,
                [0.5f32; 4].iter().flat_map(|s| s.to_le_bytes()).collect(),
            ),
            raw("zeros", Dtype::U8, 2, vec![8; 4]),
        ];
        let header = |version: u64, format: &str| {
            json!({"version": version,
                   "tensors": {name: {"format": format, "shape": [rows, cols]}},
                   "method": "rtn"})
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let device = Device::flex();

        save_raw(&path, &old, Some(&header(1, "int4-asym-g32"))).unwrap();
        let err = SafetensorsSource::open(std::slice::from_ref(&path), &device)
            .err()
            .expect("a version-1 int4-asym file must be refused")
            .to_string();
        for want in ["model.safetensors", name, ".zeros", "re-quantize"] {
            assert!(err.contains(want), "{want:?} not in: {err}");
        }

        save_raw(&path, &old, Some(&header(2, "int4-asym-g32"))).unwrap();
        let mut source = SafetensorsSource::open(std::slice::from_ref(&path), &device).unwrap();
        let err = source.packed(name, rows, cols).unwrap_err().to_string();
        for want in ["model.safetensors", name, ".zeros", "re-quantize"] {
            assert!(err.contains(want), "{want:?} not in: {err}");
        }

        // Symmetric int4 kept its layout: a version-1 file of it still loads.
        save_raw(&path, &old[..2], Some(&header(1, "int4-sym-g32"))).unwrap();
        let mut source = SafetensorsSource::open(std::slice::from_ref(&path), &device).unwrap();
        let m = source.packed(name, rows, cols).unwrap().unwrap();
        assert_eq!(m.dequantize()[..2], [1.0, -1.5]);
    }
}
