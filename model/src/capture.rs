//! Capturing each linear layer's input during a forward pass: what calibration-driven
//! compression (GPTQ and AWQ statistics, Wanda scores, structured-pruning importance) reads.

use burn::prelude::*;

/// Receives the input of every linear layer as the forward reaches it.
///
/// `layer` is the HF module name (`model.layers.3.mlp.down_proj`, `lm_head`); `input` is
/// `[batch, seq, in_features]`, padding rows included (the caller knows its layout).
pub trait InputCapture {
    /// Called once per linear layer per forward, before the layer runs.
    fn capture(&mut self, layer: &str, input: &Tensor<3>);
}

/// Keeps the inputs of the layers whose names pass a filter, in call order.
pub struct CollectInputs<F: FnMut(&str) -> bool> {
    filter: F,
    /// `(layer name, input)` pairs.
    pub inputs: Vec<(String, Tensor<3>)>,
}

impl<F: FnMut(&str) -> bool> CollectInputs<F> {
    /// Collects the inputs of layers for which `filter(name)` is true.
    pub fn new(filter: F) -> Self {
        Self {
            filter,
            inputs: Vec::new(),
        }
    }

    /// The first captured input of `layer`.
    pub fn get(&self, layer: &str) -> Option<&Tensor<3>> {
        self.inputs.iter().find(|(n, _)| n == layer).map(|(_, t)| t)
    }
}

impl<F: FnMut(&str) -> bool> InputCapture for CollectInputs<F> {
    fn capture(&mut self, layer: &str, input: &Tensor<3>) {
        if (self.filter)(layer) {
            self.inputs.push((layer.to_string(), input.clone()));
        }
    }
}
