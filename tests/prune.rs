//! Structured pruning end to end: a tiny random model is cut in all four dimensions at once
//! (layers, KV groups, MLP neurons, hidden channels), saved as an HF directory, and HF
//! transformers loads it and reproduces our logits (max |Δ| ≤ 1e-4).

mod common;

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::llama::{FreshInit, Init, ParamSource};
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::{Architecture, Layout, LlamaConfig, LlamaForCausalLM};
use distill_student::calibrate;
use distill_student::prune::structured::{
    StructuredConfig, importance, non_embedding_parameters, prune_structured,
};
use std::path::Path;

const TEXT: &str = "Structured pruning removes whole layers, attention heads, neurons and \
    channels, so the student is a smaller dense model that every runtime can load. ";

/// Fresh weights with random biases too (they start at zero otherwise), so slicing them is
/// tested.
struct RandomBiases(FreshInit);

impl ParamSource for RandomBiases {
    type Error = std::convert::Infallible;
    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<D>, Self::Error> {
        let init = if init == Init::Zeros {
            Init::Normal
        } else {
            init
        };
        self.0.float(name, shape, init)
    }
    fn device(&self) -> Device {
        self.0.device()
    }
}

fn logits(model: &LlamaForCausalLM, ids: &[u32]) -> Vec<f32> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    let t = Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), &Device::flex());
    let out = model.forward(t, &Layout::causal(1, ids.len()));
    out.into_data().try_to_vec().unwrap()
}

/// The reference file `check_logits.py` reads: `input_ids`, `attention_mask`, `logits`.
fn write_reference(path: &Path, ids: &[u32], logits: &[f32], vocab: usize) {
    use safetensors::{Dtype, tensor::TensorView};
    let n = ids.len();
    let id_bytes: Vec<u8> = ids.iter().flat_map(|&i| (i as i64).to_le_bytes()).collect();
    let mask: Vec<u8> = ids.iter().flat_map(|_| 1i64.to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "input_ids",
            TensorView::new(Dtype::I64, vec![1, n], &id_bytes).unwrap(),
        ),
        (
            "attention_mask",
            TensorView::new(Dtype::I64, vec![1, n], &mask).unwrap(),
        ),
        (
            "logits",
            TensorView::new(Dtype::F32, vec![1, n, vocab], &logit_bytes).unwrap(),
        ),
    ];
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Prunes a tiny model of `config`'s family (4 layers, hidden 64, MLP 128, 4 heads over 2 KV
/// heads) to 3 layers, 1 KV group, 96 neurons and 48 channels, and checks it in transformers.
fn pruned_model_loads_in_transformers(case: &str, edit: impl FnOnce(&mut LlamaConfig)) {
    let device = Device::flex();
    let tokenizer = Tokenizer::train_bpe(vec![TEXT.repeat(4)], 300, &[ENDOFTEXT]).unwrap();
    let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 64, 128, 4, 4, 2);
    config.initializer_range = 0.2;
    config.eos_token_id = vec![0];
    edit(&mut config);
    let mut init = RandomBiases(FreshInit {
        device: device.clone(),
        std: config.initializer_range,
        seed: 21,
    });
    let Ok(model) = LlamaForCausalLM::build(&config, &mut init);

    let tokens = tokenizer.encode(&TEXT.repeat(6)).unwrap();
    let windows = calibrate::windows(&tokens, 4, 32, 0, "text").unwrap();
    let scores = importance(&model, &config, &windows, &device).unwrap();
    let target = StructuredConfig {
        num_hidden_layers: Some(3),
        num_key_value_heads: Some(1),
        intermediate_size: Some(96),
        hidden_size: Some(48),
    };
    let (pruned_config, pruned) =
        prune_structured(&config, &model, &scores, &target, &device).unwrap();
    assert_eq!(
        (
            pruned_config.num_hidden_layers,
            pruned_config.num_attention_heads,
            pruned_config.num_key_value_heads,
            pruned_config.intermediate_size,
            pruned_config.hidden_size,
            pruned_config.head_dim,
        ),
        (3, 2, 1, 96, 48, 16)
    );
    println!(
        "{case}: non-embedding parameters {} → {}",
        non_embedding_parameters(&config),
        non_embedding_parameters(&pruned_config)
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pruned");
    let m = ModelDir {
        config: pruned_config.clone(),
        model: pruned,
        tokenizer: Some(tokenizer),
        generation_config: None,
    };
    checkpoint::save_dir(&dir, &m, SaveOptions::default()).unwrap();
    let ids = &tokens[..24];
    let ours = logits(&m.model, ids);
    let back = checkpoint::load_dir(&dir, &device).unwrap();
    assert_eq!(back.config, pruned_config);
    assert_eq!(
        logits(&back.model, ids),
        ours,
        "{case}: reloading changed logits"
    );

    let reference = tmp.path().join("reference.safetensors");
    write_reference(&reference, ids, &ours, pruned_config.vocab_size);
    let report = common::run_python(
        "check_logits.py",
        &[
            dir.to_str().unwrap(),
            reference.to_str().unwrap(),
            "--tol",
            "1e-4",
        ],
    );
    let diff = report
        .lines()
        .find_map(|l| l.strip_prefix("max_abs_diff="))
        .unwrap_or("?");
    println!("{case}: transformers on the pruned model: max |Δ| = {diff}");
}

#[test]
fn pruned_llama_loads_in_transformers() {
    pruned_model_loads_in_transformers("llama (GQA, tied)", |_| {});
}

#[test]
fn pruned_qwen2_loads_in_transformers() {
    pruned_model_loads_in_transformers("qwen2 (GQA, qkv biases, untied)", |c| {
        c.architecture = Architecture::Qwen2;
        c.qkv_bias = true;
        c.tie_word_embeddings = false;
    });
}
