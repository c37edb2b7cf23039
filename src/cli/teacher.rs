//! `distill teacher ...`: the teacher's stages.

use anyhow::Result;
use clap::{Args, Subcommand};
use distill_model::device::DeviceChoice;
use distill_model::train::TrainControl;
use distill_teacher::compare::{self, CompareConfig, NamedModel};
use distill_teacher::ppo::{self, PpoConfig};
use distill_teacher::pretrain::{self, PretrainConfig};
use distill_teacher::questions::generate::{self as questions, QuestionsConfig};
use distill_teacher::reward::{self, AccuracyReport, RewardConfig};
use distill_teacher::sample_rankings::{self, SampleRankingsConfig};
use distill_teacher::sft::{self, SftConfig};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum TeacherCommand {
    /// Pretrain from scratch or continue training a model on text.
    Pretrain(StageArgs),
    /// Supervised fine-tuning on demonstrations (loss on the assistant's tokens only).
    Sft(StageArgs),
    /// Train a reward model on ranked answers, from the SFT model.
    Reward(StageArgs),
    /// Generate the man-page question set: demonstrations, rankings, prompts, judge facts.
    Questions(QuestionsArgs),
    /// PPO against the reward model with a KL penalty to the SFT policy.
    Ppo(PpoArgs),
    /// Rank a policy's own sampled answers against the reference answers (token F1) into
    /// rankings for `teacher reward`.
    RankSamples(RankSamplesArgs),
    /// Compare the path's models (base, SFT, PPO) on held-out prompts: gold score, reward,
    /// multiple-choice accuracy and KL to SFT, with paired-bootstrap intervals for each gain.
    Compare(CompareArgs),
}

#[derive(Args)]
pub struct RankSamplesArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model that answers (usually the SFT model).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Prompts `{"id","prompt"}`.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Rankings whose first-ranked answer is each prompt's reference.
    #[arg(long)]
    references: Option<PathBuf>,
    /// The rankings file written.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct CompareArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model as NAME=PATH, in the path's order (repeat; replaces the file's list).
    #[arg(long = "model", value_name = "NAME=PATH")]
    models: Vec<String>,
    /// The reward model (`teacher reward`'s OUT/model).
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
pub struct PpoArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The SFT model: the policy's start and the frozen KL reference.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The reward model (`teacher reward`'s OUT/model).
    #[arg(long)]
    reward_model: Option<PathBuf>,
    /// Rollout-and-update steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the last checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
pub struct QuestionsArgs {
    /// Folder of the shared split: manpages.{train,validation,test}.jsonl and
    /// sotu.{train,validation,test}.jsonl (off-topic candidates).
    #[arg(long, default_value = "assets/data")]
    manpages_dir: PathBuf,
    /// Output folder (replaced as a whole).
    #[arg(long, default_value = "assets/questions")]
    out: PathBuf,
    /// Seed of the phrasing, candidate and order choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(command: TeacherCommand, device: DeviceChoice) -> Result<()> {
    match command {
        TeacherCommand::Pretrain(args) => run_pretrain(args, device),
        TeacherCommand::Sft(args) => run_sft(args, device),
        TeacherCommand::Reward(args) => run_reward(args, device),
        TeacherCommand::Questions(args) => run_questions(args),
        TeacherCommand::Ppo(args) => run_ppo(args, device),
        TeacherCommand::RankSamples(args) => run_rank_samples(args, device),
        TeacherCommand::Compare(args) => run_compare(args, device),
    }
}

fn run_rank_samples(args: RankSamplesArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => SampleRankingsConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
        None => SampleRankingsConfig::default(),
    };
    for (flag, key) in [
        (args.policy, &mut config.policy),
        (args.prompts, &mut config.prompts),
        (args.references, &mut config.references),
        (args.out, &mut config.out),
    ] {
        if let Some(path) = flag {
            *key = path;
        }
    }
    let summary = sample_rankings::run(&config, &device.open()?)?;
    println!("{summary}");
    println!("written to {}", config.out.display());
    Ok(())
}

fn run_compare(args: CompareArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => CompareConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
        None => CompareConfig::default(),
    };
    if !args.models.is_empty() {
        config.models = args
            .models
            .iter()
            .map(|m| match m.split_once('=') {
                Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(NamedModel {
                    name: name.into(),
                    path: path.into(),
                }),
                _ => Err(anyhow::anyhow!("--model {m:?}: expected NAME=PATH")),
            })
            .collect::<Result<_>>()?;
    }
    if let Some(rm) = args.reward_model {
        config.reward_model = Some(rm);
    }
    if let Some(out) = args.out {
        config.out = out;
    }
    let report = compare::run(&config, &device.open()?)?;
    println!("{}", report.markdown());
    println!(
        "written to {} in {:.0}s",
        config.out.join("compare.json").display(),
        report.seconds
    );
    Ok(())
}

