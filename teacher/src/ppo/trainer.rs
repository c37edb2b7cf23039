//! The PPO loop: each step samples a rollout batch, scores it, turns the scores and the KL to
//! the reference into per-token rewards, estimates advantages, then runs `ppo_epochs` passes of
//! minibatch updates; β adapts after the step. Checkpoints fall at step boundaries and hold the
//! policy, the optimizer, β and the log; every random choice (prompt order, sampling,
//! minibatch order, PTX windows) is a function of the seed and the step, so a resumed run
//! equals an uninterrupted one.

use super::gae::{gae, token_rewards, whiten};
use super::kl::KlController;
use super::log::{self, PpoLogRow, SelectRow};
use super::loss::{PpoInputs, ppo_losses};
use super::policy::{PolicyWithValueHead, entropy, response_logprobs};
use super::rollout::{RolloutBatch, answers, sample_responses};
use super::{GoldFn, PpoConfig, PpoError, RewardFn};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use distill_model::LlamaForCausalLM;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::data::{PackedWindows, permutation};
use distill_model::generate::GenerateConfig;
use distill_model::loss::cross_entropy;
use distill_model::sample::SamplingConfig;
use distill_model::train::{Checkpoints, TrainControl, clip_global_norm};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

/// What a PPO run needs besides its settings.
pub struct PpoRun<'a> {
    /// The SFT model on the training (autodiff) device: the policy starts from it, and its
    /// frozen copy is the KL reference. Its config, tokenizer and generation config travel to
    /// `OUT/model`.
    pub sft: ModelDir,
    /// Prompt token ids (none empty), as the policy sees them (chat template applied).
    pub prompts: &'a [Vec<u32>],
    /// Tokens that end a response (EOS, the chat template's end of turn).
    pub stop_tokens: &'a [u32],
    /// Pretraining windows for PPO-ptx (used when `config.ptx` is set).
    pub ptx: Option<&'a PackedWindows>,
    /// The reward.
    pub reward: &'a mut dyn RewardFn,
    /// A gold scorer for the log, if any.
    pub gold: Option<&'a mut dyn GoldFn>,
    /// Held-out prompts for choosing the step to keep (with `config.select_prompts`).
    pub select: Option<Selection<'a>>,
}

/// Held-out prompts on which the policy answers (greedily or sampled, as
/// [`PpoConfig::select_samples`] says), to choose the step whose policy becomes `OUT/model`
/// ([`PpoConfig::select_prompts`]).
pub struct Selection<'a> {
    /// Prompt token ids (none empty), as the policy sees them.
    pub prompts: &'a [Vec<u32>],
    /// The gold score of an answer (stop token included) to prompt number i of `prompts`.
    pub gold: &'a mut dyn GoldFn,
}

/// What a finished (or stopped) run returns.
pub struct PpoOutcome {
    /// The trained LM, adapters merged, on the plain device.
    pub model: LlamaForCausalLM,
    /// Steps done in total, including those before a resume.
    pub steps_done: usize,
    /// The step this invocation started from.
    pub start_step: usize,
    /// One row per step.
    pub history: Vec<PpoLogRow>,
    /// `OUT/model`, when the run finished and wrote it.
    pub model_dir: Option<PathBuf>,
    /// The evaluations on the selection prompts, in step order (empty without them).
    pub selection: Vec<SelectRow>,
}

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PpoState {
    step: usize,
    kl: KlController,
    history: Vec<PpoLogRow>,
    #[serde(default)]
    selection: Vec<SelectRow>,
    config: PpoConfig,
}

/// SplitMix64's finalizer: decorrelates seeds built from small integers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of one random stream (`tag`) at one step and sub-index.
pub(crate) fn stream_seed(seed: u64, tag: u64, step: usize, sub: usize) -> u64 {
    mix(seed ^ mix(tag ^ mix(step as u64 ^ mix(sub as u64))))
}

/// The prompts of step `step`: consecutive slices of a visiting order reshuffled each epoch.
fn prompt_rows(n: usize, batch: usize, step: usize, seed: u64) -> Vec<usize> {
    (step * batch..(step + 1) * batch)
        .map(|i| permutation(n, stream_seed(seed, 1, i / n, 0))[i % n])
        .collect()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 tensor")
}

/// Rows `rows` of a `[batch, width]` host array as a tensor on `device`.
fn rows_tensor(values: &[f32], width: usize, rows: &[usize], device: &Device) -> Tensor<2> {
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|&r| values[r * width..(r + 1) * width].iter().copied())
        .collect();
    Tensor::from_data(TensorData::new(data, [rows.len(), width]), device)
}

