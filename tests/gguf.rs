//! GGUF interoperability on the tiny HF fixtures (`tests/hf/make_fixtures.py`): our files read by
//! llama.cpp's Python `gguf` package (`tests/hf/read_gguf.py`) and by HF transformers
//! (`tests/hf/compare_gguf_logits.py`), and read back by our loader. An ignored test checks the
//! real SmolLM2-135M-Instruct Q4_1 file when `assets/` has it.

mod common;

use burn::prelude::*;
use common::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::generate::{GenerateConfig, generate};
use distill_model::gguf::{self, GgmlType, GgufDtype, GgufFile};
use distill_model::sample::SamplingConfig;
use distill_model::{Layout, LlamaForCausalLM};
use serde_json::Value;
use std::path::Path;

const CASES: [&str; 3] = ["llama_tied_gqa", "llama_untied_bias", "qwen2"];
const TEXTS: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing  \n\nnew lines\tand tabs ",
    "Numbers 12345 and 3.14159, dates 2024-06-01!",
    "<|im_start|>user\nHello there?<|im_end|>\n<|im_start|>assistant\n",
    "Ünïcödé: 日本語のテキスト, emoji 🦀 and ¿qué?",
    "don't can't WON'T it's I'm we'll they'd",
];

fn logits_of(model: &LlamaForCausalLM, ids: &[u32]) -> Vec<f32> {
    let device = Device::flex();
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    model
        .forward(input, &Layout::causal(1, n))
        .into_data()
        .try_to_vec()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The JSON line a script printed.
fn json_line(output: &str) -> Value {
    let line = output
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in:\n{output}"));
    serde_json::from_str(line).unwrap()
}

/// The first (unpadded, 72-token) row of a fixture's reference batch and its logits.
fn reference_row(dir: &Path) -> (Vec<u32>, Vec<f32>) {
    let reference = dir.join("reference.safetensors");
    let (shape, ids) = read_reference(&reference, "input_ids");
    let (_, logits) = read_reference(&reference, "logits");
    let s = shape[1];
    let v = logits.len() / (shape[0] * s);
    let ids = ids[..s].iter().map(|&x| x as u32).collect();
    (ids, logits[..s * v].to_vec())
}

/// transformers' logits for `ids` on a GGUF file, and its tokenization of `texts`.
fn transformers_on(gguf: &Path, ids: &[u32], texts: &[&str]) -> (Vec<f32>, Vec<Vec<u32>>) {
    let tmp = tempfile::tempdir().unwrap();
    let ids_path = tmp.path().join("ids.json");
    let texts_path = tmp.path().join("texts.json");
    let out = tmp.path().join("logits.safetensors");
    std::fs::write(&ids_path, serde_json::to_string(&[ids]).unwrap()).unwrap();
    std::fs::write(&texts_path, serde_json::to_string(texts).unwrap()).unwrap();
    let report = run_python(
        "compare_gguf_logits.py",
        &[
            gguf.to_str().unwrap(),
            ids_path.to_str().unwrap(),
            out.to_str().unwrap(),
            texts_path.to_str().unwrap(),
        ],
    );
    let tokens = serde_json::from_value(json_line(&report)["ids"].clone()).unwrap();
    (read_reference(&out, "logits").1, tokens)
}

/// Every tensor of our file, dequantized by the `gguf` package, equals ours bit for bit; the
/// metadata it reads is what we wrote.
fn python_reads_the_same(path: &Path, m: &ModelDir, dtype: GgufDtype) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tensors.safetensors");
    let report = json_line(&run_python(
        "read_gguf.py",
        &[path.to_str().unwrap(), out.to_str().unwrap()],
    ));
    let md = &report["metadata"];
    let arch = m.config.architecture.model_type();
    assert_eq!(report["version"], 3);
    assert_eq!(md["general.architecture"], arch);
    assert_eq!(md["general.file_type"], dtype.file_type());
    assert_eq!(md["general.alignment"], 32);
    assert_eq!(
        md[format!("{arch}.block_count")],
        m.config.num_hidden_layers
    );
    assert_eq!(
        md[format!("{arch}.attention.key_length")],
        m.config.head_dim
    );
    assert_eq!(md["tokenizer.ggml.model"], "gpt2");
    assert_eq!(md["tokenizer.ggml.pre"], "gpt2");
    assert_eq!(md["tokenizer.ggml.tokens"]["len"], m.config.vocab_size);
    assert_eq!(md["tokenizer.ggml.eos_token_id"], 2);
    assert!(
        md["tokenizer.chat_template"]
            .as_str()
            .unwrap()
            .contains("im_start")
    );

    let file = GgufFile::open(path).unwrap();
    let infos = report["tensors"].as_object().unwrap();
    assert_eq!(infos.len(), file.tensors().len());
    for t in file.tensors() {
        let info = &infos[&t.name];
        assert_eq!(info["type"], t.ggml_type.name(), "{}", t.name);
        assert_eq!(info["dims"], serde_json::json!(t.dims), "{}", t.name);
        let (shape, theirs) = read_reference(&out, &t.name);
        assert_eq!(shape, t.shape(), "{}", t.name);
        let ours = file.dequantize(t).unwrap();
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{dtype} {}: the gguf package dequantizes other values",
            t.name
        );
    }
}

