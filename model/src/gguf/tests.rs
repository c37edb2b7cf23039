use super::*;
use crate::tokenizer::{ENDOFTEXT, Tokenizer};
use distill_quant::gguf::dequantize_matrix;
use std::panic::{AssertUnwindSafe, catch_unwind};

const TEXT: &[&str] = &[
    "The quick brown fox jumps over the lazy dog, 12 times in 2024. ",
    "<|im_start|>user\nHello there!<|im_end|>\n",
    "Byte-level BPE starts from the 256 byte values and merges frequent pairs. ",
];

fn tokenizer() -> Tokenizer {
    let texts: Vec<String> = TEXT.iter().map(|t| t.repeat(4)).collect();
    let mut tok =
        Tokenizer::train_bpe(texts, 300, &[ENDOFTEXT, "<|im_start|>", "<|im_end|>"]).unwrap();
    tok.chat_template = Some("{% for m in messages %}{{ m['content'] }}{% endfor %}".into());
    tok.eos_token = Some("<|im_end|>".into());
    tok
}

/// A tiny model: Llama (tied, GQA), Llama with biases (untied, head_dim ≠ hidden/heads), Qwen2.
fn model(case: usize) -> ModelDir {
    let mut c = LlamaConfig::llama(320, 64, 96, 2, 4, 2);
    match case {
        0 => {}
        1 => {
            c.tie_word_embeddings = false;
            c.qkv_bias = true;
            c.o_bias = true;
            c.mlp_bias = true;
            c.head_dim = 32;
            c.num_key_value_heads = 1;
        }
        _ => {
            c.architecture = Architecture::Qwen2;
            c.tie_word_embeddings = false;
            c.qkv_bias = true;
            c.rope_theta = 1e6;
            c.rms_norm_eps = 1e-6;
        }
    }
    c.bos_token_id = Some(0);
    c.eos_token_id = vec![2];
    c.initializer_range = 0.1;
    let model = c.init(&Device::flex(), 7 + case as u64);
    ModelDir {
        config: c,
        model,
        tokenizer: Some(tokenizer()),
        generation_config: None,
    }
}

fn values(data: &TensorData) -> Vec<f32> {
    data.try_to_vec::<f32>().unwrap()
}

/// What a parameter becomes after encoding as `ty` and decoding.
fn through(ty: GgmlType, shape: &[usize], v: &[f32]) -> Vec<f32> {
    let cols = *shape.last().unwrap();
    let rows = v.len() / cols;
    let q = quantize_matrix(ty, v, rows, cols).unwrap();
    dequantize_matrix(ty, &q, rows, cols).unwrap()
}

#[test]
fn save_load_every_dtype_and_architecture() {
    let dir = tempfile::tempdir().unwrap();
    for case in 0..3 {
        let m = model(case);
        let original = named_tensors(&m.model);
        for dtype in GgufDtype::ALL {
            let path = dir.path().join(format!("m{case}-{dtype}.gguf"));
            save(&path, &m, dtype).unwrap();
            let file = GgufFile::open(&path).unwrap();
            assert_eq!(file.version(), 3);
            let arch = m.config.architecture.model_type();
            assert_eq!(
                file.get("general.architecture").unwrap().as_str(),
                Some(arch)
            );
            assert_eq!(
                file.get("general.file_type").unwrap().as_u64(),
                Some(dtype.file_type() as u64)
            );
            assert_eq!(
                file.tensor("output.weight").is_some(),
                !m.config.tie_word_embeddings
            );
            let q = file.tensor("blk.1.attn_q.weight").unwrap();
            assert_eq!(q.dims, vec![64, (4 * m.config.head_dim) as u64]);
            for t in file.tensors() {
                assert_eq!(t.offset % 32, 0, "{}", t.name);
                if t.dims.len() == 1 {
                    assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
                }
            }

            let back = load(&path, &Device::flex()).unwrap();
            let mut expected = m.config.clone();
            expected.initializer_range = 0.02;
            assert_eq!(back.config, expected, "{case} {dtype}");
            for ((name, a), (name2, b)) in original.iter().zip(named_tensors(&back.model)) {
                assert_eq!(name, &name2);
                let shape = a.shape().to_vec();
                let ty = dtype.tensor_type(name, &shape, m.config.tie_word_embeddings);
                let want = through(ty, &shape, &values(a));
                let got = values(&b);
                assert!(
                    want.iter()
                        .zip(&got)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{case} {dtype} {name}: not what the writer encoded"
                );
            }
            let tok = back.tokenizer.as_ref().unwrap();
            let orig = m.tokenizer.as_ref().unwrap();
            for text in TEXT {
                assert_eq!(tok.encode(text).unwrap(), orig.encode(text).unwrap());
            }
            assert_eq!(tok.chat_template, orig.chat_template);
            assert_eq!(tok.eos_id(), Some(2));
            assert_eq!(tok.bos_id(), Some(0));
            assert!(!tok.add_bos_token);
            assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
            let types = file.get("tokenizer.ggml.token_type").unwrap();
            let types = types.as_array().unwrap();
            assert_eq!(types.len(), 320);
            assert_eq!(types[1], MetaValue::I32(TOKEN_CONTROL));
            assert_eq!(types[319], MetaValue::I32(TOKEN_UNUSED));
        }
    }
}

