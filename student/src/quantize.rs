//! Quantizing a whole model: every decoder linear layer into one [`Format`], with RTN, GPTQ,
//! AWQ (activation-aware scaling, then RTN) or AWQ+GPTQ.
//!
//! The per-layer algorithms are `distill_quant`'s; this driver supplies each layer's weights and
//! calibration statistics, folds AWQ's scales into the op that feeds each scaled layer, and
//! swaps the layers' dense weights for packed ones. The token embedding (and the output head
//! tied to it) stays dense; an untied `lm_head` is quantized only when asked.

use crate::calibrate::{LayerByLayer, Statistics, input_key};
use burn::module::Param;
use burn::prelude::*;
use distill_model::LlamaForCausalLM;
use distill_quant::{
    AwqConfig, AwqLayer, Format, GptqConfig, PackedMatrix, awq_search, gptq_quantize, scale_columns,
};
use serde_json::{Value, json};
use std::fmt;
use std::str::FromStr;

/// How each layer is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Round to nearest: no calibration.
    Rtn,
    /// GPTQ with the layer's Hessian.
    Gptq,
    /// AWQ scaling, then round to nearest.
    Awq,
    /// AWQ scaling, then GPTQ with the scaled inputs' Hessian.
    AwqGptq,
}

impl Method {
    /// Whether the method needs calibration text.
    pub fn needs_calibration(self) -> bool {
        self != Method::Rtn
    }
    fn awq(self) -> bool {
        matches!(self, Method::Awq | Method::AwqGptq)
    }
    fn gptq(self) -> bool {
        matches!(self, Method::Gptq | Method::AwqGptq)
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Self::Rtn),
            "gptq" => Ok(Self::Gptq),
            "awq" => Ok(Self::Awq),
            "awq+gptq" => Ok(Self::AwqGptq),
            _ => Err(format!(
                "unknown method `{s}`: use rtn, gptq, awq or awq+gptq"
            )),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rtn => "rtn",
            Self::Gptq => "gptq",
            Self::Awq => "awq",
            Self::AwqGptq => "awq+gptq",
        })
    }
}

/// What to quantize and how.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// Target format of every quantized layer.
    pub format: Format,
    /// Algorithm.
    pub method: Method,
    /// GPTQ settings (reference defaults: dampening 1%, blocks of 128, no act-order).
    pub gptq: GptqConfig,
    /// AWQ settings (20 grid points).
    pub awq: AwqConfig,
    /// Also quantize an untied `lm_head` (default false).
    pub include_head: bool,
    /// Within each decoder layer, quantize the layers that share an input in order (q/k/v,
    /// o, gate/up, down), taking each one's statistics after the ones before it are
    /// quantized: the GPTQ reference's `--true-sequential` (default false: one set of
    /// statistics per decoder layer).
    pub true_sequential: bool,
}

impl QuantizeConfig {
    /// `method` into `format` with the default settings.
    pub fn new(format: Format, method: Method) -> Self {
        Self {
            format,
            method,
            gptq: GptqConfig::default(),
            awq: AwqConfig::default(),
            include_head: false,
            true_sequential: false,
        }
    }

    /// The settings as JSON, for the checkpoint's quantization header.
    pub fn describe(&self) -> Value {
        let mut v = json!({"method": self.method.to_string(), "scheme": self.format.to_string()});
        if self.method.gptq() {
            v["gptq"] = json!({
                "damp": self.gptq.damp, "block_size": self.gptq.block_size,
                "act_order": self.gptq.act_order, "static_groups": self.gptq.static_groups,
                "scale_search": self.gptq.scale_search.map(|s| json!({
                    "norm": s.norm, "grid": s.grid, "max_shrink": s.max_shrink,
                })),
                "weighted_search": self.gptq.weighted_search,
            });
        }
        if self.method.awq() {
            v["awq"] = json!({"grid": self.awq.grid});
        }
        if self.true_sequential {
            v["true_sequential"] = json!(true);
        }
        v
    }
}

/// A quantization that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// A layer's format, shape or statistics were refused.
    #[error("layer `{layer}`: {reason}")]
    Layer {
        /// The layer.
        layer: String,
        /// Why.
        reason: String,
    },
    /// The method needs statistics that were not collected.
    #[error("{0} needs calibration statistics (pass --calib FILE)")]
    NoStatistics(Method),
}

