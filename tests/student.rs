//! Students end to end on tiny models: `distill student prune` and `student kd` through the
//! command line (structured and 2:4 pruning, online and cached teacher signal, masks kept
//! through training), the cached top-k against the online teacher, resume, and the refusal of
//! a teacher and student that do not share a tokenizer.

use burn::prelude::*;
use distill_model::LlamaConfig;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::train::TrainControl;
use distill_student::distill::{self, KdRunConfig, SignalMode};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DOCS: &[&str] = &[
    "open() returns a file descriptor; on error it returns -1 and sets errno to EACCES or ENOENT.",
    "The read() system call reads up to count bytes from a file descriptor into a buffer.",
    "ls lists directory contents; -l uses a long listing format and -a shows hidden entries.",
    "close() closes a file descriptor, so that it no longer refers to any file.",
];

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A tiny random model with a BPE tokenizer trained on `docs` and a ChatML template, saved to
/// `dir`.
fn tiny_model(dir: &Path, docs: &[&str], vocab: usize, seed: u64) -> PathBuf {
    let corpus: Vec<String> = docs.iter().map(|d| d.repeat(3)).collect();
    let specials = [ENDOFTEXT, "<|im_start|>", "<|im_end|>"];
    let mut tokenizer = Tokenizer::train_bpe(corpus, vocab, &specials).unwrap();
    tokenizer.chat_template = Some(CHATML.to_string());
    let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 32, 64, 2, 4, 2);
    config.initializer_range = 0.2;
    let m = ModelDir {
        model: config.init(&Device::flex(), seed),
        config,
        tokenizer: Some(tokenizer),
        generation_config: None,
    };
    checkpoint::save_dir(dir, &m, SaveOptions::default()).unwrap();
    dir.to_path_buf()
}

fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("train.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| serde_json::json!({"text": DOCS[i % DOCS.len()].repeat(1 + i % 3)}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("the distill binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = distill(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "distill {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A KD run of `steps` steps on the tiny corpus, quiet.
fn kd_config(teacher: &Path, student: &Path, data: &Path, out: &Path, steps: usize) -> KdRunConfig {
    let mut c = KdRunConfig {
        teacher: teacher.to_path_buf(),
        student: student.to_path_buf(),
        train_data: data.to_path_buf(),
        out: out.to_path_buf(),
        ..KdRunConfig::default()
    };
    c.train.steps = steps;
    c.train.batch_size = 2;
    c.train.seq_len = 16;
    c.train.warmup_steps = 1;
    c.train.learning_rate = 1e-2;
    c.train.eval_every = 0;
    c.train.checkpoint_every = 1;
    c.kd.chunk_rows = 7;
    c
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let m = checkpoint::load_dir(dir, &Device::flex()).unwrap();
    checkpoint::named_tensors(&m.model)
        .into_iter()
        .map(|(n, d)| (n, d.try_to_vec().unwrap()))
        .collect()
}

#[test]
fn prune_then_distill_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = tiny_model(&d.join("teacher"), DOCS, 300, 1);
    let data = corpus(d);
    let prune = d.join("prune.toml");
    std::fs::write(
        &prune,
        format!(
            "model = {:?}\nout = {:?}\ncalib_data = {:?}\ncalib_samples = 4\ncalib_len = 16\n\
             [structured]\nintermediate_size = 32\nnum_key_value_heads = 1\n",
            p(&teacher),
            p(&d.join("pruned")),
            p(&data)
        ),
    )
    .unwrap();
    let out = ok(&["student", "prune", "--config", p(&prune)]);
    assert!(out.contains("non-embedding parameters"), "{out}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("pruned/prune_report.json")).unwrap())
            .unwrap();
    let n = &report["non_embedding_parameters"];
    assert!(
        n[1].as_u64().unwrap() < n[0].as_u64().unwrap() * 6 / 10,
        "{n}"
    );
    let student = d.join("pruned/model");
    let c = LlamaConfig::from_file(&student.join("config.json")).unwrap();
    assert_eq!(
        (
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (32, 2, 1)
    );

    // Online, then cached twice: the second cached run reads the file the first one wrote.
    let kd = |name: &str, mode: &str| {
        let cfg = d.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "teacher = {:?}\nstudent = {:?}\ntrain_data = {:?}\nout = {:?}\n\
                 [signal]\nmode = {mode:?}\ntop_k = 8\ncache = {:?}\n\
                 [kd.loss]\nkind = \"jsd\"\nbeta = 0.5\ntemperature = 2.0\n\
                 [train]\nsteps = 3\nbatch_size = 2\nseq_len = 16\nwarmup_steps = 1\n\
                 eval_every = 0\n",
                p(&teacher),
                p(&student),
                p(&data),
                p(&d.join(name)),
                p(&d.join("topk.safetensors"))
            ),
        )
        .unwrap();
        ok(&["student", "kd", "--config", p(&cfg)])
    };
    let online = kd("online", "online");
    assert!(
        online.contains("distillation finished: 3 steps"),
        "{online}"
    );
    assert!(d.join("online/model/model.safetensors").is_file());
    kd("cached", "cached");
    let cache = d.join("topk.safetensors");
    let made = std::fs::metadata(&cache).unwrap().modified().unwrap();
    kd("cached-again", "cached");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().modified().unwrap(),
        made,
        "cache reused"
    );
    assert_eq!(
        weights(&d.join("cached/model")),
        weights(&d.join("cached-again/model"))
    );
}

