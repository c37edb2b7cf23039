//! A man page as `man` renders it, split into its parts: the header line (`close(2)  System
//! Calls Manual  close(2)`), unindented upper-case headings (`NAME`, `SYNOPSIS`, ...), bodies
//! indented by [`BODY_INDENT`] spaces, sub-headings indented by fewer, and tagged paragraphs
//! (a tag such as `EBADF` or `-c, --call-pairs` at the body's margin, its text indented
//! [`BODY_INDENT`] more, on the tag's line when the tag is short enough).

/// Spaces before a section's body text, and between a tag and its text.
pub const BODY_INDENT: usize = 7;

/// A paragraph of a section: consecutive non-blank lines, each with its spaces left of the
/// body margin removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Paragraph {
    /// The lines, indentation relative to the body margin kept.
    pub lines: Vec<String>,
    /// Whether this is a sub-heading (a line left of the body margin).
    pub subheading: bool,
}

/// A tagged paragraph: `EBADF  fd isn't a valid open file descriptor.`
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The tag, e.g. `EBADF`, `ENOSPC, EDQUOT` or `-c, --call-pairs`.
    pub tag: String,
    /// The text of the tag's first paragraph, whitespace collapsed.
    pub text: String,
}

/// One top-level section.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The heading, e.g. `RETURN VALUE`.
    pub heading: String,
    /// The body's paragraphs in order.
    pub paragraphs: Vec<Paragraph>,
}

impl Section {
    /// The prose at the body margin (not tagged, not indented, no sub-headings, no tables),
    /// whitespace collapsed, as sentences; a paragraph always ends a sentence.
    pub fn prose_sentences(&self) -> Vec<String> {
        self.paragraphs
            .iter()
            .filter(|p| !p.subheading && indent(&p.lines[0]) == 0 && split_tag(p).is_none())
            .filter(|p| !p.lines.iter().any(|l| l.contains(is_box_drawing)))
            .flat_map(|p| sentences(&join_lines(&p.lines)))
            .collect()
    }

    /// The tagged paragraphs, in order.
    pub fn entries(&self) -> Vec<Entry> {
        self.paragraphs
            .iter()
            .filter(|p| !p.subheading)
            .filter_map(split_tag)
            .collect()
    }

    /// The paragraphs before the first sub-heading.
    pub fn leading_paragraphs(&self) -> impl Iterator<Item = &Paragraph> {
        self.paragraphs.iter().take_while(|p| !p.subheading)
    }
}

/// A parsed man page.
#[derive(Debug, Clone, PartialEq)]
pub struct ManPage {
    /// The corpus id, e.g. `man2/close.2`.
    pub id: String,
    /// The page's title, e.g. `close` (from the header line, else the id).
    pub title: String,
    /// The manual section, e.g. `2` or `3type`.
    pub section: String,
    /// The manual's name from the header line, e.g. `System Calls Manual` (may be empty).
    pub manual: String,
    /// The names NAME lists (`memchr, memrchr, rawmemchr`).
    pub names: Vec<String>,
    /// NAME's one-line summary (`scan memory for a character`); empty when NAME has none.
    pub summary: String,
    /// The top-level sections, in order.
    pub sections: Vec<Section>,
}

impl ManPage {
    /// Parses the rendered text of page `id` (`man2/close.2`).
    pub fn parse(id: &str, text: &str) -> Self {
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        let first = lines.iter().position(|l| !l.is_empty());
        let header = first.map_or("", |i| lines[i]);
        let (title, section, manual) = parse_header(header).unwrap_or_else(|| {
            let file = id.rsplit('/').next().unwrap_or(id);
            let (stem, ext) = file.rsplit_once('.').unwrap_or((file, ""));
            (stem.to_string(), ext.to_string(), String::new())
        });
        let mut body = &lines[first.map_or(0, |i| i + 1)..];
        // The footer (`Linux man-pages 6.03  2023-01-05  close(2)`) ends with the header's title.
        let title_token = header.split_whitespace().next().unwrap_or("");
        if let Some(last) = body.iter().rposition(|l| !l.is_empty())
            && !title_token.is_empty()
            && body[last].ends_with(title_token)
            && !body[last].starts_with(' ')
        {
            body = &body[..last];
        }
        let sections = split_sections(body);
        let mut page = Self {
            id: id.to_string(),
            title,
            section,
            manual,
            names: Vec::new(),
            summary: String::new(),
            sections,
        };
        if let Some(name) = page.section("NAME") {
            let text = name
                .paragraphs
                .iter()
                .map(|p| join_lines(&p.lines))
                .collect::<Vec<_>>()
                .join(" ");
            let (names, summary) = match text.split_once(" - ") {
                Some((n, s)) => (n, s.trim()),
                None => (text.as_str(), ""),
            };
            page.names = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            page.summary = summary.to_string();
        }
        if page.names.is_empty() {
            page.names.push(page.title.clone());
        }
        page
    }

