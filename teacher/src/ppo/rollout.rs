//! Rollouts: responses sampled from the policy for a batch of prompts (batched, with the KV
//! cache), and the padded prompt+response layout every later forward over them shares.

use burn::prelude::*;
use distill_model::generate::{GenerateConfig, generate_continuations};
use distill_model::sample::SamplingConfig;
use distill_model::{Layout, LlamaForCausalLM};

/// Decoding at temperature 1 with no truncation (the policy's own distribution, which the
/// importance ratios assume), up to `max_new_tokens` or a stop token; row `b` samples with
/// seed `seed + b`.
pub fn sampling_config(max_new_tokens: usize, stop_tokens: &[u32], seed: u64) -> GenerateConfig {
    GenerateConfig {
        max_new_tokens,
        stop_tokens: stop_tokens.to_vec(),
        sampling: SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed,
        },
    }
}

/// Samples one response per prompt from `lm` as [`sampling_config`] says. A response keeps
/// the stop token that ended it, so the policy is also trained on when to stop.
pub fn sample_responses(
    lm: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_tokens: &[u32],
    seed: u64,
    device: &Device,
) -> Vec<Vec<u32>> {
    let config = sampling_config(max_new_tokens, stop_tokens, seed);
    answers(lm, prompts, &config, device)
}

/// One answer per prompt from `lm` as `config` decodes, each ending with the stop token that
/// ended it, if one did.
pub fn answers(
    lm: &LlamaForCausalLM,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    device: &Device,
) -> Vec<Vec<u32>> {
    generate_continuations(lm, prompts, config, device)
        .into_iter()
        .map(|c| c.ids_with_stop())
        .collect()
}

/// Prompt+response sequences laid out for one forward: each prompt left-padded to
/// `prompt_width`, each response right-padded to `response_width`. The logits that predict
/// response token `r` sit at position `prompt_width − 1 + r` in every row.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutBatch {
    /// The prompts' token ids.
    pub prompts: Vec<Vec<u32>>,
    /// The responses' token ids (none empty).
    pub responses: Vec<Vec<u32>>,
    /// Longest prompt (or wider, in a sub-batch).
    pub prompt_width: usize,
    /// Longest response (or wider, in a sub-batch).
    pub response_width: usize,
}

impl RolloutBatch {
    /// Lays out `prompts` with their `responses`.
    pub fn new(prompts: Vec<Vec<u32>>, responses: Vec<Vec<u32>>) -> Self {
        assert_eq!(prompts.len(), responses.len(), "one response per prompt");
        assert!(
            prompts.iter().all(|p| !p.is_empty()) && responses.iter().all(|r| !r.is_empty()),
            "prompts and responses must not be empty"
        );
        let prompt_width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let response_width = responses.iter().map(Vec::len).max().unwrap_or(0);
        Self {
            prompts,
            responses,
            prompt_width,
            response_width,
        }
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// The rows `rows`, keeping this batch's widths so every forward sees the same layout.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self {
            prompts: rows.iter().map(|&r| self.prompts[r].clone()).collect(),
            responses: rows.iter().map(|&r| self.responses[r].clone()).collect(),
            prompt_width: self.prompt_width,
            response_width: self.response_width,
        }
    }

    /// `[batch, prompt_width + response_width]` ids (padding is id 0) and their layout.
    pub fn inputs(&self, device: &Device) -> (Tensor<2, Int>, Layout) {
        let (p, r) = (self.prompt_width, self.response_width);
        let mut ids = Vec::with_capacity(self.len() * (p + r));
        let mut mask = Vec::with_capacity(self.len() * (p + r));
        for (prompt, response) in self.prompts.iter().zip(&self.responses) {
            let (lpad, rpad) = (p - prompt.len(), r - response.len());
            ids.extend(std::iter::repeat_n(0i64, lpad));
            ids.extend(prompt.iter().chain(response).map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0i64, rpad));
            mask.extend(std::iter::repeat_n(false, lpad));
            mask.extend(std::iter::repeat_n(true, prompt.len() + response.len()));
            mask.extend(std::iter::repeat_n(false, rpad));
        }
        let layout = Layout::from_mask(self.len(), p + r, &mask);
        let ids = Tensor::from_data(TensorData::new(ids, [self.len(), p + r]), device);
        (ids, layout)
    }

    /// `[batch, response_width]` response ids, padding 0.
    pub fn response_ids(&self, device: &Device) -> Tensor<2, Int> {
        let r = self.response_width;
        let ids: Vec<i64> = self
            .responses
            .iter()
            .flat_map(|resp| {
                resp.iter()
                    .map(|&t| i64::from(t))
                    .chain(std::iter::repeat_n(0, r - resp.len()))
            })
            .collect();
        Tensor::from_data(TensorData::new(ids, [self.len(), r]), device)
    }

    /// `[batch * response_width]`: 1 on response tokens, 0 on padding.
    pub fn response_mask(&self) -> Vec<f32> {
        let r = self.response_width;
        self.responses
            .iter()
            .flat_map(|resp| {
                std::iter::repeat_n(1.0, resp.len()).chain(std::iter::repeat_n(0.0, r - resp.len()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_left_pads_prompts_and_right_pads_responses() {
        let device = Device::flex();
        let batch = RolloutBatch::new(vec![vec![5, 6], vec![7]], vec![vec![8], vec![9, 10, 11]]);
        let (ids, layout) = batch.inputs(&device);
        let ids: Vec<i64> = ids.into_data().convert::<i64>().try_to_vec().unwrap();
        assert_eq!(ids, vec![5, 6, 8, 0, 0, 0, 7, 9, 10, 11]);
        assert_eq!(layout.positions, vec![0, 1, 2, 2, 2, 0, 0, 1, 2, 3]);
        assert_eq!(batch.response_mask(), vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let one = batch.select(&[1]);
        assert_eq!((one.prompt_width, one.response_width), (2, 3));
        assert_eq!(one.response_ids(&device).dims(), [1, 3]);
    }
}
