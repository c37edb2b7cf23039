//! `distill quantize` end to end on a tiny random model: every command reads the quantized
//! directory, the packed tensors round-trip exactly, a GGUF export keeps the bits, and the
//! dequantized HF export loads in transformers with our logits.

mod common;

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::gguf::GgufFile;
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::{Layout, LlamaConfig, LlamaForCausalLM};
use distill_quant::PackedMatrix;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TEXT: &str = "Quantization stores each weight in a few bits, with a scale per group. \
    GPTQ corrects the error of each column with the inverse Hessian of the layer inputs. ";

/// A tiny random Llama (hidden 64, so every group size but 128 fits) with a BPE tokenizer.
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("distill-quant-model-{}", std::process::id()));
        let tokenizer = Tokenizer::train_bpe(vec![TEXT.repeat(4)], 300, &[ENDOFTEXT]).unwrap();
        let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 64, 128, 2, 4, 2);
        config.initializer_range = 0.2;
        config.eos_token_id = vec![0];
        let m = ModelDir {
            model: config.init(&Device::flex(), 11),
            config,
            tokenizer: Some(tokenizer),
            generation_config: None,
        };
        checkpoint::save_dir(&dir, &m, SaveOptions::default()).unwrap();
        std::fs::write(dir.join("calib.txt"), TEXT.repeat(40)).unwrap();
        dir
    })
}

fn ok(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("the distill binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "distill {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn logits(model: &LlamaForCausalLM, ids: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), &device);
    let out = model.forward(t, &Layout::causal(1, ids.len()));
    out.into_data().try_to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn perplexity(eval_output: &str) -> f64 {
    let at = eval_output
        .find("perplexity")
        .expect("eval prints a perplexity");
    eval_output[at..]
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no perplexity in {eval_output}"))
}

fn quantize(out: &Path, scheme: &str, method: &str, extra: &[&str]) {
    let calib = tiny_model().join("calib.txt");
    let mut args = vec![
        "quantize",
        s(tiny_model()),
        s(out),
        "--scheme",
        scheme,
        "--method",
        method,
        "--calib",
        s(&calib),
        "--calib-samples",
        "4",
        "--calib-len",
        "48",
    ];
    args.extend_from_slice(extra);
    let printed = ok(&args);
    assert!(printed.contains("14 layers"), "{printed}");
}

#[test]
fn every_command_reads_a_quantized_model() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = tiny_model().join("calib.txt");
    let dense = perplexity(&ok(&[
        "eval",
        s(tiny_model()),
        "--data",
        s(&calib),
        "--window",
        "64",
        "--windows",
        "4",
    ]));
    for (scheme, method, extra) in [
        ("int8", "rtn", &[][..]),
        ("int4-g32", "gptq", &[][..]),
        ("int4-g64", "awq", &["--asym"][..]),
        ("q4_0", "awq+gptq", &[][..]),
        ("q8_0", "gptq", &["--act-order"][..]),
    ] {
        let out = tmp.path().join(format!("{scheme}-{method}"));
        quantize(&out, scheme, method, extra);
        let info = ok(&["info", s(&out)]);
        assert!(
            info.contains("quantized") && info.contains("14 of 14"),
            "{info}"
        );
        let q = perplexity(&ok(&[
            "eval",
            s(&out),
            "--data",
            s(&calib),
            "--window",
            "64",
            "--windows",
            "4",
        ]));
        assert!(
            q.is_finite() && (q / dense - 1.0).abs() < 0.25,
            "{scheme} {method}: perplexity {q} vs dense {dense}"
        );
        let text = ok(&[
            "generate",
            s(&out),
            "--prompt",
            "Quantization stores",
            "--max-tokens",
            "6",
        ]);
        assert!(text.starts_with("Quantization stores"), "{text}");
    }
}

#[test]
fn packed_weights_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    quantize(&a, "int4-g32", "gptq", &["--asym"]);
    let device = Device::flex();
    let first = checkpoint::load_dir(&a, &device).unwrap();
    checkpoint::save_dir(&b, &first, SaveOptions::default()).unwrap();
    let second = checkpoint::load_dir(&b, &device).unwrap();
    let (pa, pb) = (first.model.packed_weights(), second.model.packed_weights());
    assert_eq!(pa.len(), 14);
    assert_eq!(pa, pb);
    let ids = [1u32, 5, 9, 3, 7];
    assert_eq!(logits(&first.model, &ids), logits(&second.model, &ids));
}