#[test]
fn cached_top_k_of_every_token_trains_like_the_online_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = tiny_model(&d.join("teacher"), DOCS, 300, 1);
    let student = tiny_model(&d.join("student"), DOCS, 300, 2);
    let data = corpus(d);
    let vocab = LlamaConfig::from_file(&teacher.join("config.json"))
        .unwrap()
        .vocab_size;
    let mut online = kd_config(&teacher, &student, &data, &d.join("online"), 2);
    online.kd.loss =
        distill_student::kd::Divergence::ForwardKl(distill_student::kd::ForwardKlConfig {
            temperature: 2.0,
        });
    let mut cached = online.clone();
    cached.out = d.join("cached");
    cached.signal.mode = SignalMode::Cached;
    cached.signal.top_k = vocab;
    let a = distill::run(&online, &Device::flex(), &TrainControl::quiet()).unwrap();
    let b = distill::run(&cached, &Device::flex(), &TrainControl::quiet()).unwrap();
    for (x, y) in a.history.iter().zip(&b.history) {
        assert!(
            (x.train - y.train).abs() < 1e-4 * x.train.abs(),
            "{x:?} vs {y:?}"
        );
    }
    // A top-k of 4 is a different (coarser) signal.
    let mut coarse = cached.clone();
    coarse.out = d.join("coarse");
    coarse.signal.top_k = 4;
    coarse.signal.cache = Some(d.join("coarse.safetensors"));
    let c = distill::run(&coarse, &Device::flex(), &TrainControl::quiet()).unwrap();
    assert!((c.history[0].train - a.history[0].train).abs() > 1e-3);
}

#[test]
fn an_interrupted_distillation_resumes_to_the_same_student() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = tiny_model(&d.join("teacher"), DOCS, 300, 1);
    let student = tiny_model(&d.join("student"), DOCS, 300, 2);
    let data = corpus(d);
    let whole = kd_config(&teacher, &student, &data, &d.join("whole"), 4);
    distill::run(&whole, &Device::flex(), &TrainControl::quiet()).unwrap();
    let parts = kd_config(&teacher, &student, &data, &d.join("parts"), 4);
    let stopped = TrainControl {
        stop_after: Some(2),
        ..TrainControl::quiet()
    };
    let first = distill::run(&parts, &Device::flex(), &stopped).unwrap();
    assert_eq!(first.steps, 2);
    assert!(
        !d.join("parts/model").exists(),
        "no model before the run is finished"
    );
    let resumed = TrainControl {
        resume: true,
        ..TrainControl::quiet()
    };
    let second = distill::run(&parts, &Device::flex(), &resumed).unwrap();
    assert_eq!((second.steps, second.steps_run), (4, 2));
    let (a, b) = (
        weights(&d.join("whole/model")),
        weights(&d.join("parts/model")),
    );
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let diff = x
            .iter()
            .zip(y)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-6, "{name}: {diff}");
    }
}