#[test]
fn fixtures_round_trip_through_python_gguf_and_our_loader() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    for case in CASES {
        let dir = hf_fixtures().join(case);
        let m = checkpoint::load_dir(&dir, &device).unwrap();
        let (ids, reference) = reference_row(&dir);
        let source = logits_of(&m.model, &ids);
        for dtype in GgufDtype::ALL {
            let path = tmp.path().join(format!("{case}-{dtype}.gguf"));
            gguf::save(&path, &m, dtype).unwrap();
            python_reads_the_same(&path, &m, dtype);

            let back = gguf::load(&path, &device).unwrap();
            let mut config = back.config.clone();
            config.initializer_range = m.config.initializer_range;
            assert_eq!(config, m.config, "{case} {dtype}");
            let logits = logits_of(&back.model, &ids);
            let vs_source = max_diff(&logits, &source);
            let vs_transformers = max_diff(&logits, &reference);
            println!(
                "{case} {dtype}: |Δlogits| vs the source model {vs_source:.2e}, \
                 vs transformers' HF reference {vs_transformers:.2e}"
            );
            match dtype {
                GgufDtype::F32 => {
                    assert_eq!(vs_source, 0.0, "{case}: F32 weights must come back exactly");
                    assert!(vs_transformers <= 1e-4, "{case}: {vs_transformers}");
                }
                GgufDtype::F16 => assert!(vs_source <= 2e-2, "{case}: {vs_source}"),
                _ => assert!(vs_source.is_finite()),
            }
            let (tok, orig) = (back.tokenizer.unwrap(), m.tokenizer.as_ref().unwrap());
            for text in TEXTS {
                assert_eq!(
                    tok.encode(text).unwrap(),
                    orig.encode(text).unwrap(),
                    "{text}"
                );
            }
            assert_eq!(tok.chat_template, orig.chat_template);
        }
    }
}

/// transformers loads our files: same logits as our loader on the same file (which checks the
/// query/key permutation both ways: Llama is permuted, Qwen2 not) and the same token ids.
#[test]
fn transformers_loads_our_gguf() {
    let device = Device::flex();
    let tmp = tempfile::tempdir().unwrap();
    // transformers' GGUF config for llama has no `attention_bias`, so `llama_untied_bias`
    // cannot load there.
    for (case, dtype) in [
        ("llama_tied_gqa", GgufDtype::F32),
        ("llama_tied_gqa", GgufDtype::Q4_1),
        ("qwen2", GgufDtype::Q8_0),
    ] {
        let dir = hf_fixtures().join(case);
        let m = checkpoint::load_dir(&dir, &device).unwrap();
        let path = tmp.path().join(format!("{case}.gguf"));
        gguf::save(&path, &m, dtype).unwrap();
        let back = gguf::load(&path, &device).unwrap();
        let (ids, _) = reference_row(&dir);
        let ours = logits_of(&back.model, &ids);
        let (theirs, their_ids) = transformers_on(&path, &ids, &TEXTS);
        let diff = max_diff(&ours, &theirs);
        println!("{case} {dtype}: transformers on our GGUF, max |Δlogits| = {diff:.2e}");
        assert!(diff <= 1e-4, "{case} {dtype}: {diff}");
        let tok = back.tokenizer.unwrap();
        for (text, want) in TEXTS.iter().zip(their_ids) {
            assert_eq!(tok.encode(text).unwrap(), want, "{case}: {text:?}");
        }
    }
}

