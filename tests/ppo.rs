//! PPO end to end on a tiny random model (vocabulary 32) and a toy reward, the fraction of one
//! chosen token in the response: the reward must rise while the adaptive β holds the KL to the
//! reference near its target, and a run killed and resumed must equal an uninterrupted one.
//! Then `distill teacher ppo` from files: a tiny policy, reward model and gold judge.

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data::PackedWindows;
use distill_model::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_model::train::TrainControl;
use distill_model::{LlamaConfig, LlamaForCausalLM};
use distill_teacher::ppo::log::PpoLogRow;
use distill_teacher::ppo::{
    self, GoldFn, LoraConfig, PpoConfig, PpoOutcome, PpoRun, PtxConfig, Selection,
};
use distill_teacher::reward::{self, RewardDir, RewardModel};
use std::path::Path;
use std::process::{Command, Output};

const VOCAB: usize = 32;
/// The token the toy reward counts.
const CHOSEN: u32 = 7;

fn sft(seed: u64) -> ModelDir {
    let mut config = LlamaConfig::llama(VOCAB, 32, 64, 2, 4, 2);
    config.initializer_range = 0.1;
    ModelDir {
        model: config.init(&Device::flex().autodiff(), seed),
        config,
        tokenizer: None,
        generation_config: None,
    }
}

/// 32 prompts of 2 to 6 pseudo-random tokens.
fn prompts() -> Vec<Vec<u32>> {
    let mut state = 99u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    (0..32)
        .map(|_| {
            let len = 2 + next() as usize % 5;
            (0..len).map(|_| next() % VOCAB as u32).collect()
        })
        .collect()
}

/// The share of the chosen token in each response.
fn chosen_share(_prompts: &[Vec<u32>], responses: &[Vec<u32>]) -> Vec<f32> {
    responses
        .iter()
        .map(|r| r.iter().filter(|&&t| t == CHOSEN).count() as f32 / r.len() as f32)
        .collect()
}

/// The share of the chosen token in one response, as a gold score.
fn chosen_share_of(_prompt: usize, response: &[u32]) -> f64 {
    let n = response.iter().filter(|&&t| t == CHOSEN).count();
    n as f64 / response.len().max(1) as f64
}

fn quiet() -> TrainControl {
    distill_model::device::pin_default_device_to_cpu();
    TrainControl::quiet()
}

/// The toy task's settings: β starts near where it balances this reward, and the controller
/// holds the KL to the reference at 4 nats per 8-token response.
fn toy_config(out: &Path) -> PpoConfig {
    PpoConfig {
        out: out.to_path_buf(),
        steps: 60,
        batch_size: 32,
        mini_batch_size: 8,
        ppo_epochs: 4,
        learning_rate: 1e-3,
        max_new_tokens: 8,
        init_kl_coef: 0.05,
        target: 4.0,
        horizon: 200.0,
        checkpoint_every: 20,
        seed: 3,
        ..PpoConfig::default()
    }
}

fn mean(rows: &[PpoLogRow], get: fn(&PpoLogRow) -> f64) -> f64 {
    rows.iter().map(get).sum::<f64>() / rows.len() as f64
}

/// PPO from the toy SFT model (seed 1) on `prompts` against the toy reward, with `select`'s
/// held-out prompts and gold score choosing the step to keep.
fn train_toy(
    config: &PpoConfig,
    prompts: &[Vec<u32>],
    select: Option<(&[Vec<u32>], &mut dyn GoldFn)>,
    control: &TrainControl,
) -> PpoOutcome {
    let mut reward = chosen_share;
    let select = select.map(|(prompts, gold)| Selection { prompts, gold });
    ppo::train(
        config,
        PpoRun {
            sft: sft(1),
            prompts,
            stop_tokens: &[],
            ptx: None,
            reward: &mut reward,
            gold: None,
            select,
        },
        &Device::flex(),
        control,
    )
    .unwrap()
}

