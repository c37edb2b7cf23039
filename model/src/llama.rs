//! The Llama-family decoder (Llama 2/3, SmolLM, Qwen2), after HF transformers'
//! `modeling_llama.py`: pre-norm blocks of grouped-query attention with rotary position
//! embeddings (the "rotate half" form) and a SwiGLU MLP.
//!
//! Field names equal HF's parameter names (`model.layers.0.self_attn.q_proj.weight`), and
//! linear weights keep HF's `[out, in]` layout, so checkpoints load and save without a table.

use crate::capture::InputCapture;
use crate::config::LlamaConfig;
use crate::fused::{attention, linear, rms_norm, rope, swiglu};
use crate::layout::{KvCache, LayerCache, Layout};
use crate::quantized::PackedWeight;
use burn::module::{Module, Param, ParamId};
use burn::prelude::*;
use distill_quant::PackedMatrix;

/// Where a module's parameters come from: a checkpoint, or a fresh initialization.
pub trait ParamSource {
    /// The error a source reports (a missing or mis-shaped tensor, say).
    type Error;
    /// The tensor called `name`, which must have `shape`; `init` says how to make it afresh.
    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<D>, Self::Error>;

    /// The packed (quantized) weight `name` of a `[rows, cols]` linear layer, when the source
    /// holds that weight packed rather than as floats.
    fn packed(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<PackedMatrix>, Self::Error> {
        let _ = (name, rows, cols);
        Ok(None)
    }

    /// The device the model is built on.
    fn device(&self) -> Device;
}

/// How a fresh parameter is initialized, as in HF's `_init_weights`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and the config's `initializer_range` as standard deviation.
    Normal,
    /// All ones (norm weights).
    Ones,
    /// All zeros (biases).
    Zeros,
}

/// A [`ParamSource`] that initializes every parameter afresh. Each tensor is drawn on the host
/// from its own generator, seeded by `seed` and the parameter's name, so a model is the same
/// whatever the backend, the thread or the order of construction.
pub struct FreshInit {
    /// Target device.
    pub device: Device,
    /// Standard deviation of [`Init::Normal`] parameters.
    pub std: f64,
    /// Seed of the whole model.
    pub seed: u64,
}

impl ParamSource for FreshInit {
    type Error = std::convert::Infallible;
    fn float<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        init: Init,
    ) -> Result<Tensor<D>, Self::Error> {
        Ok(match init {
            Init::Normal => {
                let n = shape.iter().product();
                let seed = self.seed ^ param_id(name).val();
                let values = normal_samples(n, self.std, seed);
                Tensor::from_data(TensorData::new(values, shape), &self.device)
            }
            Init::Ones => Tensor::ones(shape, &self.device),
            Init::Zeros => Tensor::zeros(shape, &self.device),
        })
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}