/// The real SmolLM2-135M-Instruct Q4_1 file (not in CI): per-position logits equal
/// transformers' within 1e-3, greedy decoding of "The capital of France is" says " Paris", and
/// GGUF → HF directory → GGUF gives the same tensor bytes and logits.
#[test]
#[ignore = "needs assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-assets)"]
fn smollm2_q4_1_matches_transformers() {
    let path = manifest_dir().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!("skipped: {} is missing", path.display());
        return;
    }
    let device = Device::flex();
    let m = gguf::load(&path, &device).unwrap();
    let tok = m.tokenizer.as_ref().unwrap();
    assert_eq!(m.config.num_hidden_layers, 30);
    assert!(m.config.tie_word_embeddings);

    let prompt = "The capital of France is";
    let text = "The capital of France is Paris. It is known for the Eiffel Tower, built in 1889, \
                and for its museums; the Louvre holds the Mona Lisa.";
    let ids = tok.encode(text).unwrap();
    let mut texts = TEXTS.to_vec();
    texts.push(prompt);
    let (theirs, their_ids) = transformers_on(&path, &ids, &texts);
    for (text, want) in texts.iter().zip(&their_ids) {
        assert_eq!(&tok.encode(text).unwrap(), want, "{text:?}");
    }
    let ours = logits_of(&m.model, &ids);
    let diff = max_diff(&ours, &theirs);
    println!(
        "SmolLM2 Q4_1: {} positions, max |Δlogits| vs transformers = {diff:.3e}",
        ids.len()
    );
    assert!(diff <= 1e-3, "{diff}");

    let config = GenerateConfig {
        max_new_tokens: 3,
        stop_tokens: m.config.eos_token_id.clone(),
        sampling: SamplingConfig::default(),
    };
    let prompt_ids = tok.encode(prompt).unwrap();
    let new = generate(&m.model, &[prompt_ids], &config, &device);
    let continuation = tok.decode(&new[0]).unwrap();
    println!("greedy: {prompt:?} → {continuation:?}");
    assert!(continuation.starts_with(" Paris"), "{continuation:?}");

    // GGUF → HF directory → GGUF.
    let tmp = tempfile::tempdir().unwrap();
    checkpoint::save_dir(tmp.path(), &m, SaveOptions::default()).unwrap();
    let hf = checkpoint::load_dir(tmp.path(), &device).unwrap();
    let again = tmp.path().join("again.gguf");
    gguf::save(&again, &hf, GgufDtype::Q4_1).unwrap();
    let (a, b) = (
        GgufFile::open(&path).unwrap(),
        GgufFile::open(&again).unwrap(),
    );
    assert_eq!(a.tensors().len(), b.tensors().len());
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!((t.ggml_type, &t.dims), (u.ggml_type, &u.dims), "{}", t.name);
        assert!(
            a.tensor_bytes(t) == b.tensor_bytes(u),
            "{}: bytes differ",
            t.name
        );
    }
    let back = gguf::load(&again, &device).unwrap();
    let diff = max_diff(&logits_of(&back.model, &ids), &ours);
    println!("SmolLM2: GGUF → HF dir → GGUF, max |Δlogits| = {diff:e}");
    assert_eq!(diff, 0.0);
    let meta = |f: &GgufFile, k: &str| f.get(k).cloned();
    for key in [
        "tokenizer.ggml.pre",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.chat_template",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        assert_eq!(meta(&a, key), meta(&b, key), "{key}");
    }
}

/// Real weights: SmolLM2's tensors (dequantized from its GGUF) quantized to Q8_0, Q4_0 and Q4_1
/// by us and by the `gguf` package give the same bytes.
#[test]
#[ignore = "needs assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-assets)"]
fn smollm2_weights_quantize_like_the_gguf_package() {
    let path = manifest_dir().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.is_file() {
        println!("skipped: {} is missing", path.display());
        return;
    }
    let file = GgufFile::open(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0usize;
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.7.ffn_down.weight",
        "blk.29.ffn_gate.weight",
    ] {
        let info = file.tensor(name).unwrap();
        let shape = info.shape();
        let cols = shape[shape.len() - 1];
        let values = file.dequantize(info).unwrap();
        // The embedding is large: its first 4096 rows are plenty.
        let rows = (values.len() / cols).min(4096);
        let values = &values[..rows * cols];
        let input = tmp.path().join("w.f32");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&input, bytes).unwrap();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let out = tmp.path().join(format!("w.{ty}"));
            common::run_python(
                "quantize_rows.py",
                &[
                    input.to_str().unwrap(),
                    &rows.to_string(),
                    &cols.to_string(),
                    &ty.to_string(),
                    out.to_str().unwrap(),
                ],
            );
            let theirs = std::fs::read(&out).unwrap();
            let ours = distill_quant::quantize_matrix(ty, values, rows, cols).unwrap();
            assert!(
                ours == theirs,
                "{name} as {ty}: bytes differ from gguf.quants.quantize"
            );
            checked += rows * cols;
        }
    }
    println!(
        "SmolLM2 real weights: {checked} values quantized to Q8_0/Q4_0/Q4_1, bytes equal to gguf.quants.quantize"
    );
}
