//! Structured pruning: a smaller dense model of the same family, cut from the teacher along
//! depth (whole decoder layers) and width (KV groups with their query heads, MLP neurons,
//! hidden channels), after Minitron (Muralidharan et al. 2024, "Compact Language Models via
//! Pruning and Knowledge Distillation", arXiv:2407.14679).
//!
//! Importance is measured on calibration windows, in one forward pass per window:
//!
//! * **MLP neuron** `j` of layer `l`: the RMS of its activation, the input of `down_proj`
//!   column `j` (the square root of half the GPTQ Hessian's diagonal).
//! * **KV group** `g` of layer `l`: the mean squared norm of the outputs of the query heads
//!   that share KV head `g`, summed over those heads (the `o_proj` input columns of the group).
//! * **Hidden channel** `c`: the mean squared value of channel `c` of every RMSNorm output
//!   (the inputs of `q_proj` and `gate_proj` in each layer, and of `lm_head`), summed over
//!   them: Minitron's embedding-channel importance.
//! * **Layer** `l`: Block Influence (ShortGPT, Men et al. 2024, arXiv:2403.03853),
//!   `1 − mean cos(h_in, h_out)` over tokens of the residual stream around the layer.
//!
//! Every layer keeps its own most important KV groups and neurons, the same number in each
//! layer; the layers of lowest Block Influence are dropped; the hidden channels kept are the
//! same everywhere (the residual stream is shared).
//!
//! Cutting parts whose contribution is exactly zero (a silent neuron or KV group, an identity
//! layer) leaves the logits unchanged. Cutting hidden channels is an approximation even then:
//! every RMSNorm divides by the root mean square over the channels that remain, so its
//! statistics change. Distillation after pruning repairs that, as Minitron does.

use crate::calibrate::CalibrationError;
use crate::prune::PruneError;
use burn::prelude::*;
use distill_model::capture::InputCapture;
use distill_model::checkpoint::named_tensors;
use distill_model::llama::{Init, ParamSource};
use distill_model::{Layout, LlamaConfig, LlamaForCausalLM};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Target sizes of a structurally pruned model; `None` keeps the teacher's size. The default
/// keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StructuredConfig {
    /// Decoder layers to keep (those of highest Block Influence).
    pub num_hidden_layers: Option<usize>,
    /// KV heads to keep per layer. Query heads follow in proportion: each KV group is kept or
    /// removed with all its query heads, so `num_attention_heads / num_key_value_heads` stays.
    pub num_key_value_heads: Option<usize>,
    /// MLP neurons to keep per layer.
    pub intermediate_size: Option<usize>,
    /// Hidden (residual stream) channels to keep. `head_dim` does not change.
    pub hidden_size: Option<usize>,
}

impl StructuredConfig {
    /// Checks that every target is at least 1 and at most the model's size.
    pub fn validate(&self, config: &LlamaConfig) -> Result<(), PruneError> {
        for (key, target, size) in [
            (
                "num_hidden_layers",
                self.num_hidden_layers,
                config.num_hidden_layers,
            ),
            (
                "num_key_value_heads",
                self.num_key_value_heads,
                config.num_key_value_heads,
            ),
            (
                "intermediate_size",
                self.intermediate_size,
                config.intermediate_size,
            ),
            ("hidden_size", self.hidden_size, config.hidden_size),
        ] {
            let reason = match target {
                Some(0) => "must be at least 1".to_string(),
                Some(t) if t > size => format!("{t} is larger than the model's {size}"),
                _ => continue,
            };
            return Err(PruneError::Target {
                key: format!("structured.{key}"),
                reason,
            });
        }
        Ok(())
    }

    /// The config of the pruned model (validating the targets first).
    pub fn pruned_config(&self, config: &LlamaConfig) -> Result<LlamaConfig, PruneError> {
        self.validate(config)?;
        let mut c = config.clone();
        c.num_hidden_layers = self.num_hidden_layers.unwrap_or(c.num_hidden_layers);
        if let Some(kv) = self.num_key_value_heads {
            let group = c.num_attention_heads / c.num_key_value_heads;
            c.num_key_value_heads = kv;
            c.num_attention_heads = kv * group;
        }
        c.intermediate_size = self.intermediate_size.unwrap_or(c.intermediate_size);
        c.hidden_size = self.hidden_size.unwrap_or(c.hidden_size);
        Ok(c)
    }
}