#[test]
fn gguf_export_keeps_the_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    for scheme in ["q8_0", "q4_0", "q4_1"] {
        let dir = tmp.path().join(scheme);
        quantize(&dir, scheme, "gptq", &[]);
        let gguf = tmp.path().join(format!("{scheme}.gguf"));
        let printed = ok(&["convert", s(&dir), s(&gguf)]);
        assert!(printed.contains(scheme), "{printed}");
        let m = checkpoint::load_dir(&dir, &device).unwrap();
        let file = GgufFile::open(&gguf).unwrap();
        for (hf, gg) in [
            (
                "model.layers.0.mlp.down_proj.weight",
                "blk.0.ffn_down.weight",
            ),
            (
                "model.layers.1.self_attn.v_proj.weight",
                "blk.1.attn_v.weight",
            ),
        ] {
            let (_, p) = m
                .model
                .packed_weights()
                .into_iter()
                .find(|(n, _)| n == hf)
                .unwrap();
            let PackedMatrix::Ggml(g) = p else {
                panic!("{hf} is not a GGML matrix")
            };
            let info = file.tensor(gg).unwrap();
            assert_eq!(info.ggml_type, g.ty(), "{scheme} {gg}");
            assert_eq!(
                file.tensor_bytes(info),
                g.data(),
                "{scheme} {gg}: bytes differ"
            );
        }
        // The whole model, q/k rows permuted for llama.cpp included, reads back as the same model.
        let back = distill_model::load::load_model(&gguf, &device).unwrap();
        // More tokens than the CPU kernels' small-batch path takes, which rounds activations.
        let ids: Vec<u32> = (0..distill_quant::cpu::SMALL_BATCH as u32 + 8)
            .map(|i| 2 * i + 2)
            .collect();
        let d = max_diff(&logits(&m.model, &ids), &logits(&back.model, &ids));
        assert!(d < 1e-4, "{scheme}: GGUF logits differ by {d}");
    }
}

#[test]
fn dequantized_hf_export_loads_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, hf) = (tmp.path().join("q"), tmp.path().join("hf"));
    quantize(&q, "int4-g64", "gptq", &[]);
    let printed = ok(&["convert", s(&q), s(&hf)]);
    assert!(printed.contains("f16, dequantized"), "{printed}");
    let device = Device::flex();
    let packed = checkpoint::load_dir(&q, &device).unwrap();
    let export = checkpoint::load_dir(&hf, &device).unwrap();
    assert!(export.model.packed_weights().is_empty());
    let ids: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % 200).collect();
    let ours = logits(&export.model, &ids);
    // f16 rounding of the dequantized weights is all that separates the two.
    let d = max_diff(&logits(&packed.model, &ids), &ours);
    assert!(d < 2e-2, "f16 export moves logits by {d}");
    let reference = tmp.path().join("reference.safetensors");
    let vocab = export.config.vocab_size;
    let ids_f: Vec<u8> = ids.iter().flat_map(|&i| (i as i64).to_le_bytes()).collect();
    let mask: Vec<u8> = ids.iter().flat_map(|_| 1i64.to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = ours.iter().flat_map(|v| v.to_le_bytes()).collect();
    let n = ids.len();
    let views = vec![
        (
            "input_ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, n], &ids_f)
                .unwrap(),
        ),
        (
            "attention_mask",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1, n], &mask)
                .unwrap(),
        ),
        (
            "logits",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![1, n, vocab],
                &logit_bytes,
            )
            .unwrap(),
        ),
    ];
    std::fs::write(&reference, safetensors::serialize(views, None).unwrap()).unwrap();
    let report = common::run_python("check_logits.py", &[s(&hf), s(&reference), "--tol", "1e-4"]);
    println!("{report}");
}
