//! The tokenizer, both ways: `tokenizer.ggml.*` metadata (llama.cpp's `gpt2` model, a
//! byte-level BPE) to an HF `tokenizers` BPE, as transformers' GGUF loader builds it
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), and back.
//!
//! The pre-tokenizer comes from `tokenizer.ggml.pre`, the name llama.cpp gives the split
//! regex of a vocabulary (`src/llama-vocab.cpp`, `llm_tokenizer_bpe`):
//!
//! * `gpt2` and unknown names: the GPT-2 regex of the `ByteLevel` pre-tokenizer.
//! * `smollm` (with `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva`):
//!   llama.cpp splits with `\p{N}` first, then the GPT-2 regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`; we build
//!   `Split(\p{N}, Isolated)` then `ByteLevel` with its regex, which is what SmolLM2's own
//!   `tokenizer.json` does (`Digits(individual_digits)` + `ByteLevel`). transformers 5.x has no
//!   entry for these names and uses the GPT-2 regex alone, which tokenizes a run of spaces
//!   before a digit differently: on the man-page test split it gives 103,223 tokens where
//!   SmolLM2's own tokenizer and ours give 102,654. Compare models on token ids.
//! * `llama-bpe` (Llama 3 and kin) and `qwen2`: transformers' single split regex, then
//!   `ByteLevel` without its own.

use super::GgufError;
use super::file::{GgufFile, MetaValue};
use crate::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub const TOKEN_NORMAL: i32 = 1;
/// A special token such as `<|im_start|>`.
pub const TOKEN_CONTROL: i32 = 3;
/// An added token that is not special, matched whole in text.
pub const TOKEN_USER_DEFINED: i32 = 4;
/// A placeholder filling a gap in the ids.
pub const TOKEN_UNUSED: i32 = 5;

/// Llama 3's split regex (transformers' `_LLAMA3_SPLIT`, the `tokenizer.json` form).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split regex (transformers' `PRETOKENIZE_REGEX`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level vocabulary splits text before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pre {
    /// `ByteLevel` with the GPT-2 regex.
    Gpt2,
    /// Every number character alone, then the GPT-2 regex.
    Digits,
    /// One regex, then `ByteLevel` without its own.
    Split(&'static str),
}

/// `tokenizer.ggml.pre` names: the one we write first in each row.
const PRE_NAMES: [(Pre, &[&str]); 4] = [
    (
        Pre::Gpt2,
        &["gpt2", "default", "gpt-2", "mpt", "olmo", "jais"],
    ),
    (
        Pre::Digits,
        &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva",
        ],
    ),
    (
        Pre::Split(LLAMA3_SPLIT),
        &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "dbrx",
            "smaug-bpe",
        ],
    ),
    (
        Pre::Split(QWEN2_SPLIT),
        &["qwen2", "deepseek-r1-qwen", "megrez"],
    ),
];

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
           "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

impl Pre {
    fn from_name(name: &str) -> Option<Self> {
        PRE_NAMES
            .iter()
            .find(|(_, names)| names.contains(&name))
            .map(|(p, _)| *p)
    }

    fn name(self) -> &'static str {
        PRE_NAMES
            .iter()
            .find(|(p, _)| *p == self)
            .map(|(_, names)| names[0])
            .expect("every Pre has names")
    }

    /// The `pre_tokenizer` of `tokenizer.json`.
    fn json(self) -> Value {
        match self {
            Self::Gpt2 => byte_level(true),
            Self::Digits => json!({"type": "Sequence",
                                   "pretokenizers": [split(r"\p{N}"), byte_level(true)]}),
            Self::Split(regex) => json!({"type": "Sequence",
                                         "pretokenizers": [split(regex), byte_level(false)]}),
        }
    }

    /// Recognizes a `pre_tokenizer` (ours, or the usual HF forms of the same splits).
    fn from_json(v: &Value) -> Option<Self> {
        let is_byte_level = |v: &Value, regex: bool| {
            v["type"] == "ByteLevel" && v["use_regex"] == regex && v["add_prefix_space"] == false
        };
        fn split_regex(v: &Value) -> Option<&str> {
            (v["type"] == "Split" && v["behavior"] == "Isolated" && v["invert"] == false)
                .then(|| v["pattern"]["Regex"].as_str())
                .flatten()
        }
        if is_byte_level(v, true) {
            return Some(Self::Gpt2);
        }
        let parts = v["pretokenizers"]
            .as_array()
            .filter(|_| v["type"] == "Sequence")?;
        let [first, second] = parts.as_slice() else {
            return None;
        };
        let digits = (first["type"] == "Digits" && first["individual_digits"] == true)
            || split_regex(first) == Some(r"\p{N}");
        if digits && is_byte_level(second, true) {
            return Some(Self::Digits);
        }
        let regex = split_regex(first)?;
        if !is_byte_level(second, false) {
            return None;
        }
        [LLAMA3_SPLIT, QWEN2_SPLIT]
            .into_iter()
            .find(|r| *r == regex)
            .map(Self::Split)
    }
}

