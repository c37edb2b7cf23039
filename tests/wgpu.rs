//! Every WGPU test lives in this one binary, so shader compilation is paid once. On a machine
//! without a GPU they run on Mesa's software Vulkan adapter (lavapipe).

use burn::prelude::*;
use distill_model::checkpoint::{self, ModelDir, SaveOptions};
use distill_model::device::DeviceChoice;
use distill_model::{Layout, LlamaConfig};

fn to_vec(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A small GQA model with biases, random weights (std 0.1), as an HF directory.
fn tiny_model_dir() -> tempfile::TempDir {
    let cpu = Device::flex();
    let mut config = LlamaConfig::llama(96, 64, 128, 2, 4, 2);
    config.qkv_bias = true;
    config.o_bias = true;
    config.tie_word_embeddings = false;
    config.initializer_range = 0.1;
    let dir = tempfile::tempdir().unwrap();
    let m = ModelDir {
        model: config.init(&cpu, 7),
        config,
        tokenizer: None,
        generation_config: None,
    };
    checkpoint::save_dir(dir.path(), &m, SaveOptions::default()).unwrap();
    dir
}

#[test]
fn wgpu_forward_and_decoding_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)");
    let cpu = Device::flex();
    let dir = tiny_model_dir();
    let on_cpu = checkpoint::load_dir(dir.path(), &cpu).unwrap().model;
    let on_gpu = checkpoint::load_dir(dir.path(), &gpu).unwrap().model;

    let (b, s) = (2, 24);
    let ids: Vec<i64> = (0..b * s).map(|i| ((i * 37 + 11) % 96) as i64).collect();
    let mut mask = vec![true; b * s];
    mask[s + 20..].iter_mut().for_each(|m| *m = false);
    let layout = Layout::from_mask(b, s, &mask);
    let input = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, s]), d);
    let want = to_vec(on_cpu.forward(input(&cpu), &layout));
    let got = to_vec(on_gpu.forward(input(&gpu), &layout));
    let diff = max_diff(&want, &got);
    println!("wgpu vs flex forward: max |Δ| = {diff:e}");
    assert!(diff <= 1e-4, "forward differs by {diff}");

    let mut cache_cpu = on_cpu.new_cache(b);
    let mut cache_gpu = on_gpu.new_cache(b);
    let mut worst = 0f32;
    for t in 0..6 {
        let step: Vec<i64> = (0..b).map(|r| ((t * 13 + r * 5 + 1) % 96) as i64).collect();
        let x = |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(step.clone(), [b, 1]), d);
        let a = to_vec(on_cpu.forward_cached(x(&cpu), None, &mut cache_cpu));
        let g = to_vec(on_gpu.forward_cached(x(&gpu), None, &mut cache_gpu));
        worst = worst.max(max_diff(&a, &g));
    }
    println!("wgpu vs flex cached decoding: max |Δ| = {worst:e}");
    assert!(worst <= 1e-4, "cached decoding differs by {worst}");
}

/// xorshift64: uniform `f32` in `[-1, 1)`, no extra dev-dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// `distill_quant::reference` (dequantize, then a sequential dot) for each token.
fn packed_reference(m: &distill_quant::PackedMatrix, x: &[f32]) -> Vec<f32> {
    use distill_quant::{PackedMatrix, reference};
    x.chunks(m.cols())
        .flat_map(|xt| match m {
            PackedMatrix::Int(q) => reference::matvec(q, xt).unwrap(),
            PackedMatrix::Ggml(g) => reference::ggml_matvec(g, xt).unwrap(),
        })
        .collect()
}

