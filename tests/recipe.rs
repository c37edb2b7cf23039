//! `distill run` end to end on a tiny teacher: two students (int8 and 4-bit) of one pruned and
//! distilled model, every artefact checked against the reference tools (transformers loads the
//! HF export with our logits, the `gguf` package reads the GGUF files with our tensors, the
//! report has every field and renders in headless Chromium); stages are skipped when done and
//! rerun when their settings change; a run killed mid-stage resumes to the same result.

mod common;

use burn::prelude::*;
use common::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::gguf::{self, GgufFile};
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::{Layout, LlamaConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOCS: &[&str] = &[
    "open() returns a file descriptor; on error it returns -1 and sets errno to EACCES or ENOENT.",
    "The read() system call reads up to count bytes from a file descriptor into a buffer.",
    "ls lists directory contents; -l uses a long listing format and -a shows hidden entries.",
    "close() closes a file descriptor, so that it no longer refers to any file.",
    "Madam Speaker, the state of our union is strong, and our people are stronger still.",
];

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A tiny random teacher (hidden 64, so 32-wide GGUF blocks fit) with a BPE tokenizer and a
/// ChatML template, and four data files; returns the folder holding them.
fn setup(dir: &Path) {
    let corpus: Vec<String> = DOCS.iter().map(|d| d.repeat(3)).collect();
    let specials = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"];
    let mut tokenizer = Tokenizer::train_bpe(corpus, 300, &specials).unwrap();
    tokenizer.chat_template = Some(CHATML.to_string());
    let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 64, 128, 2, 4, 2);
    config.initializer_range = 0.2;
    let m = ModelDir {
        model: config.init(&Device::flex(), 7),
        config,
        tokenizer: Some(tokenizer),
        generation_config: None,
    };
    checkpoint::save_dir(&dir.join("teacher"), &m, SaveOptions::default()).unwrap();
    for (name, docs) in [
        ("train", &DOCS[..4]),
        ("valid", &DOCS[1..3]),
        ("test", &DOCS[..4]),
        ("general", &DOCS[4..]),
    ] {
        let lines: Vec<String> = (0..12)
            .map(|i| {
                serde_json::json!({"text": docs[i % docs.len()].repeat(1 + i % 3)}).to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n")).unwrap();
    }
    // The teacher stages' data: demonstrations, rankings, prompts and the judge's facts.
    let pages = ["open", "read", "ls", "close"];
    let write = |name: &str, line: &dyn Fn(usize, &str) -> Value| {
        let lines: Vec<String> = pages
            .iter()
            .enumerate()
            .map(|(i, p)| line(i, p).to_string())
            .collect();
        std::fs::write(dir.join(name), lines.join("\n")).unwrap();
    };
    let question = |p: &str| format!("What does `{p}` do?");
    write(
        "demos.jsonl",
        &|i, p| serde_json::json!({"prompt": question(p), "response": DOCS[i]}),
    );
    write("rankings.jsonl", &|i, p| {
        let responses = [DOCS[i], DOCS[(i + 1) % 4], DOCS[4]];
        serde_json::json!({"id": format!("{p}#name"), "prompt": question(p),
            "responses": responses, "ranking": [0, 1, 2]})
    });
    write(
        "prompts.jsonl",
        &|_, p| serde_json::json!({"id": format!("{p}#name"), "prompt": question(p)}),
    );
    write("facts.jsonl", &|_, p| {
        serde_json::json!({"id": format!("{p}#name"), "page": p, "kind": "name",
            "facts": [p, "file"], "allowed": [], "reference_words": 8})
    });
}

/// The teacher's InstructGPT stages for the tiny recipe, a few steps each, and their
/// comparison.
fn teacher_stages(d: &std::path::Display) -> String {
    format!(
        r#"[teacher.sft]
train_data = "{d}/demos.jsonl"
valid_fraction = 0.0
[teacher.sft.train]
steps = 2
batch_size = 2
eval_every = 0
checkpoint_every = 2
[teacher.reward]
train_data = "{d}/rankings.jsonl"
[teacher.reward.train]
steps = 2
batch_size = 2
eval_every = 0
checkpoint_every = 2
[teacher.ppo]
prompts = "{d}/prompts.jsonl"
gold_facts = "{d}/facts.jsonl"
steps = 1
batch_size = 2
mini_batch_size = 2
ppo_epochs = 1
max_new_tokens = 4
[teacher.compare]
prompts = "{d}/prompts.jsonl"
gold_facts = "{d}/facts.jsonl"
rankings = "{d}/rankings.jsonl"
max_new_tokens = 4
bootstrap_samples = 100
examples = 1
"#
    )
}

/// The tiny recipe: one pruned and distilled student, quantized to q8_0 (RTN) and q4_0
/// (GPTQ), exported in every GGUF type; with `with_stages`, the teacher goes through SFT,
/// the reward model and PPO first, and the stages are compared.
fn recipe(dir: &Path, out: &str, kd_steps: usize, lr: f64, with_stages: bool) -> PathBuf {
    let d = dir.display();
    let stages = if with_stages {
        teacher_stages(&d)
    } else {
        String::new()
    };
    let text = format!(
        r#"title = "tiny"
out = "{d}/{out}"
[teacher]
model = "{d}/teacher"
{stages}[data]
train = "{d}/train.jsonl"
valid = "{d}/valid.jsonl"
test = "{d}/test.jsonl"
general_test = "{d}/general.jsonl"
[eval]
window = 16
windows = 4
batch = 2
[bench]
prompt_tokens = 8
decode_tokens = 4
repeats = 1
[export]
gguf = ["f32", "f16", "q8_0", "q4_0", "q4_1"]

[[student]]
name = "s"
[student.prune]
calib_samples = 4
calib_len = 16
[student.prune.structured]
intermediate_size = 64
num_key_value_heads = 1
[student.kd.kd]
chunk_rows = 7
[student.kd.train]
steps = {kd_steps}
batch_size = 2
seq_len = 16
learning_rate = {lr}
warmup_steps = 1
eval_every = 0
eval_batches = 1
checkpoint_every = 2
[[student.quantize]]
scheme = "q8_0"
[[student.quantize]]
scheme = "q4_0"
method = "gptq"
calib_samples = 4
calib_len = 16
"#
    );
    let path = dir.join(format!("{out}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn distill() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.env("DISTILL_LOG", "info");
    c
}

fn run(recipe: &Path, resume: bool) -> Output {
    let mut c = distill();
    c.arg("run").arg(recipe);
    if resume {
        c.arg("--resume");
    }
    c.output().expect("the distill binary runs")
}

/// `distill run RECIPE --check`'s standard output.
fn check(recipe: &Path) -> String {
    let out = distill()
        .arg("run")
        .arg(recipe)
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ok(out);
    stdout
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "distill run failed:\n{stderr}");
    stderr
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let m = distill_model::load::load_model(dir, &Device::flex()).unwrap();
    let mut w: Vec<(String, Vec<f32>)> = checkpoint::named_tensors(&m.model)
        .into_iter()
        .map(|(n, d)| (n, d.try_to_vec().unwrap()))
        .collect();
    w.extend(
        m.model
            .packed_weights()
            .into_iter()
            .map(|(n, p)| (n, p.dequantize())),
    );
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn marker(run: &Path, stage: &str) -> Value {
    let text = std::fs::read_to_string(run.join(stage).join("stage.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// transformers loads the HF export and reproduces our logits within 1e-4.
fn transformers_matches(export: &Path) {
    let m = distill_model::load::load_model(export, &Device::flex()).unwrap();
    let ids: Vec<i64> = (0..24)
        .map(|i| (i * 37 + 5) % m.config.vocab_size as i64)
        .collect();
    let n = ids.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, n]), &Device::flex());
    let logits: Vec<f32> = m
        .model
        .forward(input, &Layout::causal(1, n))
        .into_data()
        .try_to_vec()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let reference = tmp.path().join("reference.safetensors");
    let v = m.config.vocab_size;
    fn bytes(
        x: &[u8],
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
    ) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(dtype, shape, x).unwrap()
    }
    let ids_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
    let mask_bytes: Vec<u8> = ids.iter().flat_map(|_| 1i64.to_le_bytes()).collect();
    let logit_bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tensors = [
        (
            "input_ids",
            bytes(&ids_bytes, safetensors::Dtype::I64, vec![1, n]),
        ),
        (
            "attention_mask",
            bytes(&mask_bytes, safetensors::Dtype::I64, vec![1, n]),
        ),
        (
            "logits",
            bytes(&logit_bytes, safetensors::Dtype::F32, vec![1, n, v]),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &reference).unwrap();
    let out = run_python(
        "check_logits.py",
        &[
            export.to_str().unwrap(),
            reference.to_str().unwrap(),
            "--tol",
            "1e-4",
        ],
    );
    assert!(out.contains("max_abs_diff="), "{out}");
}

/// The `gguf` package reads `path` with the same tensor values as our reader, and the model in
/// the file has the weights of `model` (the one the run evaluated), bit for bit.
fn gguf_holds(path: &Path, model: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("tensors.safetensors");
    let printed = run_python(
        "read_gguf.py",
        &[path.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(printed.contains("tokenizer.chat_template"), "{printed}");
    let file = GgufFile::open(path).unwrap();
    for t in file.tensors() {
        let (_, theirs) = read_reference(&out, &t.name);
        let ours = file.dequantize(t).unwrap();
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: {}: the gguf package reads other values",
            path.display(),
            t.name
        );
    }
    let from_gguf = gguf::load(path, &Device::flex()).unwrap();
    let mut a: Vec<(String, Vec<f32>)> = checkpoint::named_tensors(&from_gguf.model)
        .into_iter()
        .map(|(n, d)| (n, d.try_to_vec().unwrap()))
        .collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        a,
        weights(model),
        "{} does not hold the evaluated weights",
        path.display()
    );
}

#[test]
fn tiny_recipe_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let path = recipe(d, "run", 6, 1e-2, true);
    let log = ok(run(&path, false));
    let out = d.join("run");

    // Exports: the float student in f32 for transformers, every GGUF type; the quantized
    // students dequantized to f16 for transformers and in their own GGUF type.
    let float = out.join("export/s");
    transformers_matches(&float);
    for t in ["f32", "f16", "q8_0", "q4_0", "q4_1"] {
        let f = float.join(format!("s.{t}.gguf"));
        let file = GgufFile::open(&f).unwrap();
        assert!(file.get("tokenizer.chat_template").is_some(), "{t}");
    }
    gguf_holds(&float.join("s.f32.gguf"), &out.join("students/s/kd/model"));
    for (name, t) in [("s-q8_0", "q8_0"), ("s-q4_0-gptq", "q4_0")] {
        let e = out.join("export").join(name);
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "README.md",
        ] {
            assert!(e.join(f).is_file(), "{name}: no {f}");
        }
        let stage = name.trim_start_matches("s-");
        gguf_holds(
            &e.join(format!("{name}.{t}.gguf")),
            &out.join("students/s").join(stage).join("model"),
        );
        let card = std::fs::read_to_string(e.join("README.md")).unwrap();
        assert!(
            card.contains("sha256") && card.contains("train.jsonl"),
            "{card}"
        );
        transformers_matches(&e);
    }
    let tc = std::fs::read_to_string(float.join("tokenizer_config.json")).unwrap();
    assert!(tc.contains("chat_template"), "{tc}");

    // The report: every model with every field, and one chart point each.
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/report.json")).unwrap())
            .unwrap();
    let models = report["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["teacher", "s-pruned", "s", "s-q8_0", "s-q4_0-gptq"]);
    for m in models {
        for key in ["parameters", "bytes_on_disk"] {
            assert!(m[key].as_u64().unwrap() > 0, "{m}");
        }
        let speed = &m["speed"];
        for key in [
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "peak_memory_bytes",
        ] {
            assert!(speed[key].as_f64().unwrap() > 0.0, "{key}: {m}");
        }
        let q = &m["quality"];
        for key in ["man_perplexity", "sotu_perplexity"] {
            assert!(q[key].as_f64().unwrap() > 1.0, "{key}: {m}");
        }
        if m["name"] != "teacher" {
            assert!(q["kl_to_teacher"].as_f64().unwrap() >= 0.0, "{m}");
            let top1 = q["top1_agreement"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&top1), "{m}");
        }
    }
    // The teacher's stages compared: base, SFT and PPO, with paired gains.
    let stages = &report["teacher_stages"];
    let names: Vec<&str> = stages["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "sft", "ppo"], "{stages}");
    assert_eq!(stages["prompts_used"], 4);
    assert_eq!(stages["reference"], "sft");
    for m in stages["models"].as_array().unwrap() {
        assert!(m["reward"]["estimate"].as_f64().unwrap().is_finite(), "{m}");
        let accuracy = m["choice_accuracy"]["estimate"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{m}");
    }
    assert!(
        stages["models"][2]["kl_to_reference"]["estimate"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(stages["gains"].as_array().unwrap().len(), 9, "{stages}");
    assert!(out.join("teacher/compare/answers.jsonl").is_file());
    // The reward model's held-out accuracy, and every stage's running time.
    let reward = &report["reward"];
    assert!(reward["overall"]["pairs"].as_u64().unwrap() > 0, "{reward}");
    assert!(
        reward["data"].as_str().unwrap().contains("held out"),
        "{reward}"
    );
    let times: Vec<&str> = report["stage_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert!(t["seconds"].as_f64().unwrap() >= 0.0, "{t}");
            t["stage"].as_str().unwrap()
        })
        .collect();
    for stage in [
        "teacher/sft",
        "teacher/reward",
        "teacher/ppo",
        "teacher/compare",
    ] {
        assert!(times.contains(&stage), "{stage} in {times:?}");
    }
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(
        md.contains("## Stage times") && md.contains("| teacher/ppo "),
        "{md}"
    );
    assert!(
        md.contains("## Teacher stages") && md.contains("| sft → ppo | gold |"),
        "{md}"
    );

    let svg = std::fs::read_to_string(out.join("report/quality_vs_size.svg")).unwrap();
    assert_eq!(
        svg.matches("class=\"model-point\"").count(),
        models.len(),
        "{svg}"
    );
    let html = std::fs::read_to_string(out.join("report/report.html")).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("src=\"http"),
        "self-contained"
    );
    assert!(html.contains("<h2>Teacher stages</h2>") && html.contains("<h2>Stage times</h2>"));
    assert_html_renders(&out.join("report/report.html"));

    // A second run redoes nothing; a changed KD setting reruns KD and what follows, not the
    // pruning.
    let prune_before = marker(&out, "students/s/prune");
    let again = ok(run(&path, false));
    assert!(!again.contains("running"), "{again}");
    assert!(log.contains("running"), "{log}");
    let path = recipe(d, "run", 6, 5e-3, true);
    let changed = ok(run(&path, false));
    assert_eq!(marker(&out, "students/s/prune"), prune_before);
    for stage in [
        "students/s/kd",
        "students/s/q8_0",
        "eval/s",
        "export/s",
        "report",
    ] {
        assert!(
            changed.contains(&format!("{stage} (running")),
            "{stage} did not rerun:\n{changed}"
        );
    }
    assert!(changed.contains("eval/teacher (done before"), "{changed}");
    assert!(
        changed.contains("teacher/compare (done before"),
        "{changed}"
    );
}

#[test]
fn a_killed_run_resumes_to_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    setup(d);
    let whole = recipe(d, "whole", 40, 1e-2, false);
    let before = check(&whole);
    assert!(
        before.contains("[1/") && before.contains(": not started"),
        "{before}"
    );
    assert!(!d.join("whole").exists(), "--check wrote the run folder");
    ok(run(&whole, false));
    assert!(check(&whole).contains("every stage is done"));

    let killed = recipe(d, "killed", 40, 1e-2, false);
    let out = d.join("killed");
    let checkpoints = out.join("students/s/kd/checkpoints");
    let mut child = distill()
        .arg("run")
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let saved = std::fs::read_dir(&checkpoints)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
            })
            .unwrap_or(false);
        if saved {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        assert!(Instant::now() < deadline, "no checkpoint after 10 minutes");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        marker(&out, "students/s/kd")["done"],
        false,
        "killed mid-stage"
    );

    let status = check(&killed);
    assert!(
        status.contains("students/s/kd: interrupted after") && status.contains(" stages after it;"),
        "{status}"
    );
    assert!(status.contains("students/s/prune: done"), "{status}");
    let refused = run(&killed, false);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));
    let log = ok(run(&killed, true));
    assert!(
        log.contains("students/s/kd (interrupted, continuing"),
        "{log}"
    );
    for model in ["students/s/kd/model", "students/s/q4_0-gptq/model"] {
        assert_eq!(
            weights(&out.join(model)),
            weights(&d.join("whole").join(model)),
            "{model}"
        );
    }
}
