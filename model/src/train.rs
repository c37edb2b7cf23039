//! The training loop every stage uses: AdamW with warmup and cosine decay, global-norm
//! gradient clipping, gradient accumulation, periodic validation, atomic checkpoints with
//! resume, and a guard that stops on a NaN or exploding loss.
//!
//! A stage supplies a [`TrainTask`]: how to compute the loss of training micro-batch `i` and of
//! validation batch `j`. Batches are a pure function of their index, so a resumed run sees
//! exactly the batches an uninterrupted one would.

use crate::fsutil::{write_bytes_atomic, write_json_atomic};
use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Optimization settings. Every field has a default, so a TOML table may name only some.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps. Default 200.
    pub steps: usize,
    /// Sequences per micro-batch. Default 8.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed into one step. Default 1.
    pub grad_accum: usize,
    /// Tokens per training sequence. Default 256.
    pub seq_len: usize,
    /// Peak learning rate. Default 3e-4.
    pub learning_rate: f64,
    /// Final learning rate as a fraction of the peak, reached by the cosine. Default 0.1.
    pub min_lr_ratio: f64,
    /// Steps of linear warmup from 0 to the peak. Default 20.
    pub warmup_steps: usize,
    /// Decoupled weight decay on matrices (not on norms or biases). Default 0.1.
    pub weight_decay: f32,
    /// Adam β₁. Default 0.9.
    pub beta1: f32,
    /// Adam β₂. Default 0.95.
    pub beta2: f32,
    /// Adam ε. Default 1e-8.
    pub epsilon: f32,
    /// Largest global gradient norm; 0 turns clipping off. Default 1.0.
    pub grad_clip: f64,
    /// Validate every this many steps (and at the end); 0 only at the end. Default 50.
    pub eval_every: usize,
    /// Validation batches per evaluation. Default 4.
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end). Default 50.
    pub checkpoint_every: usize,
    /// A loss above this multiple of its running mean, and above the first step's loss (so
    /// worse than where the run started), stops the run as exploding; a loss that falls toward
    /// 0, as a ranking loss does, may spike above the multiple and recover. Default 4.
    pub max_loss_ratio: f64,
    /// Seed of initialization and data order. Default 42.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 8,
            grad_accum: 1,
            seq_len: 256,
            learning_rate: 3e-4,
            min_lr_ratio: 0.1,
            warmup_steps: 20,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            epsilon: 1e-8,
            grad_clip: 1.0,
            eval_every: 50,
            eval_batches: 4,
            checkpoint_every: 50,
            max_loss_ratio: 4.0,
            seed: 42,
        }
    }
}

impl TrainConfig {
    /// Checks the settings make sense; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("seq_len", self.seq_len),
            ("checkpoint_every", self.checkpoint_every),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("train.{key} must be at least 1"));
            }
        }
        if self.learning_rate.is_nan() || self.learning_rate <= 0.0 {
            return Err("train.learning_rate must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err("train.min_lr_ratio must be in [0, 1]".into());
        }
        if self.max_loss_ratio.is_nan() || self.max_loss_ratio <= 1.0 {
            return Err("train.max_loss_ratio must be above 1".into());
        }
        Ok(())
    }

    /// The learning rate of step `step` (0-based): linear warmup, then cosine decay to
    /// `min_lr_ratio × learning_rate` at the last step.
    pub fn lr_at(&self, step: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

/// What a stage trains: the loss of each batch, by index.
pub trait TrainTask<M> {
    /// Mean loss of training micro-batch `index` (a scalar tensor on the model's device).
    fn train_loss(&mut self, model: &M, index: usize) -> Tensor<1>;
    /// Number of validation batches available.
    fn valid_batches(&self) -> usize;
    /// Mean loss of validation batch `index`.
    fn valid_loss(&mut self, model: &M, index: usize) -> Tensor<1>;
    /// Called with the model after each optimizer step (and after a resume), returning the
    /// model to continue with: where a stage re-imposes constraints such as sparsity masks.
    fn after_step(&mut self, model: M) -> M {
        model
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite, or jumped far above its running mean.
    #[error(
        "training diverged at step {step}: loss {loss} ({reason}); the last good checkpoint is {}",
        checkpoint.as_ref().map_or("none (no step completed)".to_string(), |p| p.display().to_string())
    )]
    Diverged {
        step: usize,
        loss: f64,
        reason: String,
        checkpoint: Option<PathBuf>,
    },
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    /// The settings are invalid.
    #[error("{0}")]
    Config(String),
    /// The device could not run a step, most often a tensor larger than a GPU buffer.
    #[error(
        "step {step}: the device could not run it: {reason}. On WGPU each tensor must fit one \
         storage buffer of the adapter (Mesa's software Vulkan binds at most 128 MiB); the \
         largest is usually the logits, batch_size × seq_len × vocabulary × 4 bytes: lower \
         batch_size or seq_len and raise grad_accum"
    )]
    Device { step: usize, reason: String },
}