#[test]
fn sparsity_survives_distillation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = tiny_model(&d.join("teacher"), DOCS, 300, 1);
    let data = corpus(d);
    let prune = d.join("prune.toml");
    std::fs::write(
        &prune,
        format!(
            "model = {:?}\nout = {:?}\ncalib_data = {:?}\ncalib_samples = 4\ncalib_len = 16\n\
             [unstructured]\nscore = \"wanda\"\npattern = \"2:4\"\n",
            p(&teacher),
            p(&d.join("sparse")),
            p(&data)
        ),
    )
    .unwrap();
    let out = ok(&["student", "prune", "--config", p(&prune)]);
    assert!(out.contains("sparsity 50.0%"), "{out}");
    let student = d.join("sparse/model");
    let config = kd_config(&teacher, &student, &data, &d.join("kd"), 3);
    distill::run(&config, &Device::flex(), &TrainControl::quiet()).unwrap();
    let (before, after) = (weights(&student), weights(&d.join("kd/model")));
    let mut moved = false;
    for ((name, x), (_, y)) in before.iter().zip(&after) {
        if !name.contains("proj") {
            continue;
        }
        for (u, v) in x.iter().zip(y) {
            if *u == 0.0 {
                assert_eq!(*v, 0.0, "{name}: a pruned weight came back");
            } else {
                moved |= u != v;
            }
        }
    }
    assert!(moved, "training changed the kept weights");
}

#[test]
fn a_vocabulary_mismatch_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let teacher = tiny_model(&d.join("teacher"), DOCS, 300, 1);
    let data = corpus(d);
    let other_docs = ["Completely different text gives a different byte-pair vocabulary."; 4];
    let smaller = tiny_model(&d.join("smaller"), &other_docs, 280, 2);
    let same_size = {
        // Same size, two tokens' ids swapped.
        let dir = d.join("swapped");
        tiny_model(&dir, DOCS, 300, 2);
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        let (a, b) = ("a".to_string(), "b".to_string());
        let (ia, ib) = (vocab[&a].clone(), vocab[&b].clone());
        vocab.insert(a, ib);
        vocab.insert(b, ia);
        std::fs::write(&path, json.to_string()).unwrap();
        dir
    };
    for (student, expect) in [
        (&smaller, "vocabulary sizes differ"),
        (&same_size, "token "),
    ] {
        let out = d.join("kd");
        let config = kd_config(&teacher, student, &data, &out, 2);
        let e = match distill::run(&config, &Device::flex(), &TrainControl::quiet()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} was accepted", student.display()),
        };
        assert!(
            e.contains("do not share a tokenizer") && e.contains(expect),
            "{e}"
        );
        assert!(!out.exists(), "work started for {}", student.display());
    }
}

#[test]
fn conversations_are_mixed_into_the_training_windows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(&d.join("model"), DOCS, 300, 1);
    let data = corpus(d);
    let mix = d.join("chat.jsonl");
    let chats: Vec<String> = (0..6)
        .map(|i| {
            if i % 2 == 0 {
                serde_json::json!({"prompt": format!("open() ({i})?"), "response": "A descriptor."})
            } else {
                serde_json::json!({"messages": [{"role": "user", "content": "ls?"},
                                                {"role": "assistant", "content": "It lists."}]})
            }
            .to_string()
        })
        .collect();
    std::fs::write(&mix, chats.join("\n")).unwrap();
    let mut config = kd_config(&model, &model, &data, &d.join("kd"), 4);
    config.mix_data = Some(mix.clone());
    config.mix_fraction = 0.25;
    let m = checkpoint::load_dir(&model, &Device::flex()).unwrap();
    let tokenizer = m.tokenizer.unwrap();
    // Turns are short, so every window of a conversation holds a turn marker.
    let marks = ["<|im_start|>", "<|im_end|>"].map(|t| tokenizer.token_to_id(t).unwrap());
    let windows = distill::training_windows(&config, &tokenizer).unwrap();
    assert_eq!(windows.len(), 8);
    let chat: Vec<bool> = windows
        .iter()
        .map(|w| marks.iter().any(|m| w.contains(m)))
        .collect();
    assert_eq!(chat, [false, false, false, true, false, false, false, true]);

    std::fs::write(&mix, format!("{}\n{{\"prompt\": 3}}\n", chats[0])).unwrap();
    let e = distill::training_windows(&config, &tokenizer)
        .unwrap_err()
        .to_string();
    assert!(e.contains("chat.jsonl:2") && e.contains("prompt"), "{e}");
}