/// What happened to one layer.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// HF module name.
    pub name: String,
    /// `[rows, cols]`.
    pub shape: [usize; 2],
    /// Output error `Σ_t ||ΔW x_t||² / N` on the calibration inputs (when calibrated).
    pub output_error: Option<f64>,
    /// The AWQ exponent chosen for the layer's input, when AWQ ran.
    pub awq_alpha: Option<f32>,
}

/// The outcome of [`quantize_model`].
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    /// Per layer, in module order.
    pub layers: Vec<LayerReport>,
    /// Bytes of the quantized layers' weights before (f32) and after.
    pub bytes_before: usize,
    /// See `bytes_before`.
    pub bytes_after: usize,
}

fn layer_err(layer: &str, e: impl ToString) -> QuantizeError {
    QuantizeError::Layer {
        layer: layer.to_string(),
        reason: e.to_string(),
    }
}

/// The op feeding a shared input, which absorbs AWQ's `1/s`.
enum Feeder {
    /// An RMSNorm weight: `model.layers.{i}.input_layernorm` / `post_attention_layernorm`.
    Norm(usize, bool),
    /// The rows of a linear layer (`up_proj` for `down_proj`, `v_proj` for `o_proj`).
    Rows(String),
}

fn feeder(model: &LlamaForCausalLM, key: &str) -> Option<Feeder> {
    let rest = key.strip_prefix("model.layers.")?;
    let (i, module) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    match module {
        "self_attn.q_proj" => Some(Feeder::Norm(i, true)),
        "mlp.gate_proj" => Some(Feeder::Norm(i, false)),
        "mlp.down_proj" => Some(Feeder::Rows(format!("model.layers.{i}.mlp.up_proj"))),
        // v feeds o channel for channel only without grouped-query sharing.
        "self_attn.o_proj" => {
            let [q_rows, _] = model.model.layers[i].self_attn.q_proj.dims();
            let [v_rows, _] = model.model.layers[i].self_attn.v_proj.dims();
            (q_rows == v_rows).then(|| Feeder::Rows(format!("model.layers.{i}.self_attn.v_proj")))
        }
        _ => None,
    }
}

/// Divides the feeding op's output channels by `s`.
fn fold_into_feeder(model: &mut LlamaForCausalLM, f: &Feeder, s: &[f32], device: &Device) {
    match f {
        Feeder::Norm(i, attn) => {
            let layer = &mut model.model.layers[*i];
            let norm = if *attn {
                &mut layer.input_layernorm
            } else {
                &mut layer.post_attention_layernorm
            };
            let w: Vec<f32> = norm
                .weight
                .val()
                .into_data()
                .try_to_vec()
                .unwrap_or_default();
            let scaled: Vec<f32> = w.iter().zip(s).map(|(w, s)| w / s).collect();
            let n = scaled.len();
            let id = norm.weight.id;
            norm.weight =
                Param::initialized(id, Tensor::from_data(TensorData::new(scaled, [n]), device));
        }
        Feeder::Rows(name) => {
            let lin = model.linear_mut(name).expect("feeder layer exists");
            let [rows, cols] = lin.dims();
            let mut w = lin.weight_values();
            for (row, s) in w.chunks_exact_mut(cols).zip(s) {
                row.iter_mut().for_each(|v| *v /= s);
            }
            if let Some(b) = &lin.bias {
                let bv: Vec<f32> = b.val().into_data().try_to_vec().unwrap_or_default();
                let scaled: Vec<f32> = bv.iter().zip(s).map(|(b, s)| b / s).collect();
                let id = b.id;
                lin.bias = Some(Param::initialized(
                    id,
                    Tensor::from_data(TensorData::new(scaled, [rows]), device),
                ));
            }
            lin.set_dense(name, w, [rows, cols], device);
        }
    }
}