/// The rollout of one step, scored, with PPO's targets: `[batch * response_width]` arrays.
struct ScoredRollout {
    batch: RolloutBatch,
    old_logprobs: Vec<f32>,
    old_values: Vec<f32>,
    advantages: Vec<f32>,
    returns: Vec<f32>,
    mask: Vec<f32>,
    score: f64,
    gold: Option<f64>,
    kl: f64,
    entropy: f64,
}

/// Means of the minibatch updates' diagnostics.
#[derive(Default)]
struct UpdateStats {
    policy: f64,
    value: f64,
    clip_frac: f64,
    ptx: f64,
    n: usize,
}

/// Runs PPO on `device` (autodiff is added for the policy), writing into `config.out`.
pub fn train(
    config: &PpoConfig,
    run: PpoRun,
    device: &Device,
    control: &TrainControl,
) -> Result<PpoOutcome, PpoError> {
    config.validate().map_err(PpoError::Config)?;
    if run.prompts.is_empty() || run.prompts.iter().any(Vec::is_empty) {
        return Err(PpoError::Config(
            "no prompts, or an empty prompt, to roll out".into(),
        ));
    }
    let ptx = match (&config.ptx, run.ptx) {
        (Some(c), Some(windows)) => Some((c, windows)),
        (Some(_), None) => {
            return Err(PpoError::Config(
                "ptx is configured but no pretraining windows were given".into(),
            ));
        }
        (None, _) => None,
    };
    let PpoRun {
        sft,
        prompts,
        stop_tokens,
        reward,
        mut gold,
        mut select,
        ..
    } = run;
    if config.select_prompts.is_some() != select.is_some() {
        return Err(PpoError::Config(
            "select_prompts and the selection prompts given to the trainer disagree".into(),
        ));
    }
    let train_device = device.clone().autodiff();
    let ModelDir {
        config: model_config,
        model: sft_model,
        tokenizer,
        generation_config,
    } = sft;
    if !sft_model.model.embed_tokens.weight.val().is_autodiff() {
        return Err(PpoError::Config(
            "the SFT model must be loaded on an autodiff device to be trained".into(),
        ));
    }
    let reference = sft_model.valid();
    let mut policy = PolicyWithValueHead::new(sft_model, config.seed);
    if let Some(lora) = &config.lora {
        policy = policy.with_lora(lora, config.seed);
    }
    let mut optim = AdamConfig::new().with_epsilon(1e-8).init();
    let mut state = PpoState {
        step: 0,
        kl: KlController::new(
            config.init_kl_coef,
            config.adap_kl_ctrl.then_some(config.target),
            config.horizon,
        ),
        history: Vec::new(),
        selection: Vec::new(),
        config: config.clone(),
    };
    let checkpoints = Checkpoints::new(&config.out.join("checkpoints"));
    if control.resume
        && let Some(path) = checkpoints.latest()
    {
        let (p, o, s): (_, _, PpoState) = checkpoints.load(&path, policy, optim)?;
        if s.config != *config {
            tracing::warn!("resuming {} with changed settings", path.display());
        }
        (policy, optim, state) = (p, o, s);
        state.config = config.clone();
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    let start_step = state.step;
    let log_path = config.out.join("ppo_log.csv");
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| PpoError::Io { path, source }
    };

    // Each evaluation whose policy beats the earlier ones is saved under `OUT/select/`, before
    // the checkpoint that records it, so a resumed run finds the policy it chose.
    let select_dir = config.out.join("select");
    let keep_if_best = |policy: &PolicyWithValueHead,
                        state: &mut PpoState,
                        select: &mut Selection,
                        reward: &mut dyn RewardFn|
     -> Result<(), PpoError> {
        let lm = policy.merged_lm();
        let row = evaluate_selection(config, &lm, select, stop_tokens, reward, state.step, device)?;
        tracing::info!(?row, "selection prompts");
        state.selection.push(row);
        if log::selected(&state.selection).map(|r| r.step) == Some(state.step) {
            let out = ModelDir {
                config: model_config.clone(),
                model: lm,
                tokenizer: tokenizer.clone(),
                generation_config: generation_config.clone(),
            };
            checkpoint::save_dir(
                &selected_dir(&select_dir, state.step),
                &out,
                SaveOptions::default(),
            )?;
        }
        let path = config.out.join("select_log.csv");
        log::write_select_csv(&path, &state.selection).map_err(io(&path))
    };
    if let Some(select) = select.as_mut()
        && state.selection.is_empty()
    {
        keep_if_best(&policy, &mut state, select, &mut *reward)?;
    }

    let bar = distill_model::train::step_bar(config.steps, control.quiet);
    bar.set_position(state.step as u64);
    let stop = control.stop_after.unwrap_or(usize::MAX).min(config.steps);
    while state.step < stop {
        let step = state.step;
        let beta = state.kl.value;
        let started = Instant::now();
        let rollout = roll_out(
            config,
            &policy,
            &reference,
            prompts,
            stop_tokens,
            &mut *reward,
            gold.as_deref_mut(),
            step,
            beta,
            device,
        )?;
        let rollout_s = started.elapsed().as_secs_f64();
        let stats;
        (policy, stats) = update(
            config,
            policy,
            &mut optim,
            &rollout,
            ptx,
            step,
            &train_device,
        );
        state.kl.update(rollout.kl, rollout.batch.len());
        state.step += 1;
        let n = stats.n.max(1) as f64;
        let row = PpoLogRow {
            step: state.step,
            score: rollout.score,
            gold: rollout.gold,
            kl: rollout.kl,
            entropy: rollout.entropy,
            clip_frac: stats.clip_frac / n,
            value_loss: stats.value / n,
            policy_loss: stats.policy / n,
            ptx_loss: ptx.map(|_| stats.ptx / n),
            beta,
            response_length: rollout.batch.responses.iter().map(Vec::len).sum::<usize>() as f64
                / rollout.batch.len() as f64,
        };
        let update_s = started.elapsed().as_secs_f64() - rollout_s;
        tracing::info!(?row, rollout_s, update_s, "ppo step");
        bar.set_message(format!(
            "score {:.3} kl {:.2} β {:.3}",
            row.score, row.kl, row.beta
        ));
        bar.set_position(state.step as u64);
        state.history.push(row);
        log::write_csv(&log_path, &state.history).map_err(io(&log_path))?;
        if let Some(select) = select.as_mut()
            && (state.step == config.steps || state.step.is_multiple_of(config.select_every))
        {
            keep_if_best(&policy, &mut state, select, &mut *reward)?;
        }
        if state.step == config.steps || state.step.is_multiple_of(config.checkpoint_every) {
            checkpoints.save(state.step, &policy, &optim, &state)?;
        }
    }
    bar.finish();

    let finished = state.step == config.steps;
    let model = match log::selected(&state.selection).filter(|_| finished) {
        Some(kept) => {
            tracing::info!(
                step = kept.step,
                gold = kept.gold,
                "keeping the policy of step {}",
                kept.step
            );
            distill_model::load::load_model(&selected_dir(&select_dir, kept.step), device)?.model
        }
        None => policy.merged_lm(),
    };
    let model_dir = if finished {
        let svg = config.out.join("ppo_log.svg");
        log::plot_svg(&svg, &state.history).map_err(PpoError::Plot)?;
        let dir = config.out.join("model");
        let out = ModelDir {
            config: model_config,
            model: model.clone(),
            tokenizer,
            generation_config,
        };
        checkpoint::save_dir(&dir, &out, SaveOptions::default())?;
        let _ = std::fs::remove_dir_all(&select_dir);
        Some(dir)
    } else {
        None
    };
    Ok(PpoOutcome {
        model,
        steps_done: state.step,
        start_step,
        history: state.history,
        model_dir,
        selection: state.selection,
    })
}