#[test]
fn quantized_round_trip_is_byte_stable() {
    let dir = tempfile::tempdir().unwrap();
    for case in 0..3 {
        let m = model(case);
        for dtype in GgufDtype::ALL {
            let first = dir.path().join("first.gguf");
            let second = dir.path().join("second.gguf");
            save(&first, &m, dtype).unwrap();
            let back = load(&first, &Device::flex()).unwrap();
            save(&second, &back, dtype).unwrap();
            let (a, b) = (
                GgufFile::open(&first).unwrap(),
                GgufFile::open(&second).unwrap(),
            );
            assert_eq!(a.tensors().len(), b.tensors().len());
            for (x, y) in a.tensors().iter().zip(b.tensors()) {
                assert_eq!(
                    (&x.name, x.ggml_type, &x.dims),
                    (&y.name, y.ggml_type, &y.dims)
                );
                assert!(
                    a.tensor_bytes(x) == b.tensor_bytes(y),
                    "{case} {dtype} {}: bytes differ",
                    x.name
                );
            }
        }
    }
}

#[test]
fn pre_encoded_blocks_are_written_as_given() {
    let m = model(0);
    let (name, data) = named_tensors(&m.model)
        .into_iter()
        .find(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight")
        .unwrap();
    let shape = data.shape().to_vec();
    let v = values(&data);
    let q = quantize_matrix(GgmlType::Q4_1, &v, shape[0], shape[1]).unwrap();
    let t = GgufTensor::from_hf_bytes(&name, &shape, GgmlType::Q4_1, q.clone(), &m.config).unwrap();
    assert_eq!(t.name, "blk.0.attn_k.weight");
    assert_eq!(t.dims, vec![64, 32]);
    // Rows are permuted whole: the bytes are the same multiset of rows, in llama.cpp's order.
    let rb = GgmlType::Q4_1.row_bytes(64).unwrap();
    let back = permute_qk(&t.bytes, rb, 2, Direction::ToHf).unwrap();
    assert_eq!(back, q);
    let encoded = GgufTensor::from_hf(&name, &shape, &v, GgmlType::Q4_1, &m.config).unwrap();
    assert_eq!(encoded, t);
    assert!(
        GgufTensor::from_hf_bytes(&name, &shape, GgmlType::Q4_1, q[1..].to_vec(), &m.config)
            .is_err()
    );
    assert!(GgufTensor::from_hf_bytes("nope", &shape, GgmlType::F32, vec![], &m.config).is_err());
}

#[test]
fn tensor_types_follow_llama_cpp() {
    use GgmlType as T;
    let t = |d: GgufDtype, n: &str, s: &[usize], tied| d.tensor_type(n, s, tied);
    let emb = "model.embed_tokens.weight";
    assert_eq!(t(GgufDtype::Q4_0, emb, &[100, 64], true), T::Q8_0);
    assert_eq!(t(GgufDtype::Q4_1, emb, &[100, 64], false), T::Q4_1);
    assert_eq!(
        t(GgufDtype::Q4_1, "lm_head.weight", &[100, 64], false),
        T::Q8_0
    );
    assert_eq!(t(GgufDtype::Q8_0, emb, &[100, 64], true), T::Q8_0);
    assert_eq!(t(GgufDtype::Q4_0, "model.norm.weight", &[64], true), T::F32);
    assert_eq!(t(GgufDtype::Q4_0, "x.weight", &[64, 48], true), T::F16);
    assert_eq!(t(GgufDtype::F16, "x.weight", &[64, 48], true), T::F16);
    assert_eq!("Q4_1".parse::<GgufDtype>().unwrap(), GgufDtype::Q4_1);
    assert!("q5_k".parse::<GgufDtype>().is_err());
}

/// The file of `model(0)` in Q4_0, and where its tensor data starts.
fn small_file(dir: &Path) -> (PathBuf, Vec<u8>, usize) {
    let path = dir.join("small.gguf");
    save(&path, &model(0), GgufDtype::Q4_0).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let data_start = file::parse(&bytes).ok().unwrap().data_start;
    (path, bytes, data_start)
}

fn load_bytes(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).unwrap();
    catch_unwind(AssertUnwindSafe(|| load(path, &Device::flex()).map(|_| ())))
        .unwrap_or_else(|_| panic!("loading panicked"))
        .map_err(|e| e.to_string())
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, data_start) = small_file(dir.path());
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(bytes.len() / 120 + 1).collect();
    cuts.extend((0..data_start).step_by(data_start / 80 + 1));
    cuts.extend([0, 3, 4, 7, 8, 15, 16, 23, 24, data_start - 1, data_start]);
    cuts.push(bytes.len() - 1);
    for cut in cuts {
        let err = load_bytes(&path, &bytes[..cut]).expect_err("a truncated file must not load");
        assert!(err.contains("small.gguf"), "cut at {cut}: {err}");
    }
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let mut corrupt = bytes.clone();
        // Mostly the header, where a flipped bit changes structure rather than a value.
        let pos = (state as usize)
            % if state.is_multiple_of(5) {
                bytes.len()
            } else {
                data_start
            };
        corrupt[pos] ^= 1 << (state >> 61);
        let _ = load_bytes(&path, &corrupt);
    }
}