/// Every packed format, through both kernels (1 token: mat-vec; 7 tokens: tiled), against the
/// CPU reference. Four shaders in all (two kernels × 4/8-bit codes).
#[test]
fn packed_linear_matches_the_cpu_reference_for_every_format() {
    use distill_quant::cube::{CubeError, DECODE_MAX_TOKENS, DevicePacked, packed_linear};
    use distill_quant::{Format, PackedMatrix};

    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)");
    println!("packed_linear on {gpu:?}");
    let start = std::time::Instant::now();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    const { assert!(DECODE_MAX_TOKENS < 7, "7 tokens must take the tiled kernel") };
    // Relative to max(1, max |reference|); the outputs are O(5) here.
    const TOL: f32 = 1e-4;

    let on_cpu = PackedMatrix::quantize_rtn(&rng.vec(64), 2, 32, "q4_0".parse().unwrap());
    let on_cpu = DevicePacked::upload(&on_cpu.unwrap(), &Device::flex());
    assert!(matches!(on_cpu, Err(CubeError::NotCubeDevice(_))));

    for format in Format::all() {
        let name = format.to_string();
        let mut shapes = vec![(96, 128), (64, 256), (37, 128)];
        if name == "int8" {
            shapes.push((29, 102)); // rows padded to whole words
        }
        let (mut worst, mut worst_abs) = (0f32, 0f32);
        for (i, &(rows, cols)) in shapes.iter().enumerate() {
            let m = PackedMatrix::quantize_rtn(&rng.vec(rows * cols), rows, cols, format).unwrap();
            let w = DevicePacked::upload(&m, &gpu).unwrap();
            assert_eq!((w.rows(), w.cols(), w.format()), (rows, cols, format));
            for tokens in [1, 7] {
                let x = rng.vec(tokens * cols);
                let want = packed_reference(&m, &x);
                let input = match i {
                    // A strided (transposed) input, on an autodiff device.
                    1 => Tensor::<2>::from_data(
                        TensorData::new(transpose(&x, tokens, cols), [cols, tokens]),
                        &gpu.clone().autodiff(),
                    )
                    .transpose(),
                    _ => Tensor::<2>::from_data(TensorData::new(x, [tokens, cols]), &gpu),
                };
                let y = packed_linear(input, &w);
                assert_eq!(y.dims(), [tokens, rows]);
                let got: Vec<f32> = y.into_data().try_to_vec().unwrap();
                let abs = max_diff(&got, &want);
                let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
                worst_abs = worst_abs.max(abs);
                worst = worst.max(abs / scale);
            }
        }
        println!("packed_linear {name}: max |Δ| = {worst_abs:e}, relative {worst:e}");
        assert!(worst <= TOL, "{name}: relative error {worst}");
    }
    println!("packed_linear: all formats in {:.1?}", start.elapsed());
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| x[(i % rows) * cols + i / rows])
        .collect()
}

/// A quantized model (4-bit and 8-bit codes) saved, then loaded on WGPU: its packed layers run
/// the cubecl kernels and give the CPU kernels' logits, in a full forward and in cached decoding.
#[test]
fn quantized_model_on_wgpu_matches_the_cpu() {
    use distill_student::quantize::{Method, QuantizeConfig, quantize_model};
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)");
    let cpu = Device::flex();
    let dense = tiny_model_dir();
    for scheme in ["int4-asym-g32", "q8_0"] {
        let mut m = checkpoint::load_dir(dense.path(), &cpu).unwrap();
        let config = QuantizeConfig::new(scheme.parse().unwrap(), Method::Rtn);
        quantize_model(&mut m.model, &config, None, &cpu, |_| {}).unwrap();
        let dir = tempfile::tempdir().unwrap();
        checkpoint::save_dir(dir.path(), &m, SaveOptions::default()).unwrap();
        let on_cpu = checkpoint::load_dir(dir.path(), &cpu).unwrap().model;
        let on_gpu = checkpoint::load_dir(dir.path(), &gpu).unwrap().model;
        assert_eq!(on_gpu.packed_weights().len(), 14);
        let (b, s) = (2, 9);
        let ids: Vec<i64> = (0..b * s).map(|i| ((i * 29 + 3) % 96) as i64).collect();
        let layout = Layout::causal(b, s);
        let input =
            |d: &Device| Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [b, s]), d);
        let diff = max_diff(
            &to_vec(on_cpu.forward(input(&cpu), &layout)),
            &to_vec(on_gpu.forward(input(&gpu), &layout)),
        );
        // Decoding one token at a time on the GPU against the CPU's forward over the whole
        // sequence: more tokens than the CPU's small-batch kernels take, which round
        // activations to int8 blocks.
        let n = distill_quant::cpu::SMALL_BATCH + 2;
        let steps: Vec<i64> = (0..n as i64).map(|t| (t * 7 + 1) % 96).collect();
        let whole = Tensor::<2, Int>::from_data(TensorData::new(steps.clone(), [1, n]), &cpu);
        let want = to_vec(on_cpu.forward(whole, &Layout::causal(1, n)));
        let mut cache_gpu = on_gpu.new_cache(1);
        let mut got = Vec::new();
        for &t in &steps {
            let x = Tensor::<2, Int>::from_data(TensorData::new(vec![t], [1, 1]), &gpu);
            got.extend(to_vec(on_gpu.forward_cached(x, None, &mut cache_gpu)));
        }
        let worst = max_diff(&want, &got);
        println!("{scheme}: wgpu vs flex forward max |Δ| = {diff:e}, decoding {worst:e}");
        assert!(diff <= 1e-4 && worst <= 1e-4, "{scheme}: {diff} / {worst}");
    }
}