/// Where the policy evaluated at step `step` is kept while it is the best so far.
fn selected_dir(select_dir: &std::path::Path, step: usize) -> PathBuf {
    select_dir.join(format!("step-{step:06}"))
}

/// The policy's answers to the selection prompts (greedy, or `config.select_samples` sampled
/// ones each, seeded alike at every evaluation), scored by the gold judge and the reward, at
/// `step` steps done.
fn evaluate_selection(
    config: &PpoConfig,
    lm: &LlamaForCausalLM,
    select: &mut Selection,
    stop_tokens: &[u32],
    reward: &mut dyn RewardFn,
    step: usize,
    device: &Device,
) -> Result<SelectRow, PpoError> {
    let greedy = GenerateConfig {
        max_new_tokens: config.max_new_tokens,
        stop_tokens: stop_tokens.to_vec(),
        sampling: SamplingConfig::default(),
    };
    let draws = config.select_samples.max(1);
    let (mut gold, mut score, mut length) = (0.0, 0.0, 0);
    for draw in 0..draws {
        for (c, prompts) in select.prompts.chunks(config.batch_size).enumerate() {
            let responses = match config.select_samples {
                0 => answers(lm, prompts, &greedy, device),
                _ => sample_responses(
                    lm,
                    prompts,
                    config.max_new_tokens,
                    stop_tokens,
                    stream_seed(config.seed, 4, draw, c),
                    device,
                ),
            };
            for s in checked_scores(reward, prompts, &responses, step)? {
                score += f64::from(s);
            }
            for (i, r) in responses.iter().enumerate() {
                gold += select.gold.score(c * config.batch_size + i, r);
                length += r.len();
            }
        }
    }
    let n = (select.prompts.len() * draws).max(1) as f64;
    Ok(SelectRow {
        step,
        gold: gold / n,
        score: score / n,
        response_length: length as f64 / n,
    })
}

