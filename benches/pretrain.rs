//! Pretraining throughput in tokens/s on the CPU (`flex` with autodiff): one iteration is one
//! optimizer step as `distill teacher pretrain` takes it, with the defaults of its
//! `[train]` table: the `LanguageModeling` task's forward and next-token cross-entropy on 8
//! windows of 256 tokens (2,048 tokens), backward, global-norm gradient clipping at 1.0, and
//! AdamW (lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1, none on norms).
//!
//! The model: Llama, 4 layers, hidden 256, MLP 768, 4 attention heads over 2 KV heads of 64,
//! tied embeddings (like SmolLM2), RoPE base 10000, RMSNorm eps 1e-5; seeded random weights and
//! token ids; vocabularies 4096 and 49152. `scripts/bench-pretrain` runs it beside the same
//! model and step in PyTorch (`scripts/bench_pretrain_torch.py`) and reports the ratio.
//!
//! `DISTILL_BENCH_DEVICE=wgpu` runs the same step on burn's WGPU backend (a GPU, else a software
//! adapter) instead, beside `bench_pretrain_torch.py --device cuda` on an NVIDIA GPU.

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use distill_model::LlamaConfig;
use distill_model::data::PackedWindows;
use distill_model::device::DeviceChoice;
use distill_model::train::{TrainConfig, apply_step, optimizer, step_gradients};
use distill_teacher::pretrain::LanguageModeling;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;

const SEQ: usize = 256;
const BATCH: usize = 8;
/// Distinct windows the steps cycle through.
const WINDOWS: usize = 32;

/// The benchmarked model with vocabulary `vocab`.
fn config(vocab: usize) -> LlamaConfig {
    let mut c = LlamaConfig::llama(vocab, 256, 768, 4, 4, 2);
    c.max_position_embeddings = SEQ;
    c
}

/// `n` token ids below `vocab`, seeded.
fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..vocab as u32)).collect()
}

fn pretrain_step(c: &mut Criterion) {
    distill_model::memory::keep_freed_memory();
    let choice: DeviceChoice = std::env::var("DISTILL_BENCH_DEVICE")
        .map_or(Ok(DeviceChoice::Flex), |d| d.parse())
        .expect("DISTILL_BENCH_DEVICE: flex or wgpu");
    let device = choice.open().expect("the benchmark's device").autodiff();
    let train = TrainConfig {
        batch_size: BATCH,
        seq_len: SEQ,
        ..TrainConfig::default()
    };
    let name = match choice {
        DeviceChoice::Flex => "pretrain_4l_256".to_string(),
        other => format!("pretrain_4l_256_{other}"),
    };
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements((BATCH * SEQ) as u64));
    for vocab in [4096usize, 49152] {
        let tokens = random_tokens(WINDOWS * SEQ + 1, vocab, train.seed);
        let windows = PackedWindows::new(tokens, SEQ, train.seed, "random tokens")
            .expect("the stream fills its windows");
        let mut task = LanguageModeling::new(windows, None, BATCH, &device);
        let mut model = Some(config(vocab).init(&device, train.seed));
        let mut optim = optimizer(&train);
        let mut step = 0;
        group.bench_function(format!("vocab_{vocab}"), |b| {
            b.iter(|| {
                // The body of the loop in `train::train`.
                let m = model.take().expect("the model between steps");
                let (grads, loss) = step_gradients(&m, &mut task, &train, step)
                    .expect("the step runs on the device");
                black_box(loss);
                model = Some(apply_step(m, grads, &mut optim, &train, step).0);
                step += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pretrain_step);
criterion_main!(benches);