/// `n` draws of N(0, std²) (Box–Muller over a seeded `StdRng`).
fn normal_samples(n: usize, std: f64, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// A parameter id derived from the HF name, so ids (and optimizer state keyed by them) are the
/// same every time a model is built or loaded.
pub fn param_id(name: &str) -> ParamId {
    // FNV-1a, 64 bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ParamId::from(h)
}

fn param<S: ParamSource, const D: usize>(
    src: &mut S,
    name: &str,
    shape: [usize; D],
    init: Init,
) -> Result<Param<Tensor<D>>, S::Error> {
    let tensor = src.float(name, shape, init)?;
    // On an autodiff device the parameter is trainable from the start.
    let tensor = if tensor.is_autodiff() {
        tensor.require_grad()
    } else {
        tensor
    };
    Ok(Param::initialized(param_id(name), tensor))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A linear layer with HF's `[out, in]` weight layout: `y = x Wᵀ + b`. The weight is either
/// dense floats (trainable) or packed in a quantized format (inference only).
#[derive(Module, Debug)]
pub struct Linear {
    /// `[out_features, in_features]`; `None` when the weight is packed.
    pub weight: Option<Param<Tensor<2>>>,
    /// `[out_features]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    /// The quantized weight, when the layer is packed.
    #[module(skip)]
    pub packed: Option<PackedWeight>,
}

impl Linear {
    /// Builds the layer named `name` (e.g. `model.layers.0.mlp.up_proj`).
    pub fn build<S: ParamSource>(
        src: &mut S,
        name: &str,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self, S::Error> {
        let weight_name = join(name, "weight");
        let (weight, packed) = match src.packed(&weight_name, out_features, in_features)? {
            Some(m) => (None, Some(PackedWeight::new(m, &src.device()))),
            None => {
                let w = param(src, &weight_name, [out_features, in_features], Init::Normal)?;
                (Some(w), None)
            }
        };
        let bias = if bias {
            Some(param(
                src,
                &join(name, "bias"),
                [out_features],
                Init::Zeros,
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            packed,
        })
    }

    /// Applies the layer to `[..., in]`, giving `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = match (&self.packed, &self.weight) {
            (Some(p), _) => p.forward(x),
            (None, Some(w)) => linear(x, w.val()),
            (None, None) => unreachable!("a linear layer has a dense or a packed weight"),
        };
        match &self.bias {
            Some(b) => y + b.val().unsqueeze(),
            None => y,
        }
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.packed, &self.weight) {
            (Some(p), _) => [p.matrix().rows(), p.matrix().cols()],
            (None, Some(w)) => w.val().dims(),
            (None, None) => [0, 0],
        }
    }

    /// The weight as row-major `f32` values (dequantized when packed).
    pub fn weight_values(&self) -> Vec<f32> {
        match (&self.packed, &self.weight) {
            (Some(p), _) => p.matrix().dequantize(),
            (None, Some(w)) => w.val().into_data().try_to_vec().unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// Replaces the weight with a packed one of the same shape, on the layer's device.
    pub fn set_packed(&mut self, m: PackedMatrix, device: &Device) {
        debug_assert_eq!([m.rows(), m.cols()], self.dims());
        self.packed = Some(PackedWeight::new(m, device));
        self.weight = None;
    }

    /// Replaces the weight with dense `[out, in]` values (e.g. after AWQ scaling), on `device`.
    pub fn set_dense(&mut self, name: &str, values: Vec<f32>, dims: [usize; 2], device: &Device) {
        let t = Tensor::from_data(TensorData::new(values, dims), device);
        self.weight = Some(Param::initialized(param_id(&join(name, "weight")), t));
        self.packed = None;
    }
}

/// Token embedding table `[vocab, hidden]`.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[vocab_size, hidden_size]`.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// Looks up `[batch, seq]` ids, giving `[batch, seq, hidden]`.
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}

/// Root-mean-square normalization with a learned scale, computed in f32 as HF does.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden_size]`.
    pub weight: Param<Tensor<1>>,
    eps: f64,
}

impl RmsNorm {
    fn build<S: ParamSource>(
        src: &mut S,
        name: &str,
        size: usize,
        eps: f64,
    ) -> Result<Self, S::Error> {
        Ok(Self {
            weight: param(src, &join(name, "weight"), [size], Init::Ones)?,
            eps,
        })
    }

    /// Normalizes the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        rms_norm(x, self.weight.val(), self.eps)
    }
}

/// Rotary tables for one forward: `cos` and `sin` of shape `[batch, 1, seq, head_dim]`.
pub struct Rope {
    cos: Tensor<4>,
    sin: Tensor<4>,
}

