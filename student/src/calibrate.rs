//! Calibration: windows of domain text, run through the model once, and the statistics of
//! every linear layer's input ([`Hessian`]: `2XᵀX/N` and mean `|x|`).
//!
//! Layers that read the same tensor share one accumulator: `q_proj`, `k_proj` and `v_proj` read
//! the attention input, `gate_proj` and `up_proj` the MLP input. [`input_key`] names it.

use burn::prelude::*;
use distill_model::capture::InputCapture;
use distill_model::{Layout, LlamaForCausalLM};
use distill_quant::Hessian;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

/// A calibration problem: no text, or too little of it.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// The token stream does not hold one window.
    #[error("{origin}: {tokens} tokens cannot give a calibration window of {len} tokens")]
    TooShort {
        /// Where the tokens came from.
        origin: String,
        /// Tokens available.
        tokens: usize,
        /// Window length asked for.
        len: usize,
    },
    /// Samples or length of zero.
    #[error("calibration needs at least one sample of at least one token")]
    Empty,
    /// A statistic that could not be accumulated.
    #[error("calibration statistics of `{layer}`: {reason}")]
    Statistics {
        /// The layer.
        layer: String,
        /// What went wrong.
        reason: String,
    },
}

/// `samples` windows of `len` tokens drawn from `tokens` at seeded random offsets, as GPTQ
/// draws its calibration segments.
pub fn windows(
    tokens: &[u32],
    samples: usize,
    len: usize,
    seed: u64,
    origin: &str,
) -> Result<Vec<Vec<u32>>, CalibrationError> {
    if samples == 0 || len == 0 {
        return Err(CalibrationError::Empty);
    }
    if tokens.len() < len {
        return Err(CalibrationError::TooShort {
            origin: origin.to_string(),
            tokens: tokens.len(),
            len,
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Ok((0..samples)
        .map(|_| {
            let start = rng.random_range(0..=tokens.len() - len);
            tokens[start..start + len].to_vec()
        })
        .collect())
}

/// The accumulator a layer's input goes to: `q_proj` for q/k/v, `gate_proj` for gate/up, the
/// layer itself otherwise.
pub fn input_key(layer: &str) -> String {
    for (from, to) in [
        ("self_attn.k_proj", "self_attn.q_proj"),
        ("self_attn.v_proj", "self_attn.q_proj"),
        ("mlp.up_proj", "mlp.gate_proj"),
    ] {
        if let Some(prefix) = layer.strip_suffix(from) {
            return format!("{prefix}{to}");
        }
    }
    layer.to_string()
}

/// Input statistics per [`input_key`].
pub type Statistics = BTreeMap<String, Hessian>;

/// Accumulates a [`Hessian`] for every shared input, skipping `lm_head` unless asked.
struct HessianCapture {
    stats: Statistics,
    include_head: bool,
    /// Only this input key, when set.
    only: Option<String>,
    error: Option<CalibrationError>,
}

impl InputCapture for HessianCapture {
    fn capture(&mut self, layer: &str, input: &Tensor<3>) {
        if (layer == "lm_head" && !self.include_head) || self.error.is_some() {
            return;
        }
        let key = input_key(layer);
        if key != layer || self.only.as_ref().is_some_and(|k| *k != key) {
            return; // the same tensor was captured under its key's layer, or is not wanted
        }
        let [b, s, cols] = input.dims();
        let result = input
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
            .and_then(|x| {
                self.stats
                    .entry(key)
                    .or_insert_with(|| Hessian::new(cols))
                    .add(&x, b * s)
                    .map_err(|e| e.to_string())
            });
        if let Err(reason) = result {
            self.error = Some(CalibrationError::Statistics {
                layer: layer.to_string(),
                reason,
            });
        }
    }
}

/// Runs every window through `model` (one at a time) and returns each shared input's
/// statistics. `on_window` is called after each window (for progress).
pub fn collect(
    model: &LlamaForCausalLM,
    windows: &[Vec<u32>],
    include_head: bool,
    device: &Device,
    mut on_window: impl FnMut(usize),
) -> Result<Statistics, CalibrationError> {
    let mut capture = HessianCapture {
        stats: Statistics::new(),
        include_head,
        only: None,
        error: None,
    };
    for (i, w) in windows.iter().enumerate() {
        let ids: Vec<i64> = w.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, w.len()]), device);
        if include_head {
            let _ = model.forward_captured(ids, &Layout::causal(1, w.len()), &mut capture);
        } else {
            let _ = model.capture_decoder_inputs(ids, &Layout::causal(1, w.len()), &mut capture);
        }
        if let Some(e) = capture.error.take() {
            return Err(e);
        }
        on_window(i + 1);
    }
    Ok(capture.stats)
}