#[test]
fn ppo_raises_the_reward_while_the_kl_stays_near_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let config = toy_config(tmp.path());
    let outcome = train_toy(&config, &prompts(), None, &quiet());
    let h = &outcome.history;
    for r in h {
        println!(
            "step {:>3} score {:.3} kl {:.3} beta {:.4} entropy {:.3} clip {:.3} vloss {:.4}",
            r.step, r.score, r.kl, r.beta, r.entropy, r.clip_frac, r.value_loss
        );
    }
    let first = mean(&h[..5], |r| r.score);
    let last = mean(&h[h.len() - 10..], |r| r.score);
    let kl = mean(&h[h.len() - 10..], |r| r.kl);
    println!(
        "score {first:.3} → {last:.3}; final KL {kl:.3} (target {})",
        config.target
    );
    assert!(
        first < 0.1,
        "a random model rarely picks the token: {first}"
    );
    assert!(
        last > first + 0.15,
        "the reward must rise: {first} → {last}"
    );
    assert!(
        (0.5 * config.target..=1.5 * config.target).contains(&kl),
        "final KL {kl} is not within ±50% of the target {}",
        config.target
    );
    assert!(tmp.path().join("model/model.safetensors").is_file());
    let svg = std::fs::read_to_string(tmp.path().join("ppo_log.svg")).unwrap();
    assert!(svg.contains("KL to reference"));
}

/// With several answers to each prompt and a reward whose offset per prompt dwarfs what the
/// answers earn (as the reward model's score differs by question kind), the leave-one-out
/// baseline compares answers to one prompt, and PPO still raises the share of the token.
#[test]
fn several_answers_per_prompt_learn_despite_large_per_prompt_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let config = PpoConfig {
        answers_per_prompt: 4,
        ..toy_config(tmp.path())
    };
    let mut reward = |prompts: &[Vec<u32>], responses: &[Vec<u32>]| -> Vec<f32> {
        let share = chosen_share(prompts, responses);
        let offset = |p: &[u32]| 20.0 * (p[0] % 5) as f32;
        prompts
            .iter()
            .zip(share)
            .map(|(p, s)| offset(p) + s)
            .collect()
    };
    let mut gold = chosen_share_of;
    let outcome = ppo::train(
        &config,
        PpoRun {
            sft: sft(1),
            prompts: &prompts(),
            stop_tokens: &[],
            ptx: None,
            reward: &mut reward,
            gold: Some(&mut gold),
            select: None,
        },
        &Device::flex(),
        &quiet(),
    )
    .unwrap();
    let h = &outcome.history;
    let share = |rows: &[PpoLogRow]| mean(rows, |r| r.gold.unwrap());
    let (first, last) = (share(&h[..5]), share(&h[h.len() - 10..]));
    assert!(first < 0.1, "{first}");
    assert!(
        last > first + 0.15,
        "the token's share must rise: {first} → {last}"
    );
}

/// The held-out gold score chooses the policy kept: a gold that only the SFT policy satisfies
/// keeps the SFT weights; one that follows the reward keeps a later step, the best evaluated,
/// also when the run is killed after that evaluation and resumed.
#[test]
fn selection_keeps_the_policy_with_the_best_held_out_gold_score() {
    let prompts = prompts();
    let run_with = |out: &Path, gold: &mut dyn FnMut(usize, &[u32]) -> f64, control| {
        let config = PpoConfig {
            steps: 24,
            gold_facts: Some("facts".into()),
            select_prompts: Some("held-out prompts".into()),
            select_every: 8,
            ..toy_config(out)
        };
        let mut gold = gold;
        train_toy(
            &config,
            &prompts,
            Some((&prompts[..16], &mut gold)),
            &control,
        )
    };
    let run = |out: &Path, gold: &mut dyn FnMut(usize, &[u32]) -> f64| run_with(out, gold, quiet());
    let tmp = tempfile::tempdir().unwrap();
    let start = weights(&sft(1).model.valid());

    let mut following = chosen_share_of;
    let up = run(&tmp.path().join("up"), &mut following);
    let steps: Vec<usize> = up.selection.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 8, 16, 24]);
    let kept = ppo::log::selected(&up.selection).unwrap().clone();
    assert!(
        kept.step > 0 && kept.gold > up.selection[0].gold,
        "{:?}",
        up.selection
    );
    assert!(up.selection.iter().all(|r| r.gold <= kept.gold));
    let saved =
        distill_model::load::load_model(&tmp.path().join("up/model"), &Device::flex()).unwrap();
    assert_eq!(weights(&saved.model), weights(&up.model));
    assert_ne!(weights(&up.model), start);
    let csv = std::fs::read_to_string(tmp.path().join("up/select_log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        !tmp.path().join("up/select").exists(),
        "the candidates are removed"
    );

    // Killed after step 21 (the checkpoint of step 20 is the last), then resumed.
    let split = tmp.path().join("split");
    let stop = TrainControl {
        stop_after: Some(21),
        ..quiet()
    };
    assert!(run_with(&split, &mut following, stop).model_dir.is_none());
    let resume = TrainControl {
        resume: true,
        ..quiet()
    };
    let resumed = run_with(&split, &mut following, resume);
    assert_eq!(resumed.selection, up.selection);
    assert_eq!(weights(&resumed.model), weights(&up.model));

    let mut against = |i: usize, r: &[u32]| -chosen_share_of(i, r);
    let down = run(&tmp.path().join("down"), &mut against);
    assert_eq!(ppo::log::selected(&down.selection).unwrap().step, 0);
    assert_eq!(weights(&down.model), start, "the SFT policy is kept");
    assert_eq!(
        down.history, up.history,
        "selection does not change training"
    );
}