impl Rope {
    /// Tables for the layout's positions, with HF's inverse frequencies `θ^(-2i/d)`.
    pub fn new(layout: &Layout, head_dim: usize, theta: f64, device: &Device) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let n = layout.positions.len();
        let mut cos = Vec::with_capacity(n * head_dim);
        let mut sin = Vec::with_capacity(n * head_dim);
        for &p in &layout.positions {
            for _ in 0..2 {
                for &f in &inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = [layout.batch, 1, layout.seq, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `[batch, heads, seq, head_dim]`.
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        rope(x, self.cos.clone(), self.sin.clone())
    }
}

/// What every layer of one forward shares: rotary tables, the attention bias and the hook.
struct Step<'a> {
    rope: Rope,
    /// Additive `[batch, 1, seq, keys]`: 0 where a query may attend, a large negative elsewhere.
    bias: Tensor<4>,
    capture: Option<&'a mut dyn InputCapture>,
}

impl Step<'_> {
    fn linear(&mut self, layer: &Linear, name: &str, x: Tensor<3>) -> Tensor<3> {
        if let Some(capture) = self.capture.as_deref_mut() {
            capture.capture(name, &x);
        }
        layer.forward(x)
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn build<S: ParamSource>(c: &LlamaConfig, src: &mut S, name: &str) -> Result<Self, S::Error> {
        let (h, d) = (c.hidden_size, c.head_dim);
        let q = c.num_attention_heads * d;
        let kv = c.num_key_value_heads * d;
        Ok(Self {
            q_proj: Linear::build(src, &join(name, "q_proj"), h, q, c.qkv_bias)?,
            k_proj: Linear::build(src, &join(name, "k_proj"), h, kv, c.qkv_bias)?,
            v_proj: Linear::build(src, &join(name, "v_proj"), h, kv, c.qkv_bias)?,
            o_proj: Linear::build(src, &join(name, "o_proj"), q, h, c.o_bias)?,
            num_heads: c.num_attention_heads,
            num_kv_heads: c.num_key_value_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        step: &mut Step,
        name: &str,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([b, s, n, d]).swap_dims(1, 2);
        let q = heads(
            step.linear(&self.q_proj, &join(name, "q_proj"), x.clone()),
            nh,
        );
        let k = heads(
            step.linear(&self.k_proj, &join(name, "k_proj"), x.clone()),
            nkv,
        );
        let v = heads(step.linear(&self.v_proj, &join(name, "v_proj"), x), nkv);
        let q = step.rope.apply(q);
        let mut k = step.rope.apply(k);
        let mut v = v;
        if let Some(slot) = cache {
            if let Some((past_k, past_v)) = slot.take() {
                k = Tensor::cat(vec![past_k, k], 2);
                v = Tensor::cat(vec![past_v, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let out = attention(q, k, v, step.bias.clone(), 1.0 / (d as f64).sqrt());
        step.linear(&self.o_proj, &join(name, "o_proj"), out)
    }
}

/// The gated MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    fn build<S: ParamSource>(c: &LlamaConfig, src: &mut S, name: &str) -> Result<Self, S::Error> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: Linear::build(src, &join(name, "gate_proj"), h, i, c.mlp_bias)?,
            up_proj: Linear::build(src, &join(name, "up_proj"), h, i, c.mlp_bias)?,
            down_proj: Linear::build(src, &join(name, "down_proj"), i, h, c.mlp_bias)?,
        })
    }

    fn forward(&self, x: Tensor<3>, step: &mut Step, name: &str) -> Tensor<3> {
        let gate = step.linear(&self.gate_proj, &join(name, "gate_proj"), x.clone());
        let up = step.linear(&self.up_proj, &join(name, "up_proj"), x);
        step.linear(&self.down_proj, &join(name, "down_proj"), swiglu(gate, up))
    }
}

/// One pre-norm block: attention then MLP, each with a residual.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn build<S: ParamSource>(c: &LlamaConfig, src: &mut S, name: &str) -> Result<Self, S::Error> {
        Ok(Self {
            self_attn: Attention::build(c, src, &join(name, "self_attn"))?,
            mlp: Mlp::build(c, src, &join(name, "mlp"))?,
            input_layernorm: RmsNorm::build(
                src,
                &join(name, "input_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            post_attention_layernorm: RmsNorm::build(
                src,
                &join(name, "post_attention_layernorm"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
        })
    }

    fn forward(
        &self,
        x: Tensor<3>,
        step: &mut Step,
        name: &str,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            step,
            &join(name, "self_attn"),
            cache,
        );
        let x = x + h;
        let h = self.mlp.forward(
            self.post_attention_layernorm.forward(x.clone()),
            step,
            &join(name, "mlp"),
        );
        x + h
    }
}

/// The decoder stack without the output head (`model.*` in HF).
#[derive(Module, Debug)]
pub struct LlamaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
}

impl LlamaModel {
    /// The final normed hidden states `[batch, seq, hidden]` of `input_ids` laid out as
    /// `layout` (HF's `LlamaModel.forward`): the backbone a head such as a reward model's
    /// `score` sits on. RoPE takes the config's `head_dim` and `rope_theta`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        layout: &Layout,
        head_dim: usize,
        rope_theta: f64,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let mut step = Step {
            rope: Rope::new(layout, head_dim, rope_theta, &device),
            bias: layout.attention_bias(&device),
            capture: None,
        };
        let mut x = self.embed_tokens.forward(input_ids);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &mut step, &format!("model.layers.{i}"), None);
        }
        self.norm.forward(x)
    }
}