/// Quantizes `model`'s linear layers in place with statistics taken in one pass over the
/// unquantized model (`stats` from [`crate::calibrate::collect`]; required by every method but
/// RTN). `on_layer` is called after each layer (for progress).
pub fn quantize_model(
    model: &mut LlamaForCausalLM,
    config: &QuantizeConfig,
    mut stats: Option<Statistics>,
    device: &Device,
    mut on_layer: impl FnMut(&str),
) -> Result<QuantizeReport, QuantizeError> {
    if config.method.needs_calibration() && stats.is_none() {
        return Err(QuantizeError::NoStatistics(config.method));
    }
    let names = layers_to_quantize(model, config)?;
    let mut report = QuantizeReport::default();
    let alphas = awq_layers(model, config, &names, stats.as_mut(), device)?;
    quantize_layers(
        model,
        config,
        (&names, stats.as_ref(), &alphas),
        device,
        &mut on_layer,
        &mut report,
    )?;
    Ok(report)
}

/// Quantizes `model`'s linear layers in place, decoder layer by decoder layer: each layer's
/// statistics are taken on `windows` run through the layers before it *as quantized*, as in
/// GPTQ's reference. RTN needs no windows.
pub fn quantize_model_sequential(
    model: &mut LlamaForCausalLM,
    config: &QuantizeConfig,
    windows: &[Vec<u32>],
    device: &Device,
    mut on_layer: impl FnMut(&str),
) -> Result<QuantizeReport, QuantizeError> {
    let names = layers_to_quantize(model, config)?;
    let mut report = QuantizeReport::default();
    let no_alphas = Alphas::new();
    if !config.method.needs_calibration() {
        quantize_layers(
            model,
            config,
            (&names, None, &no_alphas),
            device,
            &mut on_layer,
            &mut report,
        )?;
        return Ok(report);
    }
    if windows.is_empty() {
        return Err(QuantizeError::NoStatistics(config.method));
    }
    let calib_err = |e: crate::calibrate::CalibrationError| QuantizeError::Layer {
        layer: "calibration".into(),
        reason: e.to_string(),
    };
    let mut by_layer = LayerByLayer::new(model, windows, device);
    for i in 0..model.model.layers.len() {
        let prefix = format!("model.layers.{i}.");
        let block: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .cloned()
            .collect();
        let mut stats = by_layer.statistics(model, i, None).map_err(calib_err)?;
        let alphas = awq_layers(model, config, &block, Some(&mut stats), device)?;
        if config.true_sequential {
            for group in block.chunk_by(|a, b| input_key(a) == input_key(b)) {
                let key = input_key(&group[0]);
                let stats = by_layer
                    .statistics(model, i, Some(&key))
                    .map_err(calib_err)?;
                let layers = (group, Some(&stats), &alphas);
                quantize_layers(model, config, layers, device, &mut on_layer, &mut report)?;
            }
        } else {
            let layers = (block.as_slice(), Some(&stats), &alphas);
            quantize_layers(model, config, layers, device, &mut on_layer, &mut report)?;
        }
        by_layer.advance(model, i);
    }
    if names.iter().any(|n| n == "lm_head") {
        let stats = by_layer.head_statistics(model).map_err(calib_err)?;
        let head = ["lm_head".to_string()];
        quantize_layers(
            model,
            config,
            (&head, Some(&stats), &no_alphas),
            device,
            &mut on_layer,
            &mut report,
        )?;
    }
    Ok(report)
}

/// The layers the config quantizes, each checked to take the format (before anything changes).
fn layers_to_quantize(
    model: &LlamaForCausalLM,
    config: &QuantizeConfig,
) -> Result<Vec<String>, QuantizeError> {
    let mut names = Vec::new();
    for (name, lin) in model.linears() {
        if name == "lm_head" && !config.include_head {
            continue;
        }
        config
            .format
            .validate(lin.dims()[1])
            .map_err(|e| layer_err(&name, e))?;
        names.push(name);
    }
    Ok(names)
}

/// AWQ's exponent per shared input key.
type Alphas = std::collections::BTreeMap<String, f32>;

