//! `distill run RECIPE.toml`: the stages a recipe names, from the teacher to exported,
//! evaluated and benchmarked students and a report, each in its folder of the run (see
//! [`stage`] for how stages are skipped, resumed and rerun).
//!
//! The run folder:
//! - `teacher/<stage>/`: the teacher's training stages, if any;
//! - `students/<name>/prune/`, `students/<name>/kd/`, `students/<name>/<variant>/`: each
//!   student's pruned, distilled and quantized models (in `model/`);
//! - `eval/<model>/`, `bench/<model>/`: each model's quality and speed;
//! - `export/<model>/`: each student as a Hugging Face folder with GGUF files and a model card;
//! - `report/`: the benchmark report (JSON, Markdown, HTML).

pub mod export;
pub mod recipe;
pub mod stage;

use crate::report::{
    self, DataFile, EvalSettings, Machine, ModelResult, Quality, Report, StageTime,
};
use anyhow::{Context, Result};
use burn::prelude::Device;
use distill_model::checkpoint::ModelDir;
use distill_model::device::DeviceChoice;
use distill_model::eval::{self, EvalConfig, EvalData, EvalReport};
use distill_model::gguf::GgufDtype;
use distill_model::train::TrainControl;
use distill_teacher::compare::{CompareConfig, CompareReport, NamedModel};
use distill_teacher::questions::choice::{ChoiceReport, evaluate_choices, flip_rate};
use distill_teacher::records::DataFiles;
use distill_teacher::reward::AccuracyReport;
use recipe::{LoadedRecipe, variant_suffix};
use serde_json::{Value, json};
use stage::{FileHashes, Policy, Stage};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a model in the run is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    /// The teacher.
    Teacher,
    /// A student after pruning, before distillation: the baseline KD must beat.
    Pruned,
    /// A float student.
    Student,
    /// A quantized variant of a student.
    Quantized,
}

/// A model the run made or starts from.
#[derive(Debug, Clone)]
struct Model {
    name: String,
    role: Role,
    /// An HF directory or a GGUF file.
    path: PathBuf,
    /// The key of the stage that made it (or the hash of the file it is).
    key: String,
    /// How it was made, one line per stage.
    lineage: Vec<String>,
    /// Weight format: `f32`, or the quantization scheme.
    format: String,
}

impl Model {
    /// Becomes the model `stage` wrote (in its `model/` folder, f32 weights), keyed by the
    /// stage, with `step` added to its lineage.
    fn made_by(&mut self, stage: &Stage, step: String) {
        self.path = stage.dir.join("model");
        self.key = stage.key.clone();
        self.lineage.push(step);
        self.format = "f32".into();
    }
}

/// The run in progress: where it is and what it has hashed.
struct Runner<'a> {
    loaded: &'a LoadedRecipe,
    /// The device stages run on, opened by the first stage that runs.
    device_choice: DeviceChoice,
    policy: Policy,
    hashes: FileHashes,
    done: usize,
    total: usize,
    started: Instant,
    /// Each finished stage's running time, in run order.
    times: Vec<StageTime>,
    /// Only tell where each stage stands, running none: stop at the first unfinished one.
    status_only: bool,
}

/// The error a status walk stops with at the first stage that has not finished.
#[derive(Debug)]
struct Unfinished(String);

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stage {} has not finished", self.0)
    }
}

impl std::error::Error for Unfinished {}