fn ckpt_err(path: &Path, reason: impl ToString) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// One point of the loss curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    /// Optimizer step (1-based: the loss of the batch that step trained on).
    pub step: usize,
    /// Mean training loss of the step's micro-batches.
    pub train: f64,
    /// Validation loss, when the step evaluated.
    pub valid: Option<f64>,
}

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RunState {
    step: usize,
    loss_mean: Option<f64>,
    history: Vec<LossPoint>,
    config: Option<TrainConfig>,
}

/// How to run the loop, apart from the optimization settings.
#[derive(Debug, Clone, Default)]
pub struct TrainControl {
    /// Continue from the latest checkpoint in the checkpoint folder, if there is one.
    pub resume: bool,
    /// Stop (as if killed) after this many steps, leaving the checkpoints there are.
    pub stop_after: Option<usize>,
    /// Hide the progress bar (tests).
    pub quiet: bool,
}

impl TrainControl {
    /// A fresh run with the progress bar hidden (tests).
    pub fn quiet() -> Self {
        Self {
            quiet: true,
            ..Self::default()
        }
    }
}

/// What a finished (or stopped) run returns.
pub struct TrainOutcome<M> {
    /// The trained model.
    pub model: M,
    /// Steps completed in total, including those before a resume.
    pub steps_done: usize,
    /// The step this invocation started from (0, or where it resumed).
    pub start_step: usize,
    /// The loss curve.
    pub history: Vec<LossPoint>,
}

/// The progress bar of a training loop: `steps` steps, hidden when `quiet`.
pub fn step_bar(steps: usize, quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] step {pos}/{len} {msg} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Collects the ids of the parameters to clip over.
struct ParamIds(Vec<(ParamId, usize)>);

