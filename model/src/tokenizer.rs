//! A thin wrapper over the Hugging Face `tokenizers` crate: loading and saving a model
//! directory's `tokenizer.json` + `tokenizer_config.json`, encoding and decoding, and training
//! a byte-level BPE from scratch.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tokenizers::AddedToken;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

/// File name of the serialized tokenizer inside a model directory.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// File name of the tokenizer configuration inside a model directory.
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// File name of a stand-alone chat template, as newer `transformers` versions write it.
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";
/// The conventional end-of-text token; the first special token of a trained tokenizer.
pub const ENDOFTEXT: &str = "<|endoftext|>";

/// Everything that can go wrong loading, saving, training or running a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A file is not valid JSON.
    #[error("{} is not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A `tokenizer.json` is valid JSON but not a tokenizer this crate understands.
    #[error("cannot load tokenizer from {}: {reason}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// Why `tokenizers` rejected it.
        reason: String,
    },
    /// A `tokenizer_config.json` has a field of the wrong shape or an inconsistent setting.
    #[error("invalid tokenizer config {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The tokenizer could not be serialized.
    #[error("cannot serialize tokenizer: {reason}")]
    Serialize {
        /// Why.
        reason: String,
    },
    /// Encoding a text failed.
    #[error("cannot encode text: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
    /// Decoding ids failed.
    #[error("cannot decode ids: {reason}")]
    Decode {
        /// Why.
        reason: String,
    },
    /// Training a BPE failed or was asked for something impossible.
    #[error("cannot train BPE tokenizer: {reason}")]
    Train {
        /// Why.
        reason: String,
    },
}

/// The fields of `tokenizer_config.json` this crate interprets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ConfigFields {
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    add_bos_token: bool,
}

impl ConfigFields {
    /// Extracts the interpreted fields from a parsed `tokenizer_config.json`.
    fn parse(config: &Value) -> Result<Self, String> {
        let obj = config
            .as_object()
            .ok_or_else(|| "top level is not a JSON object".to_string())?;
        let add_bos_token = match obj.get("add_bos_token") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("add_bos_token is not a boolean: {other}")),
        };
        Ok(Self {
            chat_template: parse_chat_template(obj.get("chat_template"))?,
            bos_token: parse_special_token(obj, "bos_token")?,
            eos_token: parse_special_token(obj, "eos_token")?,
            pad_token: parse_special_token(obj, "pad_token")?,
            add_bos_token,
        })
    }
}

/// A special token is either a plain string or an `AddedToken` object `{"content": ...}`.
fn parse_special_token(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("{key} is an object without a string \"content\"")),
        },
        Some(other) => Err(format!("{key} is neither a string nor an object: {other}")),
    }
}

/// A chat template is a string, or a list of `{"name", "template"}` of which we take "default".
fn parse_chat_template(value: Option<&Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(
                            "chat_template list entries must be {\"name\", \"template\"} strings"
                                .to_string(),
                        );
                    }
                }
            }
            Ok(None)
        }
        Some(other) => Err(format!(
            "chat_template is neither a string nor a list: {other}"
        )),
    }
}

/// A tokenizer: the HF `tokenizers` model plus the interpreted parts of `tokenizer_config.json`.
///
/// The public fields may be changed; [`Tokenizer::save_dir`] writes the original
/// `tokenizer_config.json` back unchanged except for the fields that were changed.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
    /// The beginning-of-sequence token, if any.
    pub bos_token: Option<String>,
    /// The end-of-sequence token, if any.
    pub eos_token: Option<String>,
    /// The padding token, if any.
    pub pad_token: Option<String>,
    /// Whether [`Tokenizer::encode`] prepends the BOS token.
    pub add_bos_token: bool,
    /// The raw `tokenizer_config.json` as loaded (an empty object if there was none).
    config: Value,
    /// The interpreted fields as they were in `config`, to detect changes on save.
    loaded: ConfigFields,
    /// One more than the largest token id.
    vocab_size: usize,
}