/// Parameters outside the token embedding and the output head (the decoder layers and the
/// final norm): the size by which scaling laws and Minitron compare models.
pub fn non_embedding_parameters(config: &LlamaConfig) -> usize {
    let embedding = config.vocab_size * config.hidden_size;
    let head = if config.tie_word_embeddings {
        0
    } else {
        embedding
    };
    config.num_parameters() - embedding - head
}

/// Importance scores of a model's prunable parts (see the module doc for definitions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    /// Block Influence of each decoder layer.
    pub layers: Vec<f64>,
    /// Per layer, each KV group's summed mean squared head-output norm.
    pub kv_groups: Vec<Vec<f64>>,
    /// Per layer, each MLP neuron's activation RMS.
    pub neurons: Vec<Vec<f64>>,
    /// Each hidden channel's mean square, summed over every RMSNorm output.
    pub channels: Vec<f64>,
}

/// Sums of squares per input channel of the layers importance reads.
#[derive(Default)]
struct SquareSums {
    sums: BTreeMap<String, Vec<f64>>,
    error: Option<String>,
}

impl InputCapture for SquareSums {
    fn capture(&mut self, layer: &str, input: &Tensor<3>) {
        let wanted = [
            "self_attn.q_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.down_proj",
        ]
        .iter()
        .any(|s| layer.ends_with(s))
            || layer == "lm_head";
        if !wanted || self.error.is_some() {
            return;
        }
        let [_, _, cols] = input.dims();
        let squares = input
            .clone()
            .square()
            .sum_dim(1)
            .sum_dim(0)
            .reshape([cols])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>();
        match squares {
            Ok(v) => {
                let sum = self
                    .sums
                    .entry(layer.to_string())
                    .or_insert_with(|| vec![0.0; cols]);
                sum.iter_mut().zip(&v).for_each(|(s, &x)| *s += x as f64);
            }
            Err(e) => self.error = Some(format!("{layer}: {e:?}")),
        }
    }
}

/// Measures the importance of every layer, KV group, neuron and hidden channel of `model` on
/// calibration `windows` (token ids, each run alone through the model once).
pub fn importance(
    model: &LlamaForCausalLM,
    config: &LlamaConfig,
    windows: &[Vec<u32>],
    device: &Device,
) -> Result<Importance, PruneError> {
    if windows.is_empty() || windows.iter().any(Vec::is_empty) {
        return Err(CalibrationError::Empty.into());
    }
    if let Some(&t) = windows
        .iter()
        .flatten()
        .find(|&&t| t as usize >= config.vocab_size)
    {
        return Err(CalibrationError::Statistics {
            layer: "model.embed_tokens".into(),
            reason: format!(
                "token id {t} is outside the vocabulary of {}",
                config.vocab_size
            ),
        }
        .into());
    }
    if model.model.layers.len() != config.num_hidden_layers {
        return Err(PruneError::Model(format!(
            "the model has {} layers, its config {}",
            model.model.layers.len(),
            config.num_hidden_layers
        )));
    }
    let n_layers = config.num_hidden_layers;
    let mut capture = SquareSums::default();
    let mut cos_sums = vec![0f64; n_layers];
    let mut tokens = 0usize;
    for (w, window) in windows.iter().enumerate() {
        let ids: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let layout = Layout::causal(1, ids.len());
        let mut x = model.embed(Tensor::from_data(
            TensorData::new(ids, [1, window.len()]),
            device,
        ));
        for (l, cos_sum) in cos_sums.iter_mut().enumerate() {
            let y = model.decoder_layer(l, x.clone(), &layout, Some(&mut capture));
            *cos_sum += sum_cosines(&x, &y).map_err(|reason| CalibrationError::Statistics {
                layer: format!("model.layers.{l}"),
                reason,
            })?;
            x = y;
        }
        capture.capture("lm_head", &model.model.norm.forward(x));
        if let Some(reason) = capture.error.take() {
            return Err(CalibrationError::Statistics {
                layer: "importance".into(),
                reason,
            }
            .into());
        }
        tokens += window.len();
        tracing::debug!("importance: window {}/{}", w + 1, windows.len());
    }

    let n = tokens as f64;
    let mean = |name: &str| -> Result<Vec<f64>, PruneError> {
        capture
            .sums
            .get(name)
            .map(|s| s.iter().map(|v| v / n).collect())
            .ok_or_else(|| {
                CalibrationError::Statistics {
                    layer: name.to_string(),
                    reason: "its input was never seen".into(),
                }
                .into()
            })
    };
    let group_width = config.num_attention_heads / config.num_key_value_heads * config.head_dim;
    let mut kv_groups = Vec::with_capacity(n_layers);
    let mut neurons = Vec::with_capacity(n_layers);
    let mut channels = mean("lm_head")?;
    for l in 0..n_layers {
        let p = format!("model.layers.{l}");
        let heads = mean(&format!("{p}.self_attn.o_proj"))?;
        kv_groups.push(heads.chunks(group_width).map(|g| g.iter().sum()).collect());
        let act = mean(&format!("{p}.mlp.down_proj"))?;
        neurons.push(act.iter().map(|v| v.sqrt()).collect());
        for norm in ["self_attn.q_proj", "mlp.gate_proj"] {
            let m = mean(&format!("{p}.{norm}"))?;
            channels.iter_mut().zip(&m).for_each(|(c, v)| *c += v);
        }
    }
    let layers = cos_sums.iter().map(|c| 1.0 - c / n).collect();
    tracing::info!(
        "importance measured on {} windows ({tokens} tokens)",
        windows.len()
    );
    Ok(Importance {
        layers,
        kv_groups,
        neurons,
        channels,
    })
}