/// Rewrites the file of `model(0)` with `edit` applied to its metadata and tensors.
fn edited(
    dir: &Path,
    edit: impl FnOnce(&mut Vec<(String, MetaValue)>, &mut Vec<GgufTensor>),
) -> Result<(), String> {
    let m = model(0);
    let path = dir.join("edited.gguf");
    let mut metadata = model_metadata(&m, GgufDtype::F32, "x", &path).unwrap();
    let mut tensors = model_tensors(&m, GgufDtype::F32).unwrap();
    edit(&mut metadata, &mut tensors);
    write_gguf(&path, &metadata, &tensors).map_err(|e| e.to_string())?;
    load(&path, &Device::flex())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn set(metadata: &mut [(String, MetaValue)], key: &str, value: MetaValue) {
    metadata.iter_mut().find(|(k, _)| k == key).unwrap().1 = value;
}

#[test]
fn bad_files_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes, _) = small_file(dir.path());
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        f(&mut b);
        load_bytes(&path, &b).unwrap_err()
    };
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    load_bytes(&path, &v2).expect("version 2 has the same layout");
    assert!(with(&|b| b[0] = b'X').contains("not a GGUF file"));
    assert!(with(&|b| b[4..8].copy_from_slice(&1u32.to_le_bytes())).contains("version 1"));
    assert!(with(&|b| b[4..8].copy_from_slice(&3u32.to_be_bytes())).contains("big-endian"));
    assert!(with(&|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes())).contains("tensor count"));
    assert!(
        with(&|b| b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes())).contains("truncated")
    );

    let err = edited(dir.path(), |md, _| {
        set(md, "general.architecture", MetaValue::String("gpt2".into()))
    })
    .unwrap_err();
    assert!(
        err.contains("general.architecture") && err.contains("gpt2"),
        "{err}"
    );
    let err = edited(dir.path(), |md, _| {
        md.retain(|(k, _)| k != "llama.block_count")
    })
    .unwrap_err();
    assert!(
        err.contains("llama.block_count") && err.contains("missing"),
        "{err}"
    );
    let err = edited(dir.path(), |md, _| {
        set(md, "llama.embedding_length", MetaValue::String("64".into()))
    })
    .unwrap_err();
    assert!(err.contains("llama.embedding_length"), "{err}");
    let err = edited(dir.path(), |_, ts| {
        ts.retain(|t| t.name != "blk.1.ffn_up.weight")
    })
    .unwrap_err();
    assert!(
        err.contains("blk.1.ffn_up.weight") && err.contains("missing"),
        "{err}"
    );
    let err = edited(dir.path(), |md, _| {
        set(md, "llama.feed_forward_length", MetaValue::U32(128))
    })
    .unwrap_err();
    assert!(
        err.contains("blk.0.ffn_gate.weight") && err.contains("dims"),
        "{err}"
    );
    let err = edited(dir.path(), |md, _| {
        set(md, "general.alignment", MetaValue::U32(48))
    })
    .unwrap_err();
    assert!(err.contains("general.alignment"), "{err}");

    // Raw edits of the tensor infos: the last tensor's type, offset and size.
    let parsed = file::parse(&bytes).ok().unwrap();
    let last = parsed.tensors.last().unwrap();
    // Its info ends with: type (u32), offset (u64); the infos end before the padding.
    let info_end = bytes[..parsed.data_start]
        .windows(8)
        .rposition(|w| w == last.offset.to_le_bytes())
        .unwrap()
        + 8;
    let type_at = info_end - 12;
    let err = with(&|b| b[type_at..type_at + 4].copy_from_slice(&13u32.to_le_bytes()));
    assert!(err.contains(&last.name) && err.contains("13"), "{err}");
    let err =
        with(&|b| b[info_end - 8..info_end].copy_from_slice(&(last.offset + 4).to_le_bytes()));
    assert!(err.contains("alignment"), "{err}");
    let err = with(&|b| {
        b[info_end - 8..info_end].copy_from_slice(&((last.offset + 1) << 20).to_le_bytes())
    });
    assert!(err.contains("out of range"), "{err}");
    let err = with(&|b| b.truncate(b.len() - 1));
    assert!(
        err.contains("out of range") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn metadata_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.gguf");
    let metadata: Vec<(String, MetaValue)> = vec![
        ("a.u8".into(), MetaValue::U8(7)),
        ("a.i8".into(), MetaValue::I8(-7)),
        ("a.u16".into(), MetaValue::U16(700)),
        ("a.i16".into(), MetaValue::I16(-700)),
        ("a.u32".into(), MetaValue::U32(70_000)),
        ("a.i32".into(), MetaValue::I32(-70_000)),
        ("a.f32".into(), MetaValue::F32(1e-5)),
        ("a.bool".into(), MetaValue::Bool(true)),
        ("a.str".into(), MetaValue::String("héllo".into())),
        ("a.u64".into(), MetaValue::U64(1 << 40)),
        ("a.i64".into(), MetaValue::I64(-(1 << 40))),
        ("a.f64".into(), MetaValue::F64(0.1)),
        (
            "a.nested".into(),
            MetaValue::Array(vec![
                MetaValue::Array(vec![MetaValue::I32(1)]),
                MetaValue::Array(vec![]),
            ]),
        ),
    ];
    let t = GgufTensor {
        name: "w".into(),
        ggml_type: GgmlType::Q8_0,
        dims: vec![32, 2],
        bytes: vec![1; 68],
    };
    write_gguf(&path, &metadata, std::slice::from_ref(&t)).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata(), &metadata[..]);
    assert_eq!(f.get("a.f32").unwrap().as_f64(), Some(1e-5));
    assert_eq!(f.tensors()[0].n_bytes, 68);
    assert_eq!(f.tensor_bytes(&f.tensors()[0]), &t.bytes[..]);
    assert_eq!(f.tensors()[0].shape(), vec![2, 32]);

    // The writer refuses what it could not write correctly.
    let bad = GgufTensor {
        bytes: vec![0; 67],
        ..t.clone()
    };
    assert!(write_gguf(&path, &[], &[bad]).is_err());
    assert!(write_gguf(&path, &[], &[t.clone(), t.clone()]).is_err());
    let mixed = vec![(
        "m".to_string(),
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
    )];
    assert!(write_gguf(&path, &mixed, &[]).is_err());
}
