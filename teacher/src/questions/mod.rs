//! The man-page question set: questions generated from each page's own sections, reference
//! answers taken from the page's text, rankings of four candidate answers for the reward model,
//! a programmatic gold judge of answers (the "gold" reward PPO is measured with, never trained
//! on), and a multiple-choice evaluation of a model on the rankings.
//!
//! - [`page`]: the rendered page split into header, sections and tagged paragraphs.
//! - [`generate`]: the deterministic generator and the `teacher questions` output folder.
//! - [`judge`]: [`judge::GoldJudge`], scoring an answer against the page's facts.
//! - [`near_miss`]: the right answer against its own truncated or garbled copy.
//! - [`choice`]: log-likelihood multiple choice over rankings, and the flip rate of two models.

pub mod choice;
pub mod generate;
pub mod judge;
pub mod near_miss;
pub mod page;

use serde::{Deserialize, Serialize};

/// What a question asks about a page; the id of a question is `<page id>#<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuestionKind {
    /// What it does: NAME's one-liner and DESCRIPTION's first sentence.
    Name,
    /// Its header(s) and signature, or a command's usage: SYNOPSIS.
    Synopsis,
    /// What it returns: RETURN VALUE.
    ReturnValue,
    /// Its error codes with their meaning: ERRORS.
    Errors,
    /// A command's options with their meaning: OPTIONS.
    Options,
    /// The flag constants DESCRIPTION lists as tagged paragraphs (`O_APPEND`, ...).
    Flags,
    /// More of DESCRIPTION, after its first sentence.
    Description,
    /// Which manual section documents it.
    Section,
    /// The related pages SEE ALSO names.
    SeeAlso,
}

impl QuestionKind {
    /// Every kind, in the order questions of a page are generated.
    pub const ALL: [QuestionKind; 9] = [
        Self::Name,
        Self::Synopsis,
        Self::ReturnValue,
        Self::Errors,
        Self::Options,
        Self::Flags,
        Self::Description,
        Self::Section,
        Self::SeeAlso,
    ];

    /// The name used in ids and files (`return_value`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Synopsis => "synopsis",
            Self::ReturnValue => "return_value",
            Self::Errors => "errors",
            Self::Options => "options",
            Self::Flags => "flags",
            Self::Description => "description",
            Self::Section => "section",
            Self::SeeAlso => "see_also",
        }
    }
}

impl std::fmt::Display for QuestionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