    /// The section with this heading.
    pub fn section(&self, heading: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.heading == heading)
    }

    /// The name questions use: the one NAME lists that matches the file name, else NAME's first.
    pub fn name(&self) -> &str {
        let file = self.id.rsplit('/').next().unwrap_or(&self.id);
        let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
        self.names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(stem))
            .unwrap_or(&self.names[0])
    }
}

/// `close(2)   System Calls Manual   close(2)` → (`close`, `2`, `System Calls Manual`).
fn parse_header(line: &str) -> Option<(String, String, String)> {
    let token = line.split_whitespace().next()?;
    let (title, rest) = token.split_once('(')?;
    let section = rest.strip_suffix(')')?;
    if title.is_empty() || section.is_empty() {
        return None;
    }
    let parts: Vec<&str> = line
        .split("  ")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let manual = if parts.len() == 3 { parts[1] } else { "" };
    Some((title.to_string(), section.to_string(), manual.to_string()))
}

/// Whether `line` is a top-level heading: unindented, with upper-case letters and no lower-case.
fn is_heading(line: &str) -> bool {
    !line.starts_with(char::is_whitespace)
        && line.chars().any(|c| c.is_ascii_uppercase())
        && !line.chars().any(|c| c.is_lowercase())
}

fn split_sections(lines: &[&str]) -> Vec<Section> {
    let mut sections: Vec<Section> = Vec::new();
    let mut current: Option<Section> = None;
    let mut paragraph: Vec<String> = Vec::new();
    let flush = |paragraph: &mut Vec<String>, current: &mut Option<Section>| {
        if let Some(s) = current.as_mut()
            && !paragraph.is_empty()
        {
            s.paragraphs.push(Paragraph {
                lines: std::mem::take(paragraph),
                subheading: false,
            });
        }
        paragraph.clear();
    };
    for line in lines {
        if line.is_empty() {
            flush(&mut paragraph, &mut current);
        } else if is_heading(line) {
            flush(&mut paragraph, &mut current);
            sections.extend(current.take());
            current = Some(Section {
                heading: line.trim().to_string(),
                paragraphs: Vec::new(),
            });
        } else if indent(line) < BODY_INDENT {
            flush(&mut paragraph, &mut current);
            if let Some(s) = current.as_mut() {
                s.paragraphs.push(Paragraph {
                    lines: vec![line.trim().to_string()],
                    subheading: true,
                });
            }
        } else {
            paragraph.push(line[BODY_INDENT..].to_string());
        }
    }
    flush(&mut paragraph, &mut current);
    sections.extend(current);
    sections
}

/// Whether `c` draws a table's rules (`─`, `│`, `┼`, ...).
fn is_box_drawing(c: char) -> bool {
    ('\u{2500}'..='\u{257f}').contains(&c)
}

/// Leading spaces of `line`.
pub fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// A paragraph's tag and first text, when its first line sits at the margin and its text is
/// indented [`BODY_INDENT`] further (`EIO    An I/O error occurred.`, or the tag alone on its
/// line when longer).
fn split_tag(p: &Paragraph) -> Option<Entry> {
    let first = &p.lines[0];
    if indent(first) != 0 {
        return None;
    }
    let rest_indented = p.lines[1..].iter().all(|l| indent(l) >= BODY_INDENT);
    if !rest_indented {
        return None;
    }
    let bytes = first.as_bytes();
    let inline = first.is_char_boundary(BODY_INDENT)
        && bytes.len() > BODY_INDENT + 1
        && bytes[BODY_INDENT - 1] == b' '
        && bytes[BODY_INDENT] != b' ';
    let (tag, body_first) = if inline {
        (first[..BODY_INDENT].trim(), Some(&first[BODY_INDENT..]))
    } else if p.lines.len() > 1 {
        (first.trim(), None)
    } else {
        return None;
    };
    let mut body: Vec<String> = body_first.map(str::to_string).into_iter().collect();
    body.extend(p.lines[1..].iter().cloned());
    let text = join_lines(&body);
    (!tag.is_empty() && !text.is_empty()).then(|| Entry {
        tag: tag.to_string(),
        text,
    })
}

