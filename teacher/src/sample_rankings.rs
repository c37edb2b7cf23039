//! `distill teacher rank-samples`: rankings of a policy's own sampled answers, the comparisons
//! InstructGPT's labelers made on the SFT model's outputs, so that the reward model learns the
//! answers PPO will show it rather than only constructed ones.
//!
//! The labeler ranks each prompt's sampled answers by their token F1 against the page's
//! reference answer (the right answer of a rankings file): the harmonic mean of the fractions
//! of the answer's and the reference's terms (as [`judge::terms`] splits them, compared in
//! [`judge::key`] form, counted with multiplicity) that the other holds. It is not the gold
//! judge: it knows no fact lists, does not penalize foreign terms and has no length budget.
//! Identical answers and answers the labeler ties with a better-ranked one are dropped (no
//! order to learn between them); a prompt left with fewer than two answers writes no ranking.
//!
//! The work goes chunk by chunk (`batch_size` prompts, every sample of them), each chunk's
//! rankings appended as one line to `OUT.partial`; a rerun with the same settings resumes
//! after the last whole line and writes what an uninterrupted run does.

use crate::ppo::rollout::sampling_config;
use crate::ppo::{chat_prompts, stop_tokens, stream_seed};
use crate::questions::judge::{self, key};
use crate::records::{self, Prompt, Ranking, RecordError};
use burn::prelude::*;
use distill_model::chat::{ChatError, ChatTemplate};
use distill_model::fsutil::write_atomic;
use distill_model::generate::generate_continuations;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything `teacher rank-samples` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleRankingsConfig {
    /// The policy that answers (HF directory or GGUF), usually the SFT model. Default none.
    pub policy: PathBuf,
    /// Prompts `{"id","prompt"}`. Default `assets/questions/prompts.train.jsonl`.
    pub prompts: PathBuf,
    /// Rankings whose first-ranked response is the right answer, one per prompt id. Default
    /// `assets/questions/rankings.train.jsonl`.
    pub references: PathBuf,
    /// Answers sampled per prompt at temperature 1. Default 4.
    pub samples: usize,
    /// Prompts used, a seeded choice kept in file order; 0 uses every prompt. Default 0.
    pub max_prompts: usize,
    /// Prompts longer than this many tokens (chat template applied) are skipped. Default 64.
    pub max_prompt_length: usize,
    /// Most tokens per answer. Default 48.
    pub max_new_tokens: usize,
    /// Prompts answered per forward, and per line of `OUT.partial`. Default 8.
    pub batch_size: usize,
    /// Seed of the prompt choice and the sampling. Default 0.
    pub seed: u64,
    /// The rankings file written. Default `runs/sample_rankings.jsonl`.
    pub out: PathBuf,
}

impl Default for SampleRankingsConfig {
    fn default() -> Self {
        Self {
            policy: PathBuf::new(),
            prompts: "assets/questions/prompts.train.jsonl".into(),
            references: "assets/questions/rankings.train.jsonl".into(),
            samples: 4,
            max_prompts: 0,
            max_prompt_length: 64,
            max_new_tokens: 48,
            batch_size: 8,
            seed: 0,
            out: "runs/sample_rankings.jsonl".into(),
        }
    }
}

impl SampleRankingsConfig {
    /// Reads a TOML file; unknown keys and bad values are errors naming the file and key.
    pub fn from_toml_file(path: &Path) -> Result<Self, String> {
        distill_model::fsutil::read_toml(path)
    }

    /// Checks the settings make sense; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.policy.as_os_str().is_empty() {
            return Err("policy: no model given".into());
        }
        if self.samples < 2 {
            return Err(format!(
                "samples = {}: at least 2 answers are needed to rank",
                self.samples
            ));
        }
        crate::at_least_one(&[
            ("max_prompt_length", self.max_prompt_length),
            ("max_new_tokens", self.max_new_tokens),
            ("batch_size", self.batch_size),
        ])
    }

    /// The unfinished output, resumed from.
    pub fn partial(&self) -> PathBuf {
        let mut name = self.out.clone().into_os_string();
        name.push(".partial");
        name.into()
    }
}

