//! The `distill` binary end to end on a tiny random model (info, generate, chat, eval, bad
//! input), and chat templates against transformers' `apply_chat_template`.

mod common;

use burn::prelude::*;
use distill_model::LlamaConfig;
use distill_model::chat::{self, ChatTemplate, Message};
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// SmolLM2-Instruct's chat template, as in its tokenizer_config.json and GGUF metadata.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

const DOCS: &[&str] = &[
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "A tokenizer splits text into tokens, and the model only ever sees the ids.",
    "Distillation trains a small student to imitate a large teacher on one domain.",
];

/// A tiny random Llama with a trained BPE tokenizer and a ChatML template, saved once.
fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("distill-cli-model-{}", std::process::id()));
        let corpus: Vec<String> = DOCS.iter().map(|d| d.repeat(5)).collect();
        let mut tokenizer =
            Tokenizer::train_bpe(corpus, 320, &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"]).unwrap();
        tokenizer.chat_template = Some(CHATML.to_string());
        let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 32, 64, 2, 4, 2);
        config.initializer_range = 0.3;
        config.eos_token_id = vec![0];
        let model = config.init(&Device::flex(), 5);
        let m = ModelDir {
            config,
            model,
            tokenizer: Some(tokenizer),
            generation_config: None,
        };
        checkpoint::save_dir(&dir, &m, SaveOptions::default()).unwrap();
        dir
    })
}

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("the distill binary runs")
}

/// Runs distill, asserts success, returns stdout.
fn ok(args: &[&str]) -> String {
    let out = distill(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "distill {args:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs distill, asserts failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = distill(args);
    assert!(!out.status.success(), "distill {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn info_describes_the_model() {
    let out = ok(&["info", path(tiny_model())]);
    assert!(out.contains("architecture  LlamaForCausalLM"), "{out}");
    assert!(out.contains("2 layers, hidden 32"), "{out}");
    assert!(out.contains("model.layers.1.mlp.down_proj.weight"), "{out}");
}

#[test]
fn greedy_generation_is_deterministic() {
    let model = path(tiny_model());
    let args = [
        "generate",
        model,
        "--prompt",
        "The quick brown",
        "--max-tokens",
        "12",
    ];
    let first = ok(&args);
    assert!(first.starts_with("The quick brown"), "{first}");
    assert!(
        first.len() > "The quick brown\n".len(),
        "nothing generated: {first:?}"
    );
    assert_eq!(ok(&args), first);
    let sampled = [
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--top-k",
        "50",
        "--seed",
        "7",
    ];
    let a = ok(&[&args[..], &sampled[..]].concat());
    assert_eq!(ok(&[&args[..], &sampled[..]].concat()), a);
}

#[test]
fn chat_generation_prints_only_the_answer() {
    let model = path(tiny_model());
    let args = [
        "generate",
        model,
        "--chat",
        "--prompt",
        "Who sleeps?",
        "--max-tokens",
        "8",
    ];
    let answer = ok(&args);
    assert!(!answer.contains("Who sleeps?"), "{answer}");
    assert!(!answer.contains("<|im_start|>"), "{answer}");
    assert_eq!(ok(&args), answer);

    // The template's end-of-turn token is found and is a stop token.
    let tokenizer = Tokenizer::from_dir(tiny_model()).unwrap();
    let template = ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    assert_eq!(
        template.end_of_turn(&tokenizer),
        tokenizer.token_to_id("<|im_end|>")
    );
}

#[test]
fn eval_on_text_and_on_token_ids_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let text = dir.path().join("docs.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| serde_json::json!({"id": i, "text": DOCS[i % 3]}).to_string())
        .collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    let tokenizer = Tokenizer::from_dir(model).unwrap();
    let docs: Vec<Vec<u32>> = (0..12)
        .map(|i| tokenizer.encode(DOCS[i % 3]).unwrap())
        .collect();
    let ids = dir.path().join("docs.json");
    std::fs::write(&ids, serde_json::to_string(&docs).unwrap()).unwrap();

    let report = |data: &Path, name: &str| -> Value {
        let json = dir.path().join(name);
        let out = ok(&[
            "eval",
            path(model),
            "--data",
            path(data),
            "--window",
            "32",
            "--batch",
            "3",
            "--json",
            path(&json),
        ]);
        assert!(out.contains("perplexity"), "{out}");
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
    };
    let from_text = report(&text, "text.json");
    let from_ids = report(&ids, "ids.json");
    let stream = docs.iter().map(|d| d.len() + 1).sum::<usize>();
    assert_eq!(from_text["stream_tokens"], stream);
    assert_eq!(from_text["data_format"], "text");
    assert_eq!(from_ids["data_format"], "ids");
    // Fewer than the default 64 windows: all the stream holds.
    assert_eq!(from_text["windows"], stream / 32);
    assert_eq!(from_text["stride"], 32);
    assert_eq!(from_text["tokens_scored"], (stream / 32) * 31);
    assert_eq!(from_text["data_sha256"].as_str().unwrap().len(), 64);
    for key in [
        "stream_tokens",
        "windows",
        "tokens_scored",
        "mean_nll",
        "perplexity",
    ] {
        assert_eq!(from_text[key], from_ids[key], "{key}");
    }
    let ppl = from_text["perplexity"].as_f64().unwrap();
    let nll = from_text["mean_nll"].as_f64().unwrap();
    assert!(ppl > 1.0 && (ppl - nll.exp()).abs() < 1e-9, "{ppl} {nll}");
}

#[test]
fn bad_input_fails_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    for args in [
        vec!["info", path(&missing)],
        vec!["generate", path(&missing), "--prompt", "x"],
        vec!["eval", path(&missing), "--data", path(&missing)],
    ] {
        let err = fails(&args);
        assert!(err.contains("no-such-model"), "{args:?}: {err}");
    }
    let model = path(tiny_model());
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let err = fails(&["eval", model, "--data", path(&empty)]);
    assert!(err.contains("empty.jsonl"), "{err}");
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    let err = fails(&["eval", model, "--data", path(&short)]);
    assert!(err.contains("short.txt") && err.contains("window"), "{err}");
    let big = dir.path().join("big.json");
    std::fs::write(&big, "[1, 2, 99999]").unwrap();
    let err = fails(&["eval", model, "--data", path(&big), "--window", "2"]);
    assert!(err.contains("big.json") && err.contains("99999"), "{err}");
    let err = fails(&["eval", model, "--data", path(&missing)]);
    assert!(err.contains("no-such-model"), "{err}");
}

/// Our rendering (text and ids) equals transformers' `apply_chat_template` on the fixture's
/// template and on SmolLM2's, for conversations with and without a system turn.
#[test]
fn chat_templates_match_transformers() {
    let fixture = common::hf_fixtures().join("llama_tied_gqa");
    let conversations = serde_json::json!([
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "  spaces and\nnewlines  \n"}
        ],
        [{"role": "user", "content": "日本語 🦀 \"quotes\" {{ not jinja }}"}]
    ]);
    let templates = serde_json::json!([null, SMOLLM2]);
    let script = r#"
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
convs, templates = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = []
for t in templates:
    for c in convs:
        text = tok.apply_chat_template(c, chat_template=t, tokenize=False, add_generation_prompt=True)
        ids = tok.apply_chat_template(c, chat_template=t, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out.append({"text": text, "ids": list(ids)})
print(json.dumps(out))
"#;
    let output = Command::new(common::python())
        .args(["-c", script, path(&fixture)])
        .arg(conversations.to_string())
        .arg(templates.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let expected: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();

    let tokenizer = Tokenizer::from_dir(&fixture).unwrap();
    let mut smollm = tokenizer.clone();
    smollm.chat_template = Some(SMOLLM2.to_string());
    let mut expected = expected.iter();
    for tok in [&tokenizer, &smollm] {
        let template = ChatTemplate::from_tokenizer(tok).unwrap();
        for conv in conversations.as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(conv.clone()).unwrap();
            let want = expected.next().unwrap();
            let text = template.render(&messages, true).unwrap();
            assert_eq!(text, want["text"].as_str().unwrap());
            let ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
            assert_eq!(chat::encode_prompt(tok, &text).unwrap(), ids, "{text:?}");
        }
        assert_eq!(template.end_of_turn(tok), tok.token_to_id("<|im_end|>"));
    }
}