impl Tokenizer {
    /// Builds the wrapper from a `tokenizers` tokenizer and a parsed config.
    fn assemble(inner: tokenizers::Tokenizer, config: Value, loaded: ConfigFields) -> Self {
        let vocab_size = inner
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&max| max as usize + 1);
        Self {
            inner,
            chat_template: loaded.chat_template.clone(),
            bos_token: loaded.bos_token.clone(),
            eos_token: loaded.eos_token.clone(),
            pad_token: loaded.pad_token.clone(),
            add_bos_token: loaded.add_bos_token,
            config,
            loaded,
            vocab_size,
        }
    }

    /// Loads a `tokenizer.json` alone; the config fields are left empty.
    ///
    /// Both BPE merge encodings (`[["a", "b"], ...]` and the legacy `["a b", ...]`) are accepted.
    pub fn from_file(tokenizer_json: &Path) -> Result<Self, TokenizerError> {
        let inner = load_tokenizer_json(tokenizer_json)?;
        Ok(Self::assemble(
            inner,
            Value::Object(Map::new()),
            ConfigFields::default(),
        ))
    }

    /// Wraps an in-memory `tokenizers` tokenizer with a `tokenizer_config.json` value (e.g. both
    /// rebuilt from a GGUF file's metadata); `origin` names the source in errors.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        config: Value,
        origin: &Path,
    ) -> Result<Self, TokenizerError> {
        let err = |reason: String| TokenizerError::Config {
            path: origin.to_path_buf(),
            reason,
        };
        let loaded = ConfigFields::parse(&config).map_err(err)?;
        let tokenizer = Self::assemble(inner, config, loaded);
        if tokenizer.add_bos_token && tokenizer.bos_id().is_none() {
            return Err(err(format!(
                "add_bos_token is true but bos_token {:?} is not in the vocabulary",
                tokenizer.bos_token
            )));
        }
        Ok(tokenizer)
    }

    /// Loads a model directory: `tokenizer.json` (required), `tokenizer_config.json` and
    /// `chat_template.jinja` (both optional).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let inner = load_tokenizer_json(&dir.join(TOKENIZER_JSON))?;

        let config_path = dir.join(TOKENIZER_CONFIG_JSON);
        let config = match fs::read(&config_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Value>(&bytes).map_err(|source| TokenizerError::Json {
                    path: config_path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Value::Object(Map::new()),
            Err(source) => {
                return Err(TokenizerError::Read {
                    path: config_path,
                    source,
                });
            }
        };
        let loaded = ConfigFields::parse(&config).map_err(|reason| TokenizerError::Config {
            path: config_path.clone(),
            reason,
        })?;
        let mut tokenizer = Self::assemble(inner, config, loaded);

        if tokenizer.chat_template.is_none() {
            let jinja_path = dir.join(CHAT_TEMPLATE_JINJA);
            match fs::read_to_string(&jinja_path) {
                Ok(template) => tokenizer.chat_template = Some(template),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TokenizerError::Read {
                        path: jinja_path,
                        source,
                    });
                }
            }
        }

        if tokenizer.add_bos_token && tokenizer.bos_id().is_none() {
            return Err(TokenizerError::Config {
                path: config_path,
                reason: format!(
                    "add_bos_token is true but bos_token {:?} is not in the vocabulary",
                    tokenizer.bos_token
                ),
            });
        }
        Ok(tokenizer)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if missing),
    /// each atomically: a `.tmp` file in the same directory, fsynced, then renamed.
    pub fn save_dir(&self, dir: &Path) -> Result<(), TokenizerError> {
        fs::create_dir_all(dir).map_err(|source| TokenizerError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let tokenizer_json = self
            .inner
            .to_string(true)
            .map_err(|e| TokenizerError::Serialize {
                reason: e.to_string(),
            })?;
        let config_json = serde_json::to_string_pretty(&self.config_to_write()).map_err(|e| {
            TokenizerError::Serialize {
                reason: e.to_string(),
            }
        })?;
        write_atomic(&dir.join(TOKENIZER_JSON), tokenizer_json.as_bytes())?;
        write_atomic(&dir.join(TOKENIZER_CONFIG_JSON), config_json.as_bytes())?;
        Ok(())
    }

    /// The raw config as loaded, with only the fields changed since loading overwritten.
    fn config_to_write(&self) -> Value {
        let mut config = self.config.clone();
        if !config.is_object() {
            config = Value::Object(Map::new());
        }
        let Value::Object(obj) = &mut config else {
            unreachable!("config was just made an object")
        };
        let opt = |s: &Option<String>| s.clone().map_or(Value::Null, Value::String);
        if self.chat_template != self.loaded.chat_template {
            obj.insert("chat_template".into(), opt(&self.chat_template));
        }
        if self.bos_token != self.loaded.bos_token {
            obj.insert("bos_token".into(), opt(&self.bos_token));
        }
        if self.eos_token != self.loaded.eos_token {
            obj.insert("eos_token".into(), opt(&self.eos_token));
        }
        if self.pad_token != self.loaded.pad_token {
            obj.insert("pad_token".into(), opt(&self.pad_token));
        }
        if self.add_bos_token != self.loaded.add_bos_token {
            obj.insert("add_bos_token".into(), Value::Bool(self.add_bos_token));
        }
        config
    }

    /// Trains a byte-level BPE (GPT-2 style: no prefix space, regex pre-split, every byte in the
    /// initial alphabet, merges need a pair frequency of at least 2) on `texts`.
    ///
    /// `special_tokens` get the first ids; by convention the first one is [`ENDOFTEXT`], which
    /// then serves as both BOS and EOS token. The result has at most `vocab_size` tokens
    /// (fewer if the corpus has too few frequent pairs).
    pub fn train_bpe<I, S>(
        texts: I,
        vocab_size: usize,
        special_tokens: &[&str],
    ) -> Result<Self, TokenizerError>
    where
        I: IntoIterator<Item = S>,
        I::IntoIter: Send,
        S: AsRef<str> + Send,
    {
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let minimum = alphabet.len() + special_tokens.len();
        if vocab_size < minimum {
            return Err(TokenizerError::Train {
                reason: format!(
                    "vocab_size {vocab_size} is below the {} byte tokens plus {} special tokens",
                    alphabet.len(),
                    special_tokens.len()
                ),
            });
        }
        let mut trainer: TrainerWrapper = BpeTrainer::builder()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(
                special_tokens
                    .iter()
                    .map(|t| AddedToken::from(*t, true))
                    .collect(),
            )
            .initial_alphabet(alphabet)
            .build()
            .into();

        let byte_level = ByteLevel::new(false, true, true);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .with_post_processor(Some(byte_level));
        inner
            .train(&mut trainer, texts.into_iter())
            .map_err(|e| TokenizerError::Train {
                reason: e.to_string(),
            })?;

        let special = special_tokens.first().map(|t| t.to_string());
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        config.insert("add_bos_token".into(), false.into());
        if let Some(token) = &special {
            config.insert("bos_token".into(), token.clone().into());
            config.insert("eos_token".into(), token.clone().into());
        }
        let config = Value::Object(config);
        let loaded = ConfigFields::parse(&config).map_err(|reason| TokenizerError::Train {
            reason: format!("internal config error: {reason}"),
        })?;
        Ok(Self::assemble(inner, config, loaded))
    }

    /// Encodes `text` to ids. No special tokens are added, except that the BOS id is prepended
    /// when `add_bos_token` is set. Special-token strings inside `text` map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode {
                reason: e.to_string(),
            })?;
        let ids = encoding.get_ids();
        if !self.add_bos_token {
            return Ok(ids.to_vec());
        }
        let bos = self.bos_id().ok_or_else(|| TokenizerError::Encode {
            reason: format!(
                "add_bos_token is set but bos_token {:?} is not in the vocabulary",
                self.bos_token
            ),
        })?;
        let mut out = Vec::with_capacity(ids.len() + 1);
        out.push(bos);
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes ids to text, skipping special tokens and ids outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizerError::Decode {
                reason: e.to_string(),
            })
    }

    /// One more than the largest token id (added tokens included): the embedding rows needed.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of `token`, added tokens included.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of `id`, added tokens included.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of the BOS token, if there is one and it is in the vocabulary.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The id of the EOS token, if there is one and it is in the vocabulary.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The id of the padding token, if there is one and it is in the vocabulary.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The raw `tokenizer_config.json` as loaded (an empty object if there was none).
    pub fn config_json(&self) -> &Value {
        &self.config
    }

    /// The underlying `tokenizers` tokenizer, e.g. for streaming decoding.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Reads and parses a `tokenizer.json`, telling unreadable, non-JSON and unsupported files apart.
fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let bytes = fs::read(path).map_err(|source| TokenizerError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
        let json = match serde_json::from_slice::<Value>(&bytes) {
            Ok(json) => json,
            Err(source) => {
                return TokenizerError::Json {
                    path: path.to_path_buf(),
                    source,
                };
            }
        };
        const KNOWN: [&str; 4] = ["BPE", "WordPiece", "WordLevel", "Unigram"];
        let reason = match json.pointer("/model/type").and_then(Value::as_str) {
            Some(kind) if !KNOWN.contains(&kind) => format!(
                "unknown model type {kind:?} (supported: {})",
                KNOWN.join(", ")
            ),
            _ => e.to_string(),
        };
        TokenizerError::Load {
            path: path.to_path_buf(),
            reason,
        }
    })
}

/// Writes `bytes` to `path` via a fsynced `.tmp` sibling and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(TokenizerError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    // Make the rename itself durable; not every platform lets a directory be opened and synced.
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: &[&str] = &[
        "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.\n",
        "A tokenizer splits text into tokens. Tokens are small pieces of text, and the \
         tokenizer maps each token to an id. The model only ever sees the ids.\n",
        "Byte-level BPE starts from the 256 byte values and merges the most frequent pairs \
         until the vocabulary is full. Frequent words become single tokens; rare words are \
         spelled out of smaller pieces.\n",
        "    fn main() {\n        println!(\"hello, world\");\n    }\n",
        "Distillation trains a small student model to imitate a large teacher model on the \
         data of one domain. The student is fast, the teacher is accurate.\n",
        "Zwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich. 日本語のテキストも少し。\n",
    ];

    fn corpus() -> Vec<String> {
        CORPUS.iter().map(|s| s.repeat(3)).collect()
    }

    fn trained(vocab_size: usize) -> Tokenizer {
        Tokenizer::train_bpe(corpus(), vocab_size, &[ENDOFTEXT, "<|pad|>"]).unwrap()
    }

    /// A tiny byte-level BPE tokenizer.json with merges in the given JSON form.
    fn tiny_tokenizer_json(merges: Value) -> String {
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{
                "id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                              "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": false,
                        "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null,
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": {"<s>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5},
                "merges": merges
            }
        })
        .to_string()
    }

    #[test]
    fn tokenizer_reads_both_merge_encodings() {
        let dir = tempfile::tempdir().unwrap();
        for (name, merges) in [
            ("pairs.json", serde_json::json!([["a", "b"], ["ab", "c"]])),
            ("legacy.json", serde_json::json!(["a b", "ab c"])),
        ] {
            let path = dir.path().join(name);
            fs::write(&path, tiny_tokenizer_json(merges)).unwrap();
            let tok = Tokenizer::from_file(&path).unwrap();
            assert_eq!(tok.encode("abcab").unwrap(), vec![5, 4], "{name}");
            assert_eq!(tok.decode(&[0, 5, 4]).unwrap(), "abcab", "{name}");
            assert_eq!(tok.vocab_size(), 6);
            assert_eq!(tok.bos_id(), None);
        }
    }

    #[test]
    fn tokenizer_config_fields_and_add_bos() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(TOKENIZER_JSON),
            tiny_tokenizer_json(serde_json::json!(["a b", "ab c"])),
        )
        .unwrap();
        let config = serde_json::json!({
            "add_bos_token": true,
            "bos_token": {"content": "<s>", "lstrip": false, "normalized": false,
                          "rstrip": false, "single_word": false, "__type": "AddedToken"},
            "eos_token": "<s>",
            "pad_token": null,
            "chat_template": [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "{{ messages }}"}],
            "model_max_length": 4096,
            "something_unknown": {"nested": [1, 2, 3]}
        });
        fs::write(
            dir.path().join(TOKENIZER_CONFIG_JSON),
            serde_json::to_string(&config).unwrap(),
        )
        .unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert!(tok.add_bos_token);
        assert_eq!(tok.bos_token.as_deref(), Some("<s>"));
        assert_eq!(tok.eos_token.as_deref(), Some("<s>"));
        assert_eq!(tok.pad_token, None);
        assert_eq!(tok.chat_template.as_deref(), Some("{{ messages }}"));
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_id(), Some(0));
        assert_eq!(tok.encode("abc").unwrap(), vec![0, 5]);
        assert_eq!(tok.decode(&[0, 5]).unwrap(), "abc");

        // Unchanged fields: the config is written back exactly as loaded.
        let out = tempfile::tempdir().unwrap();
        tok.save_dir(out.path()).unwrap();
        let written: Value =
            serde_json::from_slice(&fs::read(out.path().join(TOKENIZER_CONFIG_JSON)).unwrap())
                .unwrap();
        assert_eq!(written, config);
        assert!(!out.path().join("tokenizer.json.tmp").exists());

        // A changed field is written, everything else stays.
        let mut tok = tok;
        tok.pad_token = Some("<s>".into());
        tok.save_dir(out.path()).unwrap();
        let reloaded = Tokenizer::from_dir(out.path()).unwrap();
        assert_eq!(reloaded.pad_token.as_deref(), Some("<s>"));
        assert_eq!(
            reloaded.config_json()["something_unknown"],
            config["something_unknown"]
        );
        assert_eq!(reloaded.config_json()["bos_token"], config["bos_token"]);
    }

    #[test]
    fn chat_template_jinja_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(TOKENIZER_JSON),
            tiny_tokenizer_json(serde_json::json!(["a b"])),
        )
        .unwrap();
        fs::write(dir.path().join(CHAT_TEMPLATE_JINJA), "{{ x }}").unwrap();
        let tok = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(tok.chat_template.as_deref(), Some("{{ x }}"));
        assert!(!tok.add_bos_token);
        let out = tempfile::tempdir().unwrap();
        tok.save_dir(out.path()).unwrap();
        let reloaded = Tokenizer::from_file(&out.path().join(TOKENIZER_JSON)).unwrap();
        assert_eq!(reloaded.encode("ab").unwrap(), vec![4]);
        let config: Value =
            serde_json::from_slice(&fs::read(out.path().join(TOKENIZER_CONFIG_JSON)).unwrap())
                .unwrap();
        assert_eq!(config["chat_template"], "{{ x }}");
    }

    #[test]
    fn train_bpe_vocab_size_and_special_tokens() {
        let tok = trained(400);
        assert!(tok.vocab_size() <= 400, "{}", tok.vocab_size());
        assert!(tok.vocab_size() > 256 + 2, "{}", tok.vocab_size());
        assert_eq!(tok.token_to_id(ENDOFTEXT), Some(0));
        assert_eq!(tok.token_to_id("<|pad|>"), Some(1));
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_id(), Some(0));
        assert_eq!(tok.id_to_token(0).as_deref(), Some(ENDOFTEXT));
        // Frequent words were merged into single tokens.
        assert_eq!(tok.encode(" the").unwrap().len(), 1);

        // A tiny corpus cannot fill a large vocabulary.
        let small = Tokenizer::train_bpe(["ab ab ab"], 5000, &[ENDOFTEXT]).unwrap();
        assert!(small.vocab_size() < 5000 && small.vocab_size() > 256);

        let err = Tokenizer::train_bpe(corpus(), 100, &[ENDOFTEXT]).unwrap_err();
        assert!(matches!(err, TokenizerError::Train { .. }), "{err}");
    }

    #[test]
    fn train_bpe_round_trips_arbitrary_utf8() {
        let tok = trained(500);
        let texts = [
            "",
            "The quick brown fox",
            "  leading spaces and trailing  ",
            "\n\nnewlines\r\nand\ttabs\n",
            "emoji 🦀🚀 and 👩‍👩‍👧‍👦 families",
            "日本語のテキスト、中文，한국어",
            "combining: e\u{301} a\u{308} \u{200b}zero width",
            "text<|pad|>with special token",
            "never seen: ℵ₀ ∮ ∂ ☃ \u{10FFFF}",
        ];
        for text in texts {
            let ids = tok.encode(text).unwrap();
            let expected = text.replace("<|pad|>", "");
            assert_eq!(tok.decode(&ids).unwrap(), expected, "{text:?} -> {ids:?}");
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
        }
        // Special tokens are skipped on decode; unknown ids are ignored.
        let mut ids = vec![0];
        ids.extend(tok.encode("hi").unwrap());
        ids.push(u32::MAX);
        assert_eq!(tok.decode(&ids).unwrap(), "hi");
    }

    #[test]
    fn save_and_load_round_trip() {
        let tok = trained(450);
        let dir = tempfile::tempdir().unwrap();
        let model_dir = dir.path().join("nested").join("model");
        tok.save_dir(&model_dir).unwrap();
        let names: Vec<String> = fs::read_dir(&model_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let loaded = Tokenizer::from_dir(&model_dir).unwrap();
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        assert_eq!(loaded.bos_id(), Some(0));
        assert_eq!(loaded.eos_id(), Some(0));
        assert!(!loaded.add_bos_token);
        assert_eq!(loaded.config_json(), tok.config_json());
        for text in CORPUS {
            let ids = tok.encode(text).unwrap();
            assert_eq!(loaded.encode(text).unwrap(), ids);
            assert_eq!(loaded.decode(&ids).unwrap(), *text);
        }
        // Saving twice over the same directory works and changes nothing.
        let before = fs::read(model_dir.join(TOKENIZER_JSON)).unwrap();
        loaded.save_dir(&model_dir).unwrap();
        assert_eq!(fs::read(model_dir.join(TOKENIZER_JSON)).unwrap(), before);
    }

    #[test]
    fn bad_input_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();

        let missing = dir.path().join("missing.json");
        let err = Tokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, TokenizerError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.json"), "{err}");

        let err = Tokenizer::from_dir(dir.path()).unwrap_err();
        assert!(err.to_string().contains(TOKENIZER_JSON), "{err}");

        let invalid = dir.path().join("invalid.json");
        fs::write(&invalid, "{ not json").unwrap();
        let err = Tokenizer::from_file(&invalid).unwrap_err();
        assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
        assert!(err.to_string().contains("invalid.json"), "{err}");

        let unknown = dir.path().join("unknown.json");
        let json = tiny_tokenizer_json(serde_json::json!(["a b"])).replace("\"BPE\"", "\"Nope\"");
        fs::write(&unknown, json).unwrap();
        let err = Tokenizer::from_file(&unknown).unwrap_err();
        assert!(matches!(err, TokenizerError::Load { .. }), "{err}");
        assert!(err.to_string().contains("unknown.json"), "{err}");
        assert!(err.to_string().contains("\"Nope\""), "{err}");

        // A good tokenizer.json with a broken config names the config.
        fs::write(
            dir.path().join(TOKENIZER_JSON),
            tiny_tokenizer_json(serde_json::json!(["a b"])),
        )
        .unwrap();
        let config_path = dir.path().join(TOKENIZER_CONFIG_JSON);
        for bad in [
            "[1, 2",
            "[1, 2]",
            r#"{"bos_token": 7}"#,
            r#"{"add_bos_token": "yes"}"#,
            r#"{"add_bos_token": true, "bos_token": "<nope>"}"#,
        ] {
            fs::write(&config_path, bad).unwrap();
            let err = Tokenizer::from_dir(dir.path()).unwrap_err();
            assert!(
                err.to_string().contains(TOKENIZER_CONFIG_JSON),
                "{bad}: {err}"
            );
        }
    }
}