/// Why sampled rankings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SampleRankingsError {
    /// A bad setting, or prompts and references that do not fit together.
    #[error("{0}")]
    Config(String),
    /// The policy could not be loaded.
    #[error(transparent)]
    Load(#[from] distill_model::load::LoadError),
    /// A prompts or references file is unusable.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// The chat template cannot render a prompt.
    #[error(transparent)]
    Chat(#[from] ChatError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a run wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRankingsSummary {
    /// Prompts answered.
    pub prompts: usize,
    /// Rankings written (prompts with two or more distinct answers).
    pub rankings: usize,
    /// Mean answers per ranking.
    pub answers_per_ranking: f64,
    /// Mean labeler score of the first- and last-ranked answers.
    pub best_label: f64,
    pub worst_label: f64,
    /// Chunks found done in `OUT.partial` at the start.
    pub resumed_chunks: usize,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl std::fmt::Display for SampleRankingsSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} prompts answered, {} rankings of {:.2} answers on average; reference F1 of the \
             first-ranked answers {:.3}, of the last {:.3}; {:.0}s",
            self.prompts,
            self.rankings,
            self.answers_per_ranking,
            self.best_label,
            self.worst_label,
            self.seconds
        )
    }
}

/// Token F1 of `answer` against `reference`, in [0, 1]: terms compared in [`key`] form and
/// counted with multiplicity; 0 when either has no term.
pub fn reference_f1(answer: &str, reference: &str) -> f64 {
    let counts = |text: &str| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for t in judge::terms(text) {
            *m.entry(key(&t.text)).or_default() += 1;
        }
        m
    };
    let (a, r) = (counts(answer), counts(reference));
    let (na, nr) = (a.values().sum::<usize>(), r.values().sum::<usize>());
    let common: usize = a
        .iter()
        .map(|(k, &n)| n.min(r.get(k).copied().unwrap_or(0)))
        .sum();
    if common == 0 {
        return 0.0;
    }
    let (p, q) = (common as f64 / na as f64, common as f64 / nr as f64);
    2.0 * p * q / (p + q)
}

/// A ranking of `answers` by `labels`, best first: identical answers and answers whose label
/// ties a better one's are dropped; `None` when fewer than two are left. Returns the kept
/// answers (in their sampled order) and the ranking into them.
pub fn rank_by_label(answers: &[String], labels: &[f64]) -> Option<(Vec<String>, Vec<usize>)> {
    let mut order: Vec<usize> = (0..answers.len()).collect();
    order.sort_by(|&i, &j| labels[j].total_cmp(&labels[i]).then(i.cmp(&j)));
    let mut seen_text = HashSet::new();
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        let tie = kept.last().is_some_and(|&k| labels[k] == labels[i]);
        if !tie && seen_text.insert(answers[i].as_str()) {
            kept.push(i);
        }
    }
    if kept.len() < 2 {
        return None;
    }
    let mut sampled_order = kept.clone();
    sampled_order.sort_unstable();
    let position = |i: usize| sampled_order.iter().position(|&k| k == i).expect("kept");
    Some((
        sampled_order.iter().map(|&i| answers[i].clone()).collect(),
        kept.iter().map(|&i| position(i)).collect(),
    ))
}

/// The first line of `OUT.partial`: the settings it was made with.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    settings: SampleRankingsConfig,
}

/// One chunk's rankings, a line of `OUT.partial`.
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    chunk: usize,
    rankings: Vec<Ranking>,
}

