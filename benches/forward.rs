//! Forward throughput of a model with SmolLM2-135M's shapes (random weights) on the CPU
//! (`flex`) backend: prefill of 128 and 512 tokens, and decode of one token after a 128-token
//! prompt through the KV cache. Criterion reports tokens/s as elements/s.
//!
//! `decode_quantized` decodes the same model with its decoder layers in f32, int8, int4-g64 and
//! Q4_0 (RTN) side by side, as generation runs it (last-position logits); criterion reports
//! the weight bytes each token reads per second, and the time per token.

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use distill_model::{Layout, LlamaConfig};

fn smollm2_shapes() -> LlamaConfig {
    let mut c = LlamaConfig::llama(49152, 576, 1536, 30, 9, 3);
    c.rope_theta = 100_000.0;
    c
}

fn ids(n: usize, device: &Device) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..n).map(|i| ((i * 7919) % 49152) as i64).collect();
    Tensor::from_data(TensorData::new(v, [1, n]), device)
}

fn forward(c: &mut Criterion) {
    distill_model::memory::keep_freed_memory();
    let device = Device::flex();
    let model = smollm2_shapes().init(&device, 0);
    let mut group = c.benchmark_group("smollm2_135m_flex");
    group.sample_size(10);
    for n in [128usize, 512] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("prefill_{n}"), |b| {
            b.iter(|| {
                let logits = model.forward(ids(n, &device), &Layout::causal(1, n));
                logits.into_data()
            })
        });
    }
    let mut cache = model.new_cache(1);
    model
        .forward_cached(ids(128, &device), None, &mut cache)
        .into_data();
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_after_128", |b| {
        b.iter(|| {
            let mut step = cache.clone();
            model
                .forward_cached(ids(1, &device), None, &mut step)
                .into_data()
        })
    });
    group.finish();
}

/// One decoding step per iteration for each weight format; throughput in weight bytes read.
fn decode_quantized(c: &mut Criterion) {
    distill_model::memory::keep_freed_memory();
    use distill_student::quantize::{Method, QuantizeConfig, quantize_model};
    let device = Device::flex();
    let mut group = c.benchmark_group("smollm2_135m_decode");
    group.sample_size(20);
    for scheme in ["f32", "int8", "int4-g64", "q4_0"] {
        let mut model = smollm2_shapes().init(&device, 0);
        if scheme != "f32" {
            let config = QuantizeConfig::new(
                distill_quant::Format::from_cli(scheme, false).unwrap(),
                Method::Rtn,
            );
            quantize_model(&mut model, &config, None, &device, |_| {}).unwrap();
        }
        let bytes = model.decode_weight_bytes();
        println!(
            "{scheme}: {:.1} MB of weights per decoded token",
            bytes as f64 / 1e6
        );
        let mut cache = model.new_cache(1);
        model
            .forward_cached_last(ids(128, &device), None, &mut cache)
            .into_data();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(scheme, |b| {
            b.iter(|| {
                let mut step = cache.clone();
                model
                    .forward_cached_last(ids(1, &device), None, &mut step)
                    .into_data()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, forward, decode_quantized);
criterion_main!(benches);
