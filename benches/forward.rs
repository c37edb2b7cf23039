//! Forward throughput of a model with SmolLM2-135M's shapes (random weights) on the CPU
//! (`flex`) backend: prefill of 128 and 512 tokens, and decode of one token after a 128-token
//! prompt through the KV cache. Criterion reports tokens/s as elements/s.

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

criterion_group!(benches, forward);
criterion_main!(benches);
