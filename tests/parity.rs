//! Parity with HF transformers on tiny random models (Llama with GQA and tied embeddings;
//! Llama with biases, untied embeddings and head_dim ≠ hidden/heads; Qwen2), built by
//! `tests/hf/make_fixtures.py`. Tolerance: max |Δlogit| ≤ 1e-4 at every real token.

mod common;

use burn::prelude::*;
use common::*;
use distill_model::checkpoint::{self, SaveOptions};
use distill_model::{Layout, LlamaForCausalLM};

const TOL: f32 = 1e-4;
const CASES: [&str; 3] = ["llama_tied_gqa", "llama_untied_bias", "qwen2"];

fn logits_vec(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn full_forward(case: &str) {
    let device = Device::flex();
    let dir = hf_fixtures().join(case);
    let reference = dir.join("reference.safetensors");
    let m = checkpoint::load_dir(&dir, &device).unwrap();
    let (shape, ids) = read_reference(&reference, "input_ids");
    let (_, mask) = read_reference(&reference, "attention_mask");
    let (_, expected) = read_reference(&reference, "logits");
    let mask: Vec<bool> = mask.iter().map(|&m| m > 0.5).collect();
    let (b, s) = (shape[0], shape[1]);
    assert!(s >= 64, "sequences of at least 64 tokens");
    assert!(mask.iter().any(|m| !m), "the batch must contain padding");
    let layout = Layout::from_mask(b, s, &mask);
    let logits = m.model.forward(ids_tensor(&ids, &shape, &device), &layout);
    let got = logits_vec(logits);
    let diff = max_diff_rows(&got, &expected, m.config.vocab_size, &mask);
    println!("{case}: full forward max |Δ| = {diff:e}");
    assert!(diff <= TOL, "{case}: full forward differs by {diff}");
}

fn kv_cache_decoding(case: &str) {
    let device = Device::flex();
    let dir = hf_fixtures().join(case);
    let reference = dir.join("reference.safetensors");
    let m = checkpoint::load_dir(&dir, &device).unwrap();
    let vocab = m.config.vocab_size;
    let (pshape, prompt) = read_reference(&reference, "decode_prompt_ids");
    let (_, pmask) = read_reference(&reference, "decode_prompt_mask");
    let (nshape, new_ids) = read_reference(&reference, "decode_new_ids");
    let (_, prefill_expected) = read_reference(&reference, "decode_prefill_logits");
    let (_, decode_expected) = read_reference(&reference, "decode_logits");
    let pmask: Vec<bool> = pmask.iter().map(|&m| m > 0.5).collect();
    assert!(
        !pmask[pshape[1] * 2],
        "the third prompt must be left padded"
    );
    let batch = pshape[0];
    let mut cache = m.model.new_cache(batch);
    let prefill = m.model.forward_cached(
        ids_tensor(&prompt, &pshape, &device),
        Some(&pmask),
        &mut cache,
    );
    let diff = max_diff_rows(&logits_vec(prefill), &prefill_expected, vocab, &pmask);
    println!("{case}: prefill max |Δ| = {diff:e}");
    assert!(diff <= TOL, "{case}: prefill differs by {diff}");
    let steps = nshape[1];
    let mut worst = 0f32;
    for t in 0..steps {
        let column: Vec<f32> = (0..batch).map(|b| new_ids[b * steps + t]).collect();
        let logits = logits_vec(m.model.forward_cached(
            ids_tensor(&column, &[batch, 1], &device),
            None,
            &mut cache,
        ));
        let expected: Vec<f32> = (0..batch)
            .flat_map(|b| {
                let start = (b * steps + t) * vocab;
                decode_expected[start..start + vocab].to_vec()
            })
            .collect();
        worst = worst.max(max_diff_rows(&logits, &expected, vocab, &vec![true; batch]));
    }
    println!("{case}: {steps} cached decode steps max |Δ| = {worst:e}");
    assert!(worst <= TOL, "{case}: cached decoding differs by {worst}");
}

fn saved_model_loads_in_transformers(case: &str) {
    let device = Device::flex();
    let dir = hf_fixtures().join(case);
    let m = checkpoint::load_dir(&dir, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    checkpoint::save_dir(out.path(), &m, SaveOptions::default()).unwrap();
    let reference = dir.join("reference.safetensors");
    let report = run_python(
        "check_logits.py",
        &[
            out.path().to_str().unwrap(),
            reference.to_str().unwrap(),
            "--tol",
            &TOL.to_string(),
        ],
    );
    println!("{case}: transformers on our save: {}", report.trim());
    // And our loader reads back exactly what it wrote.
    let back = checkpoint::load_dir(out.path(), &device).unwrap();
    assert_eq!(back.config, m.config);
    let a = checkpoint::named_tensors(&m.model);
    let b = checkpoint::named_tensors(&back.model);
    assert_eq!(a.len(), b.len());
    for ((na, da), (nb, db)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(
            da.try_to_vec::<f32>().unwrap(),
            db.try_to_vec::<f32>().unwrap(),
            "{na}"
        );
    }
    let tok_a = m.tokenizer.as_ref().unwrap();
    let tok_b = back.tokenizer.as_ref().unwrap();
    let text = "The quick brown fox, 42 times.";
    assert_eq!(tok_a.encode(text).unwrap(), tok_b.encode(text).unwrap());
}

fn model_of(case: &str) -> LlamaForCausalLM {
    checkpoint::load_dir(&hf_fixtures().join(case), &Device::flex())
        .unwrap()
        .model
}

#[test]
fn full_forward_matches_transformers() {
    for case in CASES {
        full_forward(case);
    }
}

#[test]
fn kv_cache_decoding_matches_transformers() {
    for case in CASES {
        kv_cache_decoding(case);
    }
}

#[test]
fn models_we_save_load_in_transformers() {
    for case in CASES {
        saved_model_loads_in_transformers(case);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let tied = model_of("llama_tied_gqa");
    assert!(tied.lm_head.is_none());
    let untied = model_of("llama_untied_bias");
    assert!(untied.lm_head.is_some());
    assert!(untied.model.layers[0].mlp.up_proj.bias.is_some());
    assert!(untied.model.layers[0].self_attn.o_proj.bias.is_some());
    let qwen = model_of("qwen2");
    assert!(qwen.model.layers[0].self_attn.q_proj.bias.is_some());
    assert!(qwen.model.layers[0].self_attn.o_proj.bias.is_none());
}
