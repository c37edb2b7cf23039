//! The training loop through `teacher pretrain`: interrupted-and-resumed runs equal
//! uninterrupted ones, and a diverging run stops with its last good checkpoint kept.

use burn::prelude::*;
use distill_model::train::{TrainConfig, TrainControl, TrainError};
use distill_teacher::pretrain::{self, ModelSizes, PretrainConfig, PretrainError};
use std::path::Path;

/// Deterministic English-like text: sentences from a small grammar.
fn corpus(path: &Path, sentences: usize) {
    let subjects = [
        "the kernel",
        "a process",
        "the file",
        "each thread",
        "the user",
        "a signal",
    ];
    let verbs = [
        "opens", "reads", "writes", "closes", "maps", "blocks", "returns",
    ];
    let objects = [
        "the socket",
        "a buffer",
        "the page",
        "an inode",
        "the pipe",
        "a lock",
    ];
    let tails = [
        "quickly",
        "on success",
        "with an error",
        "again",
        "in order",
        "at once",
    ];
    let mut state = 12345u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as usize
    };
    let mut lines = Vec::new();
    for i in 0..sentences {
        let s = format!(
            "{} {} {} {}.",
            subjects[next(6)],
            verbs[next(7)],
            objects[next(6)],
            tails[next(6)]
        );
        lines.push(if i % 5 == 4 { format!("{s}\n") } else { s });
    }
    let docs: Vec<String> = lines
        .chunks(20)
        .map(|c| serde_json::json!({"text": c.join(" ")}).to_string())
        .collect();
    std::fs::write(path, docs.join("\n")).unwrap();
}

fn config(data: &Path, out: &Path) -> PretrainConfig {
    PretrainConfig {
        train_data: data.to_path_buf(),
        out: out.to_path_buf(),
        model: ModelSizes {
            vocab_size: 320,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            ..ModelSizes::default()
        },
        train: TrainConfig {
            steps: 12,
            batch_size: 4,
            grad_accum: 2,
            seq_len: 32,
            learning_rate: 3e-3,
            warmup_steps: 3,
            eval_every: 4,
            eval_batches: 2,
            checkpoint_every: 4,
            ..TrainConfig::default()
        },
        ..PretrainConfig::default()
    }
}

fn quiet() -> TrainControl {
    distill_model::device::pin_default_device_to_cpu();
    TrainControl::quiet()
}

#[test]
fn a_killed_and_resumed_run_ends_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("text.jsonl");
    corpus(&data, 2000);
    let device = Device::flex();

    let whole =
        pretrain::run(&config(&data, &tmp.path().join("whole")), &device, &quiet()).unwrap();
    assert_eq!(whole.steps, 12);

    let split_cfg = config(&data, &tmp.path().join("split"));
    // "Killed" after step 6: the checkpoint of step 4 is the last one on disk.
    let first = pretrain::run(
        &split_cfg,
        &device,
        &TrainControl {
            stop_after: Some(6),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(first.steps, 6);
    assert!(!tmp.path().join("split/model/config.json").exists());
    let latest = std::fs::read_to_string(tmp.path().join("split/checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000004");
    let resumed = pretrain::run(
        &split_cfg,
        &device,
        &TrainControl {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(resumed.steps, 12);
    assert_eq!(resumed.history.len(), 12);
    for (a, b) in whole.history.iter().zip(&resumed.history) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.train - b.train).abs() <= 1e-6,
            "step {}: {} vs {}",
            a.step,
            a.train,
            b.train
        );
        if let (Some(x), Some(y)) = (a.valid, b.valid) {
            assert!(
                (x - y).abs() <= 1e-6,
                "valid at step {}: {x} vs {y}",
                a.step
            );
        }
    }
    let (a, b) = (
        whole.history.last().unwrap(),
        resumed.history.last().unwrap(),
    );
    println!("final loss: uninterrupted {} resumed {}", a.train, b.train);
    assert!(a.train < whole.history[0].train, "the loss must fall");

    // The exported models are identical too.
    let wa = std::fs::read(tmp.path().join("whole/model/model.safetensors")).unwrap();
    let wb = std::fs::read(tmp.path().join("split/model/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
}

#[test]
fn a_diverging_run_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("text.jsonl");
    corpus(&data, 600);
    let mut cfg = config(&data, &tmp.path().join("run"));
    cfg.train.learning_rate = 1e6;
    cfg.train.warmup_steps = 0;
    cfg.train.grad_clip = 0.0;
    cfg.train.checkpoint_every = 1;
    let err = pretrain::run(&cfg, &Device::flex(), &quiet())
        .err()
        .expect("must diverge");
    let PretrainError::Train(TrainError::Diverged {
        step, checkpoint, ..
    }) = &err
    else {
        panic!("expected divergence, got {err}");
    };
    println!("{err}");
    assert!(*step >= 2);
    let ckpt = checkpoint
        .as_ref()
        .expect("a checkpoint before the divergence");
    assert!(ckpt.join("model.bpk").is_file() && ckpt.join("state.json").is_file());
    assert!(err.to_string().contains("diverged"), "{err}");
}

#[test]
fn bad_settings_and_data_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = pretrain::run(&config(&empty, tmp.path()), &Device::flex(), &quiet())
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty.txt"), "{err}");

    let toml_path = tmp.path().join("p.toml");
    std::fs::write(&toml_path, "train_data = \"x\"\n[train]\nstepz = 3\n").unwrap();
    let err = PretrainConfig::from_toml_file(&toml_path).unwrap_err();
    assert!(err.to_string().contains("stepz"), "{err}");
}