/// Joins wrapped lines into one line: whitespace collapsed, a word broken after a hyphen
/// (`system-` / `provided`) joined back, typographic hyphens made ASCII.
pub fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    for line in lines {
        let line = collapse(line);
        if line.is_empty() {
            continue;
        }
        let glue = out.ends_with('-')
            && out[..out.len() - 1]
                .chars()
                .next_back()
                .is_some_and(char::is_alphanumeric)
            && line.starts_with(char::is_alphanumeric);
        if !out.is_empty() && !glue {
            out.push(' ');
        }
        out.push_str(&line);
    }
    out
}

/// Runs of whitespace made one space, trimmed; U+2010/U+2011/U+2212 made `-`.
pub fn collapse(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(['\u{2010}', '\u{2011}', '\u{2212}'], "-")
}

/// Abbreviations whose period does not end a sentence.
const ABBREVIATIONS: [&str; 8] = ["e.g", "i.e", "etc", "cf", "vs", "approx", "no", "Fig"];

/// Splits prose into sentences: after `.`, `!` or `?` (closing quotes or brackets allowed)
/// followed by a space and an upper-case letter, a digit or an opening bracket, unless the
/// period ends an abbreviation such as `e.g.`.
pub fn sentences(text: &str) -> Vec<String> {
    let text = collapse(text);
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for (k, &(i, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let mut end = k + 1;
        while end < chars.len() && matches!(chars[end].1, ')' | '"' | '\'' | ']') {
            end += 1;
        }
        let next_ok = end + 1 < chars.len()
            && chars[end].1 == ' '
            && (chars[end + 1].1.is_uppercase()
                || chars[end + 1].1.is_ascii_digit()
                || chars[end + 1].1 == '(');
        if !next_ok {
            continue;
        }
        let word = text[start..i].rsplit(' ').next().unwrap_or("");
        if c == '.' && ABBREVIATIONS.iter().any(|a| word.eq_ignore_ascii_case(a)) {
            continue;
        }
        let stop = chars[end].0;
        out.push(text[start..stop].trim().to_string());
        start = stop + 1;
    }
    let tail = text[start..].trim();
    if !tail.is_empty() {
        out.push(tail.to_string());
    }
    out
}

/// Manual-page references in `text`, e.g. `bstring(3)` → (`bstring`, `3`), in order, without
/// repeats.
pub fn page_refs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let bytes = text.as_bytes();
    for (open, _) in text.match_indices('(') {
        let close = match text[open..].find(')') {
            Some(c) => open + c,
            None => continue,
        };
        let section = &text[open + 1..close];
        if !section.starts_with(|c: char| c.is_ascii_digit())
            || !section.chars().all(|c| c.is_ascii_alphanumeric())
            || section.len() > 6
        {
            continue;
        }
        let mut start = open;
        while start > 0 && is_name_byte(bytes[start - 1]) {
            start -= 1;
        }
        let name = &text[start..open];
        if !name.is_empty() && !out.iter().any(|(n, s)| n == name && s == section) {
            out.push((name.to_string(), section.to_string()));
        }
    }
    out
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'+')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic page in the rendered layout (written for these tests, not a real page).
    pub const FROB: &str = "\
frob_widget(2)              System Calls Manual             frob_widget(2)



NAME
       frob_widget, frob_widgets - rearrange the widgets of a gizmo pool

LIBRARY
       Gizmo library (libgizmo, -lgizmo)

SYNOPSIS
       #include <gizmo/widget.h>

       int frob_widget(int pool, unsigned int count,
                       int flags);

   Feature Test Macro Requirements for glibc (see feature_test_macros(7)):

       frob_widget(): _GIZMO_SOURCE

DESCRIPTION
       frob_widget() rearranges up to count widgets of the gizmo pool pool in
       place.  The order chosen depends on flags, e.g., on how crowded the pool
       is.  Widgets that are pinned are left where they are.

       flags is a bit mask of the following:

       FROB_SHUFFLE
              Shuffle the widgets at random.

       FROB_SORT_DESC
              Sort the widgets by decreasing weight.

       ┌───────────────┬──────┐
       │Flag           │ Cost │
       └───────────────┴──────┘