/// The per-row negative log-likelihood through autodiff: WGPU (burn's operations) against the
/// CPU's fused kernel, loss and gradient.
#[test]
fn row_nll_and_its_gradient_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)")
        .autodiff();
    let cpu = Device::flex().autodiff();
    let (rows, vocab) = (6, 97);
    let x: Vec<f32> = (0..rows * vocab)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 40.0)
        .collect();
    let t: Vec<i64> = (0..rows).map(|i| (i * 31 % vocab) as i64).collect();
    let run = |d: &Device| {
        let x = Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, vocab]), d).require_grad();
        let t = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [rows]), d);
        let w = Tensor::<1>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 0.5, 0.0, 1.0, 3.0], [rows]),
            d,
        );
        let nll = distill_model::fused::row_nll(x.clone(), t);
        let grads = (nll.clone() * w).sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        (nll.into_data().try_to_vec::<f32>().unwrap(), g)
    };
    let (want, want_grad) = run(&cpu);
    let (got, got_grad) = run(&gpu);
    let (d, dg) = (max_diff(&want, &got), max_diff(&want_grad, &got_grad));
    println!("wgpu vs flex row_nll: max |Δ| loss {d:e}, gradient {dg:e}");
    assert!(
        d <= 1e-4 && dg <= 1e-5,
        "loss differs by {d}, gradient by {dg}"
    );
}

/// RMSNorm through autodiff: WGPU (burn's operations) against the CPU's fused kernel, output
/// and both gradients.
#[test]
fn rms_norm_and_its_gradients_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)")
        .autodiff();
    let cpu = Device::flex().autodiff();
    let (b, s, n) = (2, 5, 96);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (x, g, w) = (rng.vec(b * s * n), rng.vec(b * s * n), rng.vec(n));
    let run = |d: &Device| {
        let t = |v: &Vec<f32>| Tensor::<3>::from_data(TensorData::new(v.clone(), [b, s, n]), d);
        let x = t(&x).require_grad();
        let w = Tensor::<1>::from_data(TensorData::new(w.clone(), [n]), d).require_grad();
        let y = distill_model::fused::rms_norm(x.clone(), w.clone(), 1e-5);
        let grads = (y.clone() * t(&g)).sum().backward();
        let dw: Vec<f32> = w.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        (to_vec(y), to_vec(x.grad(&grads).unwrap()), dw)
    };
    let (want, got) = (run(&cpu), run(&gpu));
    let d = max_diff(&want.0, &got.0);
    let (dx, dw) = (max_diff(&want.1, &got.1), max_diff(&want.2, &got.2));
    println!("wgpu vs flex rms_norm: max |Δ| output {d:e}, dx {dx:e}, dweight {dw:e}");
    assert!(
        d <= 1e-5 && dx <= 1e-5 && dw <= 1e-5,
        "output differs by {d}, dx by {dx}, dweight by {dw}"
    );
}

