//! `distill teacher questions`: a deterministic question set from the man-page split.
//!
//! Every page yields one question per kind it has material for ([`QuestionKind`]); the
//! reference answer is the page's own text, trimmed to [`AnswerLimits`]. The phrasing of each
//! question, the candidates of each ranking and their order are chosen by a hash of the seed
//! and the question id, so the output depends on nothing but the inputs and the seed.
//!
//! Each ranking holds four answers, best first: the right one, the same page's answer to
//! another question (`same_page`), another page's answer to the same kind of question
//! (`other_page`, from the same split), and fluent off-topic text (`off_topic`: a run of
//! sentences of a State of the Union address of the same split, about as long as the right
//! answer). A question lacking a candidate has no ranking.

use super::QuestionKind;
use super::judge::{Facts, Term, key, terms};
use super::near_miss;
use super::page::{ManPage, collapse, join_lines, page_refs, sentences};
use crate::records::{
    Demonstration, Prompt, Ranking, Record, RecordError, read_jsonl, write_jsonl,
};
use distill_model::data::permutation;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Content words of a prose answer the judge checks, at most.
const RARE_WORDS: usize = 4;
/// A content word on more than this fraction of the kind's answers (and on at least two) is
/// boilerplate, not a fact.
const COMMON_FRACTION: f64 = 0.25;
/// Names, headers, errno names, options, flags or references the judge checks, at most.
const MAX_LISTED_FACTS: usize = 8;
/// Names of a page a NAME answer lists, at most.
const MAX_NAMES: usize = 3;
/// A DESCRIPTION answer needs at least this many words.
const MIN_DESCRIPTION_WORDS: usize = 10;
/// An off-topic answer has at least this many words.
const MIN_OFF_TOPIC_WORDS: usize = 12;

/// Words that carry no fact: English function words and man-page boilerplate.
pub(super) const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "all",
    "also",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "before",
    "being",
    "between",
    "both",
    "but",
    "by",
    "call",
    "called",
    "calls",
    "can",
    "case",
    "cases",
    "could",
    "describe",
    "described",
    "description",
    "do",
    "does",
    "done",
    "each",
    "either",
    "error",
    "errors",
    "errno",
    "except",
    "fail",
    "failed",
    "fails",
    "failure",
    "following",
    "for",
    "from",
    "function",
    "functions",
    "given",
    "has",
    "have",
    "how",
    "however",
    "if",
    "in",
    "indicate",
    "into",
    "is",
    "it",
    "its",
    "may",
    "more",
    "most",
    "must",
    "no",
    "not",
    "of",
    "on",
    "one",
    "only",
    "or",
    "other",
    "otherwise",
    "page",
    "pages",
    "return",
    "returned",
    "returns",
    "same",
    "see",
    "set",
    "should",
    "so",
    "some",
    "specified",
    "success",
    "successful",
    "successfully",
    "such",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "two",
    "under",
    "use",
    "used",
    "uses",
    "using",
    "value",
    "values",
    "via",
    "was",
    "were",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "will",
    "with",
    "without",
    "would",
];

/// How long a reference answer may be. With the defaults, the man-page train split's answers
/// are at most 99 SmolLM2 tokens (mean 41, 95th percentile 76; 2 of 5,880 above 96).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnswerLimits {
    /// Words per answer. Default 32.
    pub max_words: usize,
    /// Tokens per answer as [`estimate_tokens`] counts them. Default 40, so that an answer
    /// and its end of turn fit the 48 response tokens SFT, the reward model and PPO read.
    pub max_tokens: usize,
    /// Words of one entry's meaning in a list (errors, options, flags). Default 10.
    pub entry_words: usize,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        Self {
            max_words: 32,
            max_tokens: 40,
            entry_words: 10,
        }
    }
}

/// Everything `teacher questions` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuestionsConfig {
    /// Folder of the shared split: `manpages.{train,validation,test}.jsonl` (one `{"id",
    /// "text"}` page per line) and `sotu.{train,validation,test}.jsonl` (off-topic text).
    /// Default `assets/data`.
    pub manpages_dir: PathBuf,
    /// Output folder, replaced as a whole. Default `assets/questions`.
    pub out: PathBuf,
    /// Seed of the phrasing, candidate and order choices. Default 0.
    pub seed: u64,
    /// Answer lengths.
    pub limits: AnswerLimits,
}

impl Default for QuestionsConfig {
    fn default() -> Self {
        Self {
            manpages_dir: PathBuf::from("assets/data"),
            out: PathBuf::from("assets/questions"),
            seed: 0,
            limits: AnswerLimits::default(),
        }
    }
}

/// A part of the shared split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    /// 90% of the pages.
    Train,
    /// 5% of the pages.
    Validation,
    /// 5% of the pages.
    Test,
}

impl Split {
    /// The three splits.
    pub const ALL: [Split; 3] = [Self::Train, Self::Validation, Self::Test];

    /// `train`, `validation` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        }
    }
}

/// A line of a corpus file: `{"id", "text"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The document's id, e.g. `man2/close.2`.
    pub id: String,
    /// Its text.
    pub text: String,
}

impl Record for Document {
    fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("field `id`: empty".into());
        }
        Ok(())
    }
}

/// One split's input: its man pages and its off-topic documents.
#[derive(Debug, Clone)]
pub struct SplitInput {
    /// Which split.
    pub split: Split,
    /// The man pages.
    pub pages: Vec<Document>,
    /// Off-topic documents (fluent text of another domain).
    pub off_topic: Vec<String>,
}

/// A question with its reference answer and the judge's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// `<page id>#<kind>`.
    pub id: String,
    /// The question's kind.
    pub kind: QuestionKind,
    /// The page's name as the question gives it (`close`).
    pub name: String,
    /// The user's turn.
    pub prompt: String,
    /// The page's answer.
    pub answer: String,
    /// What the judge checks.
    pub facts: Facts,
}

/// The questions and rankings of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitQuestions {
    /// Which split.
    pub split: Split,
    /// Pages in the split.
    pub pages: usize,
    /// Questions, page by page in input order, kinds in [`QuestionKind::ALL`] order.
    pub questions: Vec<Question>,
    /// One ranking per question that has all four candidates.
    pub rankings: Vec<Ranking>,
    /// The right answers against their truncated and garbled copies
    /// ([`near_miss::near_misses`]).
    pub near_misses: Vec<Ranking>,
}

