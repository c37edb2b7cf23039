//! Byte-for-byte comparison with the Python `gguf` package.
//!
//! Runs `tests/gguf_reference.py` with the Python of `$DISTILL_PYTHON`
//! (default `$HOME/.cache/distill-venv/bin/python`, which must have the
//! `gguf` package installed) into a temporary directory, then checks for
//! every case and type that our quantized bytes equal `gguf.quants.quantize`
//! and that our dequantization of them equals `gguf.quants.dequantize`, bit
//! for bit.

use std::path::{Path, PathBuf};
use std::process::Command;

use distill_quant::{GgmlType, dequantize_matrix, quantize_matrix};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("DISTILL_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set; set DISTILL_PYTHON");
    PathBuf::from(home).join(".cache/distill-venv/bin/python")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Describes the first differing block, for a useful failure message.
fn first_block_diff(
    ty: GgmlType,
    cols: usize,
    ours: &[u8],
    theirs: &[u8],
    input: &[f32],
) -> String {
    let ts = ty.type_size();
    let bs = ty.block_size();
    let blocks_per_row = cols / bs;
    let i = ours
        .chunks(ts)
        .zip(theirs.chunks(ts))
        .position(|(a, b)| a != b)
        .unwrap_or(0);
    let (r, b) = (i / blocks_per_row, i % blocks_per_row);
    let x = &input[r * cols + b * bs..r * cols + (b + 1) * bs];
    format!(
        "first differing block: row {r} block {b}\n  input  {x:?}\n  ours   {:02x?}\n  gguf   {:02x?}",
        &ours[i * ts..(i + 1) * ts],
        &theirs[i * ts..(i + 1) * ts]
    )
}

#[test]
fn gguf_blocks_match_python_gguf_package() {
    let py = python();
    assert!(
        py.exists(),
        "Python not found at {}: set DISTILL_PYTHON to a Python with the `gguf` \
         package (pip install gguf==0.19.0 numpy)",
        py.display()
    );
    let script = manifest_dir().join("tests/gguf_reference.py");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", py.display(), script.display()));
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}",
        py.display(),
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let manifest = std::fs::read_to_string(dir.path().join("manifest.txt")).expect("manifest");
    let mut lines = manifest.lines();
    let versions = lines.next().expect("version line");
    eprintln!("reference: {versions}");

    let mut checked = 0;
    let mut n_cases = 0;
    let mut failures = Vec::new();
    for line in lines {
        n_cases += 1;
        let mut f = line.split_whitespace();
        let name = f.next().expect("case name");
        let rows: usize = f.next().and_then(|s| s.parse().ok()).expect("rows");
        let cols: usize = f.next().and_then(|s| s.parse().ok()).expect("cols");
        let input = read_f32(&dir.path().join(format!("{name}.f32")));
        assert_eq!(input.len(), rows * cols, "{name}");
        for ty in GgmlType::ALL {
            let theirs = std::fs::read(dir.path().join(format!("{name}.{ty}.q"))).expect("q");
            let their_deq = read_f32(&dir.path().join(format!("{name}.{ty}.deq")));
            let ours = quantize_matrix(ty, &input, rows, cols).expect("quantize");
            if ours != theirs {
                failures.push(format!(
                    "{name} {ty}: quantized bytes differ\n{}",
                    first_block_diff(ty, cols, &ours, &theirs, &input)
                ));
                continue;
            }
            let our_deq = dequantize_matrix(ty, &theirs, rows, cols).expect("dequantize");
            if let Some(i) = our_deq
                .iter()
                .zip(&their_deq)
                .position(|(a, b)| a.to_bits() != b.to_bits())
            {
                failures.push(format!(
                    "{name} {ty}: dequantized value {i} differs: ours {} gguf {}",
                    our_deq[i], their_deq[i]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(n_cases >= 40, "only {n_cases} cases in the manifest");
    assert_eq!(checked, n_cases * GgmlType::ALL.len());
    eprintln!("{checked} case/type pairs identical to gguf.quants");
}

/// The package's directory: cargo's runtime `CARGO_MANIFEST_DIR` (right even when the test
/// binary was built in another checkout sharing the target folder), else the build's.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        std::path::PathBuf::from,
    )
}
