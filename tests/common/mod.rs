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

/// Renders a benchmark report's HTML page in headless Chromium (`scripts/render-html`) and
/// checks the screenshot is not blank: many non-white pixels and colours, and the chart's
/// teacher-blue and student-red markers. Skips, saying so, only where Chromium is absent (CI
/// installs it).
pub fn assert_html_renders(html: &Path) {
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("skipped: no /usr/bin/chromium (Debian: apt-get install chromium)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("report.png");
    let script = manifest_dir().join("scripts/render-html");
    let out = Command::new(&script).arg(html).arg(&png).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 1600));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    let colours: std::collections::HashSet<_> = pixels.iter().collect();
    let count = |c: [u8; 3]| pixels.iter().filter(|p| **p == c).count();
    let (teacher, student) = (count([31, 119, 180]), count([214, 39, 40]));
    assert!(
        non_white > pixels.len() / 50,
        "nearly blank: {non_white} non-white pixels"
    );
    assert!(colours.len() > 16, "only {} colours", colours.len());
    // Filled markers 12 px across (and the legend's swatches): the chart was drawn.
    assert!(
        teacher > 50 && student > 100,
        "markers missing: {teacher} blue, {student} red"
    );
}