RETURN VALUE
       On success, frob_widget() returns the number of widgets it moved, which
       can be less than count when pinned widgets block the way.  On error, -1
       is returned, and errno is set to indicate the error.

ERRORS
       EBADF  pool is not a valid gizmo pool descriptor.

       EBUSY  Another thread is frobbing the same pool; see gizmo(7).

       ENOSPC, EOVERFLOW
              The pool has no free slot to move a widget through, or count is
              larger than the pool.

       Other errors may come from the pool allocator.

OPTIONS
       -n, --dry-run
              Report what would be moved without moving anything.

       -q     Be quiet.

SEE ALSO
       gizmo(7), unfrob_widget(2), pool_open(3)



Gizmo pages 1.0                  2024-01-01                frob_widget(2)
";

    #[test]
    fn parses_header_name_sections_and_entries() {
        let page = ManPage::parse("man2/frob_widget.2", FROB);
        assert_eq!(page.title, "frob_widget");
        assert_eq!(page.section, "2");
        assert_eq!(page.manual, "System Calls Manual");
        assert_eq!(page.names, vec!["frob_widget", "frob_widgets"]);
        assert_eq!(page.name(), "frob_widget");
        assert_eq!(page.summary, "rearrange the widgets of a gizmo pool");
        let headings: Vec<&str> = page.sections.iter().map(|s| s.heading.as_str()).collect();
        assert_eq!(
            headings,
            [
                "NAME",
                "LIBRARY",
                "SYNOPSIS",
                "DESCRIPTION",
                "RETURN VALUE",
                "ERRORS",
                "OPTIONS",
                "SEE ALSO"
            ]
        );

        let synopsis = page.section("SYNOPSIS").unwrap();
        let lead: Vec<&Paragraph> = synopsis.leading_paragraphs().collect();
        assert_eq!(lead.len(), 2);
        assert_eq!(lead[1].lines[1].trim(), "int flags);");
        assert!(synopsis.paragraphs[2].subheading);

        let errors = page.section("ERRORS").unwrap().entries();
        let tags: Vec<&str> = errors.iter().map(|e| e.tag.as_str()).collect();
        assert_eq!(tags, ["EBADF", "EBUSY", "ENOSPC, EOVERFLOW"]);
        assert_eq!(
            errors[2].text,
            "The pool has no free slot to move a widget through, or count is larger than the pool."
        );
        let options = page.section("OPTIONS").unwrap().entries();
        assert_eq!(options[0].tag, "-n, --dry-run");
        assert_eq!(
            (options[1].tag.as_str(), options[1].text.as_str()),
            ("-q", "Be quiet.")
        );

        let rv = page.section("RETURN VALUE").unwrap().prose_sentences();
        assert_eq!(rv.len(), 2);
        assert!(rv[1].starts_with("On error, -1 is returned"), "{rv:?}");
        let description = page.section("DESCRIPTION").unwrap();
        let prose = description.prose_sentences();
        // The table is not prose.
        assert_eq!(prose.len(), 4, "{prose:?}");
        assert!(prose[1].contains("e.g., on how crowded"), "{prose:?}");
        let flags: Vec<String> = description.entries().into_iter().map(|e| e.tag).collect();
        assert_eq!(flags, ["FROB_SHUFFLE", "FROB_SORT_DESC"]);

        let see_also = join_lines(&page.section("SEE ALSO").unwrap().paragraphs[0].lines);
        let refs = page_refs(&see_also);
        assert_eq!(refs[1], ("unfrob_widget".to_string(), "2".to_string()));
        assert_eq!(refs.len(), 3);
        // The footer is not part of the last section.
        assert_eq!(page.sections.last().unwrap().paragraphs.len(), 1);
    }

    #[test]
    fn joins_wrapped_words_and_splits_sentences() {
        let lines = vec![
            "the system-".to_string(),
            "   provided  locales".to_string(),
        ];
        assert_eq!(join_lines(&lines), "the system-provided locales");
        assert_eq!(
            sentences("It ends (see x(2)).  Then i.e. this. 3 more? Yes"),
            ["It ends (see x(2)).", "Then i.e. this.", "3 more?", "Yes"]
        );
    }
}