/// A benchmark report as `distill run` writes it: a teacher and two students, one without a
/// speed, in `DIR/run/report.json`.
fn sample_report(dir: &Path) -> PathBuf {
    let model = |name: &str, role: &str, bytes: u64, ppl: f64, decode: Option<f64>| {
        let student = role == "student";
        serde_json::json!({
            "name": name,
            "role": role,
            "path": format!("runs/demo/{name}"),
            "format": if bytes < 200_000_000 { "q4_0" } else { "f32" },
            "parameters": bytes / 4,
            "bytes_on_disk": bytes,
            "speed": decode.map(|d| serde_json::json!({
                "prefill_tokens_per_s": d * 10.0,
                "decode_tokens_per_s": d,
                "peak_memory_bytes": bytes + 60_000_000,
                "prompt_tokens": 128,
                "decode_tokens": 32,
                "repeats": 3,
            })),
            "quality": {
                "man_perplexity": ppl,
                "sotu_perplexity": ppl * 4.0,
                "mc_accuracy": null,
                "kl_to_teacher": if student { Some(0.8) } else { None },
                "top1_agreement": if student { Some(0.63) } else { None },
                "mc_flip_rate": null,
            },
        })
    };
    let report = serde_json::json!({
        "title": "Man-page students",
        "created": "2025-01-31T12:00:00Z",
        "machine": {
            "cpu": "Test CPU", "cores": 2, "memory_bytes": 25_769_803_776u64,
            "os": "Linux", "device": "flex (CPU)",
        },
        "eval": {
            "window": 512,
            "windows": 64,
            "data": [{"name": "man-page test", "path": "manpages.test.jsonl", "sha256": "0".repeat(64)}],
        },
        "settings": {"teacher": "smollm2"},
        "models": [
            model("teacher", "teacher", 540_000_000, 7.4, Some(14.0)),
            model("pruned-kd", "student", 344_000_000, 16.4, Some(21.0)),
            model("pruned-kd-q4", "student", 97_000_000, 17.9, None),
        ],
    });
    let path = dir.join("run").join("report.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    path
}

/// `distill report` renders the three files; `--readme` replaces the text between the markers
/// (again on a second run, to the same text; `--chart` links a copy of the chart) and fails,
/// leaving the file, without them.
#[test]
fn report_renders_and_updates_a_readme() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report(dir.path());
    let readme = dir.path().join("README.md");
    let original =
        "# Project\n\nIntro.\n\n<!-- report:begin -->\nold\n<!-- report:end -->\n\nTail.\n";
    std::fs::write(&readme, original).unwrap();
    ok(&["report", path(&report), "--readme", path(&readme)]);
    let run = dir.path().join("run");
    for name in ["report.md", "report.html", "quality_vs_size.svg"] {
        assert!(run.join(name).is_file(), "{name} not written");
    }
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(md.contains("| pruned-kd-q4 "), "{md}");

    let text = std::fs::read_to_string(&readme).unwrap();
    assert!(
        text.starts_with("# Project\n\nIntro.\n\n<!-- report:begin -->\n"),
        "{text}"
    );
    assert!(text.ends_with("<!-- report:end -->\n\nTail.\n"), "{text}");
    assert!(!text.contains("\nold\n"), "{text}");
    let rows = text.lines().filter(|l| l.starts_with('|')).count();
    assert_eq!(
        rows,
        2 + 3,
        "header, separator and one row per model:\n{text}"
    );
    assert!(text.contains("](run/quality_vs_size.svg)"), "{text}");
    ok(&["report", path(&report), "--readme", path(&readme)]);
    assert_eq!(std::fs::read_to_string(&readme).unwrap(), text);
    // `--chart` copies the chart where the repository keeps it and links the copy.
    let kept = dir.path().join("docs").join("full.svg");
    ok(&[
        "report",
        path(&report),
        "--readme",
        path(&readme),
        "--chart",
        path(&kept),
    ]);
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        std::fs::read(run.join("quality_vs_size.svg")).unwrap()
    );
    let linked = std::fs::read_to_string(&readme).unwrap();
    assert!(linked.contains("](docs/full.svg)"), "{linked}");

    let bare = dir.path().join("NO-MARKERS.md");
    std::fs::write(&bare, "# Nothing to replace\n").unwrap();
    let err = fails(&["report", path(&report), "--readme", path(&bare)]);
    assert!(
        err.contains("NO-MARKERS.md") && err.contains("report:begin"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&bare).unwrap(),
        "# Nothing to replace\n"
    );
}

