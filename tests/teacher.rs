//! `teacher sft` and `teacher reward` on tiny models: an SFT run resumes like an uninterrupted
//! one, the reward model learns a synthetic ranking and scores as transformers'
//! `LlamaForSequenceClassification` does, and the command line runs both and names the file and
//! line of a malformed record.

mod common;

use burn::prelude::*;
use distill_model::LlamaConfig;
use distill_model::chat::Message;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::train::{TrainConfig, TrainControl};
use distill_teacher::records::{Comparison, DataFiles, Demonstration, Ranking, write_jsonl};
use distill_teacher::reward::{self, RewardConfig};
use distill_teacher::sft::{self, ChatEncoder, SftConfig};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const PROMPTS: &[&str] = &[
    "which answer is best?",
    "rate the words please",
    "how many good words are there?",
];

/// A tiny random Llama with a BPE over the test's words, a ChatML template and `<|im_end|>`
/// as EOS, saved as an HF directory.
fn tiny_model(dir: &Path) {
    let mut corpus: Vec<String> = PROMPTS.iter().map(|p| p.repeat(3)).collect();
    corpus.push("good bad good bad bad good good bad ".repeat(8));
    corpus.push("use ls to list files. cat prints a file. grep finds lines. ".repeat(4));
    let mut tokenizer =
        Tokenizer::train_bpe(corpus, 300, &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"]).unwrap();
    tokenizer.chat_template = Some(CHATML.into());
    tokenizer.eos_token = Some("<|im_end|>".into());
    let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 32, 64, 2, 4, 2);
    config.eos_token_id = tokenizer.eos_id().into_iter().collect();
    let m = ModelDir {
        model: config.init(&Device::flex(), 1),
        config,
        tokenizer: Some(tokenizer),
        generation_config: None,
    };
    checkpoint::save_dir(dir, &m, SaveOptions::default()).unwrap();
}

/// Deterministic draws for the synthetic data.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

fn demonstrations(path: &Path, n: usize) {
    let answers = [
        ("how do I list files?", "use ls to list files."),
        ("what prints a file?", "cat prints a file."),
        ("what finds lines?", "grep finds lines."),
    ];
    let demos: Vec<Demonstration> = (0..n)
        .map(|i| {
            let (prompt, response) = answers[i % answers.len()];
            Demonstration::Pair {
                prompt: prompt.into(),
                response: response.into(),
            }
        })
        .collect();
    write_jsonl(path, &demos).unwrap();
}

/// Rankings of four 8-word answers whose quality is their number of `good` words (four
/// distinct counts out of 0..=8, so ties never occur), shown in a random order. `kinds` says
/// whether an answer has `many` (4 or more) good words or `few`.
fn rankings(path: &Path, n: usize, seed: u64) {
    let mut rng = Lcg(seed);
    let records: Vec<Ranking> = (0..n)
        .map(|i| {
            let mut counts: Vec<usize> = Vec::new();
            while counts.len() < 4 {
                let c = rng.below(9);
                if !counts.contains(&c) {
                    counts.push(c);
                }
            }
            let responses: Vec<String> = counts
                .iter()
                .map(|&c| {
                    let mut words = ["bad"; 8];
                    let mut placed = 0;
                    while placed < c {
                        let at = rng.below(8);
                        if words[at] == "bad" {
                            words[at] = "good";
                            placed += 1;
                        }
                    }
                    words.join(" ")
                })
                .collect();
            let mut ranking: Vec<usize> = (0..4).collect();
            ranking.sort_by_key(|&j| std::cmp::Reverse(counts[j]));
            Ranking {
                id: Some(format!("synthetic-{i}#q{}", i % 2)),
                prompt: PROMPTS[i % PROMPTS.len()].into(),
                responses,
                ranking,
                kinds: Some(
                    counts
                        .iter()
                        .map(|&c| if c >= 4 { "many" } else { "few" }.to_string())
                        .collect(),
                ),
            }
        })
        .collect();
    write_jsonl(path, &records).unwrap();
}

