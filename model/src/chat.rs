//! Chat templates: a tokenizer's Jinja `chat_template` rendered for a conversation the way HF
//! transformers' `apply_chat_template` does, with minijinja.
//!
//! As in transformers, blocks trim their trailing newline and strip leading whitespace
//! (`trim_blocks`, `lstrip_blocks`), `{% break %}`/`{% continue %}` work, the special tokens
//! (`bos_token`, `eos_token`, `pad_token`, `unk_token`) are variables, `raise_exception(msg)` fails the
//! render with `msg`, Python string and dict methods (`.strip()`, `.split()`, `.items()`, ...)
//! work, and `tojson` writes Python's `json.dumps` (no HTML escaping, `ensure_ascii=False`).
//! Not supported: `strftime_now`, the `{% generation %}` tag, non-string message content.

use crate::tokenizer::{Tokenizer, TokenizerError};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

/// The template's name inside the environment, shown in render errors.
const NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text of the turn.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }

    /// A user turn.
    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }

    /// The `{"role", "content"}` dict a template sees.
    fn to_value(&self) -> Value {
        Value::from_pairs(
            [("role", &self.role), ("content", &self.content)].map(|(k, v)| (k, v.as_str())),
        )
    }
}

/// A chat template that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The tokenizer has no `chat_template`.
    #[error("the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja)")]
    NoTemplate,
    /// The template does not parse or fails to render.
    #[error("chat template: {0:#}")]
    Template(#[from] Error),
    /// The rendered prompt cannot be tokenized.
    #[error("chat prompt: {0}")]
    Tokenize(#[from] TokenizerError),
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Special tokens passed as variables: `bos_token`, `eos_token`, `pad_token`, `unk_token`.
    specials: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("specials", &self.specials)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` with HF's Jinja settings; the tokens become template variables.
    pub fn new(
        source: &str,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
        pad_token: Option<&str>,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())?;
        let specials = [
            ("bos_token", bos_token),
            ("eos_token", eos_token),
            ("pad_token", pad_token),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v.to_string())))
        .collect();
        Ok(Self { env, specials })
    }

    /// The tokenizer's template with its special tokens.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let source = tokenizer
            .chat_template
            .as_deref()
            .ok_or(ChatError::NoTemplate)?;
        let mut template = Self::new(
            source,
            tokenizer.bos_token.as_deref(),
            tokenizer.eos_token.as_deref(),
            tokenizer.pad_token.as_deref(),
        )?;
        let unk = &tokenizer.config_json()["unk_token"];
        if let Some(unk) = unk.as_str().or_else(|| unk["content"].as_str()) {
            template.specials.push(("unk_token", unk.to_string()));
        }
        Ok(template)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut vars: Vec<(&str, Value)> = vec![
            ("messages", messages.iter().map(Message::to_value).collect()),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        vars.extend(
            self.specials
                .iter()
                .map(|(k, v)| (*k, Value::from(v.as_str()))),
        );
        let template = self.env.get_template(NAME)?;
        Ok(template.render(Value::from_pairs(vars))?)
    }

    /// The special token that closes an assistant turn (`<|im_end|>`, `<|eot_id|>`, ...): the
    /// first token after the answer when a conversation ending with one is rendered, if that
    /// token is a special token of `tokenizer`.
    pub fn end_of_turn(&self, tokenizer: &Tokenizer) -> Option<u32> {
        const ANSWER: &str = "distill-answer-sentinel";
        let messages = [Message::user("Hi"), Message::new("assistant", ANSWER)];
        let text = self.render(&messages, false).ok()?;
        let after = &text[text.rfind(ANSWER)? + ANSWER.len()..];
        let first = *tokenizer
            .inner()
            .encode_fast(after, false)
            .ok()?
            .get_ids()
            .first()?;
        let added = tokenizer.inner().get_added_tokens_decoder();
        added.get(&first).filter(|t| t.special).map(|_| first)
    }
}

/// Tokenizes a rendered chat prompt as `apply_chat_template(tokenize=True)` does: without
/// adding special tokens (the template writes any BOS itself).
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ChatError> {
    let encoding =
        tokenizer
            .inner()
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode {
                reason: e.to_string(),
            })?;
    Ok(encoding.get_ids().to_vec())
}

/// The `tojson` filter of transformers' template environment: Python's `json.dumps` with
/// `ensure_ascii=False` by default; `indent`, `ensure_ascii` and `sort_keys` are honoured.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut w = PyJson {
        out: String::new(),
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    w.value(value, 0)?;
    Ok(Value::from(w.out))
}

/// A writer of Python `json.dumps` text.
struct PyJson {
    out: String,
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl PyJson {
    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number if v.is_integer() => self.out.push_str(&v.to_string()),
            ValueKind::Number => {
                let x = f64::try_from(v.clone())?;
                let s = if x.is_finite() {
                    let s = x.to_string();
                    if s.contains(['.', 'e']) { s } else { s + ".0" }
                } else if x.is_nan() {
                    "NaN".into()
                } else if x > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                };
                self.out.push_str(&s);
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(i, depth + 1);
                    self.value(item, depth + 1)?;
                }
                self.close(']', items.is_empty(), depth);
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    self.separator(i, depth + 1);
                    self.string(&key.to_string());
                    self.out.push_str(": ");
                    self.value(&v.get_item(key)?, depth + 1)?;
                }
                self.close('}', keys.is_empty(), depth);
            }
            _ => self.string(&v.to_string()),
        }
        Ok(())
    }

    /// Before item `i` at nesting `depth`: a comma unless first, then the indent if any.
    fn separator(&mut self, i: usize, depth: usize) {
        match self.indent {
            Some(n) => {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push('\n');
                self.out.push_str(&" ".repeat(n * depth));
            }
            None if i > 0 => self.out.push_str(", "),
            None => {}
        }
    }

    fn close(&mut self, bracket: char, empty: bool, depth: usize) {
        if let (Some(n), false) = (self.indent, empty) {
            self.out.push('\n');
            self.out.push_str(&" ".repeat(n * depth));
        }
        self.out.push(bracket);
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        self.out.push_str(&format!("\\u{u:04x}"));
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-Instruct's template (as in its tokenizer_config.json and GGUF metadata).
    pub const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_adds_the_default_system_turn() {
        let t = ChatTemplate::new(SMOLLM2, None, Some("<|im_end|>"), None).unwrap();
        let text = t.render(&[Message::user("Hi")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
             Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let own = [Message::new("system", "Be brief."), Message::user("Hi")];
        assert_eq!(
            t.render(&own, false).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn hf_features_trim_blocks_methods_exceptions_tojson() {
        let src = "{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'tool' %}{{ raise_exception('no tools: ' + m.content) }}{% endif %}\n{{ m.content.strip().upper() }}|{{ {'a': [1, 2.5, none], 'é': m.role}|tojson }}|{{ [1]|tojson(indent=2) }}\n{% endfor %}";
        let t = ChatTemplate::new(src, Some("<s>"), None, None).unwrap();
        let out = t.render(&[Message::user("  hi <b> ")], false).unwrap();
        assert_eq!(
            out,
            "<s>\nHI <B>|{\"a\": [1, 2.5, null], \"é\": \"user\"}|[\n  1\n]\n"
        );
        let err = t.render(&[Message::new("tool", "x")], false).unwrap_err();
        assert!(err.to_string().contains("no tools: x"), "{err}");
        let err = ChatTemplate::new("{% if %}", None, None, None).unwrap_err();
        assert!(err.to_string().contains("chat template"), "{err}");
    }
}