impl ModuleVisitor for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm` (0: no clipping);
/// returns the norm before.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut ids = ParamIds(Vec::new());
    model.visit(&mut ids);
    fn sq<const D: usize>(g: &GradientsParams, id: ParamId) -> f64 {
        g.get::<D>(id)
            .map_or(0.0, |t| t.square().sum().into_scalar::<f32>() as f64)
    }
    fn scale<const D: usize>(g: &mut GradientsParams, id: ParamId, s: f64) {
        if let Some(t) = g.remove::<D>(id) {
            g.register(id, t.mul_scalar(s));
        }
    }
    let mut total = 0.0;
    for &(id, rank) in &ids.0 {
        total += match rank {
            1 => sq::<1>(grads, id),
            2 => sq::<2>(grads, id),
            3 => sq::<3>(grads, id),
            _ => sq::<4>(grads, id),
        };
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for &(id, rank) in &ids.0 {
            match rank {
                1 => scale::<1>(grads, id, s),
                2 => scale::<2>(grads, id, s),
                3 => scale::<3>(grads, id, s),
                _ => scale::<4>(grads, id, s),
            }
        }
    }
    norm
}

/// The gradients of step `step`: `grad_accum` micro-batches of `task`, each loss divided by
/// `grad_accum`; returns them with the step's loss (the micro-batches' sum).
pub fn step_gradients<M: Module, T: TrainTask<M>>(
    model: &M,
    task: &mut T,
    config: &TrainConfig,
    step: usize,
) -> Result<(GradientsParams, f64), TrainError> {
    let mut accumulator = GradientsAccumulator::new();
    let mut loss_sum = 0.0;
    for micro in 0..config.grad_accum {
        let loss = task.train_loss(model, step * config.grad_accum + micro);
        let loss = loss.div_scalar(config.grad_accum as f64);
        loss_sum += scalar(loss.clone().detach(), step + 1)?;
        let grads = GradientsParams::from_grads(loss.backward(), model);
        accumulator.accumulate(model, grads);
    }
    Ok((accumulator.grads(), loss_sum))
}

/// Clips `grads` to `grad_clip` and takes `optim`'s step at step `step`'s learning rate;
/// returns the model and the gradient norm before clipping.
pub fn apply_step<M: Module>(
    model: M,
    mut grads: GradientsParams,
    optim: &mut ModuleOptimizer,
    config: &TrainConfig,
    step: usize,
) -> (M, f64) {
    let norm = clip_global_norm(&model, &mut grads, config.grad_clip);
    (optim.step(config.lr_at(step), model, grads), norm)
}

/// The loop's optimizer: AdamW with `config`'s betas, epsilon and weight decay, no decay on
/// norm weights and biases.
pub fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let adamw = |decay: f32| {
        AdamWConfig::new()
            .with_beta_1(config.beta1)
            .with_beta_2(config.beta2)
            .with_epsilon(config.epsilon)
            .with_weight_decay(decay)
    };
    let no_decay =
        ParamGroup::from_regex(r"(norm\.weight|\.bias)$").expect("a valid regular expression");
    adamw(config.weight_decay)
        .init()
        .with_group(no_decay, adamw(0.0).build(), None)
}

/// The checkpoint folder's layout: `step-NNNNNN/{model.bpk, optimizer.bpk, state.json}` and a
/// `latest` file naming the newest complete one. Loops other than [`train`] (PPO's) keep their
/// own run state in `state.json`.
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    /// The checkpoints in folder `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Option<PathBuf> {
        let name = std::fs::read_to_string(self.dir.join("latest")).ok()?;
        let path = self.dir.join(name.trim());
        path.join("state.json").is_file().then_some(path)
    }

    /// Writes the checkpoint of step `step` atomically, then drops the previous one.
    pub fn save<M: Module, S: Serialize>(
        &self,
        step: usize,
        model: &M,
        optim: &ModuleOptimizer,
        state: &S,
    ) -> Result<PathBuf, TrainError> {
        let name = format!("step-{step:06}");
        let final_dir = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| ckpt_err(&tmp, e))?;
        let model_bytes = model
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| ckpt_err(&tmp, format!("model: {e:?}")))?;
        write_bytes_atomic(&tmp.join("model.bpk"), &model_bytes).map_err(|e| ckpt_err(&tmp, e))?;
        let optim_bytes = optim
            .into_bytes()
            .map_err(|e| ckpt_err(&tmp, format!("optimizer: {e:?}")))?;
        write_bytes_atomic(&tmp.join("optimizer.bpk"), &optim_bytes)
            .map_err(|e| ckpt_err(&tmp, e))?;
        let state_json = serde_json::to_value(state).map_err(|e| ckpt_err(&tmp, e))?;
        write_json_atomic(&tmp.join("state.json"), &state_json).map_err(|e| ckpt_err(&tmp, e))?;
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(|e| ckpt_err(&final_dir, e))?;
        let previous = self.latest();
        write_bytes_atomic(&self.dir.join("latest"), name.as_bytes())
            .map_err(|e| ckpt_err(&self.dir, e))?;
        if let Some(old) = previous.filter(|p| *p != final_dir) {
            let _ = std::fs::remove_dir_all(old);
        }
        Ok(final_dir)
    }

    /// Loads the checkpoint at `path` into `model` and `optim`, with its run state.
    pub fn load<M: Module, S: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer, S), TrainError> {
        let read = |file: &str| std::fs::read(path.join(file)).map_err(|e| ckpt_err(path, e));
        let record =
            ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(read("model.bpk")?))
                .map_err(|e| ckpt_err(path, format!("model.bpk: {e:?}")))?;
        let model = model
            .try_load_record(record)
            .map_err(|e| ckpt_err(path, format!("model.bpk does not fit this model: {e:?}")))?;
        let optim = optim
            .from_bytes(burn::tensor::Bytes::from_bytes_vec(read("optimizer.bpk")?))
            .map_err(|e| ckpt_err(path, format!("optimizer.bpk: {e:?}")))?;
        let state: S = serde_json::from_slice(&read("state.json")?)
            .map_err(|e| ckpt_err(path, format!("state.json: {e}")))?;
        Ok((model, optim, state))
    }
}