/// A corpus or output that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QuestionError {
    /// A corpus file is missing, unreadable or malformed.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// An answer before its facts are chosen.
struct Draft {
    kind: QuestionKind,
    answer: String,
    /// Facts named outright (names, headers, errno names, ...).
    listed: Vec<String>,
    /// Whether the answer's rarest content words are facts too.
    prose: bool,
}

/// Generates the questions and rankings of every split. Facts of prose answers use word
/// frequencies over all splits' answers of the same kind (text statistics, not labels).
pub fn generate(inputs: &[SplitInput], config: &QuestionsConfig) -> Vec<SplitQuestions> {
    let parsed: Vec<Vec<(ManPage, Vec<Draft>)>> = inputs
        .iter()
        .map(|input| {
            input
                .pages
                .iter()
                .map(|d| {
                    let page = ManPage::parse(&d.id, &d.text);
                    let drafts = drafts(&page, &config.limits);
                    (page, drafts)
                })
                .collect()
        })
        .collect();
    let frequencies = content_frequencies(parsed.iter().flatten().flat_map(|(_, d)| d));
    inputs
        .iter()
        .zip(&parsed)
        .map(|(input, pages)| {
            let mut questions = Vec::new();
            for ((page, drafts), doc) in pages.iter().zip(&input.pages) {
                let allowed = allowed_terms(page, &doc.text);
                for d in drafts {
                    questions.extend(question(page, d, &allowed, &frequencies, config.seed));
                }
            }
            let rankings = rankings(&questions, &input.off_topic, config);
            let near_misses = near_miss::near_misses(&questions, config.seed);
            SplitQuestions {
                split: input.split,
                pages: pages.len(),
                questions,
                rankings,
                near_misses,
            }
        })
        .collect()
}

/// The answers a page supports, one per kind.
fn drafts(page: &ManPage, limits: &AnswerLimits) -> Vec<Draft> {
    QuestionKind::ALL
        .iter()
        .filter_map(|&kind| draft(page, kind, limits))
        .collect()
}

/// The page's answer to a question of `kind` and its listed facts, if the page has the material.
fn draft(page: &ManPage, kind: QuestionKind, limits: &AnswerLimits) -> Option<Draft> {
    let names: Vec<&str> = page.names.iter().map(String::as_str).collect();
    let (answer, listed, prose) = match kind {
        QuestionKind::Name => {
            if page.summary.is_empty() {
                return None;
            }
            let shown = &names[..names.len().min(MAX_NAMES)];
            let head = end_sentence(&format!("{} - {}", shown.join(", "), page.summary));
            let mut parts = vec![head];
            if let Some(d) = page.section("DESCRIPTION") {
                parts.extend(d.prose_sentences().into_iter().take(1));
            }
            (fit(&parts, " ", limits)?, strings(shown), true)
        }
        QuestionKind::Synopsis => synopsis(page, limits)?,
        QuestionKind::ReturnValue => {
            let s = page.section("RETURN VALUE")?;
            (
                fit(&s.prose_sentences(), " ", limits)?,
                strings(&names),
                true,
            )
        }
        QuestionKind::Errors | QuestionKind::Options | QuestionKind::Flags => {
            tagged_list(page, kind, limits)?
        }
        QuestionKind::Description => {
            let s = page.section("DESCRIPTION")?;
            let rest: Vec<String> = s.prose_sentences().into_iter().skip(1).collect();
            let answer = fit(&rest, " ", limits)?;
            if answer.split_whitespace().count() < MIN_DESCRIPTION_WORDS {
                return None;
            }
            (answer, strings(&names), true)
        }
        QuestionKind::Section => {
            let name = page.name();
            let manual = if page.manual.is_empty() {
                String::new()
            } else {
                format!(" ({})", page.manual)
            };
            let answer = format!(
                "`{name}` is documented in section {s} of the manual{manual}; read it with `man {s} {name}`.",
                s = page.section
            );
            (answer, vec![name.to_string(), page.section.clone()], false)
        }
        QuestionKind::SeeAlso => {
            let s = page.section("SEE ALSO")?;
            let text: Vec<String> = s.paragraphs.iter().map(|p| join_lines(&p.lines)).collect();
            let refs: Vec<String> = page_refs(&text.join(" "))
                .into_iter()
                .map(|(n, sec)| format!("{n}({sec})"))
                .collect();
            let answer = fit(&refs, ", ", limits)?;
            let listed = page_refs(&answer).into_iter().map(|(n, _)| n).collect();
            (answer, listed, false)
        }
    };
    let present: HashSet<String> = terms(&answer).iter().map(|t| key(&t.text)).collect();
    let mut listed: Vec<String> = listed
        .into_iter()
        .filter(|f| present.contains(&key(f)))
        .collect();
    dedup_keys(&mut listed);
    listed.truncate(MAX_LISTED_FACTS);
    Some(Draft {
        kind,
        answer,
        listed,
        prose,
    })
}

/// SYNOPSIS up to its first sub-heading; facts: headers and declared functions, or a
/// command's names and options.
fn synopsis(page: &ManPage, limits: &AnswerLimits) -> Option<(String, Vec<String>, bool)> {
    let names: Vec<&str> = page.names.iter().map(String::as_str).collect();
    let s = page.section("SYNOPSIS")?;
    let lines: Vec<String> = s
        .leading_paragraphs()
        .flat_map(|p| p.lines.iter().map(|l| collapse(l)))
        .collect();
    let answer = fit(&lines, "\n", limits)?;
    let header_style = answer.contains("#include");
    let mut listed = Vec::new();
    for line in answer.lines() {
        let include = line.starts_with("#include");
        let fact = |t: &Term| {
            if include {
                t.text.starts_with('<')
            } else if header_style {
                t.call && t.is_distinctive()
            } else {
                names.contains(&t.text.as_str()) || is_option(t)
            }
        };
        listed.extend(terms(line).into_iter().filter(fact).map(|t| t.text));
    }
    Some((answer, listed, false))
}