/// AWQ, when the method has it, for every shared input of `names` found in `stats`: scales
/// the layers' columns, folds `1/s` into the feeding op and into `stats`; returns each
/// input's exponent.
fn awq_layers(
    model: &mut LlamaForCausalLM,
    config: &QuantizeConfig,
    names: &[String],
    stats: Option<&mut Statistics>,
    device: &Device,
) -> Result<Alphas, QuantizeError> {
    let mut alphas = Alphas::new();
    if config.method.awq() {
        let stats = stats.ok_or(QuantizeError::NoStatistics(config.method))?;
        let keys: Vec<String> = stats.keys().cloned().collect();
        for key in keys {
            let Some(f) = feeder(model, &key) else {
                continue;
            };
            let members: Vec<String> = names
                .iter()
                .filter(|n| input_key(n) == key)
                .cloned()
                .collect();
            if members.is_empty() {
                continue;
            }
            let weights: Vec<(Vec<f32>, usize)> = members
                .iter()
                .map(|n| {
                    let lin = model.linear_mut(n).expect("listed layer");
                    (lin.weight_values(), lin.dims()[0])
                })
                .collect();
            let layers: Vec<AwqLayer> = weights
                .iter()
                .map(|(w, rows)| AwqLayer {
                    weights: w,
                    rows: *rows,
                })
                .collect();
            let found = awq_search(&layers, &stats[&key], config.format, &config.awq)
                .map_err(|e| layer_err(&key, e))?;
            tracing::debug!(
                "AWQ {key}: alpha {} error {:.4e} (RTN {:.4e})",
                found.alpha,
                found.error,
                found.rtn_error
            );
            for (n, (mut w, rows)) in members.iter().zip(weights) {
                let cols = found.scales.len();
                scale_columns(&mut w, rows, cols, &found.scales).map_err(|e| layer_err(n, e))?;
                model
                    .linear_mut(n)
                    .expect("listed layer")
                    .set_dense(n, w, [rows, cols], device);
            }
            fold_into_feeder(model, &f, &found.scales, device);
            let inv: Vec<f32> = found.scales.iter().map(|s| 1.0 / s).collect();
            stats
                .get_mut(&key)
                .expect("present")
                .scale_inputs(&inv)
                .map_err(|e| layer_err(&key, e))?;
            alphas.insert(key, found.alpha);
        }
    }
    Ok(alphas)
}