/// GPT-2's byte-to-character table (`bytes_to_unicode`): printable bytes stand for
/// themselves, the others for the characters from U+0100 on.
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(next).expect("below the surrogates");
            next += 1;
            c
        };
    }
    table
}

/// A metadata key of the file, or an error naming it.
fn key<'a>(file: &'a GgufFile, name: &str) -> Result<&'a MetaValue, GgufError> {
    file.get(name)
        .ok_or_else(|| key_err(file.path(), name, "missing"))
}

fn key_err(path: &Path, key: &str, reason: impl ToString) -> GgufError {
    GgufError::Key {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn strings<'a>(file: &'a GgufFile, name: &str) -> Result<Vec<&'a str>, GgufError> {
    key(file, name)?
        .as_array()
        .and_then(|items| items.iter().map(MetaValue::as_str).collect())
        .ok_or_else(|| key_err(file.path(), name, "expected an array of strings"))
}

/// Rebuilds the tokenizer a GGUF file describes; `None` when it has no `tokenizer.ggml.model`
/// or one other than `gpt2` (a warning says so).
pub(super) fn read_tokenizer(
    file: &GgufFile,
    context_length: usize,
) -> Result<Option<Tokenizer>, GgufError> {
    let path = file.path();
    let Some(model) = file.get("tokenizer.ggml.model") else {
        return Ok(None);
    };
    let model = model
        .as_str()
        .ok_or_else(|| key_err(path, "tokenizer.ggml.model", "expected a string"))?;
    if model != "gpt2" {
        tracing::warn!(
            "{}: tokenizer model `{model}` is not supported (only gpt2, a byte-level BPE); \
             loading the weights without a tokenizer",
            path.display()
        );
        return Ok(None);
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
        None => vec![TOKEN_NORMAL.into(); tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(|items| items.iter().map(MetaValue::as_i64).collect::<Option<_>>())
            .filter(|t: &Vec<i64>| t.len() == tokens.len())
            .ok_or_else(|| {
                key_err(
                    path,
                    "tokenizer.ggml.token_type",
                    format!("expected {} integers", tokens.len()),
                )
            })?,
    };
    let pre_name = match file.get("tokenizer.ggml.pre") {
        None => "default",
        Some(v) => v
            .as_str()
            .ok_or_else(|| key_err(path, "tokenizer.ggml.pre", "expected a string"))?,
    };
    let pre = Pre::from_name(pre_name).unwrap_or_else(|| {
        tracing::warn!(
            "{}: unknown pre-tokenizer `{pre_name}`; splitting with the GPT-2 regex",
            path.display()
        );
        Pre::Gpt2
    });

    // Tokens outside the byte alphabet are spelled out byte by byte, as transformers does.
    let chars = byte_chars();
    let alphabet: HashSet<char> = chars.iter().copied().collect();
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.chars().all(|c| alphabet.contains(&c)) {
                t.to_string()
            } else {
                t.bytes().map(|b| chars[b as usize]).collect()
            }
        })
        .collect();
    let vocab: serde_json::Map<String, Value> = spelled
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| key_err(path, "tokenizer.ggml.merges", format!("merge {m:?}")))
        })
        .collect::<Result<_, _>>()?;
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter_map(|(id, (token, &ty))| {
            let in_alphabet = token.chars().all(|c| alphabet.contains(&c));
            let special = match ty {
                3 if in_alphabet => true,
                4 => false,
                _ => return None,
            };
            Some(
                json!({"id": id, "content": spelled[id], "single_word": false,
                        "lstrip": false, "rstrip": false, "normalized": false,
                        "special": special}),
            )
        })
        .collect();
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre.json(),
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": false,
                  "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer =
        tokenizer_json
            .to_string()
            .parse()
            .map_err(|e| GgufError::File {
                path: path.to_path_buf(),
                reason: format!("cannot build the tokenizer: {e}"),
            })?;

    let mut config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": false,
        "model_max_length": context_length,
    });
    for (field, gguf_key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
    ] {
        if let Some(v) = file.get(gguf_key) {
            let token = v
                .as_u64()
                .and_then(|id| spelled.get(id as usize))
                .ok_or_else(|| key_err(path, gguf_key, format!("{v:?} is not a token id")))?;
            config[field] = json!(token);
        }
    }
    for (field, gguf_key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(v) = file.get(gguf_key) {
            let b = v
                .as_bool()
                .ok_or_else(|| key_err(path, gguf_key, "expected a bool"))?;
            config[field] = json!(b);
        }
    }
    if let Some(v) = file.get("tokenizer.chat_template") {
        let t = v
            .as_str()
            .ok_or_else(|| key_err(path, "tokenizer.chat_template", "expected a string"))?;
        config["chat_template"] = json!(t);
    }
    Ok(Some(Tokenizer::from_parts(inner, config, path)?))
}