/// With `select_samples`, each evaluation scores that many answers per held-out prompt,
/// sampled with the same seeds at every evaluation: a policy that barely moves gives the same
/// answers each time, while the draws for one prompt differ.
#[test]
fn sampled_selection_draws_the_same_seeded_samples_at_every_evaluation() {
    let prompts = prompts();
    let held_out = &prompts[..16];
    let tmp = tempfile::tempdir().unwrap();
    let config = PpoConfig {
        steps: 2,
        learning_rate: 1e-12,
        gold_facts: Some("facts".into()),
        select_prompts: Some("held-out prompts".into()),
        select_every: 1,
        select_samples: 3,
        ..toy_config(tmp.path())
    };
    let mut seen: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut gold = |i: usize, r: &[u32]| {
        seen.push((i, r.to_vec()));
        chosen_share_of(i, r)
    };
    let outcome = train_toy(&config, &prompts, Some((held_out, &mut gold)), &quiet());
    let per_evaluation = held_out.len() * config.select_samples;
    assert_eq!(outcome.selection.len(), 3, "steps 0, 1 and 2");
    assert_eq!(seen.len(), 3 * per_evaluation);
    let evaluations: Vec<&[(usize, Vec<u32>)]> = seen.chunks(per_evaluation).collect();
    assert_eq!(evaluations[0], evaluations[1]);
    assert_eq!(evaluations[0], evaluations[2]);
    let draws_of = |i: usize| -> Vec<&Vec<u32>> {
        evaluations[0]
            .iter()
            .filter(|(p, _)| *p == i)
            .map(|(_, r)| r)
            .collect()
    };
    assert!(
        (0..held_out.len()).all(|i| draws_of(i).len() == config.select_samples),
        "every prompt is answered select_samples times"
    );
    assert!(
        (0..held_out.len()).any(|i| draws_of(i).windows(2).any(|w| w[0] != w[1])),
        "the draws are sampled, not greedy"
    );
}

/// Every tensor of a model, flattened, in module order.
fn weights(model: &LlamaForCausalLM) -> Vec<f32> {
    distill_model::checkpoint::named_tensors(model)
        .into_iter()
        .flat_map(|(_, d)| d.try_to_vec::<f32>().unwrap())
        .collect()
}

