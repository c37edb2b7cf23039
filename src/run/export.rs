//! A student as a vertical-domain model folder: the Hugging Face layout (weights, config,
//! tokenizer with its chat template, generation config), GGUF files carrying the tokenizer and
//! chat template, and a model card stating where the model came from and what it measured.

use anyhow::{Context, Result};
use distill_model::checkpoint::{self, ModelDir, SaveOptions, StoreDtype};
use distill_model::fsutil::write_bytes_atomic;
use distill_model::gguf::{self, GgufDtype};
use serde_json::{Value, json};
use std::fmt::Write;
use std::path::Path;

/// What the model card says besides the results: the run and the model's lineage.
pub struct Card<'a> {
    /// The model's name.
    pub name: &'a str,
    /// The run's label.
    pub title: &'a str,
    /// The recipe file and its SHA-256.
    pub recipe: (&'a Path, &'a str),
    /// The teacher's name, path and SHA-256.
    pub teacher: (&'a str, &'a Path, &'a str),
    /// Data files: role, path, SHA-256.
    pub data: Vec<(&'a str, &'a Path, String)>,
    /// How the model was made, one line per stage.
    pub lineage: Vec<String>,
    /// The model's evaluation and speed, as the run measured them.
    pub results: Value,
}

/// Writes `m` into `out`: the HF layout (float students in f32; quantized students
/// dequantized to f16, for tools that read only float checkpoints), GGUF files (a float
/// student in each of `gguf_types`; a quantized student in its own type, its packed layers
/// byte for byte, so the file holds exactly the bits that were evaluated) and `README.md`.
/// Returns what was written.
pub fn export(m: &ModelDir, out: &Path, gguf_types: &[GgufDtype], card: &Card) -> Result<Value> {
    let packed = !m.model.packed_weights().is_empty();
    let options = SaveOptions {
        dtype: if packed {
            StoreDtype::F16
        } else {
            StoreDtype::F32
        },
        dequantize: true,
        ..SaveOptions::default()
    };
    checkpoint::save_dir(out, m, options)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let mut ggufs = Vec::new();
    let mut note = None;
    let types: Vec<GgufDtype> = if packed {
        match gguf::packed_file_type(m) {
            Some(t) => vec![t],
            None => {
                note = Some(
                    "no GGUF file: its int8/int4 layers have no llama.cpp type that holds the same bits"
                        .to_string(),
                );
                Vec::new()
            }
        }
    } else {
        gguf_types.to_vec()
    };
    for t in types {
        let file = format!("{}.{t}.gguf", card.name);
        let path = out.join(&file);
        gguf::save(&path, m, t).with_context(|| format!("cannot write {}", path.display()))?;
        ggufs.push(file);
    }
    let readme = model_card(m, card, packed, &ggufs, note.as_deref());
    let path = out.join("README.md");
    write_bytes_atomic(&path, readme.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(json!({
        "dir": out.display().to_string(),
        "hf_dtype": if packed { "f16 (dequantized)" } else { "f32" },
        "gguf": ggufs,
        "note": note,
    }))
}

/// The model card: a Hugging Face README with front matter.
fn model_card(
    m: &ModelDir,
    c: &Card,
    packed: bool,
    ggufs: &[String],
    note: Option<&str>,
) -> String {
    let mut s = String::new();
    let (teacher, teacher_path, teacher_sha) = c.teacher;
    let _ = writeln!(
        s,
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n- distill\n- knowledge-distillation\n---\n"
    );
    let _ = writeln!(s, "# {}\n", c.name);
    let _ = writeln!(
        s,
        "A domain student made by `distill run {}` (run \"{}\") from the teacher `{teacher}`.\n",
        c.recipe.0.display(),
        c.title
    );
    let cfg = &m.config;
    let _ = writeln!(
        s,
        "- Architecture: {:?}, {} layers, hidden {}, MLP {}, {} query / {} KV heads, vocabulary {}, {} parameters.",
        cfg.architecture,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        cfg.num_parameters()
    );
    let _ = writeln!(
        s,
        "- Files: `model.safetensors` ({}), {}.",
        if packed {
            "quantized weights dequantized to f16, for tools that read float checkpoints"
        } else {
            "f32"
        },
        if ggufs.is_empty() {
            note.unwrap_or("no GGUF file").to_string()
        } else {
            ggufs
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if packed {
        let _ = writeln!(
            s,
            "- The GGUF file holds the quantized layers exactly as they were evaluated."
        );
    }
    let _ = writeln!(s, "\n## How it was made\n");
    for line in &c.lineage {
        let _ = writeln!(s, "1. {line}");
    }
    let _ = writeln!(
        s,
        "\n## Provenance\n\n| what | file | sha256 |\n|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| recipe | `{}` | `{}` |",
        c.recipe.0.display(),
        c.recipe.1
    );
    let _ = writeln!(
        s,
        "| teacher | `{}` | `{teacher_sha}` |",
        teacher_path.display()
    );
    for (role, path, sha) in &c.data {
        let _ = writeln!(s, "| {role} | `{}` | `{sha}` |", path.display());
    }
    let _ = writeln!(s, "\n## Results\n\nAs the run measured them:\n\n```json");
    let _ = writeln!(
        s,
        "{}",
        serde_json::to_string_pretty(&c.results).unwrap_or_default()
    );
    let _ = writeln!(s, "```");
    s
}
