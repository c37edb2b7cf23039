//! Batched text generation with the KV cache: prompts are left-padded to a common length,
//! prefilled in one forward, then decoded one token per row per step.

use crate::llama::LlamaForCausalLM;
use crate::sample::{Sampler, SamplingConfig};
use burn::prelude::*;

/// When to stop generating.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    /// Most new tokens per prompt.
    pub max_new_tokens: usize,
    /// Token ids that end a row (the eos token, a chat turn's end).
    pub stop_tokens: Vec<u32>,
    /// How the next token is picked.
    pub sampling: SamplingConfig,
}

/// Rows of `[batch, vocab]` logits, read back to the host.
fn rows(logits: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, v] = logits.dims();
    let flat: Vec<f32> = logits.into_data().try_to_vec().expect("f32 logits");
    flat.chunks(v).map(<[f32]>::to_vec).collect()
}

/// Generates continuations of `prompts` (token ids, none empty); returns the new ids of each
/// row, without the stop token. Rows that stop early wait, padded, for the others.
pub fn generate(
    model: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    device: &Device,
) -> Vec<Vec<u32>> {
    generate_continuations(model, prompts, config, device)
        .into_iter()
        .map(|c| c.tokens)
        .collect()
}

/// One row's generated text and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    /// The new ids, without the stop token.
    pub tokens: Vec<u32>,
    /// The stop token that ended the row; `None` when it ran to `max_new_tokens`.
    pub stop_token: Option<u32>,
}

impl Continuation {
    /// The ids as the model produced them: the new ids, then the stop token if one ended the
    /// row (what a reward model scores, and what a policy's log-probabilities cover).
    pub fn ids_with_stop(&self) -> Vec<u32> {
        self.tokens.iter().copied().chain(self.stop_token).collect()
    }
}

/// Like [`generate`], also saying which stop token ended each row (what RL rollouts score).
pub fn generate_continuations(
    model: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    device: &Device,
) -> Vec<Continuation> {
    let batch = prompts.len();
    let mut out = vec![
        Continuation {
            tokens: Vec::new(),
            stop_token: None,
        };
        batch
    ];
    if batch == 0 || config.max_new_tokens == 0 {
        return out;
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(batch * width);
    let mut mask = Vec::with_capacity(batch * width);
    for p in prompts {
        let pad = width - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, width]), device);
    let mut cache = model.new_cache(batch);
    let mut logits = rows(model.forward_cached_last(input, Some(&mask), &mut cache));
    // One sampler per row, seeded apart, so a row's output does not depend on its batch mates.
    let mut samplers: Vec<Sampler> = (0..batch)
        .map(|b| {
            Sampler::new(SamplingConfig {
                seed: config.sampling.seed.wrapping_add(b as u64),
                ..config.sampling.clone()
            })
        })
        .collect();
    let mut done = vec![false; batch];
    for _ in 0..config.max_new_tokens {
        let mut next = Vec::with_capacity(batch);
        for b in 0..batch {
            let token = if done[b] {
                0
            } else {
                samplers[b].sample(&logits[b])
            };
            if !done[b] {
                if config.stop_tokens.contains(&token) {
                    done[b] = true;
                    out[b].stop_token = Some(token);
                } else {
                    out[b].tokens.push(token);
                }
            }
            next.push(token as i64);
        }
        if done.iter().all(|&d| d) || out.iter().any(|o| o.tokens.len() == config.max_new_tokens) {
            break;
        }
        let input = Tensor::<2, Int>::from_data(TensorData::new(next, [batch, 1]), device);
        let live: Vec<bool> = done.iter().map(|d| !d).collect();
        logits = rows(model.forward_cached_last(input, Some(&live), &mut cache));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LlamaConfig;
    use crate::layout::Layout;

    /// Greedy decoding by full forwards over the growing sequence, without a cache.
    fn greedy_without_cache(model: &LlamaForCausalLM, prompt: &[u32], n: usize) -> Vec<u32> {
        let device = Device::flex();
        let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let mut out = Vec::new();
        for _ in 0..n {
            let len = seq.len();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(seq.clone(), [1, len]), &device);
            let all = model.forward(ids, &Layout::causal(1, len));
            let vocab = all.dims()[2];
            let logits = rows(all.narrow(1, len - 1, 1).reshape([1, vocab]));
            let next = crate::sample::Sampler::new(SamplingConfig::default()).sample(&logits[0]);
            out.push(next);
            seq.push(next as i64);
        }
        out
    }

    #[test]
    fn batched_cached_decoding_equals_unbatched_full_forwards() {
        let device = Device::flex();
        let mut config = LlamaConfig::llama(64, 32, 48, 2, 4, 2);
        config.initializer_range = 0.3;
        let model = config.init(&device, 3);
        let prompts = vec![vec![5, 9, 2, 40, 33, 7], vec![11], vec![60, 1, 17]];
        let config = GenerateConfig {
            max_new_tokens: 8,
            stop_tokens: vec![],
            sampling: SamplingConfig::default(),
        };
        let batched = generate(&model, &prompts, &config, &device);
        for (prompt, got) in prompts.iter().zip(&batched) {
            assert_eq!(
                got,
                &greedy_without_cache(&model, prompt, 8),
                "prompt {prompt:?}"
            );
        }
        let distinct: std::collections::HashSet<_> = batched.iter().flatten().collect();
        assert!(distinct.len() > 2, "degenerate model: {batched:?}");
    }

    #[test]
    fn stop_tokens_end_a_row() {
        let device = Device::flex();
        let model = LlamaConfig::llama(32, 16, 32, 1, 2, 1).init(&device, 4);
        let free = GenerateConfig {
            max_new_tokens: 6,
            stop_tokens: vec![],
            sampling: SamplingConfig::default(),
        };
        let first = generate(&model, &[vec![3, 4]], &free, &device)[0][0];
        let stopped = GenerateConfig {
            stop_tokens: vec![first],
            ..free.clone()
        };
        assert!(generate(&model, &[vec![3, 4]], &stopped, &device)[0].is_empty());
        let ended = generate_continuations(&model, &[vec![3, 4]], &stopped, &device);
        assert_eq!(ended[0].stop_token, Some(first));
        let ran_out = generate_continuations(&model, &[vec![3, 4]], &free, &device);
        assert_eq!((ran_out[0].tokens.len(), ran_out[0].stop_token), (6, None));
        // The ids the model produced: the stop token after the new ids, when one ended the row.
        assert_eq!(ended[0].ids_with_stop(), [first]);
        assert_eq!(ran_out[0].ids_with_stop(), ran_out[0].tokens);
    }
}