/// RoPE through autodiff: WGPU (burn's operations) against the CPU's fused kernel, output and
/// gradient, on a head-transposed input as attention gives it.
#[test]
fn rope_and_its_gradient_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)")
        .autodiff();
    let cpu = Device::flex().autodiff();
    let (b, h, s, d) = (2, 3, 7, 16);
    let mut rng = XorShift(0x6a09_e667_f3bc_c908);
    let (x, g) = (rng.vec(b * h * s * d), rng.vec(b * h * s * d));
    let angles: Vec<f32> = (0..b * s * d)
        .map(|i| (i / d % s + i / (s * d)) as f32 / (1 + i % (d / 2)) as f32)
        .collect();
    let run = |dev: &Device| {
        let t =
            |v: Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(v, shape), dev);
        let x = t(x.clone(), [b, s, h, d]).require_grad();
        let cos = t(angles.iter().map(|a| a.cos()).collect(), [b, 1, s, d]);
        let sin = t(angles.iter().map(|a| a.sin()).collect(), [b, 1, s, d]);
        let y = distill_model::fused::rope(x.clone().swap_dims(1, 2), cos, sin);
        let grads = (y.clone() * t(g.clone(), [b, h, s, d])).sum().backward();
        let v = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
        (v(y), v(x.grad(&grads).unwrap()))
    };
    let ((want, want_grad), (got, got_grad)) = (run(&cpu), run(&gpu));
    let (d, dg) = (max_diff(&want, &got), max_diff(&want_grad, &got_grad));
    println!("wgpu vs flex rope: max |Δ| output {d:e}, gradient {dg:e}");
    assert!(
        d <= 1e-5 && dg <= 1e-5,
        "output differs by {d}, gradient by {dg}"
    );
}

/// Attention through autodiff: WGPU (burn's operations) against the CPU's fused kernel, output
/// and the gradients of q, k and v, with grouped KV heads, past keys and a padded sequence.
#[test]
fn attention_and_its_gradients_match_the_cpu() {
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)")
        .autodiff();
    let cpu = Device::flex().autodiff();
    let (b, nh, nkv, s, past, d) = (2, 4, 2, 6, 3, 16);
    let t = past + s;
    let mut mask = vec![true; b * t];
    mask[t..t + 4].iter_mut().for_each(|m| *m = false);
    let layout = Layout::from_mask(b, t, &mask);
    let mut rng = XorShift(0xbb67_ae85_84ca_a73b);
    let (q, k, v, g) = (
        rng.vec(b * nh * t * d),
        rng.vec(b * nkv * t * d),
        rng.vec(b * nkv * t * d),
        rng.vec(b * s * nh * d),
    );
    let run = |dev: &Device| {
        let t4 = |v: &Vec<f32>, shape: [usize; 4]| {
            Tensor::<4>::from_data(TensorData::new(v.clone(), shape), dev).require_grad()
        };
        // The last `s` queries of the padded sequences, against all `t` keys.
        let q = t4(&q, [b, nh, t, d]);
        let (k, v) = (t4(&k, [b, nkv, t, d]), t4(&v, [b, nkv, t, d]));
        let bias = layout.attention_bias(dev).slice(s![.., .., past.., ..]);
        let out = distill_model::fused::attention(
            q.clone().slice(s![.., .., past.., ..]),
            k.clone(),
            v.clone(),
            bias,
            0.25,
        );
        let g = Tensor::<3>::from_data(TensorData::new(g.clone(), [b, s, nh * d]), dev);
        let grads = (out.clone() * g).sum().backward();
        let v4 = |x: Tensor<4>| x.into_data().try_to_vec::<f32>().unwrap();
        [
            to_vec(out),
            v4(q.grad(&grads).unwrap()),
            v4(k.grad(&grads).unwrap()),
            v4(v.grad(&grads).unwrap()),
        ]
    };
    let (want, got) = (run(&cpu), run(&gpu));
    let diffs: Vec<f32> = want.iter().zip(&got).map(|(a, b)| max_diff(a, b)).collect();
    println!("wgpu vs flex attention: max |Δ| output, dq, dk, dv {diffs:?}");
    assert!(diffs.iter().all(|&x| x <= 1e-5), "{diffs:?}");
}

