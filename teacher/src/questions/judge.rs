//! The gold judge: a programmatic score in [0, 1] of an answer to a man-page question, against
//! facts taken from that page's reference answer (`facts.jsonl`). It is the "gold" reward that
//! PPO is measured with, and is never trained on.
//!
//! An answer is read as terms (identifiers, numbers, `<headers.h>`, `-options`; plain words
//! lower-cased and a plural `s` dropped). Its score is `recall × precision × length`:
//! - **recall**: the fraction of the question's facts the answer names (the page's names,
//!   headers, errno names, option or flag names, referenced pages, and the rarest content words
//!   of a prose answer, so that boilerplate such as "On error, -1 is returned" earns little);
//! - **precision**: among the answer's distinctive terms (`<headers.h>`, `-options`,
//!   `ALL_CAPS` identifiers, `calls()`), the fraction that appear anywhere on the page; a term
//!   the page never mentions (another page's errno, header or function) counts against it;
//! - **length**: 1 up to twice the reference's length (at least 32 words), then falling as
//!   `budget / words`, so padding an answer with everything costs.

use super::QuestionKind;
use crate::records::{Record, RecordError, read_jsonl};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

/// Words per reference word an answer may use before the length factor falls below 1.
const LENGTH_SLACK: usize = 2;
/// The least word budget, for very short references.
const MIN_BUDGET_WORDS: usize = 32;

/// The judge's facts for one question: a line of `facts.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// The question id, `<page id>#<kind>`.
    pub id: String,
    /// The page id.
    pub page: String,
    /// The question's kind.
    pub kind: QuestionKind,
    /// What a right answer names, as written on the page.
    pub facts: Vec<String>,
    /// The page's distinctive terms (headers, options, `ALL_CAPS` identifiers, calls): naming
    /// one of these is never penalized.
    pub allowed: Vec<String>,
    /// Words in the reference answer.
    pub reference_words: usize,
}

impl Record for Facts {
    fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("field `id`: empty".into());
        }
        if self.facts.is_empty() {
            return Err("field `facts`: empty".into());
        }
        Ok(())
    }
}

/// A term of a text: a run of identifier characters, or a `<header.h>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The term as written, trailing punctuation removed.
    pub text: String,
    /// Whether `(` follows it directly (`close()`, `signal(7)`).
    pub call: bool,
}

impl Term {
    /// Whether the term is specific enough that naming it when the page does not is wrong: a
    /// header, an option, an `ALL_CAPS` identifier or a call.
    pub fn is_distinctive(&self) -> bool {
        let t = &self.text;
        let option = t.starts_with('-')
            && t[1..]
                .trim_start_matches('-')
                .starts_with(char::is_alphabetic);
        let caps = t.starts_with(|c: char| c.is_ascii_uppercase())
            && t.chars().filter(char::is_ascii_uppercase).count() >= 2
            && t.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        let call = self.call && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        t.starts_with('<') || option || caps || call
    }
}

/// The terms of `text`, in order.
pub fn terms(text: &str) -> Vec<Term> {
    let text = text.replace(['\u{2010}', '\u{2011}', '\u{2212}'], "-");
    let chars: Vec<char> = text.chars().collect();
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '+');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '<'
            && let Some(len) = chars[i + 1..].iter().take(48).position(|&c| c == '>')
            && len > 0
            && chars[i + 1..i + 1 + len].iter().all(|&c| word(c))
        {
            out.push(Term {
                text: chars[i..i + len + 2].iter().collect(),
                call: false,
            });
            i += len + 2;
            continue;
        }
        if !word(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && word(chars[i]) {
            i += 1;
        }
        let raw: String = chars[start..i].iter().collect();
        let lead_dash = raw.starts_with('-')
            && raw[1..]
                .trim_start_matches('-')
                .starts_with(char::is_alphanumeric);
        let trimmed = raw.trim_end_matches(['.', '-', '/', '+']);
        let trimmed = if lead_dash {
            trimmed
        } else {
            trimmed.trim_start_matches(['.', '-', '/', '+'])
        };
        if trimmed.chars().any(char::is_alphanumeric) {
            out.push(Term {
                text: trimmed.to_string(),
                call: chars.get(i) == Some(&'('),
            });
        }
    }
    out
}

/// The form terms are compared in: options, and identifiers with upper-case letters or `_`,
/// as written (`-T` is not `-t`); other words lower-cased with one plural `s` dropped.
pub fn key(term: &str) -> String {
    let option = term.starts_with('-') && term.chars().any(char::is_alphabetic);
    let exact = option
        || term.contains('_')
        || (term.chars().filter(char::is_ascii_uppercase).count() >= 2
            && !term.chars().any(char::is_lowercase));
    if exact {
        return term.to_string();
    }
    let lower = term.to_lowercase();
    match lower.strip_suffix('s') {
        Some(stem)
            if stem.len() >= 4 && !stem.ends_with('s') && stem.chars().all(char::is_alphabetic) =>
        {
            stem.to_string()
        }
        _ => lower,
    }
}

/// A judge's verdict on one answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// `recall × precision × length`, in [0, 1].
    pub score: f64,
    /// Fraction of the facts named.
    pub recall: f64,
    /// Fraction of the answer's distinctive terms that the page mentions (1 when it has none).
    pub precision: f64,
    /// 1, or less for an answer longer than its budget.
    pub length: f64,
    /// Facts the answer did not name.
    pub missing: Vec<String>,
    /// Distinctive terms of the answer that the page never mentions.
    pub foreign: Vec<String>,
}

/// A facts file that cannot be used, or a question it does not hold.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    /// The facts file could not be read.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// No facts for this question id.
    #[error("no facts for question `{0}`")]
    UnknownId(String),
}