/// The `tokenizer.*` metadata of a byte-level BPE tokenizer, its token list padded with
/// `[PAD{id}]` (type unused) to `vocab_size` entries, as llama.cpp's converter does.
pub(super) fn tokenizer_metadata(
    tok: &Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    path: &Path,
) -> Result<Vec<(String, MetaValue)>, GgufError> {
    let err = |reason: String| GgufError::File {
        path: path.to_path_buf(),
        reason: format!("tokenizer: {reason}"),
    };
    let v = serde_json::to_value(tok.inner()).map_err(|e| err(e.to_string()))?;
    if v["model"]["type"] != "BPE" || v["decoder"]["type"] != "ByteLevel" {
        return Err(err(format!(
            "only byte-level BPE tokenizers can be written to GGUF (model {}, decoder {})",
            v["model"]["type"], v["decoder"]["type"]
        )));
    }
    let pre = Pre::from_json(&v["pre_tokenizer"]).ok_or_else(|| {
        err(format!(
            "pre-tokenizer {} has no llama.cpp name (known: the GPT-2 regex, digits then GPT-2, \
             Llama 3's and Qwen2's split regexes)",
            v["pre_tokenizer"]
        ))
    })?;
    let mut by_id: BTreeMap<u64, (String, i32)> = BTreeMap::new();
    for (token, id) in v["model"]["vocab"].as_object().into_iter().flatten() {
        let id = id.as_u64().ok_or_else(|| err(format!("id of {token:?}")))?;
        by_id.insert(id, (token.clone(), TOKEN_NORMAL));
    }
    for t in v["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(err(format!("added token {t}")));
        };
        let ty = if t["special"] == true {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
        by_id.insert(id, (content.to_string(), ty));
    }
    let n = by_id.last_key_value().map_or(0, |(&id, _)| id as usize + 1);
    if n > vocab_size {
        return Err(err(format!(
            "token ids reach {n}, beyond the model's {vocab_size} embedding rows"
        )));
    }
    let (tokens, types): (Vec<MetaValue>, Vec<MetaValue>) = (0..vocab_size)
        .map(|i| match by_id.get(&(i as u64)) {
            Some((t, ty)) => (MetaValue::String(t.clone()), MetaValue::I32(*ty)),
            None => (
                MetaValue::String(format!("[PAD{i}]")),
                MetaValue::I32(TOKEN_UNUSED),
            ),
        })
        .unzip();
    let merges = v["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let (a, b) = match (m.as_str(), m.as_array().map(Vec::as_slice)) {
                (Some(s), _) => s.split_once(' ').unwrap_or((s, "")),
                (_, Some([a, b])) => (a.as_str().unwrap_or(""), b.as_str().unwrap_or("")),
                _ => ("", ""),
            };
            if a.is_empty() || b.is_empty() || a.contains(' ') || b.contains(' ') {
                return Err(err(format!("merge {m} cannot be written as \"a b\"")));
            }
            Ok(MetaValue::String(format!("{a} {b}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let s = |x: &str| MetaValue::String(x.to_string());
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s(pre.name())),
        (
            "tokenizer.ggml.tokens".to_string(),
            MetaValue::Array(tokens),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(types),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            MetaValue::Array(merges),
        ),
    ];
    for (k, id) in [
        ("tokenizer.ggml.bos_token_id", tok.bos_id().or(bos)),
        ("tokenizer.ggml.eos_token_id", tok.eos_id().or(eos)),
        ("tokenizer.ggml.padding_token_id", tok.pad_id()),
    ] {
        if let Some(id) = id {
            out.push((k.to_string(), MetaValue::U32(id)));
        }
    }
    out.push((
        "tokenizer.ggml.add_bos_token".to_string(),
        MetaValue::Bool(tok.add_bos_token),
    ));
    if let Some(t) = &tok.chat_template {
        out.push(("tokenizer.chat_template".to_string(), s(t)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        assert_eq!(t[173], 'Ń');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn pre_tokenizers_round_trip_and_recognize_hf_forms() {
        for (pre, names) in PRE_NAMES {
            assert_eq!(Pre::from_name(names[0]), Some(pre));
            assert_eq!(Pre::from_json(&pre.json()), Some(pre));
            // The JSON is one `tokenizers` accepts.
            let _: tokenizers::PreTokenizerWrapper = serde_json::from_value(pre.json()).unwrap();
        }
        let smollm = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": true}]});
        assert_eq!(Pre::from_json(&smollm), Some(Pre::Digits));
        assert_eq!(Pre::from_json(&json!({"type": "Whitespace"})), None);
        assert_eq!(Pre::Digits.name(), "smollm");
    }
}