/// RTN or GPTQ for each of `names`, with the input statistics `stats` (GPTQ's Hessians) and
/// the AWQ exponents to report.
fn quantize_layers(
    model: &mut LlamaForCausalLM,
    config: &QuantizeConfig,
    (names, stats, alphas): (&[String], Option<&Statistics>, &Alphas),
    device: &Device,
    on_layer: &mut impl FnMut(&str),
    report: &mut QuantizeReport,
) -> Result<(), QuantizeError> {
    for name in names {
        let lin = model.linear_mut(name).expect("listed layer");
        let [rows, cols] = lin.dims();
        let w = lin.weight_values();
        let key = input_key(name);
        let h = stats.and_then(|s| s.get(&key));
        let packed: PackedMatrix = if config.method.gptq() {
            let h = h.ok_or_else(|| layer_err(name, "no calibration statistics"))?;
            gptq_quantize(&w, rows, cols, h, config.format, &config.gptq)
                .map_err(|e| layer_err(name, e))?
                .packed
        } else {
            PackedMatrix::quantize_rtn(&w, rows, cols, config.format)
                .map_err(|e| layer_err(name, e))?
        };
        let output_error = match h {
            Some(h) => {
                let delta: Vec<f32> = w
                    .iter()
                    .zip(packed.dequantize())
                    .map(|(a, b)| a - b)
                    .collect();
                Some(
                    h.output_error(&delta, rows)
                        .map_err(|e| layer_err(name, e))?,
                )
            }
            None => None,
        };
        report.bytes_before += rows * cols * 4;
        report.bytes_after += packed.storage_bytes();
        report.layers.push(LayerReport {
            name: name.clone(),
            shape: [rows, cols],
            output_error,
            awq_alpha: alphas.get(&key).copied(),
        });
        lin.set_packed(packed, device);
        on_layer(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate;
    use distill_model::{Layout, LlamaConfig};

    fn logits(model: &LlamaForCausalLM, ids: &[u32], device: &Device) -> Vec<f32> {
        let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(v, [1, ids.len()]), device);
        model
            .forward(t, &Layout::causal(1, ids.len()))
            .into_data()
            .try_to_vec()
            .unwrap()
    }

    /// Quantizing a tiny model with each method keeps its logits close, and the calibrated
    /// methods do at least as well as RTN on the calibration text.
    #[test]
    fn every_method_quantizes_a_model() {
        let device = Device::flex();
        let mut config = LlamaConfig::llama(96, 64, 128, 2, 4, 4);
        config.initializer_range = 0.1;
        let base = config.init(&device, 3);
        let tokens: Vec<u32> = (0..600).map(|i| ((i * 31 + i / 7) % 96) as u32).collect();
        let w = calibrate::windows(&tokens, 4, 32, 0, "t").unwrap();
        let stats = calibrate::collect(&base, &w, false, &device, |_| {}).unwrap();
        let reference = logits(&base, &w[0], &device);
        let format: Format = "int4-sym-g32".parse().unwrap();
        let mut errors = Vec::new();
        for method in [Method::Rtn, Method::Gptq, Method::Awq, Method::AwqGptq] {
            let mut m = config.init(&device, 3);
            let report = quantize_model(
                &mut m,
                &QuantizeConfig::new(format, method),
                method.needs_calibration().then(|| stats.clone()),
                &device,
                |_| {},
            )
            .unwrap();
            assert_eq!(report.layers.len(), 2 * 7);
            assert_eq!(m.packed_weights().len(), 2 * 7, "{method}");
            let got = logits(&m, &w[0], &device);
            let err: f32 = got
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / got.len() as f32;
            let var: f32 = reference.iter().map(|v| v * v).sum::<f32>() / reference.len() as f32;
            eprintln!("{method}: logit mse {err:.4e}, logit mean square {var:.4e}");
            assert!(
                err.is_finite() && err < 0.1 * var,
                "{method}: mse {err} vs {var}"
            );
            errors.push((method, err));
        }
        let rtn = errors[0].1;
        let gptq = errors[1].1;
        assert!(gptq < rtn, "GPTQ {gptq} vs RTN {rtn}");
        for method in [Method::Gptq, Method::AwqGptq] {
            let mut packed = Vec::new();
            for true_sequential in [false, true] {
                let mut m = config.init(&device, 3);
                let mut config = QuantizeConfig::new(format, method);
                config.true_sequential = true_sequential;
                let report =
                    quantize_model_sequential(&mut m, &config, &w, &device, |_| {}).unwrap();
                assert_eq!(report.layers.len(), 2 * 7);
                let got = logits(&m, &w[0], &device);
                let err = got
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    / got.len() as f32;
                eprintln!("{method} layer by layer (true sequential {true_sequential}): {err:.4e}");
                assert!(err < rtn, "{method} layer by layer {err} vs RTN {rtn}");
                let weights: Vec<(String, Vec<f32>)> = m
                    .packed_weights()
                    .into_iter()
                    .map(|(n, p)| (n, p.dequantize()))
                    .collect();
                packed.push(weights);
            }
            if method == Method::Gptq {
                // q/k/v see the same statistics either way; o_proj, taken after them, does not.
                let layer = |i: usize, name: &str| {
                    let name = format!("model.layers.0.self_attn.{name}.weight");
                    packed[i]
                        .iter()
                        .find(|(n, _)| *n == name)
                        .unwrap()
                        .1
                        .clone()
                };
                assert!(layer(0, "q_proj") == layer(1, "q_proj"));
                assert!(layer(0, "o_proj") != layer(1, "o_proj"));
            }
        }
        assert!(
            quantize_model(
                &mut config.init(&device, 3),
                &QuantizeConfig::new(format, Method::Gptq),
                None,
                &device,
                |_| {}
            )
            .is_err()
        );
    }

    #[test]
    fn a_format_that_does_not_fit_is_refused_before_any_change() {
        let device = Device::flex();
        let config = LlamaConfig::llama(64, 48, 96, 1, 4, 4);
        let mut m = config.init(&device, 0);
        let err = quantize_model(
            &mut m,
            &QuantizeConfig::new("int4-sym-g32".parse().unwrap(), Method::Rtn),
            None,
            &device,
            |_| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("48"), "{err}");
        assert!(m.packed_weights().is_empty());
    }
}