impl Runner<'_> {
    fn stage(&self, name: &str, key: String) -> Stage {
        Stage {
            name: name.to_string(),
            dir: self.loaded.out.join(name),
            key,
        }
    }

    /// Runs one stage, with a progress line before it.
    fn run(
        &mut self,
        stage: &Stage,
        work: impl FnOnce(&Path, bool) -> Result<Value>,
    ) -> Result<Value> {
        self.done += 1;
        let state = stage.state();
        let (status, log) = match &state {
            stage::State::Done { seconds, .. } => (
                format!("done ({})", report::markdown::duration(*seconds)),
                "done before, skipped",
            ),
            stage::State::Interrupted { seconds } => (
                format!(
                    "interrupted after {}: `--resume` continues it",
                    report::markdown::duration(*seconds)
                ),
                "interrupted, continuing",
            ),
            stage::State::Changed => (
                "settings or inputs changed since it ran: it runs again".into(),
                "running again; settings or inputs changed",
            ),
            stage::State::Fresh => ("not started".into(), "running"),
        };
        if self.status_only {
            println!("  [{}/{}] {}: {status}", self.done, self.total, stage.name);
            if !matches!(state, stage::State::Done { .. }) {
                return Err(Unfinished(stage.name.clone()).into());
            }
        } else {
            tracing::info!(
                "[{}/{}] {} ({log}; {:.0}s into the run)",
                self.done,
                self.total,
                stage.name,
                self.started.elapsed().as_secs_f64()
            );
        }
        let summary = stage.run(state, self.policy, work)?;
        self.times.push(StageTime {
            stage: stage.name.clone(),
            seconds: stage.seconds(),
        });
        Ok(summary)
    }

    fn data_hash(&mut self, path: &Option<PathBuf>) -> Result<String> {
        path.as_ref()
            .map_or(Ok(String::new()), |p| self.hashes.of(p))
    }

    /// The hashes of `files` joined by `+` (a single file's hash alone, as [`Self::data_hash`]
    /// gives it); empty for none.
    fn files_hash(&mut self, files: Option<&DataFiles>) -> Result<String> {
        let hashes = files
            .into_iter()
            .flat_map(DataFiles::iter)
            .map(|p| self.hashes.of(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(hashes.join("+"))
    }
}

/// Stages a recipe runs, for the progress count.
pub fn count_stages(r: &recipe::Recipe) -> usize {
    let t = &r.teacher;
    let teacher = usize::from(t.pretrain.is_some())
        + usize::from(t.sft.is_some())
        + usize::from(t.reward.is_some())
        + usize::from(t.ppo.is_some())
        + usize::from(t.compare.is_some());
    let mut models = 1;
    let mut made = 0;
    let mut exported = 0;
    for s in &r.students {
        made += usize::from(s.prune.is_some()) + usize::from(s.kd.is_some()) + s.quantize.len();
        let float = usize::from(s.prune.is_some() || s.kd.is_some());
        let pruned = usize::from(s.prune.is_some() && s.kd.is_some());
        models += float + pruned + s.quantize.len();
        exported += float + s.quantize.len();
    }
    teacher + made + 2 * models + exported + 1
}

/// Runs the recipe; returns the report.
pub fn run(loaded: &LoadedRecipe, device_choice: DeviceChoice, resume: bool) -> Result<Report> {
    let mut run = Runner::new(loaded, device_choice, resume, false);
    std::fs::create_dir_all(&loaded.out)
        .with_context(|| format!("cannot create {}", loaded.out.display()))?;
    let recipe_copy = loaded.out.join("recipe.toml");
    std::fs::copy(&loaded.path, &recipe_copy)
        .with_context(|| format!("cannot copy the recipe to {}", recipe_copy.display()))?;
    walk(&mut run)
}

/// Prints where each stage stands, in run order, up to the first that has not finished
/// (done, interrupted, changed since it ran, or not started), and how many follow it; runs
/// nothing and writes nothing. Returns whether every stage is done.
pub fn status(loaded: &LoadedRecipe, device_choice: DeviceChoice) -> Result<bool> {
    let mut run = Runner::new(loaded, device_choice, false, true);
    match walk(&mut run) {
        Ok(_) => Ok(true),
        Err(e) if e.is::<Unfinished>() => {
            let after = match run.total - run.done {
                0 => "the last stage".to_string(),
                1 => "1 stage after it".to_string(),
                n => format!("{n} stages after it"),
            };
            println!(
                "  {after}; `distill run {} --resume` continues",
                loaded.path.display()
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

impl<'a> Runner<'a> {
    fn new(
        loaded: &'a LoadedRecipe,
        device_choice: DeviceChoice,
        resume: bool,
        status_only: bool,
    ) -> Self {
        Self {
            loaded,
            device_choice,
            policy: Policy { resume },
            hashes: FileHashes::default(),
            done: 0,
            times: Vec::new(),
            total: count_stages(&loaded.recipe),
            started: Instant::now(),
            status_only,
        }
    }
}

/// Every stage in order: the teacher's, each student's, evaluation, benchmarks, exports and
/// the report.
fn walk(run: &mut Runner) -> Result<Report> {
    let r = &run.loaded.recipe;
    let (teacher, compared) = teacher(run)?;
    let mut models = vec![teacher.clone()];
    for i in 0..r.students.len() {
        models.extend(student(run, &teacher, i)?);
    }

    let mut results = Vec::new();
    let mut teacher_choices = None;
    for m in &models {
        let (quality, choices) = evaluate(run, m, &teacher, teacher_choices.as_ref())?;
        if m.role == Role::Teacher {
            teacher_choices = choices;
        }
        let speed = bench(run, m)?;
        results.push(Measured {
            model: m,
            quality,
            speed,
        });
    }
    for r in &results {
        if matches!(r.model.role, Role::Student | Role::Quantized) {
            export_model(run, r, &teacher)?;
        }
    }
    write_report(run, &results, compared)
}

/// The teacher: the recipe's model, or the output of its training stages; with the comparison
/// of those stages when the recipe asks for it.
fn teacher(run: &mut Runner) -> Result<(Model, Option<CompareReport>)> {
    let spec = run.loaded.recipe.teacher.clone();
    let key = run.hashes.of(&spec.model)?;
    let mut m = Model {
        name: spec.name.clone(),
        role: Role::Teacher,
        path: spec.model.clone(),
        key,
        lineage: vec![format!("start from `{}`", spec.model.display())],
        format: file_format(&spec.model),
    };
    if let Some(config) = spec.pretrain {
        let inputs = [
            m.key.clone(),
            run.hashes.of(&config.train_data)?,
            run.data_hash(&config.valid_data)?,
        ];
        let stage = run.stage(
            "teacher/pretrain",
            stage::key("pretrain", &config, &refs(&inputs)),
        );
        let init = m.path.clone();
        let device = run.device_choice;
        let mut settings = config.clone();
        run.run(&stage, |dir, resume| {
            let device = device.open()?;
            settings.init = Some(init);
            settings.out = dir.to_path_buf();
            let s = distill_teacher::pretrain::run(&settings, &device, &run_control(resume))?;
            Ok(json!({
                "steps": s.steps,
                "train_tokens": s.train_tokens,
                "tokens_per_step": s.tokens_per_step,
                "seconds": s.seconds,
                "final_valid_loss": s.history.iter().rev().find_map(|p| p.valid),
            }))
        })?;
        m.made_by(
            &stage,
            format!(
                "continued pretraining on `{}`: {} steps × {} tokens",
                config.train_data.display(),
                config.train.steps,
                config.train.batch_size * config.train.grad_accum * config.train.seq_len
            ),
        );
    }
    let mut stages: Vec<(String, Model)> = Vec::new();
    if let Some(config) = spec.sft {
        stages.push(("base".into(), m.clone()));
        let inputs = [
            m.key.clone(),
            run.hashes.of(&config.train_data)?,
            run.data_hash(&config.valid_data)?,
        ];
        let stage = run.stage("teacher/sft", stage::key("sft", &config, &refs(&inputs)));
        let (init, device, mut settings) = (m.path.clone(), run.device_choice, config.clone());
        run.run(&stage, |dir, resume| {
            let device = device.open()?;
            settings.init = init;
            settings.out = dir.to_path_buf();
            let s = distill_teacher::sft::run(&settings, &device, &run_control(resume))?;
            Ok(json!({
                "steps": s.steps,
                "seconds": s.seconds,
                "final_valid_loss": s.history.iter().rev().find_map(|p| p.valid),
            }))
        })?;
        m.made_by(
            &stage,
            format!(
                "supervised fine-tuning on `{}`: {} steps",
                config.train_data.display(),
                config.train.steps
            ),
        );
        stages.push(("sft".into(), m.clone()));
    }
    let mut reward = None;
    if let Some(config) = spec.reward {
        let inputs = [
            m.key.clone(),
            run.files_hash(Some(&config.train_data))?,
            run.files_hash(config.valid_data.as_ref())?,
            run.files_hash(config.test_data.as_ref())?,
        ];
        let stage = run.stage(
            "teacher/reward",
            stage::key("reward", &config, &refs(&inputs)),
        );
        let (init, device, mut settings) = (m.path.clone(), run.device_choice, config.clone());
        run.run(&stage, |dir, resume| {
            let device = device.open()?;
            settings.init = init;
            settings.out = dir.to_path_buf();
            let s = distill_teacher::reward::run(&settings, &device, &run_control(resume))?;
            Ok(json!({ "steps": s.steps, "report": s.report_path }))
        })?;
        reward = Some((stage.dir.join("model"), stage.key.clone()));
    }
    if let (Some(config), Some((reward_model, reward_key))) = (spec.ppo, reward.clone()) {
        let inputs = [
            m.key.clone(),
            reward_key,
            run.hashes.of(&config.prompts)?,
            run.data_hash(&config.gold_facts)?,
            run.data_hash(&config.select_prompts)?,
        ];
        let stage = run.stage("teacher/ppo", stage::key("ppo", &config, &refs(&inputs)));
        let (policy, device, mut settings) = (m.path.clone(), run.device_choice, config.clone());
        let summary = run.run(&stage, |dir, resume| {
            let device = device.open()?;
            settings.policy = policy;
            settings.reward_model = reward_model;
            settings.out = dir.to_path_buf();
            let s = distill_teacher::ppo::run(&settings, &device, &run_control(resume))?;
            Ok(json!({
                "steps": s.steps_done,
                "last": s.history.last(),
                "selection": s.selection,
                "kept_step": distill_teacher::ppo::log::selected(&s.selection).map(|r| r.step),
            }))
        })?;
        let kept = match (&config.select_prompts, summary["kept_step"].as_u64()) {
            (Some(path), Some(step)) => format!(
                ", the policy of step {step} kept for its gold score on `{}`",
                path.display()
            ),
            _ => String::new(),
        };
        m.made_by(&stage, format!(
            "PPO against the reward model with a KL penalty to the SFT policy on `{}`: {} steps{kept}",
            config.prompts.display(),
            config.steps
        ));
        stages.push(("ppo".into(), m.clone()));
    }
    let compared = match spec.compare {
        Some(config) => Some(compare_stages(run, config, &stages, reward.as_ref())?),
        None => None,
    };
    Ok((m, compared))
}

/// The `teacher/compare` stage: the models before and after each training stage side by side
/// on held-out prompts; returns its report.
fn compare_stages(
    run: &mut Runner,
    mut config: CompareConfig,
    stages: &[(String, Model)],
    reward: Option<&(PathBuf, String)>,
) -> Result<CompareReport> {
    let mut inputs: Vec<String> = stages.iter().map(|(_, m)| m.key.clone()).collect();
    inputs.extend(reward.map(|(_, key)| key.clone()));
    inputs.push(run.hashes.of(&config.prompts)?);
    inputs.push(run.hashes.of(&config.gold_facts)?);
    inputs.push(run.data_hash(&config.rankings)?);
    let stage = run.stage(
        "teacher/compare",
        stage::key("compare", &config, &refs(&inputs)),
    );
    config.models = stages
        .iter()
        .map(|(name, m)| NamedModel {
            name: name.clone(),
            path: m.path.clone(),
        })
        .collect();
    config.reward_model = reward.map(|(path, _)| path.clone());
    let device = run.device_choice;
    run.run(&stage, |dir, _| {
        let device = device.open()?;
        config.out = dir.to_path_buf();
        let r = distill_teacher::compare::run(&config, &device)?;
        Ok(json!({ "models": r.models.len(), "prompts": r.prompts_used, "gains": r.gains }))
    })?;
    let path = stage.dir.join("compare.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not a comparison report", path.display()))
}

fn run_control(resume: bool) -> TrainControl {
    TrainControl {
        resume,
        ..TrainControl::default()
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Student `i`: pruned, distilled and quantized; returns its models (the pruned baseline when
/// it is distilled after, the float student, the quantized variants).
fn student(run: &mut Runner, teacher: &Model, i: usize) -> Result<Vec<Model>> {
    let spec = run.loaded.recipe.students[i].clone();
    let dir = format!("students/{}", spec.name);
    let mut out = Vec::new();
    let mut current = Model {
        name: spec.name.clone(),
        role: Role::Student,
        format: "f32".into(),
        ..teacher.clone()
    };
    if let Some(mut config) = spec.prune.clone() {
        let inputs = [teacher.key.clone(), run.data_hash(&config.calib_data)?];
        let stage = run.stage(
            &format!("{dir}/prune"),
            stage::key("prune", &config, &refs(&inputs)),
        );
        let model = teacher.path.clone();
        let device = run.device_choice;
        let summary = run.run(&stage, |dir, _| {
            let device = device.open()?;
            config.model = model;
            config.out = dir.to_path_buf();
            let report = distill_student::prune::run::run(&config, &device)?;
            tracing::info!("{report}");
            Ok(json!({
                "parameters": report.parameters,
                "non_embedding_parameters": report.non_embedding_parameters,
                "sizes": report.sizes,
                "seconds": report.seconds,
            }))
        })?;
        current.made_by(
            &stage,
            format!(
                "pruned on `{}`: parameters {} → {}",
                config
                    .calib_data
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display(),
                summary["parameters"][0],
                summary["parameters"][1]
            ),
        );
        if spec.kd.is_some() {
            out.push(Model {
                name: format!("{}-pruned", spec.name),
                role: Role::Pruned,
                ..current.clone()
            });
        }
    }
    if let Some(mut config) = spec.kd.clone() {
        let inputs = [
            teacher.key.clone(),
            current.key.clone(),
            run.hashes.of(&config.train_data)?,
            run.data_hash(&config.valid_data)?,
            run.data_hash(&config.mix_data)?,
        ];
        let stage = run.stage(
            &format!("{dir}/kd"),
            stage::key("kd", &config, &refs(&inputs)),
        );
        let (t, s) = (teacher.path.clone(), current.path.clone());
        let device = run.device_choice;
        let summary = run.run(&stage, |dir, resume| {
            let device = device.open()?;
            config.teacher = t;
            config.student = s;
            config.out = dir.to_path_buf();
            let s = distill_student::distill::run(&config, &device, &run_control(resume))?;
            Ok(json!({
                "steps": s.steps,
                "tokens": s.steps * s.tokens_per_step,
                "windows": s.windows,
                "train_seconds": s.train_seconds,
                "final_valid_loss": s.history.iter().rev().find_map(|p| p.valid),
            }))
        })?;
        current.made_by(
            &stage,
            format!(
                "distilled from the teacher ({}, α = {}) on {} tokens of `{}`",
                serde_json::to_value(&config.kd.loss)?["kind"],
                config.kd.alpha,
                summary["tokens"],
                config.train_data.display()
            ),
        );
    }
    let float_made = spec.prune.is_some() || spec.kd.is_some();
    if float_made {
        out.push(current.clone());
    }
    for q in &spec.quantize {
        let suffix = variant_suffix(q);
        let inputs = [current.key.clone(), run.data_hash(&q.calib)?];
        let stage = run.stage(
            &format!("{dir}/{suffix}"),
            stage::key("quantize", q, &refs(&inputs)),
        );
        let source = current.path.clone();
        let device = run.device_choice;
        run.run(&stage, |dir, _| {
            let device = device.open()?;
            let line = crate::cli::quantize::quantize(&source, &dir.join("model"), q, &device)?;
            tracing::info!("{line}");
            Ok(json!({ "summary": line }))
        })?;
        let mut lineage = current.lineage.clone();
        lineage.push(format!(
            "quantized to {} with {}{}",
            q.scheme,
            q.method,
            q.calib.as_ref().map_or(String::new(), |c| format!(
                " on {} windows of `{}`",
                q.calib_samples,
                c.display()
            ))
        ));
        out.push(Model {
            name: format!("{}-{suffix}", spec.name),
            role: Role::Quantized,
            path: stage.dir.join("model"),
            key: stage.key.clone(),
            lineage,
            format: q.scheme.to_ascii_lowercase(),
        });
    }
    Ok(out)
}

/// A stage's result with the stage's key, which stands for the result in later keys (the
/// result itself may not survive a JSON round trip bit for bit).
struct Keyed<T> {
    value: T,
    key: String,
}

/// A model with its quality and speed.
struct Measured<'a> {
    model: &'a Model,
    quality: Keyed<Quality>,
    speed: Keyed<report::Speed>,
}

/// The eval stage's result.
#[derive(serde::Serialize, serde::Deserialize)]
struct Evaluation {
    domain: EvalReport,
    general: EvalReport,
    /// Multiple choice on `data.questions`, when the recipe has a question set.
    choices: Option<ChoiceReport>,
}

/// Perplexity on the domain test text (with KL and top-1 agreement to the teacher), on the
/// general test text, and multiple-choice accuracy on the question set (with the fraction of
/// answers that flip against the teacher's, `teacher_choices`).
fn evaluate(
    run: &mut Runner,
    m: &Model,
    teacher: &Model,
    teacher_choices: Option<&ChoiceReport>,
) -> Result<(Keyed<Quality>, Option<ChoiceReport>)> {
    let r = &run.loaded.recipe;
    let (test, general) = (r.data.test.clone(), r.data.general_test.clone());
    let questions = r.data.questions.clone();
    let spec = r.eval.clone();
    let inputs = [
        m.key.clone(),
        teacher.key.clone(),
        run.hashes.of(&test)?,
        run.hashes.of(&general)?,
        run.data_hash(&questions)?,
    ];
    let stage = run.stage(
        &format!("eval/{}", m.name),
        stage::key("eval", &spec, &refs(&inputs)),
    );
    let device = run.device_choice;
    let summary = run.run(&stage, |dir, _| {
        let device = device.open()?;
        let config = EvalConfig {
            window: spec.window,
            windows: spec.windows,
            batch: spec.batch,
        };
        let model = load(&m.path, &device)?;
        let teacher_dir = match m.role {
            Role::Teacher => None,
            _ => Some(load(&teacher.path, &device)?),
        };
        let score = |path: &Path, with_teacher: bool| -> Result<EvalReport> {
            let data = EvalData::load(path, model.tokenizer.as_ref(), eval::document_eos(&model))?;
            let t = teacher_dir
                .as_ref()
                .filter(|_| with_teacher)
                .map(|t| (t, teacher.name.as_str()));
            let windows = eval::window_starts(data.tokens.len(), config.window, config.windows);
            let bar = crate::cli::progress_bar(windows.len(), "window");
            let report = eval::evaluate(&model, &m.name, t, &data, &config, &device, |done| {
                bar.set_position(done as u64)
            })?;
            bar.finish_and_clear();
            Ok(report)
        };
        let choices = match &questions {
            Some(path) => {
                let bar = crate::cli::progress_bar(0, "candidate");
                let report =
                    evaluate_choices(&model, &m.name, path, spec.batch, &device, |done, all| {
                        bar.set_length(all as u64);
                        bar.set_position(done as u64);
                    })?;
                bar.finish_and_clear();
                Some(report)
            }
            None => None,
        };
        let e = Evaluation {
            domain: score(&test, true)?,
            general: score(&general, false)?,
            choices,
        };
        let value = serde_json::to_value(&e)?;
        distill_model::fsutil::write_json_atomic(&dir.join("eval.json"), &value)?;
        Ok(value)
    })?;
    let e: Evaluation = serde_json::from_value(summary)?;
    let flips = match (&e.choices, teacher_choices) {
        (Some(c), Some(t)) => Some(flip_rate(&t.predictions, &c.predictions)?),
        _ => None,
    };
    let value = Quality {
        man_perplexity: e.domain.perplexity,
        sotu_perplexity: e.general.perplexity,
        mc_accuracy: e.choices.as_ref().map(|c| c.accuracy),
        kl_to_teacher: e.domain.teacher.as_ref().map(|t| t.kl),
        top1_agreement: e.domain.teacher.as_ref().map(|t| t.top1_agreement),
        mc_flip_rate: flips,
    };
    Ok((
        Keyed {
            value,
            key: stage.key,
        },
        e.choices,
    ))
}

fn load(path: &Path, device: &Device) -> Result<ModelDir> {
    crate::cli::load_model(path, device)
}

/// Prefill and decode speed and peak memory, measured by `distill bench` in a process of its
/// own, so the peak is this model's and not what earlier stages left allocated.
fn bench(run: &mut Runner, m: &Model) -> Result<Keyed<report::Speed>> {
    let spec = run.loaded.recipe.bench.clone();
    let stage = run.stage(
        &format!("bench/{}", m.name),
        stage::key("bench", &spec, &[&m.key]),
    );
    let device = run.device_choice;
    let summary = run.run(&stage, |dir, _| {
        let json = dir.join("bench.json");
        let exe = std::env::current_exe().context("cannot find the distill binary")?;
        let status = std::process::Command::new(exe)
            .arg("--device")
            .arg(device.to_string())
            .arg("bench")
            .arg(&m.path)
            .args(["--prompt-tokens", &spec.prompt_tokens.to_string()])
            .args(["--decode-tokens", &spec.decode_tokens.to_string()])
            .args(["--repeats", &spec.repeats.to_string()])
            .arg("--json")
            .arg(&json)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run distill bench")?;
        anyhow::ensure!(
            status.success(),
            "distill bench {} failed",
            m.path.display()
        );
        let text = std::fs::read_to_string(&json)?;
        let value: Value = serde_json::from_str(&text)?;
        Ok(value["models"][0]["speed"].clone())
    })?;
    Ok(Keyed {
        value: serde_json::from_value(summary)?,
        key: stage.key,
    })
}

/// The student's export folder.
fn export_model(run: &mut Runner, measured: &Measured, teacher: &Model) -> Result<()> {
    let m = measured.model;
    let loaded = run.loaded;
    let r = &loaded.recipe;
    let types: Vec<GgufDtype> = r
        .export
        .gguf
        .iter()
        .map(|t| t.parse().expect("checked with the recipe"))
        .collect();
    let results = json!({ "quality": measured.quality.value, "speed": measured.speed.value });
    let recipe_sha = run.hashes.of(&loaded.path)?;
    let teacher_sha = run.hashes.of(&r.teacher.model)?;
    let mut data = vec![
        ("train", r.data.train.clone()),
        ("test", r.data.test.clone()),
    ];
    data.extend(r.data.valid.clone().map(|p| ("validation", p)));
    data.push(("general test", r.data.general_test.clone()));
    let data = data
        .into_iter()
        .map(|(role, p)| Ok((role, p.clone(), run.hashes.of(&p)?)))
        .collect::<Result<Vec<_>>>()?;
    let stage = run.stage(
        &format!("export/{}", m.name),
        stage::key(
            "export",
            &r.export,
            &[
                &m.key,
                &measured.quality.key,
                &measured.speed.key,
                &recipe_sha,
            ],
        ),
    );
    let device = run.device_choice;
    run.run(&stage, |dir, _| {
        let device = device.open()?;
        let model = load(&m.path, &device)?;
        let card = export::Card {
            name: &m.name,
            title: &loaded.title,
            recipe: (&loaded.path, &recipe_sha),
            teacher: (&teacher.name, &r.teacher.model, &teacher_sha),
            data: data
                .iter()
                .map(|(role, p, sha)| (*role, p.as_path(), sha.clone()))
                .collect(),
            lineage: m.lineage.clone(),
            results,
        };
        export::export(&model, dir, &types, &card)
    })?;
    Ok(())
}

/// The report over every model: built and written when what it reports changed, else read
/// back from the run folder (so `--check` loads no model).
fn write_report(
    run: &mut Runner,
    results: &[Measured],
    teacher_stages: Option<CompareReport>,
) -> Result<Report> {
    let loaded = run.loaded;
    let r = &loaded.recipe;
    let mut data = Vec::new();
    for (name, path) in [
        ("man-page test", &r.data.test),
        ("general test", &r.data.general_test),
    ] {
        data.push(DataFile {
            name: name.into(),
            path: path.display().to_string(),
            sha256: run.hashes.of(path)?,
        });
    }
    let eval = EvalSettings {
        window: r.eval.window,
        windows: r.eval.windows,
        data,
    };
    let settings = serde_json::to_value(r)?;
    let reward = match r.teacher.reward {
        Some(_) => reward_accuracy(&loaded.out.join("teacher/reward"))?,
        None => None,
    };
    let stage_times = run.times.clone();
    let mut keys = vec![serde_json::to_string(&settings)?, loaded.title.clone()];
    for m in results {
        keys.extend([
            m.quality.key.clone(),
            m.speed.key.clone(),
            m.model.format.clone(),
        ]);
    }
    if let Some(c) = &teacher_stages {
        keys.push(serde_json::to_string(c)?);
    }
    if r.teacher.reward.is_some() {
        keys.push(serde_json::to_string(&reward)?);
    }
    keys.push(serde_json::to_string(&stage_times)?);
    let stage = run.stage("report", stage::key("report", &(), &refs(&keys)));
    let device = run.device_choice;
    run.run(&stage, |dir, _| {
        let device = device.open()?;
        let mut report = Report::new(&loaded.title, Machine::detect(&device), eval, settings);
        for Measured {
            model: m,
            quality,
            speed,
        } in results
        {
            report.models.push(ModelResult {
                name: m.name.clone(),
                role: match m.role {
                    Role::Teacher => report::Role::Teacher,
                    _ => report::Role::Student,
                },
                path: m.path.display().to_string(),
                format: m.format.clone(),
                parameters: load(&m.path, &device)?.config.num_parameters() as u64,
                bytes_on_disk: bytes_on_disk(&m.path)?,
                speed: Some(speed.value.clone()),
                quality: quality.value.clone(),
            });
        }
        report.teacher_stages = teacher_stages;
        report.reward = reward;
        report.stage_times = stage_times;
        report::write(&report, dir)?;
        Ok(json!({ "dir": dir.display().to_string() }))
    })?;
    Report::read(&stage.dir.join(report::JSON))
}

/// The reward stage's accuracy on its test rankings, else on its validation ones (`None`
/// when it held none out).
fn reward_accuracy(dir: &Path) -> Result<Option<AccuracyReport>> {
    let path = dir.join("reward_report.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    #[derive(serde::Deserialize)]
    struct Held {
        validation: Option<AccuracyReport>,
        test: Option<AccuracyReport>,
    }
    let held: Held = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a reward accuracy report", path.display()))?;
    Ok(held.test.or(held.validation))
}

/// Bytes of a model's files: a GGUF file, or an HF directory's weights and config.
fn bytes_on_disk(path: &Path) -> Result<u64> {
    if path.is_file() {
        return Ok(std::fs::metadata(path)?.len());
    }
    let mut total = 0;
    for f in distill_model::checkpoint::SafetensorsSource::dir_files(path)? {
        total += std::fs::metadata(&f)?.len();
    }
    Ok(total)
}

/// A starting model's weight format: a GGUF file's type (its weights run dequantized to f32),
/// else `f32`.
fn file_format(path: &Path) -> String {
    if !distill_model::load::is_gguf(path) {
        return "f32".into();
    }
    let file_type = distill_model::gguf::GgufFile::open(path)
        .ok()
        .and_then(|f| f.get("general.file_type").and_then(|v| v.as_u64()));
    match GgufDtype::ALL
        .into_iter()
        .find(|t| Some(u64::from(t.file_type())) == file_type)
    {
        Some(t) => format!("{t} (GGUF)"),
        None => "GGUF".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A teacher that starts as a quantized GGUF and goes through a stage is the stage's f32
    /// model, and the report says so.
    #[test]
    fn a_stage_makes_an_f32_model() {
        let mut m = Model {
            name: "teacher".into(),
            role: Role::Teacher,
            path: PathBuf::from("teacher.Q4_1.gguf"),
            key: "file".into(),
            lineage: vec![],
            format: "q4_1 (GGUF)".into(),
        };
        let stage = Stage {
            name: "teacher/sft".into(),
            dir: PathBuf::from("runs/x/teacher/sft"),
            key: "k".into(),
        };
        m.made_by(&stage, "fine-tuned".into());
        assert_eq!(m.format, "f32");
        assert_eq!(m.path, Path::new("runs/x/teacher/sft/model"));
    }
}