/// Calibration that follows the model layer by layer, as GPTQ's reference does: the hidden
/// states of every window are kept between decoder layers, so layer `i`'s statistics are taken
/// on the outputs of layers `0..i` as they are *after* quantization.
pub struct LayerByLayer {
    hidden: Vec<Tensor<3>>,
    layout: Layout,
}

impl LayerByLayer {
    /// Embeds every window (all of one length).
    pub fn new(model: &LlamaForCausalLM, windows: &[Vec<u32>], device: &Device) -> Self {
        let len = windows.first().map_or(0, Vec::len);
        let hidden = windows
            .iter()
            .map(|w| {
                let ids: Vec<i64> = w.iter().map(|&t| t as i64).collect();
                model.embed(Tensor::from_data(
                    TensorData::new(ids, [1, w.len()]),
                    device,
                ))
            })
            .collect();
        Self {
            hidden,
            layout: Layout::causal(1, len),
        }
    }

    /// The input statistics of decoder layer `i`'s linear layers; with `only`, of that
    /// [`input_key`] alone.
    pub fn statistics(
        &self,
        model: &LlamaForCausalLM,
        i: usize,
        only: Option<&str>,
    ) -> Result<Statistics, CalibrationError> {
        let mut capture = HessianCapture {
            stats: Statistics::new(),
            include_head: false,
            only: only.map(str::to_string),
            error: None,
        };
        for x in &self.hidden {
            let _ = model.decoder_layer(i, x.clone(), &self.layout, Some(&mut capture));
            if let Some(e) = capture.error.take() {
                return Err(e);
            }
        }
        Ok(capture.stats)
    }

    /// Moves every window through decoder layer `i` (as it now is).
    pub fn advance(&mut self, model: &LlamaForCausalLM, i: usize) {
        for x in &mut self.hidden {
            *x = model.decoder_layer(i, x.clone(), &self.layout, None);
        }
    }

    /// The statistics of the output head's input (the final norm of the hidden states), once
    /// every layer has been advanced through.
    pub fn head_statistics(
        &self,
        model: &LlamaForCausalLM,
    ) -> Result<Statistics, CalibrationError> {
        let mut capture = HessianCapture {
            stats: Statistics::new(),
            include_head: true,
            only: None,
            error: None,
        };
        for x in &self.hidden {
            let normed = model.model.norm.forward(x.clone());
            capture.capture("lm_head", &normed);
            if let Some(e) = capture.error.take() {
                return Err(e);
            }
        }
        Ok(capture.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_seeded_and_in_range() {
        let tokens: Vec<u32> = (0..1000).collect();
        let a = windows(&tokens, 5, 64, 3, "t").unwrap();
        assert_eq!(a, windows(&tokens, 5, 64, 3, "t").unwrap());
        assert_ne!(a, windows(&tokens, 5, 64, 4, "t").unwrap());
        for w in &a {
            assert_eq!(w.len(), 64);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        let err = windows(&tokens[..10], 1, 64, 0, "calib.txt").unwrap_err();
        assert!(err.to_string().contains("calib.txt"), "{err}");
    }

    #[test]
    fn shared_inputs_share_a_key() {
        assert_eq!(
            input_key("model.layers.3.self_attn.v_proj"),
            "model.layers.3.self_attn.q_proj"
        );
        assert_eq!(
            input_key("model.layers.3.mlp.up_proj"),
            "model.layers.3.mlp.gate_proj"
        );
        assert_eq!(
            input_key("model.layers.3.mlp.down_proj"),
            "model.layers.3.mlp.down_proj"
        );
    }

    #[test]
    fn statistics_cover_every_shared_input() {
        let device = Device::flex();
        let config = distill_model::LlamaConfig::llama(64, 32, 48, 2, 4, 2);
        let model = config.init(&device, 1);
        let tokens: Vec<u32> = (0..200).map(|i| (i * 7 % 64) as u32).collect();
        let w = windows(&tokens, 3, 16, 0, "t").unwrap();
        let mut seen = 0;
        let stats = collect(&model, &w, false, &device, |i| seen = i).unwrap();
        assert_eq!(seen, 3);
        assert_eq!(stats.len(), 2 * 4);
        for (k, h) in &stats {
            assert_eq!(h.samples(), 48, "{k}");
        }
        assert_eq!(stats["model.layers.1.mlp.down_proj"].cols(), 48);

        // Layer by layer on the unchanged model gives the same statistics.
        let mut by_layer = LayerByLayer::new(&model, &w, &device);
        for i in 0..2 {
            let layer = by_layer.statistics(&model, i, None).unwrap();
            assert_eq!(layer.len(), 4);
            for (k, h) in &layer {
                let (a, b) = (h.matrix(), stats[k].matrix());
                let d = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max);
                assert!(d <= 1e-4 * scale, "{k}: {d} vs {scale}");
            }
            by_layer.advance(&model, i);
        }
    }
}