/// The whole chunks of `OUT.partial` made with `config`'s settings; a torn last line is
/// dropped. Different settings are an error.
fn read_partial(config: &SampleRankingsConfig) -> Result<Vec<Chunk>, SampleRankingsError> {
    let path = config.partial();
    let io = |source| SampleRankingsError::Io {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut lines = std::io::BufReader::new(file).lines();
    let Some(first) = lines.next().transpose().map_err(io)? else {
        return Ok(Vec::new());
    };
    let made_with = serde_json::from_str::<Header>(&first)
        .ok()
        .map(|h| h.settings);
    if made_with.as_ref() != Some(config) {
        return Err(SampleRankingsError::Config(format!(
            "{}: made with other settings ({}); delete it to start over",
            path.display(),
            made_with.map_or("unreadable".into(), |s| format!("{s:?}"))
        )));
    }
    let mut chunks = Vec::new();
    for line in lines {
        match serde_json::from_str::<Chunk>(&line.map_err(io)?) {
            Ok(c) if c.chunk == chunks.len() => chunks.push(c),
            _ => break,
        }
    }
    Ok(chunks)
}

/// Samples `config.samples` answers to each chosen prompt with the policy on `device`, ranks
/// them by [`reference_f1`], and writes the rankings to `config.out` (atomically, at the end).
pub fn run(
    config: &SampleRankingsConfig,
    device: &Device,
) -> Result<SampleRankingsSummary, SampleRankingsError> {
    config.validate().map_err(SampleRankingsError::Config)?;
    let t0 = Instant::now();
    let references: HashMap<String, String> = records::read_jsonl::<Ranking>(&config.references)?
        .into_iter()
        .filter_map(|r| Some((r.id?, r.responses[r.ranking[0]].clone())))
        .collect();
    let mut records: Vec<Prompt> = records::read_jsonl(&config.prompts)?;
    for (i, p) in records.iter().enumerate() {
        if !p.id.as_ref().is_some_and(|id| references.contains_key(id)) {
            return Err(SampleRankingsError::Config(format!(
                "{}: prompt {} (id {:?}) has no ranking in {}",
                config.prompts.display(),
                i + 1,
                p.id,
                config.references.display()
            )));
        }
    }
    if config.max_prompts > 0 && config.max_prompts < records.len() {
        let mut chosen =
            distill_model::data::permutation(records.len(), stream_seed(config.seed, 7, 0, 0));
        chosen.truncate(config.max_prompts);
        chosen.sort_unstable();
        records = chosen.into_iter().map(|i| records[i].clone()).collect();
    }
    let policy = distill_model::load::load_model(&config.policy, device)?;
    let tokenizer = policy.tokenizer.clone().ok_or_else(|| {
        SampleRankingsError::Config(format!(
            "{}: no tokenizer.json next to the model",
            config.policy.display()
        ))
    })?;
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let (kept, prompts) = chat_prompts(
        records,
        &tokenizer,
        &template,
        config.max_prompt_length,
        &config.prompts,
    )?;
    let stops = stop_tokens(&policy, &tokenizer, &template);

    let mut chunks = read_partial(config)?;
    let resumed_chunks = chunks.len();
    let partial = config.partial();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SampleRankingsError::Io { path, source }
    };
    if let Some(dir) = partial.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // Rewrite what was read (dropping a torn line), then append chunk by chunk.
    let mut text = serde_json::to_string(&Header {
        settings: config.clone(),
    })
    .expect("settings serialize");
    text.push('\n');
    for c in &chunks {
        text.push_str(&serde_json::to_string(c).expect("chunk serializes"));
        text.push('\n');
    }
    write_atomic(&partial, |out| out.write_all(text.as_bytes())).map_err(io(&partial))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .map_err(io(&partial))?;

    let batch = config.batch_size;
    let total = prompts.len().div_ceil(batch);
    let bar = distill_model::train::step_bar(total, false);
    bar.set_message("sampled answers ranked");
    bar.set_position(resumed_chunks as u64);
    tracing::info!(
        "ranking {} sampled answers to each of {} prompts ({resumed_chunks} of {total} chunks \
         done before)",
        config.samples,
        prompts.len()
    );
    for c in resumed_chunks..total {
        let rows = c * batch..((c + 1) * batch).min(prompts.len());
        let mut answers: Vec<Vec<String>> = vec![Vec::new(); rows.len()];
        for s in 0..config.samples {
            let seed = stream_seed(config.seed, 8, c, s);
            let generate = sampling_config(config.max_new_tokens, &stops, seed);
            let sampled =
                generate_continuations(&policy.model, &prompts[rows.clone()], &generate, device);
            for (k, a) in sampled.iter().enumerate() {
                let text = tokenizer.decode(&a.tokens).unwrap_or_default();
                answers[k].push(text.trim().to_string());
            }
        }
        let mut chunk = Chunk {
            chunk: c,
            rankings: Vec::new(),
        };
        for (k, i) in rows.enumerate() {
            let id = kept[i].id.clone().expect("checked above");
            let reference = &references[&id];
            let labels: Vec<f64> = answers[k]
                .iter()
                .map(|a| reference_f1(a, reference))
                .collect();
            if let Some((responses, ranking)) = rank_by_label(&answers[k], &labels) {
                let n = responses.len();
                chunk.rankings.push(Ranking {
                    id: Some(id),
                    prompt: kept[i].prompt.clone(),
                    responses,
                    ranking,
                    kinds: Some(vec!["sampled".into(); n]),
                });
            }
        }
        let mut line = serde_json::to_string(&chunk).expect("chunk serializes");
        line.push('\n');
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(io(&partial))?;
        chunks.push(chunk);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let rankings: Vec<&Ranking> = chunks.iter().flat_map(|c| &c.rankings).collect();
    records::write_jsonl(&config.out, &rankings).map_err(io(&config.out))?;
    std::fs::remove_file(&partial).map_err(io(&partial))?;
    let n = rankings.len().max(1) as f64;
    // The labeler's score of each ranking's answer at `place` (0 the best, 1 the worst).
    let mean_label = |place: usize| {
        let at = |r: &Ranking| r.ranking[place * (r.ranking.len() - 1)];
        let label = |r: &&Ranking| {
            let reference = &references[r.id.as_ref().expect("written with an id")];
            reference_f1(&r.responses[at(r)], reference)
        };
        rankings.iter().map(label).sum::<f64>() / n
    };
    Ok(SampleRankingsSummary {
        prompts: prompts.len(),
        rankings: rankings.len(),
        answers_per_ranking: rankings.iter().map(|r| r.responses.len()).sum::<usize>() as f64 / n,
        best_label: mean_label(0),
        worst_label: mean_label(1),
        resumed_chunks,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_f1_counts_shared_terms_both_ways() {
        assert_eq!(reference_f1("close the file", "close the file"), 1.0);
        assert_eq!(reference_f1("nothing shared", "close the file"), 0.0);
        assert_eq!(reference_f1("", "close"), 0.0);
        // 2 of the answer's 4 terms, 2 of the reference's 3: F1 = 2·(1/2)·(2/3)/(1/2+2/3).
        let f = reference_f1("close files and exit", "closes the files");
        assert!((f - 4.0 / 7.0).abs() < 1e-12, "{f}");
        // Repeating a shared term does not raise recall past the reference's count.
        assert!(
            reference_f1("EBADF EBADF EBADF", "EBADF EINTR") < reference_f1("EBADF", "EBADF EINTR")
        );
    }

    #[test]
    fn ranking_drops_duplicates_and_ties_and_needs_two_answers() {
        let answers: Vec<String> = ["a", "b", "a", "c", "d"].map(String::from).to_vec();
        let labels = [0.5, 0.9, 0.5, 0.5, 0.1];
        let (kept, ranking) = rank_by_label(&answers, &labels).unwrap();
        // "b" (0.9) first; the first "a" (0.5) next, its copy and "c" (tied at 0.5) dropped.
        assert_eq!(kept, ["a", "b", "d"]);
        assert_eq!(ranking, [1, 0, 2]);
        let label = |a: &str| labels[answers.iter().position(|x| x == a).unwrap()];
        let ranked: Vec<f64> = ranking.iter().map(|&r| label(&kept[r])).collect();
        assert_eq!(ranked, [0.9, 0.5, 0.1]);
        let same: Vec<String> = ["x", "x"].map(String::from).to_vec();
        assert!(rank_by_label(&same, &[0.3, 0.3]).is_none());
        assert!(rank_by_label(&answers[..2], &[0.2, 0.2]).is_none());
    }
}
