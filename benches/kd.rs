//! Distillation training throughput in student tokens/s: one optimizer step (student forward,
//! chunked distillation loss, backward, AdamW) per iteration, with the teacher's signal
//! produced online (a teacher forward each step) and read from a top-k cache, side by side,
//! and plain cross-entropy fine-tuning (no teacher) as the floor. Sizes: SmolLM2's 49,152-token
//! vocabulary (the loss's cost grows with it), a 6-layer teacher of width 384 and a student
//! with half its layers and MLP; 2 windows of 256 tokens a step.

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use distill_model::LlamaConfig;
use distill_model::train::TrainTask;
use distill_student::distill::{KdTask, Teacher};
use distill_student::kd::KdConfig;
use distill_student::prune::mask::SparsityMasks;
use distill_student::topk::{TopKCache, TopKHeader};

const VOCAB: usize = 49152;
const SEQ: usize = 256;
const BATCH: usize = 2;

fn windows() -> Vec<Vec<u32>> {
    (0..8)
        .map(|w| {
            (0..=SEQ)
                .map(|i| ((w * 7919 + i * 104_729) % VOCAB) as u32)
                .collect()
        })
        .collect()
}

fn kd_step(c: &mut Criterion) {
    distill_model::memory::keep_freed_memory();
    let plain = Device::flex();
    let device = plain.clone().autodiff();
    let teacher_config = LlamaConfig::llama(VOCAB, 384, 1024, 6, 6, 2);
    let student_config = LlamaConfig::llama(VOCAB, 384, 512, 3, 6, 2);
    let windows = windows();
    let header = TopKHeader {
        k: 32,
        temperature: 1.0,
        seq_len: SEQ,
        windows: windows.len(),
        vocab_size: VOCAB,
        teacher: "random".into(),
        teacher_sha256: String::new(),
    };
    let teacher = || teacher_config.init(&plain, 1);
    let cache = TopKCache::compute(&teacher(), header, &windows, 2, &plain, |_| {}).unwrap();
    let mut group = c.benchmark_group("kd_step");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    let variants = [
        ("online_teacher", Teacher::Online(Box::new(teacher())), 1.0),
        ("cached_top32", Teacher::Cached(cache), 1.0),
        ("cross_entropy_only", Teacher::None, 0.0),
    ];
    for (name, signal, alpha) in variants {
        let kd = KdConfig {
            alpha,
            ..KdConfig::default()
        };
        let mut task = KdTask::new(
            windows.clone(),
            None,
            BATCH,
            signal,
            kd,
            SparsityMasks::default(),
            &device,
            &plain,
        );
        let mut model = Some(student_config.init(&device, 2));
        let mut optim = AdamWConfig::new().init();
        let mut index = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let m = model.take().expect("the model between steps");
                let loss = task.train_loss(&m, index);
                let grads = GradientsParams::from_grads(loss.backward(), &m);
                model = Some(optim.step(1e-4, m, grads));
                index += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kd_step);
criterion_main!(benches);