/// A training step whose logits need a larger buffer than the adapter binds is a clear
/// `TrainError::Device` naming the allocation, not a panic; where the adapter binds them
/// (a GPU driver), the same step trains. Logits of 1,024 rows × 40,960 tokens are 168 MB,
/// above the 128 MiB of Mesa's software Vulkan.
#[test]
fn a_step_too_large_for_the_adapter_is_a_clear_error() {
    use burn::backend::DispatchDevice;
    use distill_model::data::PackedWindows;
    use distill_model::train::{TrainConfig, TrainError, step_gradients};
    use distill_teacher::pretrain::LanguageModeling;

    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)");
    let limit = match gpu.clone().as_dispatch() {
        DispatchDevice::Cube(d) => d.client().properties().memory.max_page_size,
        other => panic!("WGPU opened {other:?}"),
    };
    let (vocab, seq, batch) = (40_960usize, 256, 4);
    let logits_bytes = (batch * seq * vocab * 4) as u64;
    let device = gpu.autodiff();
    let tokens: Vec<u32> = (0..batch * seq + 1)
        .map(|i| (i * 7919 % vocab) as u32)
        .collect();
    let windows = PackedWindows::new(tokens, seq, 1, "test tokens").unwrap();
    let mut task = LanguageModeling::new(windows, None, batch, &device);
    let model = LlamaConfig::llama(vocab, 8, 16, 1, 2, 1).init(&device, 1);
    let train = TrainConfig {
        batch_size: batch,
        seq_len: seq,
        ..TrainConfig::default()
    };
    match step_gradients(&model, &mut task, &train, 0) {
        Ok((_, loss)) => {
            assert!(
                logits_bytes <= limit,
                "{logits_bytes} B of logits ran with a {limit} B limit"
            );
            assert!(loss.is_finite(), "{loss}");
        }
        Err(e @ TrainError::Device { .. }) => {
            println!("{e}");
            assert!(
                logits_bytes > limit,
                "failed within the limit ({limit} B): {e}"
            );
            let text = e.to_string();
            assert!(
                text.contains("step 1") && text.contains("allocate"),
                "{text}"
            );
            assert!(text.contains("lower batch_size or seq_len"), "{text}");
        }
        Err(e) => panic!("another error: {e}"),
    }
}

/// The distillation divergences against full teacher logits through autodiff: WGPU (burn's
/// operations) against the CPU's fused kernel, loss and student gradient.
#[test]
fn divergences_and_their_gradients_match_the_cpu() {
    use distill_model::fused::{Divergence, divergence};
    let gpu = DeviceChoice::Wgpu
        .open()
        .expect("a WGPU adapter (install mesa-vulkan-drivers)")
        .autodiff();
    let cpu = Device::flex().autodiff();
    let (rows, vocab) = (5, 211);
    let logits = |seed: usize| -> Vec<f32> {
        (0..rows * vocab)
            .map(|i| (((i + seed) * 7919 % 1000) as f32 - 500.0) / 50.0)
            .collect()
    };
    let (zs, zt) = (logits(0), logits(17));
    for (kind, tau) in [
        (Divergence::Forward, 1.0),
        (Divergence::Reverse, 2.0),
        (Divergence::Jsd(0.5), 1.0),
        (Divergence::Jsd(0.2), 2.0),
    ] {
        let run = |d: &Device| {
            let s = Tensor::<2>::from_data(TensorData::new(zs.clone(), [rows, vocab]), d)
                .require_grad();
            let t = Tensor::<2>::from_data(TensorData::new(zt.clone(), [rows, vocab]), d);
            let w = Tensor::<1>::from_data(
                TensorData::new(vec![1.0f32, 2.0, 0.5, 0.0, 3.0], [rows]),
                d,
            );
            let loss = divergence(s.clone(), t, kind, tau);
            let grads = (loss.clone() * w).sum().backward();
            let g: Vec<f32> = s.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            (loss.into_data().try_to_vec::<f32>().unwrap(), g)
        };
        let (want, want_grad) = run(&cpu);
        let (got, got_grad) = run(&gpu);
        let (d, dg) = (max_diff(&want, &got), max_diff(&want_grad, &got_grad));
        println!("wgpu vs flex {kind:?} τ {tau}: max |Δ| loss {d:e}, gradient {dg:e}");
        assert!(
            d <= 1e-4 && dg <= 1e-5,
            "{kind:?}: loss differs by {d}, gradient by {dg}"
        );
    }
}
