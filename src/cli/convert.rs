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
    /// An HF model directory or a GGUF file.
    input: PathBuf,
    /// A `.gguf` file, or an HF model directory for anything else.
    output: PathBuf,
    /// Stored type: f32, f16, q8_0, q4_0 or q4_1 for GGUF (quantized types apply to the weight
    /// matrices); f32, f16 or bf16 for an HF directory.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    // Conversion is host work: the CPU backend holds the f32 weights in between.
    let m = super::load_model(&args.input, &Device::flex())?;
    let out = args.output.display();
    if super::is_gguf(&args.output) {
        let dtype: GgufDtype = args
            .dtype
            .parse()
            .map_err(|e| anyhow::anyhow!("--dtype: {e}"))?;
        gguf::save(&args.output, &m, dtype).with_context(|| format!("cannot write {out}"))?;
    } else {
        let dtype: StoreDtype = match args.dtype.parse() {
            Ok(d) => d,
            Err(_) => bail!(
                "--dtype {}: an HF directory stores f32, f16 or bf16; quantized types are for GGUF",
                args.dtype
            ),
        };
        let options = SaveOptions {
            dtype,
            ..SaveOptions::default()
        };
        checkpoint::save_dir(&args.output, &m, options)
            .with_context(|| format!("cannot write {out}"))?;
    }
    println!(
        "{} -> {out} ({})",
        args.input.display(),
        args.dtype.to_lowercase()
    );
    Ok(())
}