/// `n` comparisons `{"prompt","chosen","rejected"}` of the same rule: the answer with more
/// `good` words is chosen.
fn comparisons(path: &Path, n: usize, seed: u64) {
    let scratch = path.with_extension("rankings");
    rankings(&scratch, n, seed);
    let pairs: Vec<Comparison> = distill_teacher::records::read_rankings(&scratch)
        .unwrap()
        .into_iter()
        .map(|r| Comparison {
            prompt: r.prompt,
            chosen: r.responses[r.ranking[0]].clone(),
            rejected: r.responses[r.ranking[3]].clone(),
        })
        .collect();
    write_jsonl(path, &pairs).unwrap();
}

fn quiet() -> TrainControl {
    distill_model::device::pin_default_device_to_cpu();
    TrainControl::quiet()
}

fn sft_config(model: &Path, data: &Path, out: &Path) -> SftConfig {
    SftConfig {
        train_data: data.to_path_buf(),
        valid_fraction: 0.1,
        init: model.to_path_buf(),
        out: out.to_path_buf(),
        train: TrainConfig {
            steps: 8,
            batch_size: 4,
            grad_accum: 2,
            learning_rate: 3e-3,
            warmup_steps: 2,
            eval_every: 2,
            eval_batches: 2,
            checkpoint_every: 3,
            ..TrainConfig::default()
        },
        ..SftConfig::default()
    }
}