fn run_ppo(args: PpoArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => PpoConfig::from_toml_file(path).map_err(anyhow::Error::msg)?,
        None => PpoConfig::default(),
    };
    if let Some(policy) = args.policy {
        config.policy = policy;
    }
    if let Some(reward_model) = args.reward_model {
        config.reward_model = reward_model;
    }
    if let Some(steps) = args.steps {
        config.steps = steps;
    }
    if let Some(out) = args.out {
        config.out = out;
    }
    let control = TrainControl {
        resume: args.resume,
        ..TrainControl::default()
    };
    let t0 = std::time::Instant::now();
    let s = ppo::run(&config, &device.open()?, &control)?;
    println!(
        "PPO finished: {} steps in {:.1}s ({} this run)",
        s.steps_done,
        t0.elapsed().as_secs_f64(),
        s.steps_done - s.start_step
    );
    let window = s.history.len().min(5);
    if window > 0 {
        let (first, last) = (&s.history[..window], &s.history[s.history.len() - window..]);
        let mean = |rows: &[ppo::log::PpoLogRow], f: fn(&ppo::log::PpoLogRow) -> f64| {
            rows.iter().map(f).sum::<f64>() / rows.len() as f64
        };
        println!(
            "  score {:.3} → {:.3}, KL {:.2} → {:.2} nats/response (means of the first and last {window} steps)",
            mean(first, |r| r.score),
            mean(last, |r| r.score),
            mean(first, |r| r.kl),
            mean(last, |r| r.kl)
        );
        if first.iter().all(|r| r.gold.is_some()) {
            println!(
                "  gold score {:.3} → {:.3}",
                mean(first, |r| r.gold.unwrap_or(f64::NAN)),
                mean(last, |r| r.gold.unwrap_or(f64::NAN))
            );
        }
    }
    println!(
        "  log written to {}",
        config.out.join("ppo_log.csv").display()
    );
    if let Some(kept) = ppo::log::selected(&s.selection) {
        println!(
            "  on the {} selection prompts, greedy answers: gold score {:.3} at step 0 (SFT); kept step {} (gold {:.3}, reward {:.3}); log in {}",
            config
                .select_prompts
                .as_deref()
                .unwrap_or(std::path::Path::new(""))
                .display(),
            s.selection[0].gold,
            kept.step,
            kept.gold,
            kept.score,
            config.out.join("select_log.csv").display()
        );
    }
    if let Some(dir) = &s.model_dir {
        println!(
            "  plot written to {}",
            config.out.join("ppo_log.svg").display()
        );
        println!("  model written to {}", dir.display());
    }
    Ok(())
}

