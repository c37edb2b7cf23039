//! The JSON Lines records of the InstructGPT path: demonstrations for SFT, comparisons and
//! rankings for the reward model, prompts for PPO. Each reader names the file, the line and the
//! field of a malformed record.

use distill_model::chat::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// A record file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// A line is not valid JSON, lacks a field, or breaks the record's rules.
    #[error("{path}:{line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: String,
    },
    /// The file holds no records.
    #[error("{path}: no records")]
    Empty { path: String },
}

/// One demonstration: a prompt and its response, or a whole conversation whose assistant
/// turns are the responses. `{"prompt","response"}` or `{"messages":[{"role","content"}…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Demonstration {
    /// A single-turn demonstration, rendered as one user turn and one assistant turn.
    Pair { prompt: String, response: String },
    /// A conversation rendered with the model's chat template.
    Chat { messages: Vec<Message> },
}

impl Demonstration {
    /// The conversation this demonstration renders as.
    pub fn messages(&self) -> Vec<Message> {
        match self {
            Self::Pair { prompt, response } => {
                vec![Message::user(prompt), Message::new("assistant", response)]
            }
            Self::Chat { messages } => messages.clone(),
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Self::Pair { prompt, response } => {
                nonempty("prompt", prompt)?;
                nonempty("response", response)
            }
            Self::Chat { messages } => {
                if !messages.iter().any(|m| m.role == "assistant") {
                    return Err("field `messages`: no assistant turn to learn from".into());
                }
                for (i, m) in messages.iter().enumerate() {
                    if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                        return Err(format!(
                            "field `messages[{i}].role`: `{}` is not system, user or assistant",
                            m.role
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A pair of answers to one prompt, the better one first: `{"prompt","chosen","rejected"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// The user's turn.
    pub prompt: String,
    /// The better answer.
    pub chosen: String,
    /// The worse answer.
    pub rejected: String,
}

/// Several answers to one prompt and their order: `ranking[0]` indexes the best response.
/// `{"prompt","responses":[…],"ranking":[…]}`; an optional `kinds` names what each response
/// is (for per-pair-type accuracy), and an optional `id` names the prompt's source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranking {
    /// Where the prompt comes from (e.g. a man page and question kind); optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The user's turn.
    pub prompt: String,
    /// The candidate answers, in any order.
    pub responses: Vec<String>,
    /// Indices into `responses`, best first; a permutation of `0..responses.len()`.
    pub ranking: Vec<usize>,
    /// What each response is (same order as `responses`), e.g. `right`, `same_page`,
    /// `other_page`, `off_topic`; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<String>>,
}

impl Ranking {
    /// The K·(K−1)/2 (better, worse) response index pairs the ranking implies.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let r = &self.ranking;
        (0..r.len())
            .flat_map(|i| (i + 1..r.len()).map(move |j| (r[i], r[j])))
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        nonempty("prompt", &self.prompt)?;
        let k = self.responses.len();
        if k < 2 {
            return Err(format!("field `responses`: {k} responses, need at least 2"));
        }
        let mut seen = vec![false; k];
        if self.ranking.len() != k {
            return Err(format!(
                "field `ranking`: {} entries for {k} responses",
                self.ranking.len()
            ));
        }
        for &i in &self.ranking {
            if i >= k || std::mem::replace(&mut seen[i], true) {
                return Err(format!(
                    "field `ranking`: {:?} is not a permutation of 0..{k}",
                    self.ranking
                ));
            }
        }
        if let Some(kinds) = &self.kinds
            && kinds.len() != k
        {
            return Err(format!(
                "field `kinds`: {} entries for {k} responses",
                kinds.len()
            ));
        }
        Ok(())
    }
}

impl From<Comparison> for Ranking {
    fn from(c: Comparison) -> Self {
        Self {
            id: None,
            prompt: c.prompt,
            responses: vec![c.chosen, c.rejected],
            ranking: vec![0, 1],
            kinds: None,
        }
    }
}

/// A prompt for PPO rollouts: `{"prompt"}`, with an optional `id` naming its source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    /// Where the prompt comes from; optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The user's turn.
    pub prompt: String,
}

/// A record kind read from JSON Lines, with the rules a parsed line must also meet.
pub trait Record: DeserializeOwned {
    /// Checks what serde cannot: non-empty text, consistent indices.
    fn validate(&self) -> Result<(), String>;
}

impl Record for Demonstration {
    fn validate(&self) -> Result<(), String> {
        self.check()
    }
}

impl Record for Comparison {
    fn validate(&self) -> Result<(), String> {
        nonempty("prompt", &self.prompt)?;
        nonempty("chosen", &self.chosen)?;
        nonempty("rejected", &self.rejected)
    }
}

impl Record for Ranking {
    fn validate(&self) -> Result<(), String> {
        self.check()
    }
}

impl Record for Prompt {
    fn validate(&self) -> Result<(), String> {
        nonempty("prompt", &self.prompt)
    }
}

/// Reads every record of a JSON Lines file (blank lines skipped); refuses an empty file.
pub fn read_jsonl<T: Record>(path: &Path) -> Result<Vec<T>, RecordError> {
    let name = path.display().to_string();
    let io = |error| RecordError::Io {
        path: name.clone(),
        error,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| RecordError::Line {
            path: name.clone(),
            line: i + 1,
            reason,
        };
        let record: T = serde_json::from_str(&line).map_err(|e| bad(describe(&line, e)))?;
        record.validate().map_err(bad)?;
        out.push(record);
    }
    if out.is_empty() {
        return Err(RecordError::Empty { path: name });
    }
    Ok(out)
}

/// Reads reward-model data: rankings, or comparisons (each a ranking of two).
pub fn read_rankings(path: &Path) -> Result<Vec<Ranking>, RecordError> {
    let first = first_record(path)?;
    if first.get("chosen").is_some() {
        Ok(read_jsonl::<Comparison>(path)?
            .into_iter()
            .map(Ranking::from)
            .collect())
    } else {
        read_jsonl(path)
    }
}

/// One data file or several read as one set: `"a.jsonl"` or `["a.jsonl", "b.jsonl"]` in TOML.
/// A single file is written back as a plain path, so configs that name one file keep their
/// serialized form (and a recipe its stage keys).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataFiles(pub Vec<PathBuf>);

impl DataFiles {
    /// Whether no file is named (or the only one is an empty path).
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|p| p.as_os_str().is_empty())
    }

    /// The files, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, PathBuf> {
        self.0.iter()
    }
}

impl From<PathBuf> for DataFiles {
    fn from(path: PathBuf) -> Self {
        Self(vec![path])
    }
}

impl std::fmt::Display for DataFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(|p| p.display().to_string()).collect();
        f.write_str(&names.join(" + "))
    }
}

impl Serialize for DataFiles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for DataFiles {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "a file path or a list of file paths")]
        enum OneOrMany {
            One(PathBuf),
            Many(Vec<PathBuf>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(p) => Self(vec![p]),
            OneOrMany::Many(v) => Self(v),
        })
    }
}

/// Reads reward-model data from every file of `files`, in order, with the file each record
/// came from.
pub fn read_rankings_from(files: &DataFiles) -> Result<Vec<(PathBuf, Vec<Ranking>)>, RecordError> {
    files
        .iter()
        .map(|p| Ok((p.clone(), read_rankings(p)?)))
        .collect()
}

/// Writes records as JSON Lines, atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> std::io::Result<()> {
    use std::io::Write;
    distill_model::fsutil::write_atomic(path, |out| {
        for r in records {
            serde_json::to_writer(&mut *out, r).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
}

fn first_record(path: &Path) -> Result<serde_json::Value, RecordError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| RecordError::Io {
        path: name.clone(),
        error,
    })?;
    let (i, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty())
        .ok_or(RecordError::Empty { path: name.clone() })?;
    serde_json::from_str(line).map_err(|e| RecordError::Line {
        path: name,
        line: i + 1,
        reason: format!("not valid JSON: {e}"),
    })
}

/// Serde's message for a line, naming the field when the line is an object: untagged enums
/// only say "did not match any variant", so the missing or mistyped field is found here.
fn describe(line: &str, e: serde_json::Error) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return format!("not valid JSON: {e}");
    };
    let Some(obj) = value.as_object() else {
        return "not a JSON object".into();
    };
    if e.to_string().contains("did not match any variant") {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return format!(
            "fields {keys:?}: expected {{\"prompt\", \"response\"}} strings or {{\"messages\": [{{\"role\", \"content\"}}, …]}}"
        );
    }
    e.to_string()
}

fn nonempty(field: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        Err(format!("field `{field}`: empty"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), lines).unwrap();
        f
    }

    #[test]
    fn data_files_read_one_path_or_a_list_and_write_one_path_back() {
        #[derive(Serialize, Deserialize)]
        struct C {
            data: DataFiles,
        }
        let one: C = toml::from_str(r#"data = "a.jsonl""#).unwrap();
        assert_eq!(one.data, DataFiles::from(PathBuf::from("a.jsonl")));
        assert_eq!(
            serde_json::to_value(&one).unwrap(),
            serde_json::json!({"data": "a.jsonl"})
        );
        let two: C = toml::from_str(r#"data = ["a.jsonl", "b.jsonl"]"#).unwrap();
        assert_eq!(two.data.to_string(), "a.jsonl + b.jsonl");
        assert_eq!(
            serde_json::to_value(&two).unwrap(),
            serde_json::json!({"data": ["a.jsonl", "b.jsonl"]})
        );
        let e = toml::from_str::<C>("data = 3").err().unwrap().to_string();
        assert!(e.contains("a file path or a list of file paths"), "{e}");
    }

    #[test]
    fn reads_both_demonstration_forms() {
        let f = write(concat!(
            "{\"prompt\":\"p\",\"response\":\"r\"}\n\n",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}]}\n"
        ));
        let d: Vec<Demonstration> = read_jsonl(f.path()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].messages()[1], Message::new("assistant", "r"));
        assert_eq!(d[1].messages()[0], Message::user("q"));
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let f = write("{\"prompt\":\"p\",\"response\":\"r\"}\n{\"prompt\":\"p\"}\n");
        let e = read_jsonl::<Demonstration>(f.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:2:", f.path().display())), "{e}");
        assert!(e.contains("prompt"), "{e}");

        let f = write("{\"prompt\":\"p\",\"responses\":[\"a\",\"b\"],\"ranking\":[0,0]}\n");
        let e = read_jsonl::<Ranking>(f.path()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("`ranking`"), "{e}");

        let f = write("{\"prompt\":\"p\",\"chosen\":\"a\"}\n");
        let e = read_rankings(f.path()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("rejected"), "{e}");

        let f = write("\n");
        assert!(matches!(
            read_jsonl::<Prompt>(f.path()),
            Err(RecordError::Empty { .. })
        ));
    }

    #[test]
    fn ranking_pairs_and_comparisons() {
        let r = Ranking {
            id: None,
            prompt: "p".into(),
            responses: vec!["a".into(), "b".into(), "c".into()],
            ranking: vec![2, 0, 1],
            kinds: None,
        };
        assert_eq!(r.pairs(), vec![(2, 0), (2, 1), (0, 1)]);
        let f = write("{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n");
        let r = read_rankings(f.path()).unwrap();
        assert_eq!(r[0].pairs(), vec![(0, 1)]);
        assert_eq!(r[0].responses, vec!["a", "b"]);
    }
}
