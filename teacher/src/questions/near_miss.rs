//! Near misses: the right answer against a damaged copy of itself, as rankings of two.
//!
//! The four-way rankings teach a reward model to tell the right answer from answers to other
//! questions; they never show it the right answer beside a worse version of itself. The full
//! recipe's reward model, trained on them alone, ranks the right answer above its own first
//! half in only 68% of the test pairs, and PPO against it learns to say less (the README's
//! "Full recipe"). Two kinds of damage, each made without the gold judge:
//!
//! - `truncated`: the answer's first half, cut at a line, sentence or word (trailing function
//!   words dropped and the sentence closed, so the cut does not show as a dangling end);
//! - `garbled`: one name, header, option, errno or flag of the answer (every occurrence)
//!   replaced by one of the same shape taken from another page's answer to the same kind of
//!   question, a term this page never mentions.

use super::QuestionKind;
use super::generate::{Question, STOPWORDS, end_sentence, hash, pick};
use super::judge::{Term, key, terms};
use super::page::sentences;
use crate::records::Ranking;
use distill_model::data::permutation;
use std::collections::{HashMap, HashSet};

/// Labels of a near miss's two answers, the better first; the second is `truncated` or
/// `garbled`.
pub const NEAR_MISS_KINDS: [&str; 3] = ["right", "truncated", "garbled"];

/// An answer needs at least this many words to be cut in half.
const MIN_TRUNCATE_WORDS: usize = 4;

/// One ranking of two per question and damage that applies to it (`truncated` first, then
/// `garbled`), the two answers in an order chosen by `seed` and the question id.
pub fn near_misses(questions: &[Question], seed: u64) -> Vec<Ranking> {
    let mut by_kind: HashMap<QuestionKind, Vec<&Question>> = HashMap::new();
    for q in questions {
        by_kind.entry(q.kind).or_default().push(q);
    }
    let mut out = Vec::new();
    for q in questions {
        let damaged = [
            (NEAR_MISS_KINDS[1], truncated(&q.answer)),
            (NEAR_MISS_KINDS[2], garbled(q, &by_kind[&q.kind], seed)),
        ];
        for (kind, miss) in damaged {
            let Some(miss) = miss.filter(|m| *m != q.answer) else {
                continue;
            };
            let order = permutation(2, hash(seed, &[&q.id, kind, "order"]));
            let candidates = [(q.answer.clone(), NEAR_MISS_KINDS[0]), (miss, kind)];
            let mut ranking = vec![0; 2];
            for (slot, &c) in order.iter().enumerate() {
                ranking[c] = slot;
            }
            out.push(Ranking {
                id: Some(q.id.clone()),
                prompt: q.prompt.clone(),
                responses: order.iter().map(|&c| candidates[c].0.clone()).collect(),
                ranking,
                kinds: Some(order.iter().map(|&c| candidates[c].1.to_string()).collect()),
            });
        }
    }
    out
}

/// The first half of `answer` by words: whole lines, else whole sentences, else words up to
/// the last full stop among them, with trailing function words and punctuation dropped and,
/// when the answer is prose (ends a sentence), the cut sentence closed. `None` for an answer
/// too short to halve.
pub fn truncated(answer: &str) -> Option<String> {
    let total = answer.split_whitespace().count();
    if total < MIN_TRUNCATE_WORDS {
        return None;
    }
    let half = total / 2;
    let (pieces, sep) = if answer.contains('\n') {
        (answer.lines().map(str::to_string).collect(), "\n")
    } else {
        (sentences(answer), " ")
    };
    let mut kept = Vec::new();
    let mut words = 0;
    for p in &pieces {
        words += p.split_whitespace().count();
        if words > half {
            break;
        }
        kept.push(p.as_str());
    }
    if !kept.is_empty() {
        return Some(kept.join(sep));
    }
    let mut cut: Vec<&str> = answer.split_whitespace().take(half).collect();
    // End at the last full stop inside the cut, when there is one after the first word.
    if let Some(stop) = cut.iter().rposition(|w| w.ends_with('.'))
        && stop > 0
    {
        cut.truncate(stop + 1);
    }
    let bare = |w: &str| {
        w.trim_matches(|c: char| !c.is_alphanumeric())
            .to_lowercase()
    };
    while cut.len() > 1 && {
        let last = bare(cut[cut.len() - 1]);
        last.is_empty() || STOPWORDS.contains(&last.as_str())
    } {
        cut.pop();
    }
    let mut text = cut.join(" ");
    // A parenthesis the cut leaves open goes, with what follows it.
    if text.matches('(').count() > text.matches(')').count()
        && let Some(open) = text.rfind('(')
        && open > 0
    {
        text.truncate(open);
    }
    let text = text.trim_end_matches([',', ';', ':', '.', '-', '(', '`', ' ']);
    let prose = answer.trim_end().ends_with(['.', '!', '?']);
    (!text.is_empty()).then(|| {
        if prose {
            end_sentence(text)
        } else {
            text.to_string()
        }
    })
}