#[test]
fn a_killed_and_resumed_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = prompts();
    let text: Vec<u32> = (0..2000u32)
        .map(|i| (i * 7 + i / 13) % VOCAB as u32)
        .collect();
    let windows = PackedWindows::new(text, 16, 5, "toy text").unwrap();
    let config = |out: &str| PpoConfig {
        steps: 6,
        batch_size: 16,
        checkpoint_every: 2,
        lora: Some(LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        }),
        ptx: Some(PtxConfig {
            data: "toy text".into(),
            coef: 0.5,
            seq_len: 16,
            batch_size: 2,
        }),
        ..toy_config(&tmp.path().join(out))
    };
    let run = |config: &PpoConfig, control: TrainControl| {
        let mut reward = chosen_share;
        let mut gold = |_: usize, r: &[u32]| r.len() as f64;
        ppo::train(
            config,
            PpoRun {
                sft: sft(1),
                prompts: &prompts,
                stop_tokens: &[3],
                ptx: Some(&windows),
                reward: &mut reward,
                gold: Some(&mut gold),
                select: None,
            },
            &Device::flex(),
            &control,
        )
        .unwrap()
    };

    let whole = run(&config("whole"), quiet());
    assert_eq!(whole.steps_done, 6);
    let split = config("split");
    // "Killed" after step 3: the checkpoint of step 2 is the last on disk.
    let first = run(
        &split,
        TrainControl {
            stop_after: Some(3),
            ..quiet()
        },
    );
    assert_eq!(first.steps_done, 3);
    assert!(first.model_dir.is_none());
    let latest = std::fs::read_to_string(tmp.path().join("split/checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000002");
    let resumed = run(
        &split,
        TrainControl {
            resume: true,
            ..quiet()
        },
    );
    assert_eq!((resumed.start_step, resumed.steps_done), (2, 6));
    assert_eq!(resumed.history, whole.history, "the logs differ");
    assert!(
        whole
            .history
            .iter()
            .all(|r| r.gold.is_some() && r.ptx_loss.is_some())
    );
    let csv =
        |run: &str| std::fs::read_to_string(tmp.path().join(run).join("ppo_log.csv")).unwrap();
    assert_eq!(csv("whole"), csv("split"));
    assert_eq!(
        weights(&resumed.model),
        weights(&whole.model),
        "the weights differ"
    );
    let start = weights(&sft(1).model.valid());
    assert_ne!(weights(&whole.model), start, "training changed nothing");
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A tiny policy (BPE with a ChatML template, `<|im_end|>` as EOS) and a reward model on the
/// same backbone, saved as HF directories.
fn tiny_policy_and_reward(dir: &Path) {
    let corpus = vec!["use ls to list files. cat prints a file. grep finds lines. ".repeat(6)];
    let mut tokenizer =
        Tokenizer::train_bpe(corpus, 300, &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"]).unwrap();
    tokenizer.chat_template = Some(CHATML.into());
    tokenizer.eos_token = Some("<|im_end|>".into());
    let mut config = LlamaConfig::llama(tokenizer.vocab_size(), 32, 64, 2, 4, 2);
    config.eos_token_id = tokenizer.eos_id().into_iter().collect();
    let policy = ModelDir {
        model: config.init(&Device::flex(), 1),
        config: config.clone(),
        tokenizer: Some(tokenizer.clone()),
        generation_config: None,
    };
    checkpoint::save_dir(&dir.join("sft"), &policy, SaveOptions::default()).unwrap();
    let rm = RewardDir {
        model: RewardModel::from_causal_lm(config.init(&Device::flex(), 2), &config, 3),
        config,
        tokenizer: Some(tokenizer),
    };
    reward::save_reward_model(&dir.join("reward"), &rm).unwrap();
}

fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .env("DISTILL_LOG", "warn")
        .output()
        .expect("the distill binary runs")
}

#[test]
fn the_command_line_runs_ppo_from_files_with_the_gold_judge() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_policy_and_reward(tmp.path());
    let prompts = tmp.path().join("prompts.jsonl");
    let lines: Vec<String> = ["ls", "cat", "grep"]
        .iter()
        .map(|c| format!(r#"{{"id":"{c}#name","prompt":"What does `{c}` do?"}}"#))
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let facts = tmp.path().join("facts.jsonl");
    let lines: Vec<String> = ["ls", "cat", "grep"]
        .iter()
        .map(|c| {
            format!(
                r#"{{"id":"{c}#name","page":"{c}","kind":"name","facts":["{c}","files"],"allowed":[],"reference_words":6}}"#
            )
        })
        .collect();
    std::fs::write(&facts, lines.join("\n")).unwrap();
    let out = tmp.path().join("ppo");
    let config = tmp.path().join("ppo.toml");
    let toml = format!(
        "policy = {:?}\nreward_model = {:?}\nprompts = {:?}\ngold_facts = {:?}\nselect_prompts = {:?}\nselect_every = 1\nbatch_size = 4\nmini_batch_size = 2\nppo_epochs = 1\nmax_new_tokens = 6\nsteps = 9\n",
        tmp.path().join("sft"),
        tmp.path().join("reward"),
        prompts,
        facts,
        prompts
    );
    std::fs::write(&config, toml).unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec!["teacher", "ppo", "--config", config.to_str().unwrap()];
        a.extend(extra);
        a.extend(["--out", out.to_str().unwrap()]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let o = distill(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, text) = run(&["--steps", "2"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("PPO finished: 2 steps") && text.contains("gold score"),
        "{text}"
    );
    let csv = std::fs::read_to_string(out.join("ppo_log.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let gold: f64 = rows[1].split(',').nth(2).unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&gold), "{csv}");
    assert!(out.join("model/model.safetensors").is_file());
    assert!(out.join("model/tokenizer.json").is_file());
    assert!(out.join("ppo_log.svg").is_file());
    assert!(text.contains("kept step"), "{text}");
    let select = std::fs::read_to_string(out.join("select_log.csv")).unwrap();
    assert_eq!(select.lines().count(), 4, "steps 0, 1 and 2: {select}");
    let back = distill_model::load::load_model(&out.join("model"), &Device::flex()).unwrap();
    assert!(back.tokenizer.unwrap().chat_template.is_some());

    // A prompt the gold judge has no facts for is refused, naming both files.
    std::fs::write(
        &prompts,
        r#"{"id":"man#name","prompt":"What does `man` do?"}"#,
    )
    .unwrap();
    let (ok, text) = run(&["--resume"]);
    assert!(!ok);
    assert!(
        text.contains("prompts.jsonl") && text.contains("facts.jsonl"),
        "{text}"
    );
}

/// Σ over `answer`'s tokens of KL(p ‖ q) at each position, from one unpadded forward of
/// prompt+answer through each model, log-softmax in f64.
fn kl_by_hand(p: &LlamaForCausalLM, q: &LlamaForCausalLM, prompt: &[u32], answer: &[u32]) -> f64 {
    let seq: Vec<i64> = prompt.iter().chain(answer).map(|&t| i64::from(t)).collect();
    let n = seq.len();
    let log_dist = |m: &LlamaForCausalLM| -> Vec<Vec<f64>> {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(seq.clone(), [1, n]), &Device::flex());
        let logits: Vec<f32> = m
            .forward(ids, &distill_model::Layout::causal(1, n))
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap();
        let v = logits.len() / n;
        (prompt.len() - 1..n - 1)
            .map(|t| {
                let row: Vec<f64> = logits[t * v..(t + 1) * v]
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                row.iter().map(|x| x - lse).collect()
            })
            .collect()
    };
    let (lp, lq) = (log_dist(p), log_dist(q));
    lp.iter()
        .zip(&lq)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.exp() * (x - y)).sum::<f64>())
        .sum()
}

/// Writes one line per page of `PAGES` to `dir/name`.
fn write_pages(dir: &Path, name: &str, line: impl Fn(&str) -> String) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, PAGES.map(line).join("\n")).unwrap();
    path
}

/// The pages the compare and rank-samples tests ask about.
const PAGES: [&str; 5] = ["ls", "cat", "grep", "find", "sort"];

/// `prompts.jsonl`: "What does `page` do?" for each of `PAGES`, id `page#name`.
fn name_prompts(dir: &Path) -> std::path::PathBuf {
    write_pages(dir, "prompts.jsonl", |c| {
        format!(r#"{{"id":"{c}#name","prompt":"What does `{c}` do?"}}"#)
    })
}

/// The answers `teacher compare` wrote to a JSON Lines file.
fn read_answers(path: &Path) -> Vec<distill_teacher::compare::Answer> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn compare_scores_each_stage_with_paired_intervals() {
    use distill_teacher::compare::{self, CompareConfig, NamedModel};
    let tmp = tempfile::tempdir().unwrap();
    tiny_policy_and_reward(tmp.path());
    // A second copy of the SFT model (every gain over it is exactly zero, and so is its KL),
    // and a different model on the same tokenizer.
    let sft = distill_model::load::load_model(&tmp.path().join("sft"), &Device::flex()).unwrap();
    checkpoint::save_dir(&tmp.path().join("copy"), &sft, SaveOptions::default()).unwrap();
    let other = ModelDir {
        model: sft.config.init(&Device::flex(), 9),
        config: sft.config.clone(),
        tokenizer: sft.tokenizer.clone(),
        generation_config: None,
    };
    checkpoint::save_dir(&tmp.path().join("other"), &other, SaveOptions::default()).unwrap();
    let pages = PAGES;
    let write = |name: &str, line: &dyn Fn(&str) -> String| write_pages(tmp.path(), name, line);
    let prompts = name_prompts(tmp.path());
    let facts = write("facts.jsonl", &|c| {
        format!(
            r#"{{"id":"{c}#name","page":"{c}","kind":"name","facts":["{c}","files"],"allowed":[],"reference_words":6}}"#
        )
    });
    let rankings = write("rankings.jsonl", &|c| {
        format!(
            r#"{{"id":"{c}#name","prompt":"What does `{c}` do?","responses":["{c} lists files","cat prints","grep finds","the war"],"ranking":[0,1,2,3]}}"#
        )
    });
    let named = |name: &str| NamedModel {
        name: name.into(),
        path: tmp.path().join(name),
    };
    let config = CompareConfig {
        models: vec![named("sft"), named("copy"), named("other")],
        reward_model: Some(tmp.path().join("reward")),
        prompts: prompts.clone(),
        gold_facts: facts,
        rankings: Some(rankings),
        max_new_tokens: 5,
        batch_size: 2,
        bootstrap_samples: 200,
        examples: 2,
        samples: 2,
        out: tmp.path().join("compare"),
        ..CompareConfig::default()
    };
    let report = compare::run(&config, &Device::flex()).unwrap();
    assert_eq!(report.prompts_used, 5);
    assert_eq!(report.questions, 5);
    assert_eq!(report.reference.as_deref(), Some("sft"));
    let [s, c, o] = &report.models[..] else {
        panic!("three models")
    };
    // Identical models answer identically, sampled answers too (the same seeds): every paired
    // gain is 0 with a point interval.
    assert_eq!(
        (s.gold, s.reward, s.choice_accuracy),
        (c.gold, c.reward, c.choice_accuracy)
    );
    assert_eq!(
        (s.sampled_gold, s.sampled_reward, s.sampled_tokens),
        (c.sampled_gold, c.sampled_reward, c.sampled_tokens)
    );
    assert!(s.sampled_gold.is_some() && s.sampled_reward.is_some());
    // The reward's agreement with gold on pairs of sampled answers is counted for every model
    // (here over the prompts whose two answers the judge tells apart, if any).
    assert_eq!(
        (s.sampled_agreement, s.sampled_agreement_prompts),
        (c.sampled_agreement, c.sampled_agreement_prompts)
    );
    assert!(
        report
            .models
            .iter()
            .all(|m| m.sampled_agreement_prompts.is_some())
    );
    assert!(s.sampled_tokens.unwrap() > 0.0);
    // samples.jsonl holds every sampled answer (3 models × 5 prompts × 2 samples), scored;
    // each model's best-of-2 is the gold of the answer with the higher reward, and its gain
    // is paired with the mean sampled gold.
    let sampled: Vec<compare::Answer> = read_answers(&tmp.path().join("compare/samples.jsonl"));
    assert_eq!(sampled.len(), 30);
    for m in &report.models {
        let mine: Vec<&compare::Answer> = sampled.iter().filter(|a| a.model == m.name).collect();
        let best: f64 = (0..5)
            .map(|i| {
                let pair: Vec<(f64, f64)> = [mine[i], mine[5 + i]]
                    .iter()
                    .map(|a| (a.gold, a.reward.unwrap()))
                    .collect();
                compare::best_by_reward(&pair)
            })
            .sum::<f64>()
            / 5.0;
        let mean = mine.iter().map(|a| a.gold).sum::<f64>() / 10.0;
        let (b, g) = (m.best_of_n_gold.unwrap(), m.best_of_n_gain.unwrap());
        assert!((b.estimate - best).abs() < 1e-12, "{b:?} vs {best}");
        assert!((g.estimate - (best - mean)).abs() < 1e-12, "{g:?}");
        assert!((m.sampled_gold.unwrap().estimate - mean).abs() < 1e-12);
    }
    // Sampled at temperature 1, the answers differ from the greedy ones somewhere.
    assert!(
        report
            .models
            .iter()
            .any(|m| m.sampled_reward.unwrap().estimate != m.reward.unwrap().estimate),
        "{:?}",
        report.models
    );
    for g in report.gains.iter().filter(|g| g.to == "copy") {
        assert_eq!(
            (g.gain.estimate, g.gain.low, g.gain.high),
            (0.0, 0.0, 0.0),
            "{g:?}"
        );
        assert_eq!(g.n, 5);
    }
    assert!(s.kl_to_reference.is_none());
    assert!(c.kl_to_reference.unwrap().estimate.abs() < 1e-5, "{c:?}");
    // Gains: sft→copy, copy→other, sft→other, each in gold, reward, MC accuracy, and the
    // sampled answers' gold and reward.
    assert_eq!(report.gains.len(), 15);
    let g = report
        .gains
        .iter()
        .find(|g| g.from == "sft" && g.to == "other" && g.metric == "gold")
        .unwrap();
    assert!((g.gain.estimate - (o.gold.estimate - s.gold.estimate)).abs() < 1e-12);
    assert!(g.gain.low <= g.gain.estimate && g.gain.estimate <= g.gain.high);

    // Every answer's KL equals the sum over its tokens from unpadded forwards, and its gold
    // score is the judge's.
    let answers: Vec<compare::Answer> = read_answers(&tmp.path().join("compare/answers.jsonl"));
    assert_eq!(answers.len(), 15);
    let judge = distill_teacher::questions::judge::GoldJudge::load(&config.gold_facts).unwrap();
    let tokenizer = sft.tokenizer.as_ref().unwrap();
    let template = distill_model::chat::ChatTemplate::from_tokenizer(tokenizer).unwrap();
    let eot = tokenizer.token_to_id("<|im_end|>").unwrap();
    let other =
        distill_model::load::load_model(&tmp.path().join("other"), &Device::flex()).unwrap();
    for (a, page) in answers.iter().filter(|a| a.model == "other").zip(pages) {
        assert_eq!(a.gold, judge.score(&a.id, &a.answer).unwrap());
        let user = distill_model::chat::Message::user(&format!("What does `{page}` do?"));
        let prompt = template.render(&[user], true).unwrap();
        let prompt = distill_model::chat::encode_prompt(tokenizer, &prompt).unwrap();
        assert!(a.tokens.len() <= 5 && (a.tokens.len() == 5 || a.tokens.last() == Some(&eot)));
        let want = kl_by_hand(&other.model, &sft.model, &prompt, &a.tokens);
        let got = a.kl.unwrap();
        assert!(
            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
            "{got} vs {want}"
        );
    }
    let md = std::fs::read_to_string(tmp.path().join("compare/compare.md")).unwrap();
    assert!(
        md.contains("| sft → other | gold |")
            && md.contains("KL to sft")
            && md.contains("| sft → other | sampled_gold |")
            && md.contains("sampled at temperature 1"),
        "{md}"
    );
    assert_eq!(report.examples.len(), 2);
    assert_eq!(report.examples[0].answers.len(), 3);
}

#[test]
fn sampled_answers_are_ranked_by_reference_f1_and_a_resumed_run_reuses_its_chunks() {
    use distill_teacher::records::Ranking;
    use distill_teacher::sample_rankings::{self, SampleRankingsConfig, reference_f1};
    let tmp = tempfile::tempdir().unwrap();
    tiny_policy_and_reward(tmp.path());
    let pages = PAGES;
    let write = |name: &str, line: &dyn Fn(&str) -> String| write_pages(tmp.path(), name, line);
    let prompts = name_prompts(tmp.path());
    let references = write("rankings.jsonl", &|c| {
        format!(
            r#"{{"id":"{c}#name","prompt":"What does `{c}` do?","responses":["the war","{c}: use ls to list files. cat prints a file. grep finds lines."],"ranking":[1,0]}}"#
        )
    });
    let config = SampleRankingsConfig {
        policy: tmp.path().join("sft"),
        prompts,
        references,
        samples: 4,
        max_new_tokens: 12,
        batch_size: 2,
        seed: 3,
        out: tmp.path().join("sampled.jsonl"),
        ..SampleRankingsConfig::default()
    };
    let device = Device::flex();
    let summary = sample_rankings::run(&config, &device).unwrap();
    assert_eq!((summary.prompts, summary.resumed_chunks), (5, 0));
    assert!(!config.partial().exists());
    let read = || -> Vec<Ranking> { distill_teacher::records::read_jsonl(&config.out).unwrap() };
    let first = read();
    assert_eq!(summary.rankings, first.len());
    assert!(
        !first.is_empty(),
        "the untrained model samples distinct answers"
    );
    for r in &first {
        // Ranked best first by F1 against the reference, strictly (ties and copies dropped).
        let page = r.id.as_ref().unwrap().trim_end_matches("#name");
        let reference =
            format!("{page}: use ls to list files. cat prints a file. grep finds lines.");
        let labels: Vec<f64> = r
            .ranking
            .iter()
            .map(|&i| reference_f1(&r.responses[i], &reference))
            .collect();
        assert!(labels.windows(2).all(|w| w[0] > w[1]), "{r:?} {labels:?}");
        assert!(r.responses.len() >= 2 && r.responses.len() <= 4);
    }

    // A partial file holding the chunks through the first one with a ranking (that ranking
    // altered, to show it is read, not redone) and a torn line: the rerun keeps those chunks
    // as written and redoes the rest as the first run did.
    let header = serde_json::json!({ "settings": config });
    let chunk_of = |r: &Ranking| {
        let id = r.id.as_deref().unwrap().trim_end_matches("#name");
        pages.iter().position(|&p| p == id).unwrap() / config.batch_size
    };
    let done = chunk_of(&first[0]) + 1;
    let mut lines = vec![header.to_string()];
    for c in 0..done {
        let mut rankings: Vec<Ranking> =
            first.iter().filter(|r| chunk_of(r) == c).cloned().collect();
        if let Some(r) = rankings.first_mut() {
            r.responses[0] = "an answer from the partial file".into();
        }
        lines.push(serde_json::json!({ "chunk": c, "rankings": rankings }).to_string());
    }
    lines.push(format!("{{\"chunk\": {done}, \"rank"));
    std::fs::write(config.partial(), lines.join("\n")).unwrap();
    let resumed = sample_rankings::run(&config, &device).unwrap();
    assert_eq!(resumed.resumed_chunks, done);
    let second = read();
    assert_eq!(second.len(), first.len());
    assert_eq!(second[0].responses[0], "an answer from the partial file");
    assert_eq!(second[0].ranking, first[0].ranking);
    assert_eq!(&second[1..], &first[1..]);

    // Other settings do not resume someone else's partial file.
    std::fs::write(config.partial(), format!("{header}\n")).unwrap();
    let other = SampleRankingsConfig {
        seed: 4,
        ..config.clone()
    };
    let err = sample_rankings::run(&other, &device)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("other settings") && err.contains(".partial"),
        "{err}"
    );
    // A prompt without a reference is named.
    std::fs::write(
        &other.prompts,
        r#"{"id":"mv#name","prompt":"What does `mv` do?"}"#,
    )
    .unwrap();
    std::fs::remove_file(config.partial()).unwrap();
    let err = sample_rankings::run(&other, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 1") && err.contains("mv#name"), "{err}");
}