/// `reward`'s scores of `responses` to `prompts`, one finite score each (else an error naming
/// step `step`, 0-based).
fn checked_scores(
    reward: &mut dyn RewardFn,
    prompts: &[Vec<u32>],
    responses: &[Vec<u32>],
    step: usize,
) -> Result<Vec<f32>, PpoError> {
    let scores = reward.score(prompts, responses);
    if scores.len() != responses.len() {
        return Err(PpoError::Reward(format!(
            "{} scores for {} responses",
            scores.len(),
            responses.len()
        )));
    }
    if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
        return Err(PpoError::Reward(format!(
            "score {} of response {bad} at step {} is not finite",
            scores[bad],
            step + 1
        )));
    }
    Ok(scores)
}

/// Each score minus the mean of the other scores in its group of `group` consecutive ones
/// (RLOO's leave-one-out baseline); the scores unchanged when `group` is 1.
pub fn leave_one_out(scores: &[f32], group: usize) -> Vec<f32> {
    if group <= 1 {
        return scores.to_vec();
    }
    scores
        .chunks(group)
        .flat_map(|g| {
            let sum: f64 = g.iter().map(|&s| f64::from(s)).sum();
            let others = (g.len() - 1) as f64;
            g.iter()
                .map(move |&s| (f64::from(s) - (sum - f64::from(s)) / others) as f32)
        })
        .collect()
}

/// Samples, scores and evaluates step `step`'s rollout batch and computes its advantages.
#[allow(clippy::too_many_arguments)]
fn roll_out(
    config: &PpoConfig,
    policy: &PolicyWithValueHead,
    reference: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    stop_tokens: &[u32],
    reward: &mut (dyn RewardFn + '_),
    gold: Option<&mut (dyn GoldFn + '_)>,
    step: usize,
    beta: f64,
    device: &Device,
) -> Result<ScoredRollout, PpoError> {
    let per = config.answers_per_prompt;
    let rows: Vec<usize> = prompt_rows(prompts.len(), config.batch_size / per, step, config.seed)
        .into_iter()
        .flat_map(|i| std::iter::repeat_n(i, per))
        .collect();
    let chosen: Vec<Vec<u32>> = rows.iter().map(|&i| prompts[i].clone()).collect();
    let responses = sample_responses(
        &policy.merged_lm(),
        &chosen,
        config.max_new_tokens,
        stop_tokens,
        stream_seed(config.seed, 2, step, 0),
        device,
    );
    let batch = RolloutBatch::new(chosen, responses);
    let scores = checked_scores(reward, &batch.prompts, &batch.responses, step)?;
    let baselined = leave_one_out(&scores, per);
    let gold = gold.map(|g| {
        rows.iter()
            .zip(&batch.responses)
            .map(|(&i, r)| g.score(i, r))
            .sum::<f64>()
            / batch.len() as f64
    });

    let at_rollout = policy.valid().forward(&batch);
    let width = batch.response_width;
    let mask = batch.response_mask();
    let entropies = host(entropy(at_rollout.log_dist));
    let old_logprobs = host(at_rollout.logprobs);
    let old_values = host(at_rollout.values);
    let ref_logprobs = host(response_logprobs(reference, &batch));

    let mut advantages = vec![0.0f32; mask.len()];
    let mut returns = vec![0.0f32; mask.len()];
    let mut kl_total = 0.0;
    for (b, response) in batch.responses.iter().enumerate() {
        let span = b * width..b * width + response.len();
        let (rewards, kl) = token_rewards(
            baselined[b],
            &old_logprobs[span.clone()],
            &ref_logprobs[span.clone()],
            beta,
        );
        kl_total += kl;
        let (adv, ret) = gae(
            &rewards,
            &old_values[span.clone()],
            config.gamma,
            config.lam,
        );
        advantages[span.clone()].copy_from_slice(&adv);
        returns[span].copy_from_slice(&ret);
    }
    let real: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] > 0.0).collect();
    let mut real_adv: Vec<f32> = real.iter().map(|&i| advantages[i]).collect();
    whiten(&mut real_adv);
    for (&i, a) in real.iter().zip(real_adv) {
        advantages[i] = a;
    }
    let tokens = real.len() as f64;
    let n = batch.len() as f64;
    Ok(ScoredRollout {
        score: scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n,
        gold,
        kl: kl_total / n,
        entropy: real.iter().map(|&i| f64::from(entropies[i])).sum::<f64>() / tokens,
        batch,
        old_logprobs,
        old_values,
        advantages,
        returns,
        mask,
    })
}

