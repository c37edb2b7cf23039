//! Every WGPU test lives in this one binary, so shader compilation is paid once. On a machine
//! without a GPU they run on Mesa's software Vulkan adapter (lavapipe).

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::device::DeviceChoice;
use distill_model::{Layout, LlamaConfig};

fn to_vec(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A small GQA model with biases, random weights (std 0.1), as an HF directory.
fn tiny_model_dir() -> tempfile::TempDir {
    let cpu = Device::flex();
    let mut config = LlamaConfig::llama(96, 64, 128, 2, 4, 2);
    config.qkv_bias = true;
    config.o_bias = true;
    config.tie_word_embeddings = false;
    config.initializer_range = 0.1;
    let dir = tempfile::tempdir().unwrap();
    let m = ModelDir {
        model: config.init(&cpu, 7),
        config,
        tokenizer: None,
        generation_config: None,
    };
    checkpoint::save_dir(dir.path(), &m, SaveOptions::default()).unwrap();
    dir
}

#[test]
fn wgpu_forward_and_decoding_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)");
    let cpu = Device::flex();
    let dir = tiny_model_dir();
    let on_cpu = checkpoint::load_dir(dir.path(), &cpu).unwrap().model;
    let on_gpu = checkpoint::load_dir(dir.path(), &gpu).unwrap().model;

    let (b, s) = (2, 24);
    let ids: Vec<i64> = (0..b * s).map(|i| ((i * 37 + 11) % 96) as i64).collect();
    let mut mask = vec![true; b * s];
    mask[s + 20..].iter_mut().for_each(|m| *m = false);
    let layout = Layout::from_mask(b, s, &mask);
    let input = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, s]), d);
    let want = to_vec(on_cpu.forward(input(&cpu), &layout));
    let got = to_vec(on_gpu.forward(input(&gpu), &layout));
    let diff = max_diff(&want, &got);
    println!("wgpu vs flex forward: max |Δ| = {diff:e}");
    assert!(diff <= 1e-4, "forward differs by {diff}");

    let mut cache_cpu = on_cpu.new_cache(b);
    let mut cache_gpu = on_gpu.new_cache(b);
    let mut worst = 0f32;
    for t in 0..6 {
        let step: Vec<i64> = (0..b).map(|r| ((t * 13 + r * 5 + 1) % 96) as i64).collect();
        let x = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(step.clone(), [b, 1]), d);
        let a = to_vec(on_cpu.forward_cached(x(&cpu), None, &mut cache_cpu));
        let g = to_vec(on_gpu.forward_cached(x(&gpu), None, &mut cache_gpu));
        worst = worst.max(max_diff(&a, &g));
    }
    println!("wgpu vs flex cached decoding: max |Δ| = {worst:e}");
    assert!(worst <= 1e-4, "cached decoding differs by {worst}");
}