/// `Σ_t cos(x_t, y_t)` over the tokens of `[1, seq, hidden]` hidden states.
fn sum_cosines(x: &Tensor<3>, y: &Tensor<3>) -> Result<f64, String> {
    let dot = (x.clone() * y.clone()).sum_dim(2);
    let norms = x.clone().square().sum_dim(2).sqrt() * y.clone().square().sum_dim(2).sqrt();
    let cos = dot / norms.clamp_min(1e-30);
    cos.sum()
        .into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| format!("{e:?}"))
        .map(|v| v.first().copied().unwrap_or(0.0))
}

/// The indices of the `k` highest scores, in increasing order (NaN counts as lowest; ties keep
/// the earlier index).
fn top(scores: &[f64], k: usize) -> Vec<usize> {
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() { f64::NEG_INFINITY } else { s }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order.truncate(k);
    order.sort_unstable();
    order
}

/// Rows `rows` and, of those, columns `cols` of a row-major matrix `cols_in` wide.
fn take(values: &[f32], cols_in: usize, rows: &[usize], cols: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &r in rows {
        let row = &values[r * cols_in..(r + 1) * cols_in];
        out.extend(cols.iter().map(|&c| row[c]));
    }
    out
}

/// Rows of the heads in `heads` (each `head_dim` rows) of a projection.
fn head_rows(heads: impl IntoIterator<Item = usize>, head_dim: usize) -> Vec<usize> {
    heads
        .into_iter()
        .flat_map(|h| h * head_dim..(h + 1) * head_dim)
        .collect()
}

/// Named tensors held in memory, handed out once each as a model is built.
struct TensorMap {
    tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
    device: Device,
}

impl ParamSource for TensorMap {
    type Error = PruneError;
    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        _init: Init,
    ) -> Result<Tensor<D>, PruneError> {
        let (values, found) = self
            .tensors
            .remove(name)
            .ok_or_else(|| PruneError::Model(format!("tensor `{name}` is missing")))?;
        if found != shape {
            return Err(PruneError::Model(format!(
                "tensor `{name}` has shape {found:?}, expected {shape:?}"
            )));
        }
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            &self.device,
        ))
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}

/// What one kept layer keeps: its old index, query-head rows and KV rows of its projections,
/// and its neurons.
struct KeptLayer {
    from: usize,
    q_rows: Vec<usize>,
    kv_rows: Vec<usize>,
    neurons: Vec<usize>,
}

