//! `distill info MODEL`: architecture, parameters, bytes, dtype and shape per tensor.

use anyhow::{Context, Result, bail};
use distill_model::LlamaConfig;
use distill_model::checkpoint::{self, SafetensorsSource};
use distill_model::gguf::{self, GgufFile};
use serde_json::Value;
use std::path::Path;

/// Prints what MODEL (an HF model directory or a GGUF file) holds, without loading weights.
pub fn run(model: &Path) -> Result<()> {
    if !model.exists() {
        bail!("{}: no such model directory or GGUF file", model.display());
    }
    let mut rows = Vec::new();
    let mut quantized = None;
    let (config, bytes) = if super::is_gguf(model) {
        let file = GgufFile::open(model)?;
        let config = gguf::read_config(&file)?;
        for t in file.tensors() {
            rows.push((t.name.clone(), format!("{:?}", t.ggml_type), t.shape()));
        }
        let bytes = std::fs::metadata(model)
            .with_context(|| model.display().to_string())?
            .len();
        (config, bytes)
    } else {
        let config = LlamaConfig::from_file(&model.join("config.json"))?;
        let mut bytes = 0u64;
        let files = SafetensorsSource::dir_files(model)?;
        if let Some(h) = checkpoint::quantization_header(&files[0])? {
            quantized = Some(h);
        }
        for path in files {
            bytes += std::fs::metadata(&path)
                .with_context(|| path.display().to_string())?
                .len();
            for (name, dtype, shape) in checkpoint::tensor_infos(&path)? {
                rows.push((name, format!("{dtype:?}"), shape));
            }
        }
        (config, bytes)
    };
    println!("architecture  {}", config.architecture.hf_class());
    println!(
        "shape         {} layers, hidden {}, ffn {}, {} heads / {} kv heads, head_dim {}, vocab {}",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.vocab_size
    );
    println!("parameters    {}", config.num_parameters());
    println!("bytes         {bytes}");
    if let Some(h) = quantized {
        println!("quantized     {}", describe_quantization(&h, &config));
    }
    rows.sort();
    for (name, dtype, shape) in rows {
        println!("  {name:<50} {dtype:<5} {shape:?}");
    }
    Ok(())
}

/// `int4-sym-g64 via gptq: 210 of 210 linear layers, calibrated on FILE (32 x 512 tokens)`.
fn describe_quantization(h: &Value, config: &LlamaConfig) -> String {
    let text = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let packed = h
        .get("tensors")
        .and_then(Value::as_object)
        .map_or(0, |t| t.len());
    let linears = 7 * config.num_hidden_layers + usize::from(!config.tie_word_embeddings);
    let mut out = format!(
        "{} via {}: {packed} of {linears} linear layers",
        text("scheme"),
        text("method")
    );
    if let Some(c) = h.get("calibration") {
        let n = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
        out += &format!(
            ", calibrated on {} ({} x {} tokens)",
            c.get("file").and_then(Value::as_str).unwrap_or("?"),
            n("samples"),
            n("length")
        );
    }
    out
}