#[test]
fn an_sft_run_resumes_like_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny_model(&model);
    let data = tmp.path().join("sft.jsonl");
    demonstrations(&data, 40);
    let device = Device::flex();

    let whole = sft::run(
        &sft_config(&model, &data, &tmp.path().join("whole")),
        &device,
        &quiet(),
    )
    .unwrap();
    assert_eq!(
        (whole.steps, whole.train_examples, whole.valid_examples),
        (8, 36, 4)
    );
    assert_eq!((whole.truncated_prompts, whole.truncated_responses), (0, 0));
    let (first, last) = (&whole.history[0], whole.history.last().unwrap());
    assert!(
        last.train < first.train,
        "{} -> {}",
        first.train,
        last.train
    );

    let split = sft_config(&model, &data, &tmp.path().join("split"));
    let stopped = sft::run(
        &split,
        &device,
        &TrainControl {
            stop_after: Some(5),
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(stopped.steps, 5);
    assert!(!tmp.path().join("split/model").exists());
    let latest = std::fs::read_to_string(tmp.path().join("split/checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000003");
    let resumed = sft::run(
        &split,
        &device,
        &TrainControl {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert_eq!(resumed.history.len(), 8);
    for (a, b) in whole.history.iter().zip(&resumed.history) {
        assert_eq!(a.step, b.step);
        assert!((a.train - b.train).abs() <= 1e-6, "step {}", a.step);
        assert_eq!(a.valid.is_some(), b.valid.is_some());
        if let (Some(x), Some(y)) = (a.valid, b.valid) {
            assert!(
                (x - y).abs() <= 1e-6,
                "valid at step {}: {x} vs {y}",
                a.step
            );
        }
    }
    let weights = |run: &str| std::fs::read(tmp.path().join(run).join("model/model.safetensors"));
    assert!(weights("whole").unwrap() == weights("split").unwrap());
    // The fine-tuned model keeps its tokenizer and chat template.
    let back = Tokenizer::from_dir(&tmp.path().join("whole/model")).unwrap();
    assert_eq!(back.chat_template.as_deref(), Some(CHATML));
}

#[test]
fn the_reward_model_learns_a_synthetic_ranking() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny_model(&model);
    let (train, valid) = (
        tmp.path().join("train.jsonl"),
        tmp.path().join("valid.jsonl"),
    );
    let pairs = tmp.path().join("pairs.jsonl");
    rankings(&train, 400, 1);
    comparisons(&pairs, 150, 3);
    rankings(&valid, 60, 2);
    let config = RewardConfig {
        // Rankings of four and comparisons, two files read as one set.
        train_data: DataFiles(vec![train, pairs]),
        valid_data: Some(valid.clone().into()),
        init: model,
        out: tmp.path().join("reward"),
        train: TrainConfig {
            steps: 150,
            batch_size: 8,
            learning_rate: 3e-3,
            warmup_steps: 10,
            weight_decay: 0.0,
            eval_every: 0,
            eval_batches: 8,
            checkpoint_every: 150,
            ..TrainConfig::default()
        },
        ..RewardConfig::default()
    };
    let s = reward::run(&config, &Device::flex(), &quiet()).unwrap();
    assert_eq!(s.train_rankings, 550);
    let report = s.validation.as_ref().expect("a validation report");
    println!("{report:#?}");
    let (first, last) = (s.history[0].train, s.history.last().unwrap().train);
    assert!(last < 0.2 * first, "the loss must fall: {first} -> {last}");
    assert_eq!(report.rankings, 60);
    assert_eq!(report.overall.pairs, 60 * 6);
    assert!(
        report.overall.accuracy > 0.95,
        "held-out accuracy {}",
        report.overall.accuracy
    );
    let types: Vec<&String> = report.by_pair_type.keys().collect();
    assert_eq!(types, ["few>few", "many>few", "many>many"]);
    let per_type: usize = report.by_pair_type.values().map(|a| a.pairs).sum();
    assert_eq!(per_type, report.overall.pairs);
    // Split again by the question kind after the id's `#`: every pair once, both kinds there.
    let per_question: usize = report.by_question.values().map(|a| a.pairs).sum();
    assert_eq!(per_question, report.overall.pairs);
    assert!(report.by_question.contains_key("q0: many>few"));
    assert!(report.by_question.keys().any(|k| k.starts_with("q1: ")));

    // The saved model is an HF sequence classifier that scores the held-out set the same way.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(s.model_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(json["architectures"][0], "LlamaForSequenceClassification");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&s.report_path).unwrap()).unwrap();
    assert_eq!(
        saved["validation"]["overall"]["correct"],
        report.overall.correct
    );
    let loaded = reward::load_reward_model(&s.model_dir, &Device::flex()).unwrap();
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    let encoder = ChatEncoder::new(tokenizer, 64, 48).unwrap();
    let mut correct = 0;
    for r in distill_teacher::records::read_rankings(&valid).unwrap() {
        let rows: Vec<Vec<u32>> = r
            .responses
            .iter()
            .map(|a| {
                encoder
                    .encode(&[Message::user(&r.prompt), Message::new("assistant", a)])
                    .unwrap()
                    .ids
            })
            .collect();
        let len = rows.iter().map(Vec::len).max().unwrap();
        let mut ids = vec![0i64; rows.len() * len];
        for (i, row) in rows.iter().enumerate() {
            for (j, &t) in row.iter().enumerate() {
                ids[i * len + j] = i64::from(t);
            }
        }
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(ids, [rows.len(), len]), &Device::flex());
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let scores = loaded.model.score(ids, &lengths);
        correct += r
            .pairs()
            .iter()
            .filter(|&&(b, w)| scores[b] > scores[w])
            .count();
    }
    assert_eq!(correct, report.overall.correct);
}

/// Scores right-padded ids with transformers' `AutoModelForSequenceClassification`.
const HF_SCORE: &str = r#"
import json, sys, torch
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids, mask = (torch.tensor(json.loads(a)) for a in sys.argv[2:4])
with torch.no_grad():
    print(json.dumps(model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()))
"#;

#[test]
fn saved_reward_models_score_as_in_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let lm_dir = tmp.path().join("tiny");
    tiny_model(&lm_dir);
    let lm = checkpoint::load_dir(&lm_dir, &Device::flex()).unwrap();
    let mut config = lm.config.clone();
    config.initializer_range = 0.5;
    let m = reward::RewardDir {
        model: reward::RewardModel::from_causal_lm(lm.model, &config, 4),
        config,
        tokenizer: lm.tokenizer,
    };
    let dir = tmp.path().join("rm");
    reward::save_reward_model(&dir, &m).unwrap();

    let encoder = ChatEncoder::new(m.tokenizer.as_ref().unwrap(), 64, 48).unwrap();
    let rows: Vec<Vec<u32>> = [
        "good good bad",
        "bad",
        "good bad good bad good good bad bad",
    ]
    .iter()
    .map(|a| {
        let chat = [Message::user(PROMPTS[0]), Message::new("assistant", a)];
        encoder.encode(&chat).unwrap().ids
    })
    .collect();
    let pad = i64::from(m.pad_token_id());
    let len = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![vec![pad; len]; rows.len()];
    let mut mask = vec![vec![0i64; len]; rows.len()];
    for (r, row) in rows.iter().enumerate() {
        for (j, &t) in row.iter().enumerate() {
            ids[r][j] = i64::from(t);
            mask[r][j] = 1;
        }
    }
    let flat: Vec<i64> = ids.concat();
    let tensor =
        Tensor::<2, Int>::from_data(TensorData::new(flat, [rows.len(), len]), &Device::flex());
    let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
    let ours = m.model.score(tensor, &lengths);

    let out = Command::new(common::python())
        .args(["-c", HF_SCORE, path(&dir)])
        .arg(serde_json::to_string(&ids).unwrap())
        .arg(serde_json::to_string(&mask).unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hf: Vec<f32> = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    println!("ours {ours:?}\nhf   {hf:?}");
    assert_eq!(hf.len(), ours.len());
    let spread = ours.iter().fold(0f32, |a, &x| a.max(x.abs()));
    assert!(spread > 1e-2, "scores too small to compare: {ours:?}");
    for (a, b) in ours.iter().zip(&hf) {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "ours {ours:?} vs hf {hf:?}"
        );
    }
}

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("the distill binary runs")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn the_command_line_runs_both_stages_and_names_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny_model(&model);
    let data = tmp.path().join("sft.jsonl");
    demonstrations(&data, 12);
    let ranks = tmp.path().join("rankings.jsonl");
    rankings(&ranks, 12, 3);
    let (sft_out, rm_out) = (tmp.path().join("sft"), tmp.path().join("rm"));

    let run = |args: &[&str]| {
        let out = distill(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "distill {args:?} failed:\n{stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let stdout = run(&[
        "teacher",
        "sft",
        "--init",
        path(&model),
        "--data",
        path(&data),
        "--out",
        path(&sft_out),
        "--steps",
        "2",
    ]);
    assert!(stdout.contains("fine-tuning finished: 2 steps"), "{stdout}");
    let stdout = run(&[
        "teacher",
        "reward",
        "--init",
        path(&sft_out.join("model")),
        "--data",
        path(&ranks),
        "--out",
        path(&rm_out),
        "--steps",
        "2",
    ]);
    assert!(stdout.contains("pairwise accuracy"), "{stdout}");
    assert!(rm_out.join("model/model.safetensors").is_file());

    // A malformed record: the error names the file, the line and the field.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"p\",\"response\":\"r\"}\n{\"prompt\":\"p\",\"reply\":\"r\"}\n",
    )
    .unwrap();
    let out = distill(&[
        "teacher",
        "sft",
        "--init",
        path(&model),
        "--data",
        path(&bad),
        "--out",
        path(&tmp.path().join("x")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:2:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("reply"), "{stderr}");

    let bad = tmp.path().join("bad-rankings.jsonl");
    let mut lines = std::fs::read_to_string(&ranks).unwrap();
    lines.push_str("{\"prompt\":\"p\",\"responses\":[\"a\",\"b\"],\"ranking\":[1]}\n");
    std::fs::write(&bad, lines).unwrap();
    let out = distill(&[
        "teacher",
        "reward",
        "--init",
        path(&model),
        "--data",
        path(&bad),
        "--out",
        path(&tmp.path().join("y")),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:13:", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("`ranking`"), "{stderr}");
}