/// Cuts `model` down to `target`, keeping the parts of highest `importance` (kept indices stay
/// in their original order), and returns the new config and model, built on `device`.
/// A quantized (packed) model is refused: prune before quantizing.
pub fn prune_structured(
    config: &LlamaConfig,
    model: &LlamaForCausalLM,
    importance: &Importance,
    target: &StructuredConfig,
    device: &Device,
) -> Result<(LlamaConfig, LlamaForCausalLM), PruneError> {
    let new = target.pruned_config(config)?;
    if let Some((name, _)) = model.packed_weights().first() {
        return Err(PruneError::Model(format!(
            "`{name}` is quantized: prune the float model, then quantize"
        )));
    }
    let (layers, kv, inter, hidden) = (
        config.num_hidden_layers,
        config.num_key_value_heads,
        config.intermediate_size,
        config.hidden_size,
    );
    let per_layer_ok =
        |v: &[Vec<f64>], width: usize| v.len() == layers && v.iter().all(|x| x.len() == width);
    if model.model.layers.len() != layers
        || importance.layers.len() != layers
        || !per_layer_ok(&importance.kv_groups, kv)
        || !per_layer_ok(&importance.neurons, inter)
        || importance.channels.len() != hidden
    {
        return Err(PruneError::Model(format!(
            "the importance scores or the model do not fit the config \
             ({layers} layers, {kv} KV heads, {inter} neurons, {hidden} channels)"
        )));
    }

    let group = config.num_attention_heads / kv;
    let d = config.head_dim;
    let channels = top(&importance.channels, new.hidden_size);
    let kept: Vec<KeptLayer> = top(&importance.layers, new.num_hidden_layers)
        .into_iter()
        .map(|l| {
            let groups = top(&importance.kv_groups[l], new.num_key_value_heads);
            KeptLayer {
                from: l,
                q_rows: head_rows(groups.iter().flat_map(|&g| g * group..(g + 1) * group), d),
                kv_rows: head_rows(groups.iter().copied(), d),
                neurons: top(&importance.neurons[l], new.intermediate_size),
            }
        })
        .collect();
    let new_index: HashMap<usize, usize> =
        kept.iter().enumerate().map(|(i, k)| (k.from, i)).collect();
    let vocab_rows: Vec<usize> = (0..config.vocab_size).collect();
    let one = [0usize];

    let mut tensors = HashMap::new();
    for (name, data) in named_tensors(model) {
        let shape = data.shape().to_vec();
        let values = data
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| PruneError::Model(format!("tensor `{name}`: {e:?}")))?;
        // (new name, rows, columns); a vector is one row.
        let (new_name, rows, cols): (String, &[usize], &[usize]) = match name.as_str() {
            "model.embed_tokens.weight" | "lm_head.weight" => {
                (name.clone(), &vocab_rows, &channels)
            }
            "model.norm.weight" => (name.clone(), &one, &channels),
            _ => {
                let bad = || PruneError::Model(format!("unexpected tensor `{name}`"));
                let rest = name.strip_prefix("model.layers.").ok_or_else(bad)?;
                let (i, param) = rest.split_once('.').ok_or_else(bad)?;
                let old: usize = i.parse().map_err(|_| bad())?;
                let Some(&i) = new_index.get(&old) else {
                    continue; // a dropped layer
                };
                let k = &kept[i];
                let (rows, cols): (&[usize], &[usize]) = match param {
                    "input_layernorm.weight" | "post_attention_layernorm.weight" => {
                        (&one, &channels)
                    }
                    "self_attn.q_proj.weight" => (&k.q_rows, &channels),
                    "self_attn.q_proj.bias" => (&one, &k.q_rows),
                    "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                        (&k.kv_rows, &channels)
                    }
                    "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => (&one, &k.kv_rows),
                    "self_attn.o_proj.weight" => (&channels, &k.q_rows),
                    "mlp.gate_proj.weight" | "mlp.up_proj.weight" => (&k.neurons, &channels),
                    "mlp.gate_proj.bias" | "mlp.up_proj.bias" => (&one, &k.neurons),
                    "mlp.down_proj.weight" => (&channels, &k.neurons),
                    "self_attn.o_proj.bias" | "mlp.down_proj.bias" => (&one, &channels),
                    _ => return Err(bad()),
                };
                (format!("model.layers.{i}.{param}"), rows, cols)
            }
        };
        let cols_in = *shape.last().unwrap_or(&1);
        let out_shape = if shape.len() == 1 {
            vec![cols.len()]
        } else {
            vec![rows.len(), cols.len()]
        };
        tensors.insert(new_name, (take(&values, cols_in, rows, cols), out_shape));
    }
    let mut source = TensorMap {
        tensors,
        device: device.clone(),
    };
    let pruned = LlamaForCausalLM::build(&new, &mut source)?;
    tracing::info!(
        "pruned {} → {} parameters ({} → {} non-embedding)",
        config.num_parameters(),
        new.num_parameters(),
        non_embedding_parameters(config),
        non_embedding_parameters(&new)
    );
    Ok((new, pruned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_model::Architecture;
    use distill_quant::{Format, PackedMatrix};

    /// Llama, GQA (4 query heads over 2 KV heads, head_dim 8), tied embeddings.
    fn tiny() -> LlamaConfig {
        let mut c = LlamaConfig::llama(64, 32, 48, 3, 4, 2);
        c.initializer_range = 0.2;
        c
    }

    /// Qwen2: q/k/v biases, untied output head.
    fn tiny_qwen2() -> LlamaConfig {
        let mut c = tiny();
        c.architecture = Architecture::Qwen2;
        c.qkv_bias = true;
        c.tie_word_embeddings = false;
        c
    }

    fn windows() -> Vec<Vec<u32>> {
        (0..3)
            .map(|w| (0..16).map(|i| ((i * 7 + w * 13) % 64) as u32).collect())
            .collect()
    }

    fn logits(model: &LlamaForCausalLM) -> Vec<f32> {
        let device = Device::flex();
        let ids: Vec<i64> = (0..12).map(|i| (i * 5 + 3) % 64).collect();
        let t = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 12]), &device);
        model
            .forward(t, &Layout::causal(1, 12))
            .into_data()
            .try_to_vec()
            .unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// `model` with its tensors passed through `edit(name, values, shape)`.
    fn edited(
        config: &LlamaConfig,
        model: &LlamaForCausalLM,
        mut edit: impl FnMut(&str, &mut [f32], &[usize]),
    ) -> LlamaForCausalLM {
        let tensors = named_tensors(model)
            .into_iter()
            .map(|(n, d)| {
                let shape = d.shape().to_vec();
                let mut v = d.try_to_vec::<f32>().unwrap();
                edit(&n, &mut v, &shape);
                (n, (v, shape))
            })
            .collect();
        let mut source = TensorMap {
            tensors,
            device: Device::flex(),
        };
        LlamaForCausalLM::build(config, &mut source).unwrap()
    }

    fn zero_rows(v: &mut [f32], cols: usize, rows: impl IntoIterator<Item = usize>) {
        for r in rows {
            v[r * cols..(r + 1) * cols].fill(0.0);
        }
    }

    fn prune(
        config: &LlamaConfig,
        model: &LlamaForCausalLM,
        target: &StructuredConfig,
    ) -> (LlamaConfig, LlamaForCausalLM, Importance) {
        let device = Device::flex();
        let imp = importance(model, config, &windows(), &device).unwrap();
        let (c, m) = prune_structured(config, model, &imp, target, &device).unwrap();
        (c, m, imp)
    }

    #[test]
    fn keeping_every_size_keeps_the_logits() {
        let config = tiny();
        let model = config.init(&Device::flex(), 1);
        let same = StructuredConfig {
            num_hidden_layers: Some(3),
            num_key_value_heads: Some(2),
            intermediate_size: Some(48),
            hidden_size: Some(32),
        };
        for target in [StructuredConfig::default(), same] {
            let (c, m, imp) = prune(&config, &model, &target);
            assert_eq!(c, config);
            assert_eq!(max_diff(&logits(&model), &logits(&m)), 0.0);
            assert_eq!(imp.layers.len(), 3);
            assert!(imp.kv_groups.iter().all(|g| g.len() == 2));
            assert!(imp.neurons.iter().all(|n| n.len() == 48));
            assert_eq!(imp.channels.len(), 32);
            assert!(imp.layers.iter().all(|&b| b > 0.0 && b <= 2.0), "{imp:?}");
        }
    }

    #[test]
    fn silent_neurons_are_ranked_last_and_cut_exactly() {
        let config = tiny();
        let silent = |l: usize| [l, 10 + l, 20 + 2 * l, 47 - l];
        // A zero up_proj row makes the neuron's activation silu(gate)·0 = 0.
        let model = edited(&config, &config.init(&Device::flex(), 2), |n, v, s| {
            for l in 0..3 {
                if n == format!("model.layers.{l}.mlp.up_proj.weight") {
                    zero_rows(v, s[1], silent(l));
                }
            }
        });
        let target = StructuredConfig {
            intermediate_size: Some(44),
            ..Default::default()
        };
        let (c, m, imp) = prune(&config, &model, &target);
        for (l, n) in imp.neurons.iter().enumerate() {
            for (j, &v) in n.iter().enumerate() {
                assert_eq!(
                    v == 0.0,
                    silent(l).contains(&j),
                    "layer {l} neuron {j}: {v}"
                );
            }
        }
        assert_eq!(c.intermediate_size, 44);
        let d = max_diff(&logits(&model), &logits(&m));
        println!("cutting silent neurons: max |Δlogit| = {d:e}");
        assert!(d < 1e-5, "cutting silent neurons moved logits by {d}");
    }

    #[test]
    fn a_silent_kv_group_is_cut_exactly_with_its_query_heads() {
        let config = tiny();
        // Zero values make every head of the group output 0.
        let model = edited(&config, &config.init(&Device::flex(), 3), |n, v, s| {
            for l in 0..3 {
                if n == format!("model.layers.{l}.self_attn.v_proj.weight") {
                    zero_rows(v, s[1], (l % 2) * 8..(l % 2 + 1) * 8);
                }
            }
        });
        let target = StructuredConfig {
            num_key_value_heads: Some(1),
            ..Default::default()
        };
        let (c, m, imp) = prune(&config, &model, &target);
        for (l, g) in imp.kv_groups.iter().enumerate() {
            assert_eq!(g[l % 2], 0.0, "layer {l}: {g:?}");
            assert!(g[1 - l % 2] > 0.0, "layer {l}: {g:?}");
        }
        assert_eq!((c.num_attention_heads, c.num_key_value_heads), (2, 1));
        assert_eq!(c.head_dim, 8);
        for layer in &m.model.layers {
            assert_eq!(layer.self_attn.q_proj.dims(), [16, 32]);
            assert_eq!(layer.self_attn.k_proj.dims(), [8, 32]);
            assert_eq!(layer.self_attn.o_proj.dims(), [32, 16]);
        }
        let d = max_diff(&logits(&model), &logits(&m));
        println!("cutting a silent KV group: max |Δlogit| = {d:e}");
        assert!(d < 1e-5, "cutting a silent KV group moved logits by {d}");
    }

    #[test]
    fn an_identity_layer_has_no_influence_and_is_dropped_exactly() {
        let config = tiny();
        let model = edited(&config, &config.init(&Device::flex(), 4), |n, v, _| {
            if n == "model.layers.1.self_attn.o_proj.weight"
                || n == "model.layers.1.mlp.down_proj.weight"
            {
                v.fill(0.0);
            }
        });
        let target = StructuredConfig {
            num_hidden_layers: Some(2),
            ..Default::default()
        };
        let (c, m, imp) = prune(&config, &model, &target);
        assert!(imp.layers[1].abs() < 1e-6, "{:?}", imp.layers);
        assert!(
            imp.layers[0] > 1e-3 && imp.layers[2] > 1e-3,
            "{:?}",
            imp.layers
        );
        assert_eq!(c.num_hidden_layers, 2);
        let d = max_diff(&logits(&model), &logits(&m));
        println!("dropping an identity layer: max |Δlogit| = {d:e}");
        assert!(d < 1e-5, "dropping an identity layer moved logits by {d}");
    }

    #[test]
    fn cutting_every_dimension_gives_equal_layers_and_the_right_parameter_count() {
        for config in [tiny(), tiny_qwen2()] {
            let model = config.init(&Device::flex(), 5);
            let target = StructuredConfig {
                num_hidden_layers: Some(2),
                num_key_value_heads: Some(1),
                intermediate_size: Some(32),
                hidden_size: Some(24),
            };
            let (c, m, _) = prune(&config, &model, &target);
            assert_eq!(c, target.pruned_config(&config).unwrap());
            assert_eq!(c.num_attention_heads / c.num_key_value_heads, 2);
            assert_eq!(m.model.layers.len(), 2);
            for layer in &m.model.layers {
                let (a, p) = (&layer.self_attn, &layer.mlp);
                assert_eq!(a.q_proj.dims(), [16, 24]);
                assert_eq!(a.v_proj.dims(), [8, 24]);
                assert_eq!(a.o_proj.dims(), [24, 16]);
                assert_eq!(p.gate_proj.dims(), [32, 24]);
                assert_eq!(p.down_proj.dims(), [24, 32]);
                assert_eq!(a.k_proj.bias.is_some(), config.qkv_bias);
            }
            let counted: usize = named_tensors(&m)
                .iter()
                .map(|(_, d)| d.shape().iter().product::<usize>())
                .sum();
            assert_eq!(counted, c.num_parameters());
            let embeddings = if c.tie_word_embeddings { 1 } else { 2 } * 64 * 24;
            assert_eq!(non_embedding_parameters(&c), counted - embeddings);
            let l = logits(&m);
            assert_eq!(l.len(), 12 * 64);
            assert!(l.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn channels_are_ranked_by_the_norm_outputs() {
        let config = tiny_qwen2();
        let model = edited(&config, &config.init(&Device::flex(), 6), |n, v, _| {
            if n.ends_with("norm.weight") {
                v[5] = 0.0;
            }
        });
        let target = StructuredConfig {
            hidden_size: Some(31),
            ..Default::default()
        };
        let (_, m, imp) = prune(&config, &model, &target);
        assert_eq!(imp.channels[5], 0.0);
        assert!(
            imp.channels
                .iter()
                .enumerate()
                .all(|(c, &v)| c == 5 || v > 0.0)
        );
        let kept: Vec<usize> = (0..32).filter(|&c| c != 5).collect();
        let cols = |model: &LlamaForCausalLM| model.lm_head.as_ref().unwrap().weight_values();
        assert_eq!(
            cols(&m),
            take(&cols(&model), 32, &(0..64).collect::<Vec<_>>(), &kept)
        );
    }

    #[test]
    fn top_breaks_ties_by_index_and_ranks_nan_last() {
        assert_eq!(top(&[1.0, 3.0, 3.0, f64::NAN, 2.0], 3), vec![1, 2, 4]);
        assert_eq!(top(&[0.0, 0.0, 0.0], 2), vec![0, 1]);
    }

    #[test]
    fn bad_targets_and_models_are_errors_naming_the_problem() {
        let config = tiny();
        let device = Device::flex();
        for (target, key) in [
            (
                StructuredConfig {
                    intermediate_size: Some(49),
                    ..Default::default()
                },
                "structured.intermediate_size",
            ),
            (
                StructuredConfig {
                    num_key_value_heads: Some(0),
                    ..Default::default()
                },
                "structured.num_key_value_heads",
            ),
            (
                StructuredConfig {
                    num_hidden_layers: Some(4),
                    ..Default::default()
                },
                "structured.num_hidden_layers",
            ),
            (
                StructuredConfig {
                    hidden_size: Some(0),
                    ..Default::default()
                },
                "structured.hidden_size",
            ),
        ] {
            let e = target.validate(&config).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = serde_json::from_str::<StructuredConfig>(r#"{"hidden": 3}"#).unwrap_err();
        assert!(e.to_string().contains("hidden"), "{e}");

        let mut model = config.init(&device, 7);
        let imp = importance(&model, &config, &windows(), &device).unwrap();
        let mut short = imp.clone();
        short.neurons[2].pop();
        let keep = StructuredConfig::default();
        let e = prune_structured(&config, &model, &short, &keep, &device).unwrap_err();
        assert!(matches!(e, PruneError::Model(_)), "{e}");
        assert!(importance(&model, &config, &[], &device).is_err());
        let e = importance(&model, &config, &[vec![1, 64]], &device).unwrap_err();
        assert!(e.to_string().contains("64"), "{e}");

        let lin = model.linear_mut("model.layers.0.mlp.up_proj").unwrap();
        let format = Format::from_cli("int8", false).unwrap();
        let packed = PackedMatrix::quantize_rtn(&lin.weight_values(), 48, 32, format).unwrap();
        lin.set_packed(packed, &device);
        let e = prune_structured(&config, &model, &imp, &keep, &device).unwrap_err();
        assert!(
            matches!(&e, PruneError::Model(m) if m.contains("up_proj")),
            "{e}"
        );
    }
}
