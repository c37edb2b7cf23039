//! The trained reward model ([`crate::reward::RewardModel`]) as PPO's [`RewardFn`]: each
//! rollout is scored as the reward model was trained to read a conversation, the prompt (the
//! user's turn rendered with the generation prompt) followed by the response, and after a
//! response that closed its turn the text the chat template writes after the end-of-turn token
//! (SmolLM2's newline), so the score is read at the same token as in training.

use super::RewardFn;
use crate::reward::RewardModel;
use burn::prelude::*;
use distill_model::chat::{self, ChatError, ChatTemplate, Message};
use distill_model::tokenizer::Tokenizer;

/// Scores prompt+response token ids with a reward model (on a plain device).
pub struct RewardModelFn {
    model: RewardModel,
    end_of_turn: Option<u32>,
    turn_tail: Vec<u32>,
    device: Device,
}

impl RewardModelFn {
    /// The reward function of `model` for conversations rendered with `tokenizer`'s chat
    /// template.
    pub fn new(model: RewardModel, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let template = ChatTemplate::from_tokenizer(tokenizer)?;
        let end_of_turn = template.end_of_turn(tokenizer);
        let turn_tail = match end_of_turn {
            Some(eot) => turn_tail(&template, tokenizer, eot)?,
            None => Vec::new(),
        };
        let device = model.model.embed_tokens.weight.val().device();
        Ok(Self {
            model,
            end_of_turn,
            turn_tail,
            device,
        })
    }
}

/// The tokens the template writes after an assistant turn's end-of-turn token `eot`.
fn turn_tail(
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    eot: u32,
) -> Result<Vec<u32>, ChatError> {
    const ANSWER: &str = "distill-answer-sentinel";
    let text = template.render(
        &[Message::user("Hi"), Message::new("assistant", ANSWER)],
        false,
    )?;
    let after = text.rfind(ANSWER).map_or("", |i| &text[i + ANSWER.len()..]);
    let ids = chat::encode_prompt(tokenizer, after)?;
    Ok(match ids.iter().position(|&t| t == eot) {
        Some(i) => ids[i + 1..].to_vec(),
        None => Vec::new(),
    })
}

impl RewardFn for RewardModelFn {
    fn score(&mut self, prompts: &[Vec<u32>], responses: &[Vec<u32>]) -> Vec<f32> {
        let rows: Vec<Vec<u32>> = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| {
                let closed = self.end_of_turn.is_some() && r.last() == self.end_of_turn.as_ref();
                let tail = if closed { &self.turn_tail[..] } else { &[] };
                p.iter().chain(r).chain(tail).copied().collect()
            })
            .collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .map(|&t| i64::from(t))
                    .chain(std::iter::repeat_n(0, width - r.len()))
            })
            .collect();
        let ids = Tensor::from_data(TensorData::new(ids, [rows.len(), width]), &self.device);
        self.model.score(ids, &lengths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_model::LlamaConfig;

    #[test]
    fn rollouts_are_scored_as_the_rendered_conversation() {
        let t = crate::sft::tests::chatml_tokenizer();
        let config = LlamaConfig::llama(t.vocab_size(), 16, 32, 1, 2, 1);
        let rm = RewardModel::from_causal_lm(config.init(&Device::flex(), 2), &config, 3);
        let mut f = RewardModelFn::new(rm.clone(), &t).unwrap();
        let template = ChatTemplate::from_tokenizer(&t).unwrap();
        let user = Message::user("how do I list files?");
        let prompt = chat::encode_prompt(
            &t,
            &template.render(std::slice::from_ref(&user), true).unwrap(),
        );
        let prompt = prompt.unwrap();
        let eot = t.token_to_id("<|im_end|>").unwrap();
        let answer = t.encode("use ls").unwrap();
        let closed: Vec<u32> = answer.iter().copied().chain([eot]).collect();
        let open = t.encode("use ls to list").unwrap();
        let scores = f.score(&[prompt.clone(), prompt.clone()], &[closed, open.clone()]);

        let whole = template
            .render(&[user, Message::new("assistant", "use ls")], false)
            .unwrap();
        let whole = chat::encode_prompt(&t, &whole).unwrap();
        let newline = chat::encode_prompt(&t, "\n").unwrap();
        assert_eq!(whole.last(), newline.last(), "{whole:?}");
        let alone = |ids: Vec<u32>| {
            let n = ids.len();
            let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
            let ids = Tensor::from_data(TensorData::new(ids, [1, n]), &Device::flex());
            rm.score(ids, &[n])[0]
        };
        let want = [alone(whole), alone([prompt, open].concat())];
        for (got, want) in scores.iter().zip(want) {
            assert!((got - want).abs() < 1e-5, "{scores:?} vs {want}");
        }
    }
}