/// What a term is, for swapping it with a term of the same kind.
#[derive(PartialEq, Eq)]
enum Shape {
    /// The page's own name.
    Name,
    /// `<header.h>`.
    Header,
    /// `-o`, `--output`.
    Option,
    /// `EINVAL`, `O_APPEND`.
    Caps,
    /// `close()`.
    Call,
}

fn shape(t: &Term, name: &str) -> Option<Shape> {
    if key(&t.text) == key(name) {
        return Some(Shape::Name);
    }
    if !t.is_distinctive() {
        return None;
    }
    Some(if t.text.starts_with('<') {
        Shape::Header
    } else if t.text.starts_with('-') {
        Shape::Option
    } else if t.call {
        Shape::Call
    } else {
        Shape::Caps
    })
}

/// `q`'s answer with one of its names or distinctive terms (chosen by `seed`) replaced, at
/// every whole-word occurrence, by a term of the same [`Shape`] from the answer of another
/// page in `same_kind`, one that `q`'s page never mentions. `None` when the answer has no
/// such term or no other page offers a replacement.
pub fn garbled(q: &Question, same_kind: &[&Question], seed: u64) -> Option<String> {
    let own = terms(&q.answer);
    let mut targets: Vec<(&Term, Shape)> = Vec::new();
    let mut seen = HashSet::new();
    for t in &own {
        if let Some(s) = shape(t, &q.name)
            && seen.insert(t.text.clone())
        {
            targets.push((t, s));
        }
    }
    if targets.is_empty() {
        return None;
    }
    let (target, want) = &targets[pick(seed, &[&q.id, "garble"], targets.len())];
    let allowed: HashSet<String> = q
        .facts
        .allowed
        .iter()
        .chain(&q.facts.facts)
        .map(|t| key(t))
        .collect();
    let others: Vec<&&Question> = same_kind
        .iter()
        .filter(|o| o.facts.page != q.facts.page)
        .collect();
    if others.is_empty() {
        return None;
    }
    let start = pick(seed, &[&q.id, "garble_source"], others.len());
    let replacement = (0..others.len())
        .map(|i| others[(start + i) % others.len()])
        .find_map(|o| {
            if *want == Shape::Name {
                return Some(o.name.clone()).filter(|n| !allowed.contains(&key(n)));
            }
            terms(&o.answer)
                .into_iter()
                .filter(|t| t.text != o.name && shape(t, &o.name).as_ref() == Some(want))
                .map(|t| t.text)
                .find(|t| !allowed.contains(&key(t)))
        })?;
    Some(replace_word(&q.answer, &target.text, &replacement))
}

/// `text` with every occurrence of `word` that stands alone (not inside a longer identifier)
/// replaced by `with`.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let inner = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(word) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + word.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(inner) || after.is_some_and(inner) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[at + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_first_half_at_a_boundary() {
        let list = "EBADF fd is not open.\nEINTR interrupted by a signal.\nEIO an I/O error.";
        assert_eq!(truncated(list).unwrap(), "EBADF fd is not open.");
        let prose = "The first sentence is here. The second one follows it. A third ends.";
        assert_eq!(truncated(prose).unwrap(), "The first sentence is here.");
        assert_eq!(
            truncated("memusagestat - generate graphic from memory profiling data.").unwrap(),
            "memusagestat - generate graphic."
        );
        assert_eq!(
            truncated("`frob` is documented in section 3 of the manual.").unwrap(),
            "`frob` is documented."
        );
        assert_eq!(
            truncated("zapctl - control the zapper daemon. zapctl sends one command to it.")
                .unwrap(),
            "zapctl - control the zapper daemon."
        );
        assert_eq!(
            truncated("zapctl [-v] [--socket path] command").unwrap(),
            "zapctl [-v]"
        );
        assert_eq!(
            truncated("A legacy sysfs call exists (whose use is set by a kernel option).").unwrap(),
            "A legacy sysfs call exists."
        );
        assert_eq!(truncated("frob(3)"), None);
    }

    #[test]
    fn words_are_replaced_only_where_they_stand_alone() {
        assert_eq!(
            replace_word("close() and fclose(); close_range, close.", "close", "open"),
            "open() and fclose(); close_range, open."
        );
        assert_eq!(
            replace_word("EBADF or EBADFD", "EBADF", "EIO"),
            "EIO or EBADFD"
        );
    }
}