/// One question's facts, in compared form.
#[derive(Debug, Clone)]
struct Keyed {
    facts: Vec<(String, String)>,
    allowed: HashSet<String>,
    budget: usize,
}

/// Scores answers against the facts of `facts.jsonl`.
#[derive(Debug, Clone)]
pub struct GoldJudge {
    by_id: HashMap<String, Keyed>,
}

impl GoldJudge {
    /// Reads `facts.jsonl`.
    pub fn load(path: &Path) -> Result<Self, JudgeError> {
        Ok(Self::from_facts(read_jsonl::<Facts>(path)?))
    }

    /// A judge over these facts.
    pub fn from_facts(facts: impl IntoIterator<Item = Facts>) -> Self {
        let by_id = facts
            .into_iter()
            .map(|f| {
                let keyed = Keyed {
                    facts: f.facts.iter().map(|t| (t.clone(), key(t))).collect(),
                    allowed: f.allowed.iter().chain(&f.facts).map(|t| key(t)).collect(),
                    budget: LENGTH_SLACK * f.reference_words.max(MIN_BUDGET_WORDS / LENGTH_SLACK),
                };
                (f.id, keyed)
            })
            .collect();
        Self { by_id }
    }

    /// Questions the judge knows.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the judge knows no question.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The score in [0, 1] of `answer` to question `id`.
    pub fn score(&self, id: &str, answer: &str) -> Result<f64, JudgeError> {
        Ok(self.judge(id, answer)?.score)
    }

    /// The score of `answer` to question `id` with its parts.
    pub fn judge(&self, id: &str, answer: &str) -> Result<Judgement, JudgeError> {
        let q = self
            .by_id
            .get(id)
            .ok_or_else(|| JudgeError::UnknownId(id.to_string()))?;
        let terms = terms(answer);
        let named: HashSet<String> = terms.iter().map(|t| key(&t.text)).collect();
        let missing: Vec<String> = q
            .facts
            .iter()
            .filter(|(_, k)| !named.contains(k))
            .map(|(t, _)| t.clone())
            .collect();
        let recall = 1.0 - missing.len() as f64 / q.facts.len().max(1) as f64;
        let distinctive: BTreeSet<String> = terms
            .iter()
            .filter(|t| t.is_distinctive())
            .map(|t| key(&t.text))
            .collect();
        let foreign: Vec<String> = distinctive
            .iter()
            .filter(|k| !q.allowed.contains(*k))
            .cloned()
            .collect();
        let precision = if distinctive.is_empty() {
            1.0
        } else {
            1.0 - foreign.len() as f64 / distinctive.len() as f64
        };
        let words = answer.split_whitespace().count();
        let length = if words > q.budget {
            q.budget as f64 / words as f64
        } else {
            1.0
        };
        Ok(Judgement {
            score: recall * precision * length,
            recall,
            precision,
            length,
            missing,
            foreign,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_find_headers_options_calls_and_numbers() {
        let t = terms(
            "Include <sys/types.h>; close() fails with EBADF, -1 or --dry-run (see signal(7)).",
        );
        let texts: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Include",
                "<sys/types.h>",
                "close",
                "fails",
                "with",
                "EBADF",
                "-1",
                "or",
                "--dry-run",
                "see",
                "signal",
                "7"
            ]
        );
        let distinctive: Vec<&str> = t
            .iter()
            .filter(|t| t.is_distinctive())
            .map(|t| t.text.as_str())
            .collect();
        assert_eq!(
            distinctive,
            ["<sys/types.h>", "close", "EBADF", "--dry-run", "signal"]
        );
        assert_eq!(key("Widgets"), "widget");
        assert_eq!(key("EBADF"), "EBADF");
        assert_eq!(key("O_CREAT"), "O_CREAT");
        assert_eq!(key("process"), "process");
        assert_ne!(key("-T"), key("-t"));
    }

    fn facts() -> Facts {
        Facts {
            id: "man2/x.2#errors".into(),
            page: "man2/x.2".into(),
            kind: QuestionKind::Errors,
            facts: vec!["EBADF".into(), "EINTR".into()],
            allowed: vec!["EBADF".into(), "EINTR".into(), "EIO".into(), "x".into()],
            reference_words: 20,
        }
    }

    #[test]
    fn recall_precision_and_length_combine() {
        let judge = GoldJudge::from_facts([facts()]);
        let id = "man2/x.2#errors";
        let j = judge
            .judge(id, "EBADF: bad fd. EINTR: interrupted.")
            .unwrap();
        assert_eq!(
            (j.recall, j.precision, j.length, j.score),
            (1.0, 1.0, 1.0, 1.0)
        );
        let j = judge.judge(id, "EBADF: bad fd.").unwrap();
        assert_eq!((j.recall, j.score), (0.5, 0.5));
        assert_eq!(j.missing, ["EINTR"]);
        // EIO is on the page: no penalty; ENOMEM and EACCES are not: two of four are foreign.
        let j = judge.judge(id, "EBADF, EINTR, ENOMEM, EACCES").unwrap();
        assert_eq!(j.foreign, ["EACCES", "ENOMEM"]);
        assert_eq!((j.recall, j.precision), (1.0, 0.5));
        let j = judge.judge(id, "EBADF, EINTR, EIO").unwrap();
        assert_eq!(j.precision, 1.0);
        let padded = format!("EBADF EINTR {}", "word ".repeat(78));
        let j = judge.judge(id, &padded).unwrap();
        assert!((j.length - 40.0 / 80.0).abs() < 1e-12, "{}", j.length);
        assert!(matches!(
            judge.score("nope", "x"),
            Err(JudgeError::UnknownId(_))
        ));
    }
}