/// `ppo_epochs` passes of minibatch updates over one rollout.
fn update(
    config: &PpoConfig,
    mut policy: PolicyWithValueHead,
    optim: &mut ModuleOptimizer,
    rollout: &ScoredRollout,
    ptx: Option<(&super::PtxConfig, &PackedWindows)>,
    step: usize,
    device: &Device,
) -> (PolicyWithValueHead, UpdateStats) {
    let width = rollout.batch.response_width;
    let mut stats = UpdateStats::default();
    let per_step = config.updates_per_step();
    for epoch in 0..config.ppo_epochs {
        let order = permutation(
            rollout.batch.len(),
            stream_seed(config.seed, 3, step, epoch),
        );
        for rows in order.chunks(config.mini_batch_size) {
            let t = |values: &[f32]| rows_tensor(values, width, rows, device);
            let out = policy.forward(&rollout.batch.select(rows));
            let losses = ppo_losses(
                PpoInputs {
                    logprobs: out.logprobs,
                    old_logprobs: t(&rollout.old_logprobs),
                    advantages: t(&rollout.advantages),
                    values: out.values,
                    old_values: t(&rollout.old_values),
                    returns: t(&rollout.returns),
                    mask: t(&rollout.mask),
                },
                config.cliprange,
                config.cliprange_value,
            );
            let scalar = |x: &Tensor<1>| f64::from(x.clone().detach().into_scalar::<f32>());
            stats.policy += scalar(&losses.policy);
            stats.value += scalar(&losses.value);
            stats.clip_frac += scalar(&losses.clip_frac);
            let mut loss = losses.policy + losses.value.mul_scalar(config.vf_coef);
            if let Some((c, windows)) = ptx {
                let lm_loss = ptx_loss(&policy.lm, windows, step * per_step + stats.n, c, device);
                stats.ptx += scalar(&lm_loss);
                loss = loss + lm_loss.mul_scalar(c.coef);
            }
            let mut grads = GradientsParams::from_grads(loss.backward(), &policy);
            clip_global_norm(&policy, &mut grads, config.max_grad_norm);
            policy = optim.step(config.learning_rate, policy, grads);
            stats.n += 1;
        }
    }
    (policy, stats)
}

/// Next-token loss of the LM on pretraining batch `index`.
fn ptx_loss(
    lm: &LlamaForCausalLM,
    windows: &PackedWindows,
    index: usize,
    config: &super::PtxConfig,
    device: &Device,
) -> Tensor<1> {
    let (inputs, targets) = windows.batch(index, config.batch_size);
    let shape = [config.batch_size, windows.seq_len()];
    let ids = |v: Vec<u32>| {
        let v: Vec<i64> = v.into_iter().map(i64::from).collect();
        Tensor::<2, Int>::from_data(TensorData::new(v, shape), device)
    };
    let layout = distill_model::Layout::causal(shape[0], shape[1]);
    cross_entropy(lm.forward(ids(inputs), &layout), ids(targets), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_subtracts_the_mean_of_the_prompts_other_answers() {
        let scores = [1.0, 3.0, 5.0, 10.0, 10.0, 13.0];
        // Groups of 3: 1 − (3+5)/2, 3 − (1+5)/2, 5 − (1+3)/2; 10 − (10+13)/2, …
        assert_eq!(leave_one_out(&scores, 3), [-3.0, 0.0, 3.0, -1.5, -1.5, 3.0]);
        // A group's baselined scores sum to 0 and keep their order; a constant offset of the
        // whole group (the prompt's kind) is gone.
        let shifted: Vec<f32> = scores.iter().map(|s| s + 100.0).collect();
        assert_eq!(leave_one_out(&shifted, 3), leave_one_out(&scores, 3));
        assert_eq!(leave_one_out(&scores, 1), scores);
    }

    #[test]
    fn prompt_order_visits_every_prompt_once_per_epoch() {
        let mut seen: Vec<usize> = (0..5).flat_map(|s| prompt_rows(10, 2, s, 7)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(prompt_rows(10, 4, 3, 7), prompt_rows(10, 4, 3, 7));
        assert_ne!(prompt_rows(10, 4, 3, 7), prompt_rows(10, 4, 3, 8));
    }
}
