//! Helpers shared by the integration tests: the Python reference environment and tensor
//! comparisons.

#![allow(dead_code)]

use burn::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Python with transformers and torch: `DISTILL_PYTHON`, else the venv that
/// `scripts/test` creates. The parity tests fail (not skip) without it.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("DISTILL_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = Path::new(&home).join(".cache/distill-venv/bin/python");
    assert!(
        venv.is_file(),
        "no Python reference environment: run `scripts/test` (it creates {}) or set DISTILL_PYTHON",
        venv.display()
    );
    venv
}

/// Runs a script of `tests/hf` with the reference Python; panics with its output on failure.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = manifest_dir().join("tests/hf").join(script);
    let out = Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// The package's directory: cargo's runtime `CARGO_MANIFEST_DIR` (right even when the test
/// binary was built in another checkout sharing the target folder), else the build's.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The HF fixtures (tiny random models with reference outputs), built once per test binary.
pub fn hf_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("distill-hf-fixtures-{}", std::process::id()));
        run_python("make_fixtures.py", &[dir.to_str().expect("utf-8 temp dir")]);
        dir
    })
}

/// A tensor of a reference file as `(shape, f32 values)`; integer tensors are converted.
pub fn read_reference(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let data = t.data();
    let values = match t.dtype() {
        safetensors::Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    };
    (t.shape().to_vec(), values)
}

/// Integer ids of a reference tensor as a `[batch, seq]` tensor plus host copies.
pub fn ids_tensor(values: &[f32], shape: &[usize], device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
}

/// Largest |a - b| over the rows (of width `width`) where `keep[row]` holds.
pub fn max_diff_rows(a: &[f32], b: &[f32], width: usize, keep: &[bool]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.chunks(width)
        .zip(b.chunks(width))
        .zip(keep)
        .filter(|(_, k)| **k)
        .flat_map(|((x, y), _)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}