/// A causal language model: the decoder plus `lm_head` (absent when tied to the embedding).
#[derive(Module, Debug)]
pub struct LlamaForCausalLM {
    pub model: LlamaModel,
    pub lm_head: Option<Linear>,
    head_dim: usize,
    rope_theta: f64,
}

impl LlamaConfig {
    /// A freshly initialized model (normal weights with `initializer_range`, unit norms, zero
    /// biases), the same for the same `seed` on every backend.
    pub fn init(&self, device: &Device, seed: u64) -> LlamaForCausalLM {
        let mut fresh = FreshInit {
            device: device.clone(),
            std: self.initializer_range,
            seed,
        };
        match LlamaForCausalLM::build(self, &mut fresh) {
            Ok(model) => model,
            Err(never) => match never {},
        }
    }
}

impl LlamaForCausalLM {
    /// Builds the model, taking each parameter from `src` by its HF name.
    pub fn build<S: ParamSource>(c: &LlamaConfig, src: &mut S) -> Result<Self, S::Error> {
        let embed_tokens = Embedding {
            weight: param(
                src,
                "model.embed_tokens.weight",
                [c.vocab_size, c.hidden_size],
                Init::Normal,
            )?,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::build(c, src, &format!("model.layers.{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::build(src, "model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::build(
                src,
                "lm_head",
                c.hidden_size,
                c.vocab_size,
                false,
            )?)
        };
        Ok(Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm,
            },
            lm_head,
            head_dim: c.head_dim,
            rope_theta: c.rope_theta,
        })
    }

    /// Logits `[batch, seq, vocab]` for `input_ids` `[batch, seq]` laid out as `layout` says.
    pub fn forward(&self, input_ids: Tensor<2, Int>, layout: &Layout) -> Tensor<3> {
        self.forward_with(input_ids, layout, None, None, false)
    }

    /// Like [`forward`](Self::forward), handing each linear layer's input to `capture`.
    pub fn forward_captured(
        &self,
        input_ids: Tensor<2, Int>,
        layout: &Layout,
        capture: &mut dyn InputCapture,
    ) -> Tensor<3> {
        self.forward_with(input_ids, layout, None, Some(capture), false)
    }

    /// The token embeddings `[batch, seq, hidden]` of `input_ids`: the input of layer 0.
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        self.model.embed_tokens.forward(input_ids)
    }

    /// Runs decoder layer `i` alone on hidden states `x` laid out as `layout`, handing its
    /// linear layers' inputs to `capture` when given (layer-by-layer calibration).
    pub fn decoder_layer(
        &self,
        i: usize,
        x: Tensor<3>,
        layout: &Layout,
        capture: Option<&mut dyn InputCapture>,
    ) -> Tensor<3> {
        let device = x.device();
        let mut step = Step {
            rope: Rope::new(layout, self.head_dim, self.rope_theta, &device),
            bias: layout.attention_bias(&device),
            capture,
        };
        self.model.layers[i].forward(x, &mut step, &format!("model.layers.{i}"), None)
    }

    /// Hands each decoder linear layer's input to `capture` and stops before the output head
    /// (what calibration needs); returns the final normed hidden states `[batch, seq, hidden]`.
    pub fn capture_decoder_inputs(
        &self,
        input_ids: Tensor<2, Int>,
        layout: &Layout,
        capture: &mut dyn InputCapture,
    ) -> Tensor<3> {
        let mut step = Step {
            rope: Rope::new(layout, self.head_dim, self.rope_theta, &input_ids.device()),
            bias: layout.attention_bias(&input_ids.device()),
            capture: Some(capture),
        };
        let x = self.decoder(input_ids, &mut step, None);
        self.model.norm.forward(x)
    }

    /// The final normed hidden states `[batch, seq, hidden]`: everything but the output head.
    /// With [`head`](Self::head) a loss can compute logits a chunk of positions at a time.
    pub fn hidden_states(&self, input_ids: Tensor<2, Int>, layout: &Layout) -> Tensor<3> {
        self.model
            .forward(input_ids, layout, self.head_dim, self.rope_theta)
    }

    /// The output head's weight `[vocab, hidden]` (HF layout): `lm_head.weight`, or the
    /// embedding when tied. A packed head is dequantized.
    pub fn head_weight(&self) -> Tensor<2> {
        match &self.lm_head {
            Some(Linear {
                weight: Some(w), ..
            }) => w.val(),
            Some(head) => {
                let device = self.model.embed_tokens.weight.val().device();
                Tensor::from_data(TensorData::new(head.weight_values(), head.dims()), &device)
            }
            None => self.model.embed_tokens.weight.val(),
        }
    }

    /// Logits `[..., vocab]` of final hidden states `[..., hidden]`: the output head (the
    /// embedding when tied), as [`forward`](Self::forward) applies it.
    pub fn head<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => linear(hidden, self.model.embed_tokens.weight.val()),
        }
    }

    /// Runs new tokens `[batch, seq]` through the model with a KV cache; `mask` marks which of
    /// them are real (left padding in a prompt), `None` meaning all. Returns their logits.
    pub fn forward_cached(
        &self,
        input_ids: Tensor<2, Int>,
        mask: Option<&[bool]>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let [b, s] = input_ids.dims();
        let layout = cache.extend(b, s, mask);
        self.forward_with(input_ids, &layout, Some(cache), None, false)
    }

    /// Like [`forward_cached`](Self::forward_cached), but computes the output head for the
    /// last position only, `[batch, vocab]`: all that generation needs, and for a long prompt
    /// far less work than every position's logits.
    pub fn forward_cached_last(
        &self,
        input_ids: Tensor<2, Int>,
        mask: Option<&[bool]>,
        cache: &mut KvCache,
    ) -> Tensor<2> {
        let [b, s] = input_ids.dims();
        let layout = cache.extend(b, s, mask);
        let logits = self.forward_with(input_ids, &layout, Some(cache), None, true);
        let vocab = logits.dims()[2];
        logits.reshape([b, vocab])
    }

    /// Every linear layer with its HF module name (`model.layers.0.self_attn.q_proj`), in
    /// module order; `lm_head` when untied.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.model.layers.iter().enumerate() {
            let a = &l.self_attn;
            let m = &l.mlp;
            for (n, lin) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ] {
                out.push((format!("model.layers.{i}.{n}"), lin));
            }
        }
        if let Some(h) = &self.lm_head {
            out.push(("lm_head".to_string(), h));
        }
        out
    }

    /// The linear layer called `name` (as [`linears`](Self::linears) names them).
    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear> {
        if name == "lm_head" {
            return self.lm_head.as_mut();
        }
        let rest = name.strip_prefix("model.layers.")?;
        let (i, module) = rest.split_once('.')?;
        let l = self.model.layers.get_mut(i.parse::<usize>().ok()?)?;
        Some(match module {
            "self_attn.q_proj" => &mut l.self_attn.q_proj,
            "self_attn.k_proj" => &mut l.self_attn.k_proj,
            "self_attn.v_proj" => &mut l.self_attn.v_proj,
            "self_attn.o_proj" => &mut l.self_attn.o_proj,
            "mlp.gate_proj" => &mut l.mlp.gate_proj,
            "mlp.up_proj" => &mut l.mlp.up_proj,
            "mlp.down_proj" => &mut l.mlp.down_proj,
            _ => return None,
        })
    }

    /// Every packed weight with its HF parameter name (`...q_proj.weight`).
    pub fn packed_weights(&self) -> Vec<(String, &PackedMatrix)> {
        self.linears()
            .into_iter()
            .filter_map(|(n, l)| {
                l.packed
                    .as_ref()
                    .map(|p| (format!("{n}.weight"), p.matrix()))
            })
            .collect()
    }

    /// Bytes of weights one decoding step reads: every linear layer (packed or f32) and the
    /// output head (the f32 embedding when tied); the few rows of the embedding looked up and
    /// the norms are left out.
    pub fn decode_weight_bytes(&self) -> usize {
        let linears: usize = self
            .linears()
            .iter()
            .map(|(_, l)| match &l.packed {
                Some(p) => p.matrix().storage_bytes(),
                None => l.dims().iter().product::<usize>() * 4,
            })
            .sum();
        let head = match &self.lm_head {
            Some(_) => 0,
            None => {
                self.model
                    .embed_tokens
                    .weight
                    .val()
                    .dims()
                    .iter()
                    .product::<usize>()
                    * 4
            }
        };
        linears + head
    }

    /// An empty KV cache for `batch` sequences.
    pub fn new_cache(&self, batch: usize) -> KvCache {
        KvCache::new(self.model.layers.len(), batch)
    }

    /// The embedding and every decoder layer.
    fn decoder(
        &self,
        input_ids: Tensor<2, Int>,
        step: &mut Step,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut x = self.model.embed_tokens.forward(input_ids);
        let mut layer_caches = cache.map(|c| c.layers.iter_mut());
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = layer_caches.as_mut().and_then(|it| it.next());
            x = layer.forward(x, step, &format!("model.layers.{i}"), layer_cache);
        }
        x
    }

    fn forward_with(
        &self,
        input_ids: Tensor<2, Int>,
        layout: &Layout,
        cache: Option<&mut KvCache>,
        capture: Option<&mut dyn InputCapture>,
        last_only: bool,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let mut step = Step {
            rope: Rope::new(layout, self.head_dim, self.rope_theta, &device),
            bias: layout.attention_bias(&device),
            capture,
        };
        let x = self.decoder(input_ids, &mut step, cache);
        let x = if last_only {
            let s = x.dims()[1];
            x.narrow(1, s - 1, 1)
        } else {
            x
        };
        let x = self.model.norm.forward(x);
        match &self.lm_head {
            Some(head) => step.linear(head, "lm_head", x),
            None => {
                if let Some(capture) = step.capture.as_deref_mut() {
                    capture.capture("lm_head", &x);
                }
                linear(x, self.model.embed_tokens.weight.val())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CollectInputs;
    use burn::tensor::activation::silu;

    #[test]
    fn capture_sees_every_linear_input_once() {
        let device = Device::flex();
        let config = LlamaConfig::llama(40, 16, 24, 2, 4, 2);
        let model = config.init(&device, 0);
        let ids = Tensor::<2, Int>::from_data([[1i64, 5, 7, 3], [2, 2, 9, 30]], &device);
        let layout = Layout::causal(2, 4);
        let mut all = CollectInputs::new(|_| true);
        let logits = model.forward_captured(ids.clone(), &layout, &mut all);
        // 7 projections per layer, plus the (tied) output head.
        assert_eq!(all.inputs.len(), 2 * 7 + 1);
        let plain = model.forward(ids, &layout);
        let diff = (logits - plain).abs().max().into_scalar::<f32>();
        assert_eq!(diff, 0.0, "capturing must not change the forward");

        // down_proj's input is silu(gate(x)) * up(x) of the MLP's captured input.
        let mlp = &model.model.layers[1].mlp;
        let x = all.get("model.layers.1.mlp.gate_proj").unwrap().clone();
        assert_eq!(x.dims(), [2, 4, 16]);
        let expected = silu(mlp.gate_proj.forward(x.clone())) * mlp.up_proj.forward(x);
        let got = all.get("model.layers.1.mlp.down_proj").unwrap().clone();
        let diff = (expected - got).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-6, "{diff}");

        let mut some = CollectInputs::new(|n: &str| n.ends_with("q_proj"));
        model.forward_captured(
            Tensor::<2, Int>::from_data([[1i64, 2]], &device),
            &Layout::causal(1, 2),
            &mut some,
        );
        assert_eq!(some.inputs.len(), 2);
    }

    #[test]
    fn rms_norm_matches_its_definition() {
        let device = Device::flex();
        let norm = RmsNorm {
            weight: Param::from_tensor(Tensor::from_data([2.0f32, 0.5], &device)),
            eps: 0.0,
        };
        let y: Vec<f32> = norm
            .forward(Tensor::<2>::from_data([[3.0f32, 4.0]], &device))
            .into_data()
            .try_to_vec()
            .unwrap();
        let rms = (12.5f32).sqrt();
        assert!((y[0] - 2.0 * 3.0 / rms).abs() < 1e-6 && (y[1] - 0.5 * 4.0 / rms).abs() < 1e-6);
    }
}