/// The value of a scalar loss; a failure on the device (reported when the value is read)
/// becomes [`TrainError::Device`] for step `step`, with the failure's most telling line.
fn scalar(loss: Tensor<1>, step: usize) -> Result<f64, TrainError> {
    loss.try_into_scalar::<f32>().map(f64::from).map_err(|e| {
        let text = e.to_string();
        let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
        let reason = lines()
            .find(|l| l.contains("allocate"))
            .or_else(|| lines().next())
            .unwrap_or("unknown error")
            .to_string();
        TrainError::Device { step, reason }
    })
}

/// Runs the loop on `model` (whose parameters live on an autodiff device), checkpointing into
/// `checkpoint_dir`.
pub fn train<M, T>(
    model: M,
    task: &mut T,
    config: &TrainConfig,
    checkpoint_dir: &Path,
    control: &TrainControl,
) -> Result<TrainOutcome<M>, TrainError>
where
    M: Module,
    T: TrainTask<M>,
{
    config.validate().map_err(TrainError::Config)?;
    let checkpoints = Checkpoints::new(checkpoint_dir);
    std::fs::create_dir_all(checkpoint_dir).map_err(|e| ckpt_err(checkpoint_dir, e))?;
    let mut model = model;
    let mut optim = optimizer(config);
    let mut state = RunState {
        config: Some(config.clone()),
        ..RunState::default()
    };
    let mut last_good = None;
    if control.resume
        && let Some(path) = checkpoints.latest()
    {
        let (m, o, s): (M, ModuleOptimizer, RunState) = checkpoints.load(&path, model, optim)?;
        if s.config.as_ref().is_some_and(|c| c != config) {
            tracing::warn!("resuming {} with changed training settings", path.display());
        }
        (model, optim, state) = (m, o, s);
        model = task.after_step(model);
        state.config = Some(config.clone());
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
        last_good = Some(path);
    }

    let bar = step_bar(config.steps, control.quiet);
    bar.set_position(state.step as u64);

    let start_step = state.step;
    let stop = control.stop_after.unwrap_or(usize::MAX).min(config.steps);
    while state.step < stop {
        let step = state.step;
        let (grads, loss) =
            step_gradients(&model, task, config, step).inspect_err(|_| bar.abandon())?;
        let mean = state.loss_mean.unwrap_or(loss);
        let first = state.history.first().map_or(loss, |p| p.train);
        let diverged = if !loss.is_finite() {
            Some("not finite".to_string())
        } else if step >= config.warmup_steps && loss > config.max_loss_ratio * mean && loss > first
        {
            Some(format!(
                "above {}× the running mean {mean:.4} and the first step's {first:.4}",
                config.max_loss_ratio
            ))
        } else {
            None
        };
        if let Some(reason) = diverged {
            bar.abandon();
            return Err(TrainError::Diverged {
                step: step + 1,
                loss,
                reason,
                checkpoint: last_good.or_else(|| checkpoints.latest()),
            });
        }
        let (stepped, grad_norm) = apply_step(model, grads, &mut optim, config, step);
        model = task.after_step(stepped);
        state.step += 1;
        state.loss_mean = Some(0.9 * mean + 0.1 * loss);

        let last = state.step == config.steps;
        let evaluate =
            last || (config.eval_every > 0 && state.step.is_multiple_of(config.eval_every));
        let valid = if evaluate && task.valid_batches() > 0 {
            let n = task.valid_batches().min(config.eval_batches.max(1));
            let valid_model = model.valid();
            let mut sum = 0.0;
            for j in 0..n {
                sum += scalar(task.valid_loss(&valid_model, j), state.step)
                    .inspect_err(|_| bar.abandon())?;
            }
            Some(sum / n as f64)
        } else {
            None
        };
        state.history.push(LossPoint {
            step: state.step,
            train: loss,
            valid,
        });
        let lr = config.lr_at(step);
        bar.set_message(format!("loss {loss:.4} lr {lr:.2e} |g| {grad_norm:.2}"));
        bar.set_position(state.step as u64);
        if let Some(v) = valid {
            tracing::info!(step = state.step, train = loss, valid = v, "evaluation");
            bar.println(format!(
                "step {:>6}  train {loss:.4}  valid {v:.4}",
                state.step
            ));
        }
        if last || state.step.is_multiple_of(config.checkpoint_every) {
            last_good = Some(checkpoints.save(state.step, &model, &optim, &state)?);
        }
    }
    bar.finish();
    Ok(TrainOutcome {
        model,
        steps_done: state.step,
        start_step,
        history: state.history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = TrainConfig {
            steps: 100,
            warmup_steps: 10,
            learning_rate: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((c.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(100) - 0.1).abs() < 1e-12);
        assert!(c.lr_at(50) < c.lr_at(20));
    }

    /// One parameter the losses do not depend on: the loop runs, the losses are scripted.
    #[derive(Module, Debug)]
    struct Constant {
        w: Param<Tensor<1>>,
    }

    /// Training losses read from a list, by batch index.
    struct Scripted(Vec<f32>);

    impl TrainTask<Constant> for Scripted {
        fn train_loss(&mut self, model: &Constant, index: usize) -> Tensor<1> {
            let w = model.w.val();
            let value = Tensor::<1>::from_floats([self.0[index]], &w.device());
            w.sum() * 0.0 + value
        }

        fn valid_batches(&self) -> usize {
            0
        }

        fn valid_loss(&mut self, _: &Constant, _: usize) -> Tensor<1> {
            unreachable!("no validation batches")
        }
    }

    /// Runs the scripted losses through the loop; the error text if it stopped.
    fn run_losses(losses: &[f32]) -> Option<String> {
        let device = Device::flex().autodiff();
        let model = Constant {
            w: Param::from_tensor(Tensor::<1>::zeros([1], &device)),
        };
        let config = TrainConfig {
            steps: losses.len(),
            batch_size: 1,
            warmup_steps: 0,
            eval_every: 0,
            checkpoint_every: 1000,
            ..TrainConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let control = TrainControl::quiet();
        train(
            model,
            &mut Scripted(losses.to_vec()),
            &config,
            dir.path(),
            &control,
        )
        .err()
        .map(|e| e.to_string())
    }

    /// The global norm of a gradient larger than burn-flex's parallel-sum threshold (4M
    /// elements) is the same on every call, and matches a float64 sum.
    #[test]
    fn the_global_norm_of_a_large_gradient_is_reproducible() {
        let device = Device::flex().autodiff();
        let n = 5 * 1024 * 1024 + 3;
        let c: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 10007) as f32 / 10007.0 - 0.5)
            .collect();
        let model = Constant {
            w: Param::from_tensor(Tensor::<1>::zeros([n], &device)),
        };
        let weights = Tensor::<1>::from_floats(c.as_slice(), &device);
        let grads = (model.w.val() * weights).sum().backward();
        let mut grads = GradientsParams::from_grads(grads, &model);
        let norms: Vec<f64> = (0..40)
            .map(|_| clip_global_norm(&model, &mut grads, 0.0))
            .collect();
        assert!(norms.iter().all(|&x| x == norms[0]), "{norms:?}");
        let want = c
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        assert!(
            (norms[0] - want).abs() < 1e-5 * want,
            "{} vs {want}",
            norms[0]
        );
    }

    #[test]
    fn a_spike_below_the_first_loss_is_not_divergence() {
        // A ranking loss falling from ln 2 toward 0: 0.3 is 4.6× the running mean of about
        // 0.065 but below the first step's 0.69, so the run goes on.
        let mut losses = vec![0.69, 0.2, 0.1];
        losses.extend([0.05; 20]);
        losses.extend([0.3, 0.05]);
        assert_eq!(run_losses(&losses), None);
        // Above the first step's loss as well: stopped.
        *losses.last_mut().unwrap() = 0.8;
        let err = run_losses(&losses).expect("must stop");
        assert!(err.contains("diverged at step 25"), "{err}");
        assert!(err.contains("first step's 0.69"), "{err}");
        // Not finite: stopped whatever the history.
        losses[5] = f32::NAN;
        assert!(run_losses(&losses).unwrap().contains("not finite"));
    }

    #[test]
    fn toml_tables_may_name_some_keys_and_unknown_keys_fail() {
        let c: TrainConfig = toml::from_str("steps = 5\nlearning_rate = 0.01").unwrap();
        assert_eq!(c.steps, 5);
        assert_eq!(c.batch_size, TrainConfig::default().batch_size);
        assert!(toml::from_str::<TrainConfig>("stepz = 5").is_err());
    }
}
