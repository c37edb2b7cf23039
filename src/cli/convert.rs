//! `distill convert IN OUT [--dtype ...]`: between an HF model directory and a GGUF file,
//! either way; OUT's extension chooses the format.

use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use clap::Args;
use distill_model::checkpoint::{self, SaveOptions, StoreDtype};
use distill_model::gguf::{self, GgufDtype};
use std::path::PathBuf;

#[derive(Args)]
pub struct ConvertArgs {
    /// An HF model directory (dense or quantized) or a GGUF file.
    input: PathBuf,
    /// A `.gguf` file, or an HF model directory for anything else.
    output: PathBuf,
    /// Stored type: f32, f16, q8_0, q4_0 or q4_1 for GGUF (quantized types apply to the weight
    /// matrices); f32, f16 or bf16 for an HF directory. Default: f32 for a dense model; for a
    /// quantized one, its own GGML type in GGUF (the bits are kept) and f16 in an HF directory
    /// (dequantized, for tools that read float checkpoints).
    #[arg(long)]
    dtype: Option<String>,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    // Conversion is host work: the CPU backend holds the weights in between.
    let m = super::load_model(&args.input, &Device::flex())?;
    let out = args.output.display();
    let packed = !m.model.packed_weights().is_empty();
    let written = if super::is_gguf(&args.output) {
        let dtype: GgufDtype = match &args.dtype {
            Some(d) => d.parse().map_err(|e| anyhow::anyhow!("--dtype: {e}"))?,
            None => gguf::packed_file_type(&m).unwrap_or(if packed {
                GgufDtype::F16
            } else {
                GgufDtype::F32
            }),
        };
        gguf::save(&args.output, &m, dtype).with_context(|| format!("cannot write {out}"))?;
        dtype.to_string()
    } else {
        let name = args
            .dtype
            .as_deref()
            .unwrap_or(if packed { "f16" } else { "f32" });
        let dtype: StoreDtype = match name.parse() {
            Ok(d) => d,
            Err(_) => bail!(
                "--dtype {name}: an HF directory stores f32, f16 or bf16; quantized types are for GGUF"
            ),
        };
        let options = SaveOptions {
            dtype,
            dequantize: true,
            ..SaveOptions::default()
        };
        checkpoint::save_dir(&args.output, &m, options)
            .with_context(|| format!("cannot write {out}"))?;
        if packed {
            format!("{name}, dequantized")
        } else {
            name.to_string()
        }
    };
    println!("{} -> {out} ({written})", args.input.display());
    Ok(())
}