/// `distill bench` on two random models from their `config.json`: one table row each, with a
/// peak memory that holds at least the larger model's weights.
#[test]
fn bench_measures_two_models_in_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.json");
    let large = dir.path().join("large.json");
    let config = |vocab, hidden, ffn| LlamaConfig::llama(vocab, hidden, ffn, 2, 4, 2);
    let large_config = config(8192, 512, 1024);
    for (file, c) in [
        (&small, config(256, 32, 64)),
        (&large, large_config.clone()),
    ] {
        std::fs::write(file, c.to_hf_json("float32").to_string()).unwrap();
    }
    let json = dir.path().join("bench.json");
    let out = ok(&[
        "bench",
        path(&small),
        path(&large),
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "4",
        "--repeats",
        "1",
        "--json",
        path(&json),
    ]);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with('|')).skip(2).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains("small.json") && rows[1].contains("large.json"),
        "{out}"
    );
    assert!(out.lines().next().unwrap().contains("peak MB"), "{out}");
    for row in &rows {
        let peak: f64 = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(peak > 1.0, "peak MB {peak} in {row}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let weights = (large_config.num_parameters() * 4) as u64;
    let peak = models[1]["speed"]["peak_memory_bytes"].as_u64().unwrap();
    assert!(
        peak > weights,
        "peak {peak} bytes below the weights' {weights}"
    );
    for m in models {
        assert!(
            m["speed"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{m}"
        );
        assert_eq!(m["speed"]["prompt_tokens"], 8);
    }
}

/// The HTML report renders in headless Chromium (`scripts/render-html`) to a page that is
/// not blank and shows the chart's markers in their colours. Skips, saying so, without
/// Chromium; CI installs it.
#[test]
fn report_html_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let report = sample_report(dir.path());
    ok(&["report", path(&report)]);
    common::assert_html_renders(&dir.path().join("run/report.html"));
}