/// Errors, options or flags, each with the first sentence of its meaning; facts: their names.
fn tagged_list(
    page: &ManPage,
    kind: QuestionKind,
    limits: &AnswerLimits,
) -> Option<(String, Vec<String>, bool)> {
    let (heading, tag_ok, least): (_, fn(&str) -> bool, _) = match kind {
        QuestionKind::Errors => ("ERRORS", is_errno, 1),
        QuestionKind::Options => ("OPTIONS", is_option_tag, 1),
        _ => ("DESCRIPTION", is_flag, 2),
    };
    let mut seen = HashSet::new();
    let entries: Vec<String> = page
        .section(heading)?
        .entries()
        .into_iter()
        .filter(|e| e.tag.split(", ").all(tag_ok) && seen.insert(e.tag.clone()))
        .map(|e| {
            let first = sentences(&e.text).into_iter().next().unwrap_or_default();
            format!(
                "{}: {}",
                e.tag,
                clip(&first, limits.entry_words, limits.max_tokens)
            )
        })
        .collect();
    if entries.len() < least {
        return None;
    }
    let answer = fit(&entries, "\n", limits)?;
    let listed = answer
        .lines()
        .filter_map(|l| l.split_once(": "))
        .flat_map(|(tag, _)| terms(tag))
        .filter(|t| kind != QuestionKind::Options || is_option(t))
        .map(|t| t.text)
        .collect();
    Some((answer, listed, false))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Keeps the first of items with the same compared form.
fn dedup_keys(items: &mut Vec<String>) {
    let mut seen = HashSet::new();
    items.retain(|f| seen.insert(key(f)));
}

fn is_option_tag(tag: &str) -> bool {
    tag.starts_with('-')
}

fn is_errno(tag: &str) -> bool {
    tag.len() > 2
        && tag.starts_with('E')
        && tag
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// `O_APPEND`, `MAP_SHARED`: upper case with an underscore.
fn is_flag(tag: &str) -> bool {
    tag.starts_with(|c: char| c.is_ascii_uppercase())
        && tag.contains('_')
        && !tag.ends_with('_')
        && tag
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn is_option(t: &Term) -> bool {
    t.text.starts_with('-') && t.is_distinctive()
}

pub(super) fn end_sentence(text: &str) -> String {
    if text.ends_with(['.', '!', '?']) {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

/// Whether `text` is within the limits.
fn fits(text: &str, limits: &AnswerLimits) -> bool {
    text.split_whitespace().count() <= limits.max_words
        && estimate_tokens(text) <= limits.max_tokens
}

/// The tokens a byte-level BPE (GPT-2 style pre-tokenizer, digits split) makes of `text`,
/// estimated without a vocabulary: a lower-case or mixed word is one token per 6 letters, an
/// upper-case one a token per 2 letters (`STAILQ` is `ST`, `A`, `IL`, `Q`), and every digit,
/// newline and other non-space character one token. On the man-page answers it is within
/// about 8 tokens of SmolLM2's count.
pub fn estimate_tokens(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let (mut n, mut i) = (0, 0);
    while i < chars.len() {
        if chars[i].is_alphabetic() {
            let run = chars[i..].iter().take_while(|c| c.is_alphabetic()).count();
            let upper = chars[i..i + run].iter().all(|c| c.is_uppercase());
            n += if upper {
                run.div_ceil(2)
            } else {
                1 + (run - 1) / 6
            };
            i += run;
        } else {
            n += usize::from(chars[i] == '\n' || !chars[i].is_whitespace());
            i += 1;
        }
    }
    n
}

/// Joins leading `parts` with `sep` while the result fits; when even the first does not fit,
/// the first clipped. `None` when there are no parts.
fn fit(parts: &[String], sep: &str, limits: &AnswerLimits) -> Option<String> {
    let parts: Vec<&String> = parts.iter().filter(|p| !p.trim().is_empty()).collect();
    let first = parts.first()?;
    let mut out = clip(first, limits.max_words, limits.max_tokens);
    for p in &parts[1..] {
        let next = format!("{out}{sep}{p}");
        if !fits(&next, limits) {
            break;
        }
        out = next;
    }
    Some(out)
}

/// `text` cut at a word boundary to `words` words and `tokens` estimated tokens, `...` marking
/// a cut.
fn clip(text: &str, words: usize, tokens: usize) -> String {
    let all: Vec<&str> = text.split_whitespace().collect();
    if all.len() <= words && estimate_tokens(text) <= tokens {
        return text.to_string();
    }
    let mut out = String::new();
    for w in all.iter().take(words) {
        // Three more tokens for the `...`.
        if estimate_tokens(&out) + estimate_tokens(w) + 3 > tokens {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    format!("{}...", out.trim_end_matches([',', ';', ':', '.']))
}

/// Content words of an answer, each once, as `(compared form, word as written)`: terms that
/// are not stopwords, with a letter and at least 3 characters, or numbers.
fn content_words(answer: &str) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    terms(answer)
        .into_iter()
        .filter(|t| {
            let lower = t.text.to_lowercase();
            let number = t
                .text
                .trim_start_matches('-')
                .chars()
                .all(|c| c.is_ascii_digit());
            (number || (t.text.chars().count() >= 3 && t.text.chars().any(char::is_alphabetic)))
                && !STOPWORDS.contains(&lower.as_str())
        })
        .map(|t| (key(&t.text), t.text))
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect()
}

/// The rarest content words of `answer` not already `listed`, at most [`RARE_WORDS`]: words
/// on more than [`COMMON_FRACTION`] of the kind's `n` answers (and on two or more) are left
/// out, unless nothing else would be a fact.
fn rare_words(
    answer: &str,
    listed: &[String],
    n: usize,
    df: &HashMap<String, usize>,
) -> Vec<String> {
    let listed: HashSet<String> = listed.iter().map(|f| key(f)).collect();
    let mut words: Vec<(usize, usize, String)> = content_words(answer)
        .into_iter()
        .filter(|(k, _)| !listed.contains(k))
        .enumerate()
        .map(|(i, (k, word))| (df.get(&k).copied().unwrap_or(0), i, word))
        .collect();
    words.sort();
    let common = |count: usize| count >= 2 && count as f64 > COMMON_FRACTION * n as f64;
    let rare: Vec<String> = words
        .iter()
        .filter(|(count, _, _)| !common(*count))
        .take(RARE_WORDS)
        .map(|(_, _, w)| w.clone())
        .collect();
    if rare.is_empty() && listed.is_empty() {
        words.into_iter().take(1).map(|(_, _, w)| w).collect()
    } else {
        rare
    }
}

/// Per kind: answers of that kind, and per content word the answers that hold it.
type Frequencies = HashMap<QuestionKind, (usize, HashMap<String, usize>)>;

fn content_frequencies<'a>(drafts: impl Iterator<Item = &'a Draft>) -> Frequencies {
    let mut out: Frequencies = HashMap::new();
    for d in drafts.filter(|d| d.prose) {
        let (n, df) = out.entry(d.kind).or_default();
        *n += 1;
        for (k, _) in content_words(&d.answer) {
            *df.entry(k).or_default() += 1;
        }
    }
    out
}

/// The page's distinctive terms (see [`Term::is_distinctive`]) and its names.
fn allowed_terms(page: &ManPage, text: &str) -> Vec<String> {
    let mut out: Vec<String> = page.names.clone();
    out.extend(
        terms(text)
            .into_iter()
            .filter(Term::is_distinctive)
            .map(|t| t.text),
    );
    dedup_keys(&mut out);
    out.sort();
    out
}

fn question(
    page: &ManPage,
    d: &Draft,
    allowed: &[String],
    frequencies: &Frequencies,
    seed: u64,
) -> Option<Question> {
    let id = format!("{}#{}", page.id, d.kind);
    let mut facts = d.listed.clone();
    if d.prose {
        let (n, df) = &frequencies[&d.kind];
        let rare = rare_words(&d.answer, &facts, *n, df);
        facts.extend(rare);
    }
    if facts.is_empty() {
        return None;
    }
    let templates = templates(d.kind, page, &d.answer);
    let template = templates[pick(seed, &[&id, "phrasing"], templates.len())];
    let prompt = template.replace("{s}", &subject(page));
    Some(Question {
        facts: Facts {
            id: id.clone(),
            page: page.id.clone(),
            kind: d.kind,
            facts,
            allowed: allowed.to_vec(),
            reference_words: d.answer.split_whitespace().count(),
        },
        id,
        kind: d.kind,
        name: page.name().to_string(),
        prompt,
        answer: d.answer.clone(),
    })
}

/// What the page documents, as questions name it: "the `close` system call".
fn subject(page: &ManPage) -> String {
    let name = page.name();
    let what = if page.section.ends_with("type") {
        "type"
    } else {
        match page.section.chars().next() {
            Some('1' | '6') => "command",
            Some('8') => "administration command",
            Some('2') => "system call",
            Some('3') => "library function",
            Some('4') => "device",
            Some('5') => "file format",
            _ => return format!("the `{name}({})` manual page", page.section),
        }
    };
    format!("the `{name}` {what}")
}

/// Phrasings of a question; `{s}` stands for the [`subject`].
fn templates(kind: QuestionKind, page: &ManPage, answer: &str) -> &'static [&'static str] {
    let acts = matches!(page.section.as_str(), "1" | "2" | "3" | "6" | "8");
    match kind {
        QuestionKind::Name if acts => &[
            "What does {s} do?",
            "What is {s} used for?",
            "In a sentence or two, what does {s} do?",
            "Briefly explain the purpose of {s}.",
        ],
        QuestionKind::Name => &[
            "What does {s} describe?",
            "What is {s} about?",
            "Briefly, what does {s} cover?",
            "Summarize what {s} is about.",
        ],
        QuestionKind::Synopsis if answer.contains("#include") => &[
            "Which header declares {s}, and what is its signature?",
            "What do I #include to use {s}, and how is it declared?",
            "Show the synopsis of {s}: its header and declaration.",
            "Give the header and the C declaration of {s}.",
        ],
        QuestionKind::Synopsis => &[
            "What is the synopsis of {s}?",
            "How is {s} invoked?",
            "Show the usage line of {s}.",
        ],
        QuestionKind::ReturnValue => &[
            "What does {s} return?",
            "What is the return value of {s}?",
            "What does {s} return on success and on failure?",
            "Describe the return value of {s}.",
        ],
        QuestionKind::Errors => &[
            "Which errors can {s} fail with?",
            "List the errno values {s} can set, and what each means.",
            "What error codes does {s} report, and when?",
            "Which errors does the manual list for {s}?",
        ],
        QuestionKind::Options => &[
            "Which options does {s} accept?",
            "List the command-line options of {s} and what they do.",
            "What options can be passed to {s}?",
        ],
        QuestionKind::Flags => &[
            "Which flags does {s} take, and what does each do?",
            "List the flag constants documented for {s}.",
            "What do the flags of {s} mean?",
        ],
        QuestionKind::Description => &[
            "Describe in more detail how {s} works.",
            "What else does the manual say about {s}?",
            "Explain {s} beyond its one-line summary.",
            "Give more detail about {s}.",
        ],
        QuestionKind::Section => &[
            "In which section of the manual is {s} documented?",
            "Which manual section covers {s}, and how do I open it?",
            "Where in the manual do I find {s}?",
        ],
        QuestionKind::SeeAlso => &[
            "Which related manual pages does {s} refer to?",
            "What pages does the manual list under SEE ALSO for {s}?",
            "Which other man pages are related to {s}?",
        ],
    }
}

/// FNV-1a of the seed and `parts`, finished with splitmix64: a stable 64-bit hash.
pub(super) fn hash(seed: u64, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&seed.to_le_bytes());
    for p in parts {
        eat(p.as_bytes());
        eat(&[0xff]);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An index below `n` chosen by [`hash`].
pub(super) fn pick(seed: u64, parts: &[&str], n: usize) -> usize {
    (hash(seed, parts) % n as u64) as usize
}

/// Labels of a ranking's candidates, best first.
pub const CANDIDATE_KINDS: [&str; 4] = ["right", "same_page", "other_page", "off_topic"];

fn rankings(
    questions: &[Question],
    off_topic: &[String],
    config: &QuestionsConfig,
) -> Vec<Ranking> {
    let seed = config.seed;
    let off_topic: Vec<Vec<String>> = off_topic
        .iter()
        .map(|d| sentences(d))
        .filter(|s| !s.is_empty())
        .collect();
    let mut by_page: HashMap<&str, Vec<&Question>> = HashMap::new();
    let mut by_kind: HashMap<QuestionKind, Vec<&Question>> = HashMap::new();
    for q in questions {
        by_page.entry(&q.facts.page).or_default().push(q);
        by_kind.entry(q.kind).or_default().push(q);
    }
    let choose = |pool: &[&Question], q: &Question, salt: &str| -> Option<String> {
        let pool: Vec<&&Question> = pool.iter().filter(|c| c.answer != q.answer).collect();
        (!pool.is_empty()).then(|| pool[pick(seed, &[&q.id, salt], pool.len())].answer.clone())
    };
    let mut out = Vec::new();
    for q in questions {
        let same = by_page[q.facts.page.as_str()]
            .iter()
            .copied()
            .filter(|c| c.kind != q.kind)
            .collect::<Vec<_>>();
        let other = by_kind[&q.kind]
            .iter()
            .copied()
            .filter(|c| c.facts.page != q.facts.page)
            .collect::<Vec<_>>();
        let (Some(same), Some(other), Some(off)) = (
            choose(&same, q, "same_page"),
            choose(&other, q, "other_page"),
            off_topic_answer(&off_topic, q, config),
        ) else {
            continue;
        };
        let candidates = [q.answer.clone(), same, other, off];
        let order = permutation(candidates.len(), hash(seed, &[&q.id, "order"]));
        // order[slot] is the candidate shown in that slot.
        let mut ranking = vec![0; candidates.len()];
        for (slot, &c) in order.iter().enumerate() {
            ranking[c] = slot;
        }
        out.push(Ranking {
            id: Some(q.id.clone()),
            prompt: q.prompt.clone(),
            responses: order.iter().map(|&c| candidates[c].clone()).collect(),
            ranking,
            kinds: Some(
                order
                    .iter()
                    .map(|&c| CANDIDATE_KINDS[c].to_string())
                    .collect(),
            ),
        });
    }
    out
}

/// A run of sentences of an off-topic document, about as long as the right answer.
fn off_topic_answer(
    docs: &[Vec<String>],
    q: &Question,
    config: &QuestionsConfig,
) -> Option<String> {
    if docs.is_empty() {
        return None;
    }
    let limits = &config.limits;
    let doc = &docs[pick(config.seed, &[&q.id, "off_topic"], docs.len())];
    let start = pick(config.seed, &[&q.id, "off_topic_start"], doc.len());
    let target = q
        .answer
        .split_whitespace()
        .count()
        .clamp(MIN_OFF_TOPIC_WORDS, limits.max_words);
    let mut words = 0;
    let run: Vec<String> = doc
        .iter()
        .cycle()
        .skip(start)
        .take(doc.len())
        .take_while(|s| {
            let before = words;
            words += s.split_whitespace().count();
            before < target
        })
        .cloned()
        .collect();
    fit(&run, " ", limits)
}

/// An input file and its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// The file's path as given.
    pub file: String,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// Counts of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    /// Pages in the split.
    pub pages: usize,
    /// Pages with at least one question.
    pub pages_with_questions: usize,
    /// Questions (prompts).
    pub prompts: usize,
    /// Rankings (questions with all four candidates).
    pub rankings: usize,
    /// Near misses (rankings of two: the right answer over its truncated or garbled copy).
    #[serde(default)]
    pub near_misses: usize,
    /// Questions per kind.
    pub prompts_by_kind: BTreeMap<String, usize>,
    /// Rankings per kind.
    pub rankings_by_kind: BTreeMap<String, usize>,
}

/// What `teacher questions` wrote: `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionsSummary {
    /// The seed of the choices.
    pub seed: u64,
    /// Answer lengths.
    pub limits: AnswerLimits,
    /// The corpus files read, with their hashes.
    pub inputs: Vec<InputFile>,
    /// Counts per split (`train`, `validation`, `test`).
    pub splits: BTreeMap<String, SplitSummary>,
    /// Records per output file.
    pub files: BTreeMap<String, usize>,
}

impl std::fmt::Display for QuestionsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = QuestionKind::ALL.iter().map(|k| k.as_str()).collect();
        write!(
            f,
            "{:<11} {:>6} {:>8} {:>9}",
            "split", "pages", "prompts", "rankings"
        )?;
        for k in &kinds {
            write!(f, " {k:>12}")?;
        }
        writeln!(f)?;
        for split in Split::ALL {
            let Some(s) = self.splits.get(split.as_str()) else {
                continue;
            };
            write!(
                f,
                "{:<11} {:>6} {:>8} {:>9}",
                split.as_str(),
                s.pages,
                s.prompts,
                s.rankings
            )?;
            for k in &kinds {
                let p = s.prompts_by_kind.get(*k).copied().unwrap_or(0);
                let r = s.rankings_by_kind.get(*k).copied().unwrap_or(0);
                write!(f, " {:>12}", format!("{p}/{r}"))?;
            }
            writeln!(f)?;
        }
        write!(f, "(per kind: prompts/rankings)")?;
        for (file, n) in &self.files {
            write!(f, "\n{file:<26} {n} records")?;
        }
        Ok(())
    }
}

/// Reads the split from `config.manpages_dir`, generates, and writes `config.out`.
pub fn run(config: &QuestionsConfig) -> Result<QuestionsSummary, QuestionError> {
    let mut inputs = Vec::new();
    let mut files = Vec::new();
    for split in Split::ALL {
        let pages_path = config
            .manpages_dir
            .join(format!("manpages.{}.jsonl", split.as_str()));
        let sotu_path = config
            .manpages_dir
            .join(format!("sotu.{}.jsonl", split.as_str()));
        let pages = read_jsonl::<Document>(&pages_path)?;
        let off_topic = read_jsonl::<Document>(&sotu_path)?
            .into_iter()
            .map(|d| d.text)
            .collect();
        for path in [&pages_path, &sotu_path] {
            files.push(InputFile {
                file: path.display().to_string(),
                sha256: sha256_file(path)?,
            });
        }
        inputs.push(SplitInput {
            split,
            pages,
            off_topic,
        });
    }
    let sets = generate(&inputs, config);
    let summary = summarize(&sets, files, config);
    write_set(&config.out, &sets, &summary)?;
    tracing::info!(out = %config.out.display(), "question set written");
    Ok(summary)
}

fn sha256_file(path: &Path) -> Result<String, QuestionError> {
    let bytes = std::fs::read(path).map_err(|source| QuestionError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Counts per split and kind, and records per output file.
pub fn summarize(
    sets: &[SplitQuestions],
    inputs: Vec<InputFile>,
    config: &QuestionsConfig,
) -> QuestionsSummary {
    let mut splits = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut facts = 0;
    for s in sets {
        let mut prompts_by_kind = BTreeMap::new();
        for q in &s.questions {
            *prompts_by_kind.entry(q.kind.to_string()).or_insert(0) += 1;
        }
        let mut rankings_by_kind = BTreeMap::new();
        for r in &s.rankings {
            let kind =
                r.id.as_deref()
                    .and_then(|id| id.rsplit_once('#'))
                    .map_or("", |(_, k)| k);
            *rankings_by_kind.entry(kind.to_string()).or_insert(0) += 1;
        }
        let pages: HashSet<&str> = s.questions.iter().map(|q| q.facts.page.as_str()).collect();
        splits.insert(
            s.split.as_str().to_string(),
            SplitSummary {
                pages: s.pages,
                pages_with_questions: pages.len(),
                prompts: s.questions.len(),
                rankings: s.rankings.len(),
                near_misses: s.near_misses.len(),
                prompts_by_kind,
                rankings_by_kind,
            },
        );
        facts += s.questions.len();
        files.insert(
            format!("rankings.{}.jsonl", s.split.as_str()),
            s.rankings.len(),
        );
        files.insert(
            format!("near_misses.{}.jsonl", s.split.as_str()),
            s.near_misses.len(),
        );
        match s.split {
            Split::Train => {
                files.insert("sft.jsonl".into(), s.questions.len());
                files.insert("prompts.train.jsonl".into(), s.questions.len());
            }
            Split::Test => {
                files.insert("prompts.test.jsonl".into(), s.questions.len());
            }
            Split::Validation => {
                files.insert("prompts.validation.jsonl".into(), s.questions.len());
            }
        }
    }
    files.insert("facts.jsonl".into(), facts);
    QuestionsSummary {
        seed: config.seed,
        limits: config.limits,
        inputs,
        splits,
        files,
    }
}

/// Writes the output folder: every file into a fresh sibling folder, which then replaces `out`.
pub fn write_set(
    out: &Path,
    sets: &[SplitQuestions],
    summary: &QuestionsSummary,
) -> Result<(), QuestionError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source: std::io::Error| QuestionError::Io { path, source }
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = out
        .file_name()
        .map_or("questions".into(), |n| n.to_string_lossy().into_owned());
    let staged = parent.join(format!(".{name}.partial"));
    if staged.exists() {
        std::fs::remove_dir_all(&staged).map_err(io(&staged))?;
    }
    std::fs::create_dir_all(&staged).map_err(io(&staged))?;
    let split = |s: Split| sets.iter().find(|x| x.split == s);
    let prompts = |s: Split| -> Vec<Prompt> {
        split(s).map_or(Vec::new(), |x| {
            x.questions
                .iter()
                .map(|q| Prompt {
                    id: Some(q.id.clone()),
                    prompt: q.prompt.clone(),
                })
                .collect()
        })
    };
    let demonstrations: Vec<Demonstration> = split(Split::Train).map_or(Vec::new(), |x| {
        x.questions
            .iter()
            .map(|q| Demonstration::Pair {
                prompt: q.prompt.clone(),
                response: q.answer.clone(),
            })
            .collect()
    });
    let facts: Vec<&Facts> = sets
        .iter()
        .flat_map(|s| s.questions.iter().map(|q| &q.facts))
        .collect();
    let write = |file: &str, result: std::io::Result<()>| result.map_err(io(&staged.join(file)));
    write(
        "sft.jsonl",
        write_jsonl(&staged.join("sft.jsonl"), &demonstrations),
    )?;
    for s in sets {
        let file = format!("rankings.{}.jsonl", s.split.as_str());
        write(&file, write_jsonl(&staged.join(&file), &s.rankings))?;
        let file = format!("near_misses.{}.jsonl", s.split.as_str());
        write(&file, write_jsonl(&staged.join(&file), &s.near_misses))?;
    }
    write(
        "prompts.train.jsonl",
        write_jsonl(&staged.join("prompts.train.jsonl"), &prompts(Split::Train)),
    )?;
    write(
        "prompts.test.jsonl",
        write_jsonl(&staged.join("prompts.test.jsonl"), &prompts(Split::Test)),
    )?;
    write(
        "prompts.validation.jsonl",
        write_jsonl(
            &staged.join("prompts.validation.jsonl"),
            &prompts(Split::Validation),
        ),
    )?;
    write(
        "facts.jsonl",
        write_jsonl(&staged.join("facts.jsonl"), &facts),
    )?;
    let summary_json =
        serde_json::to_value(summary).map_err(|e| io(&staged)(std::io::Error::other(e)))?;
    write(
        "summary.json",
        distill_model::fsutil::write_json_atomic(&staged.join("summary.json"), &summary_json),
    )?;
    if out.exists() {
        let old = parent.join(format!(".{name}.old"));
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(out, &old).map_err(io(out))?;
        std::fs::rename(&staged, out).map_err(io(out))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&staged, out).map_err(io(out))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::questions::judge::GoldJudge;
    use crate::questions::page::tests::FROB;
    use crate::records::read_rankings;

    /// A second synthetic library page (written for these tests).
    const BLORP: &str = "\
blorp_open(3)             Library Functions Manual             blorp_open(3)

NAME
       blorp_open - open a blorp archive for reading

SYNOPSIS
       #include <blorp.h>

       BLORP *blorp_open(const char *path);

DESCRIPTION
       blorp_open() opens the archive at path.  The archive's index is read
       eagerly, so later lookups need no disk access.

RETURN VALUE
       On success, blorp_open() returns a handle for the archive.  On error,
       NULL is returned, and errno is set to indicate the error.

ERRORS
       ENOENT path does not exist.

       ENOMEM The index does not fit in memory.

SEE ALSO
       blorp_close(3)

Blorp 2.1                        2024-02-02                  blorp_open(3)
";

    /// A synthetic command page (written for these tests).
    const ZAPCTL: &str = "\
zapctl(1)                 General Commands Manual                 zapctl(1)

NAME
       zapctl - control the zapper daemon

SYNOPSIS
       zapctl [-v] [--socket path] command

DESCRIPTION
       zapctl sends one command to a running zapper daemon.  It prints the
       daemon's reply and exits.

OPTIONS
       -v     Print each message exchanged with the daemon.

       --socket path
              Talk to the daemon through the socket at path.

SEE ALSO
       zapperd(8)

Zap 0.3                          2024-03-03                      zapctl(1)
";

    /// Off-topic prose (written for these tests).
    const OFF_TOPIC: &str = "The harvest festival drew visitors from every valley. Lanterns hung \
        from the old bridge. Musicians played until the river mist rose. Nobody remembered a \
        warmer autumn evening. The bakers sold out of plum cakes before dusk.";

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            text: text.into(),
        }
    }

    fn pages() -> Vec<Document> {
        vec![
            doc("man2/frob_widget.2", FROB),
            doc("man3/blorp_open.3", BLORP),
            doc("man1/zapctl.1", ZAPCTL),
        ]
    }

    /// The three pages as the train split.
    fn train() -> SplitQuestions {
        let input = SplitInput {
            split: Split::Train,
            pages: pages(),
            off_topic: vec![OFF_TOPIC.into()],
        };
        generate(&[input], &QuestionsConfig::default()).remove(0)
    }

    fn find<'a>(set: &'a SplitQuestions, id: &str) -> &'a Question {
        set.questions.iter().find(|q| q.id == id).unwrap()
    }

    #[test]
    fn questions_follow_the_page_sections() {
        let train = &train();
        let kinds: Vec<QuestionKind> = train
            .questions
            .iter()
            .filter(|q| q.facts.page == "man2/frob_widget.2")
            .map(|q| q.kind)
            .collect();
        assert_eq!(kinds, QuestionKind::ALL);

        let q = find(train, "man2/frob_widget.2#name");
        assert_eq!(
            q.answer,
            "frob_widget, frob_widgets - rearrange the widgets of a gizmo pool. frob_widget() \
             rearranges up to count widgets of the gizmo pool pool in place."
        );
        assert!(
            q.prompt.contains("the `frob_widget` system call"),
            "{}",
            q.prompt
        );
        let q = find(train, "man2/frob_widget.2#synopsis");
        assert_eq!(
            q.answer,
            "#include <gizmo/widget.h>\nint frob_widget(int pool, unsigned int count,\nint flags);"
        );
        assert_eq!(q.facts.facts, ["<gizmo/widget.h>", "frob_widget"]);
        let q = find(train, "man2/frob_widget.2#errors");
        assert_eq!(
            q.answer,
            "EBADF: pool is not a valid gizmo pool descriptor.\nEBUSY: Another thread is frobbing \
             the same pool; see gizmo(7)."
        );
        // The third entry would pass the 40 estimated tokens of an answer.
        assert_eq!(q.facts.facts, ["EBADF", "EBUSY"]);
        let q = find(train, "man2/frob_widget.2#flags");
        assert_eq!(q.facts.facts, ["FROB_SHUFFLE", "FROB_SORT_DESC"]);
        let q = find(train, "man1/zapctl.1#options");
        assert_eq!(q.facts.facts, ["-v", "--socket"]);
        assert!(
            find(train, "man1/zapctl.1#synopsis")
                .prompt
                .contains("command")
        );
        let q = find(train, "man2/frob_widget.2#section");
        assert_eq!(
            q.answer,
            "`frob_widget` is documented in section 2 of the manual (System Calls Manual); read \
             it with `man 2 frob_widget`."
        );
        let q = find(train, "man2/frob_widget.2#return_value");
        assert_eq!(
            q.facts.facts,
            ["frob_widget", "number", "widgets", "moved", "less"]
        );
        for q in &train.questions {
            assert!(fits(&q.answer, &AnswerLimits::default()), "{}", q.answer);
            assert!(q.prompt.split_whitespace().count() <= 20, "{}", q.prompt);
        }
    }

    #[test]
    fn token_estimate_counts_words_caps_digits_and_symbols() {
        // "open" 1, "STAILQ" 3, "_" 1, "HEAD" 2, "(" 1, "42" 2, ")" 1, "\n" 1, "descriptors" 2.
        assert_eq!(estimate_tokens("open STAILQ_HEAD(42)\ndescriptors"), 14);
        let limits = AnswerLimits {
            max_words: 100,
            max_tokens: 10,
            entry_words: 16,
        };
        let clipped = clip(&"word ".repeat(20), 100, 10);
        assert_eq!(clipped, "word word word word word word word...");
        assert!(fits(&clipped, &limits));
    }

    #[test]
    fn rare_words_leave_out_boilerplate() {
        let df: HashMap<String, usize> = [("zero", 8), ("pool", 1), ("size", 3)]
            .into_iter()
            .map(|(w, n)| (w.to_string(), n))
            .collect();
        let answer = "frob returns zero or the pool size";
        assert_eq!(rare_words(answer, &["frob".into()], 10, &df), ["pool"]);
        // With nothing else to check, the rarest word is kept even if common.
        assert_eq!(rare_words("zero size", &[], 10, &df), ["size"]);
        assert!(rare_words("zero size", &["frob".into()], 10, &df).is_empty());
    }

    #[test]
    fn rankings_hold_the_four_candidates_best_first() {
        let train = &train();
        // FROB alone has flags: no other page's flags to rank against.
        let ids: Vec<&str> = train
            .rankings
            .iter()
            .filter_map(|r| r.id.as_deref())
            .collect();
        assert!(!ids.contains(&"man2/frob_widget.2#flags"));
        assert!(ids.contains(&"man1/zapctl.1#options"), "{ids:?}");
        let off_topic = sentences(OFF_TOPIC);
        for r in &train.rankings {
            let id = r.id.as_deref().unwrap();
            let q = find(train, id);
            let kinds = r.kinds.as_ref().unwrap();
            let by_rank: Vec<&str> = r.ranking.iter().map(|&i| kinds[i].as_str()).collect();
            assert_eq!(by_rank, CANDIDATE_KINDS, "{id}");
            assert_eq!(r.responses[r.ranking[0]], q.answer);
            assert_eq!(r.prompt, q.prompt);
            let off = &r.responses[r.ranking[3]];
            assert!(
                sentences(off).iter().all(|s| off_topic.contains(s)),
                "{off}"
            );
            assert!(
                off.split_whitespace().count() >= MIN_OFF_TOPIC_WORDS,
                "{off}"
            );
            let page = &q.facts.page;
            let same = &r.responses[r.ranking[1]];
            assert!(
                train
                    .questions
                    .iter()
                    .any(|o| &o.facts.page == page && o.kind != q.kind && &o.answer == same)
            );
            let other = &r.responses[r.ranking[2]];
            assert!(
                train
                    .questions
                    .iter()
                    .any(|o| &o.facts.page != page && o.kind == q.kind && &o.answer == other)
            );
        }
        // The order of the candidates varies between rankings.
        let slots: HashSet<usize> = train.rankings.iter().map(|r| r.ranking[0]).collect();
        assert!(slots.len() > 1);
    }

    #[test]
    fn the_judge_prefers_the_page_over_boilerplate() {
        let train = train();
        let judge = GoldJudge::from_facts(train.questions.iter().map(|q| q.facts.clone()));
        let generic = "On success, zero is returned. On error, -1 is returned, and errno is set to \
                       indicate the error.";
        for kind in ["errors", "return_value"] {
            let q = find(&train, &format!("man2/frob_widget.2#{kind}"));
            let right = judge.score(&q.id, &q.answer).unwrap();
            let boiler = judge.score(&q.id, generic).unwrap();
            assert!(right > 0.99, "{kind}: right answer {right}");
            assert!(boiler < 0.3, "{kind}: generic answer {boiler}");
        }
        // Another page's errors name errno values this page never mentions.
        let id = "man2/frob_widget.2#errors";
        let mixed =
            "EBADF: bad pool. EBUSY: busy. ENOSPC, EOVERFLOW: full. ENOENT, ENOMEM: missing.";
        let j = judge.judge(id, mixed).unwrap();
        assert_eq!((j.recall, j.foreign.len()), (1.0, 2));
        assert!((j.score - 4.0 / 6.0).abs() < 1e-12, "{}", j.score);
    }

    #[test]
    fn near_misses_put_the_right_answer_over_a_worse_copy_of_itself() {
        let train = train();
        let judge = GoldJudge::from_facts(train.questions.iter().map(|q| q.facts.clone()));
        let mut kinds_seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for r in &train.near_misses {
            let id = r.id.as_deref().unwrap();
            let q = find(&train, id);
            let kinds = r.kinds.as_ref().unwrap();
            let (best, worse) = (r.ranking[0], r.ranking[1]);
            assert_eq!(
                (kinds[best].as_str(), &r.responses[best]),
                ("right", &q.answer)
            );
            assert_eq!(r.prompt, q.prompt);
            let miss = &r.responses[worse];

            let (right, damaged) = (
                judge.score(id, &q.answer).unwrap(),
                judge.score(id, miss).unwrap(),
            );
            // Made without the judge, yet the judge never prefers the copy, and mostly
            // scores it lower (a truncation may keep every fact; a garbled name may not be
            // one).
            assert!(
                damaged <= right,
                "{id} {}: {miss:?} {damaged} vs {right}",
                kinds[worse]
            );
            let seen = kinds_seen.entry(kinds[worse].clone()).or_insert((0, 0));
            seen.0 += 1;
            seen.1 += usize::from(damaged < right);
            if kinds[worse] == "truncated" {
                assert!(q.answer.starts_with(miss.trim_end_matches('.')), "{miss:?}");
                let words = |s: &str| s.split_whitespace().count();
                assert!(2 * words(miss) <= words(&q.answer), "{miss:?}");
            }
        }
        assert_eq!(kinds_seen.len(), 2, "{kinds_seen:?}");
        for (kind, (made, lower)) in &kinds_seen {
            assert!(2 * lower > *made, "{kind}: {lower} of {made} scored lower");
        }
        // A garbled errors answer names another page's errno in place of one of its own.
        let r = train
            .near_misses
            .iter()
            .find(|r| {
                r.id.as_deref() == Some("man3/blorp_open.3#errors")
                    && r.kinds.as_ref().unwrap().contains(&"garbled".to_string())
            })
            .unwrap();
        let miss = &r.responses[r.ranking[1]];
        let j = judge.judge("man3/blorp_open.3#errors", miss).unwrap();
        assert_eq!((j.missing.len(), j.foreign.len()), (1, 1), "{miss:?}");
    }

    #[test]
    fn output_is_deterministic_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let line = |d: &Document| serde_json::to_string(d).unwrap() + "\n";
        let pages = pages();
        for split in Split::ALL {
            let text: String = pages.iter().map(line).collect();
            std::fs::write(
                data.join(format!("manpages.{}.jsonl", split.as_str())),
                text,
            )
            .unwrap();
            let sotu = line(&doc("sotu", OFF_TOPIC));
            std::fs::write(data.join(format!("sotu.{}.jsonl", split.as_str())), sotu).unwrap();
        }
        let mut outputs = Vec::new();
        for name in ["a", "b", "b"] {
            let config = QuestionsConfig {
                manpages_dir: data.clone(),
                out: dir.path().join(name),
                ..QuestionsConfig::default()
            };
            let summary = run(&config).unwrap();
            assert_eq!(summary.splits["test"].pages, 3);
            assert_eq!(summary.inputs.len(), 6);
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&config.out)
                .unwrap()
                .map(|e| e.unwrap())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap(),
                    )
                })
                .collect();
            files.sort();
            outputs.push(files);
        }
        let names: Vec<&str> = outputs[0].iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "facts.jsonl",
                "near_misses.test.jsonl",
                "near_misses.train.jsonl",
                "near_misses.validation.jsonl",
                "prompts.test.jsonl",
                "prompts.train.jsonl",
                "prompts.validation.jsonl",
                "rankings.test.jsonl",
                "rankings.train.jsonl",
                "rankings.validation.jsonl",
                "sft.jsonl",
                "summary.json"
            ]
        );
        assert_eq!(outputs[0], outputs[1], "same inputs, same bytes");
        assert_eq!(
            outputs[1], outputs[2],
            "rewriting a folder gives the same bytes"
        );
        // No staging folders are left behind.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");

        let out = dir.path().join("a");
        let sft: Vec<Demonstration> = read_jsonl(&out.join("sft.jsonl")).unwrap();
        let prompts: Vec<Prompt> = read_jsonl(&out.join("prompts.test.jsonl")).unwrap();
        assert_eq!(sft.len(), prompts.len());
        let rankings = read_rankings(&out.join("rankings.test.jsonl")).unwrap();
        let judge = GoldJudge::load(&out.join("facts.jsonl")).unwrap();
        // The same pages in every split: one set of ids.
        assert_eq!(judge.len(), prompts.len());
        let r = &rankings[0];
        let id = r.id.as_deref().unwrap();
        assert!(judge.score(id, &r.responses[r.ranking[0]]).unwrap() > 0.99);

        let config = QuestionsConfig {
            manpages_dir: dir.path().join("missing"),
            ..QuestionsConfig::default()
        };
        let e = run(&config).unwrap_err().to_string();
        assert!(
            e.contains("missing") && e.contains("manpages.train.jsonl"),
            "{e}"
        );
    }
}