fn run_questions(args: QuestionsArgs) -> Result<()> {
    let config = QuestionsConfig {
        manpages_dir: args.manpages_dir,
        out: args.out,
        seed: args.seed,
        ..QuestionsConfig::default()
    };
    let t0 = std::time::Instant::now();
    let summary = questions::run(&config)?;
    println!("{summary}");
    println!(
        "question set written to {} in {:.1}s",
        config.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_pretrain(args: StageArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => PretrainConfig::from_toml_file(path)?,
        None => PretrainConfig::default(),
    };
    if let Some(init) = &args.init {
        config.init = Some(init.clone());
    }
    args.apply(
        &mut config.train_data,
        &mut config.valid_data,
        &mut config.out,
        &mut config.train.steps,
    );
    let s = pretrain::run(&config, &device.open()?, &args.control())?;
    let last = s.history.last();
    println!(
        "pretraining finished: {} steps in {:.1}s",
        s.steps, s.seconds
    );
    println!(
        "  parameters {}, training tokens {}, {} tokens/step, {:.0} tokens/s over the whole run (loading and tokenizing included)",
        s.parameters,
        s.train_tokens,
        s.tokens_per_step,
        s.tokens_per_step as f64 * s.history.len() as f64 / s.seconds.max(1e-9)
    );
    if let Some(p) = last {
        println!("  final train loss {:.4}", p.train);
    }
    if let Some(v) = s.history.iter().rev().find_map(|p| p.valid) {
        println!("  final valid loss {v:.4} (perplexity {:.2})", v.exp());
    }
    println!("  model written to {}", s.model_dir.display());
    Ok(())
}

/// The flags `teacher pretrain`, `teacher sft` and `teacher reward` share.
#[derive(Args)]
pub struct StageArgs {
    /// A TOML file of settings (see README); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The model to start from (HF directory or GGUF file); for pretrain, without it the
    /// model starts from scratch.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Training data: text (.jsonl of {"text"} lines, or plain text) for pretrain, records
    /// (.jsonl) for sft and reward.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation data, as `--data`.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Optimizer steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Continue from the last checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
}

impl StageArgs {
    /// Overrides the config's keys with the flags given (all but `--init`, whose key differs
    /// in type between the stages).
    fn apply<D: From<PathBuf>>(
        &self,
        train_data: &mut D,
        valid_data: &mut Option<D>,
        out: &mut PathBuf,
        steps: &mut usize,
    ) {
        if let Some(v) = &self.data {
            *train_data = v.clone().into();
        }
        if let Some(v) = &self.valid {
            *valid_data = Some(v.clone().into());
        }
        if let Some(v) = &self.out {
            *out = v.clone();
        }
        if let Some(v) = self.steps {
            *steps = v;
        }
    }

    fn control(&self) -> TrainControl {
        TrainControl {
            resume: self.resume,
            ..TrainControl::default()
        }
    }
}

fn run_sft(args: StageArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => SftConfig::from_toml_file(path)?,
        None => SftConfig::default(),
    };
    if let Some(init) = &args.init {
        config.init = init.clone();
    }
    args.apply(
        &mut config.train_data,
        &mut config.valid_data,
        &mut config.out,
        &mut config.train.steps,
    );
    let s = sft::run(&config, &device.open()?, &args.control())?;
    println!(
        "fine-tuning finished: {} steps in {:.1}s ({:.2}s per step over the whole run, loading included)",
        s.steps,
        s.seconds,
        s.seconds / s.history.len().max(1) as f64
    );
    println!(
        "  {} training / {} validation demonstrations, {:.1} tokens each ({:.1} trained); {} prompts and {} responses truncated",
        s.train_examples,
        s.valid_examples,
        s.mean_tokens.0,
        s.mean_tokens.1,
        s.truncated_prompts,
        s.truncated_responses
    );
    if let Some(p) = s.history.last() {
        println!("  final train loss {:.4}", p.train);
    }
    if let Some(v) = s.history.iter().rev().find_map(|p| p.valid) {
        println!("  final valid loss {v:.4}");
    }
    if s.steps == config.train.steps {
        println!("  model written to {}", s.model_dir.display());
    }
    Ok(())
}

fn run_reward(args: StageArgs, device: DeviceChoice) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => RewardConfig::from_toml_file(path)?,
        None => RewardConfig::default(),
    };
    if let Some(init) = &args.init {
        config.init = init.clone();
    }
    args.apply(
        &mut config.train_data,
        &mut config.valid_data,
        &mut config.out,
        &mut config.train.steps,
    );
    let s = reward::run(&config, &device.open()?, &args.control())?;
    println!(
        "reward model finished: {} steps in {:.1}s ({:.2}s per step over the whole run, loading included)",
        s.steps,
        s.seconds,
        s.seconds / s.history.len().max(1) as f64
    );
    println!(
        "  {} training prompts; {} answers with truncated prompts, {} with truncated responses",
        s.train_rankings, s.truncated_prompts, s.truncated_responses
    );
    if let Some(p) = s.history.last() {
        println!("  final train loss {:.4}", p.train);
    }
    for report in s.validation.iter().chain(&s.test) {
        print_accuracy(report);
    }
    if s.steps == config.train.steps {
        println!("  model written to {}", s.model_dir.display());
        println!("  report written to {}", s.report_path.display());
    }
    Ok(())
}

fn print_accuracy(r: &AccuracyReport) {
    println!(
        "  pairwise accuracy on {} ({} prompts): {:.1}% of {} pairs; rewards {:.3} ± {:.3}",
        r.data,
        r.rankings,
        100.0 * r.overall.accuracy,
        r.overall.pairs,
        r.reward_mean,
        r.reward_std
    );
    for (kind, a) in &r.by_pair_type {
        println!("    {kind:<28} {:>5.1}% of {}", 100.0 * a.accuracy, a.pairs);
    }
}
