//! The report as Markdown: the headline table, the machine, the evaluation data and the run's
//! settings; and the short block `distill report --readme` puts in a README.

use super::{ModelResult, Report};
use std::fmt::Write;

/// The headline table's columns; the first [`TEXT_COLUMNS`] are text, the rest numbers.
pub const HEADLINE: [&str; 14] = [
    "model",
    "role",
    "format",
    "params",
    "MB",
    "prefill tok/s",
    "decode tok/s",
    "peak MB",
    "man ppl",
    "SOTU ppl",
    "MC acc",
    "KL",
    "top-1",
    "flips",
];
const TEXT_COLUMNS: usize = 3;

/// What stands in an empty cell.
pub const NONE: &str = "—";

/// The whole report as a Markdown document.
pub fn render(report: &Report) -> String {
    let mut out = format!("# {}\n\n", report.title);
    writeln!(out, "Created {}.\n", report.created).unwrap();
    out += &headline(report);
    out += &teacher_stages(report);
    out += &stage_times(report);
    out += "\n## Machine\n\n";
    let m = &report.machine;
    let rows = vec![
        vec!["CPU".to_string(), m.cpu.clone()],
        vec!["cores".to_string(), m.cores.to_string()],
        vec!["memory".to_string(), m.memory_bytes.map_or(NONE.into(), gb)],
        vec!["OS".to_string(), m.os.clone()],
        vec!["device".to_string(), m.device.clone()],
    ];
    out += &table(&["", ""], &rows, 2);
    out += "\n## Evaluation\n\n";
    writeln!(
        out,
        "Perplexity on at most {} evenly spaced, non-overlapping windows of {} tokens per data \
         file, each scored on its {} next-token predictions; KL and top-1 agreement against the \
         teacher on the man-page windows.\n",
        report.eval.windows,
        report.eval.window,
        report.eval.window.saturating_sub(1)
    )
    .unwrap();
    let rows: Vec<Vec<String>> = report
        .eval
        .data
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                format!("`{}`", d.path),
                format!("`{}`", d.sha256),
            ]
        })
        .collect();
    out += &table(&["data", "file", "sha256"], &rows, 3);
    if let Some(s) = report.models.iter().find_map(|m| m.speed.as_ref()) {
        writeln!(
            out,
            "\nSpeed: prefill {} prompt tokens in one forward, then decode {} tokens one at a \
             time (KV cache, last-position logits), median of {} runs after a warm-up; peak MB \
             is the process's peak resident memory meanwhile, weights included.",
            s.prompt_tokens, s.decode_tokens, s.repeats
        )
        .unwrap();
    }
    out += "\n## Settings\n\n```json\n";
    out += &serde_json::to_string_pretty(&report.settings).expect("JSON values serialize");
    out += "\n```\n";
    out
}

/// The headline table (one row per model) and the models on the Pareto front.
pub fn headline(report: &Report) -> String {
    let rows: Vec<Vec<String>> = report.models.iter().map(headline_row).collect();
    let mut out = table(&HEADLINE, &rows, TEXT_COLUMNS);
    let front: Vec<String> = report
        .pareto_front()
        .into_iter()
        .map(|i| cell(&report.models[i].name))
        .collect();
    writeln!(
        out,
        "\nOn the Pareto front of man-page perplexity against size (no other model is both \
         smaller and better): {}.",
        front.join(", ")
    )
    .unwrap();
    out
}

/// The teacher's stages side by side and the reward model's accuracy, as a section (empty
/// without them).
pub fn teacher_stages(report: &Report) -> String {
    let mut out = String::new();
    if let Some(c) = &report.teacher_stages {
        write!(
            out,
            "\n## Teacher stages\n\nThe teacher before and after each stage of the InstructGPT \
             path, answering held-out man-page prompts; ✓ marks a gain whose interval lies above \
             zero.\n\n{}",
            c.markdown()
        )
        .unwrap();
    }
    if let Some(r) = &report.reward {
        writeln!(
            out,
            "\n## Reward model\n\nHow often the better answer of a pair scores higher, on the \
             {} rankings of `{}`; a tie counts as wrong.\n",
            r.rankings, r.data
        )
        .unwrap();
        let row = |name: &str, a: &distill_teacher::reward::PairAccuracy| {
            vec![
                cell(name),
                a.pairs.to_string(),
                format!("{:.1}%", 100.0 * a.accuracy),
            ]
        };
        let mut rows = vec![row("all pairs", &r.overall)];
        rows.extend(r.by_pair_type.iter().map(|(k, a)| row(k, a)));
        out += &table(&["pair type (better>worse)", "pairs", "accuracy"], &rows, 1);
    }
    out
}

/// Each stage's running time, as a section (empty for a report made outside a run).
pub fn stage_times(report: &Report) -> String {
    if report.stage_times.is_empty() {
        return String::new();
    }
    let mut rows: Vec<Vec<String>> = report
        .stage_times
        .iter()
        .map(|t| vec![cell(&t.stage), duration(t.seconds)])
        .collect();
    let total: f64 = report.stage_times.iter().map(|t| t.seconds).sum();
    rows.push(vec!["**total**".into(), duration(total)]);
    format!(
        "\n## Stage times\n\nRunning time of each stage, summed over the sittings it took \
         (time between sittings and while the process was stopped not counted).\n\n{}",
        table(&["stage", "time"], &rows, 1)
    )
}

/// A running time: `42 s`, `12.5 min` or `2 h 05 min`.
pub fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 90.0 => format!("{s:.0} s"),
        s if s < 90.0 * 60.0 => format!("{:.1} min", s / 60.0),
        s => {
            let minutes = (s / 60.0).round() as u64;
            format!("{} h {:02} min", minutes / 60, minutes % 60)
        }
    }
}

/// The block for a README: the headline table and the chart, linked by `chart_link`, then
/// the teacher's stages and the stage times when the run has them.
pub fn readme_block(report: &Report, chart_link: &str) -> String {
    let m = &report.machine;
    format!(
        "{}\nMeasured on {} ({} cores), {}; {}.\n\n![Man-page perplexity against size]({chart_link})\n{}",
        headline(report),
        m.cpu,
        m.cores,
        m.device,
        report.created,
        (teacher_stages(report) + &stage_times(report)).replace("\n## ", "\n### ")
    )
}

/// One model's cells, in [`HEADLINE`]'s order.
pub fn headline_row(m: &ModelResult) -> Vec<String> {
    let q = &m.quality;
    let s = m.speed.as_ref();
    let opt = |v: Option<f64>, f: fn(f64) -> String| v.map_or(NONE.to_string(), f);
    vec![
        cell(&m.name),
        m.role.as_str().to_string(),
        cell(&m.format),
        count(m.parameters),
        mb(m.bytes_on_disk),
        opt(s.map(|s| s.prefill_tokens_per_s), sig3),
        opt(s.map(|s| s.decode_tokens_per_s), sig3),
        s.and_then(|s| s.peak_memory_bytes)
            .map_or(NONE.to_string(), mb),
        fixed3(q.man_perplexity),
        fixed3(q.sotu_perplexity),
        opt(q.mc_accuracy, fixed3),
        opt(q.kl_to_teacher, fixed3),
        opt(q.top1_agreement, fixed3),
        opt(q.mc_flip_rate, fixed3),
    ]
}

/// A Markdown table with padded columns; the first `text_columns` are left-aligned, the rest
/// (numbers) right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>], text_columns: usize) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| width(h).max(3)).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(c));
        }
    }
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |i: usize, c: &str| {
        let fill = " ".repeat(widths[i] - width(c));
        if i < text_columns {
            format!("{c}{fill}")
        } else {
            format!("{fill}{c}")
        }
    };
    let mut out = line(header.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out += &line(
        widths
            .iter()
            .enumerate()
            .map(|(i, &w)| match i < text_columns {
                true => "-".repeat(w),
                false => format!("{}:", "-".repeat(w - 1)),
            })
            .collect(),
    );
    for row in rows {
        out += &line(row.iter().enumerate().map(|(i, c)| pad(i, c)).collect());
    }
    out
}

/// Text safe in a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A count with a k/M/B suffix: `134.5M`.
pub fn count(n: u64) -> String {
    let n = n as f64;
    match n {
        _ if n >= 1e9 => format!("{}B", sig3(n / 1e9)),
        _ if n >= 1e6 => format!("{}M", sig3(n / 1e6)),
        _ if n >= 1e3 => format!("{}k", sig3(n / 1e3)),
        _ => format!("{n}"),
    }
}

/// Bytes in megabytes (10⁶), about three significant digits.
pub fn mb(bytes: u64) -> String {
    sig3(bytes as f64 / 1e6)
}

/// Bytes in gigabytes (10⁹).
fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// About three significant digits, never fewer than the integer part: `0.123`, `14.3`, `246`.
pub fn sig3(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 || a == 0.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        a if a >= 1.0 => format!("{v:.2}"),
        _ => format!("{v:.3}"),
    }
}

/// Three decimals: perplexities, fractions, KL.
pub fn fixed3(v: f64) -> String {
    format!("{v:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    /// The table's data rows: lines starting with `|` after the header and separator.
    fn data_rows(table: &str) -> Vec<&str> {
        table
            .lines()
            .filter(|l| l.starts_with('|'))
            .skip(2)
            .collect()
    }

    #[test]
    fn one_row_per_model_with_the_right_cells() {
        let report = sample();
        let text = headline(&report);
        let rows = data_rows(&text);
        assert_eq!(rows.len(), report.models.len(), "{text}");
        let cells = |row: &str| -> Vec<String> {
            row.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        };
        let teacher = cells(rows[0]);
        assert_eq!(teacher.len(), HEADLINE.len(), "{}", rows[0]);
        assert_eq!(
            teacher,
            [
                "teacher", "teacher", "f32", "135M", "540", "168", "14.0", "590", "7.400",
                "22.200", "0.500", NONE, NONE, NONE
            ]
        );
        let student = cells(rows[1]);
        assert_eq!(&student[11..], ["0.400", "0.700", "0.100"]);
        // No speed: prefill, decode and peak are empty.
        assert_eq!(&cells(rows[3])[5..8], [NONE, NONE, NONE]);
        assert!(
            text.contains("Pareto front") && text.contains("pruned-kd-q4, pruned-kd, teacher."),
            "{text}"
        );
    }

    #[test]
    fn the_document_has_every_section() {
        let text = render(&sample());
        for part in [
            "# Demo <run> & co",
            "## Machine",
            "Test CPU",
            "## Evaluation",
            &"ab".repeat(32),
            "512 tokens",
            "median of 3 runs",
            "## Settings",
            "\"prune\": 0.5",
        ] {
            assert!(text.contains(part), "missing {part:?}:\n{text}");
        }
        assert_eq!(data_rows(&headline(&sample())).len(), 4);
    }

    #[test]
    fn durations_read_in_their_unit() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(750.0), "12.5 min");
        assert_eq!(duration(7500.0), "2 h 05 min");
    }

    #[test]
    fn tables_align_and_escape() {
        let t = table(
            &["name", "value"],
            &[
                vec![cell("a|b"), "1.5".into()],
                vec!["long name".into(), "10".into()],
            ],
            1,
        );
        assert_eq!(
            t,
            "| name      | value |\n| --------- | ----: |\n| a\\|b      |   1.5 |\n| long name |    10 |\n"
        );
    }

    #[test]
    fn numbers_format() {
        assert_eq!(count(134_515_008), "135M");
        assert_eq!(count(57_500_000), "57.5M");
        assert_eq!(count(1_300), "1.30k");
        assert_eq!(count(42), "42");
        assert_eq!(mb(98_362_432), "98.4");
        assert_eq!(mb(52_000), "0.052");
        assert_eq!(sig3(246.4), "246");
        assert_eq!(sig3(14.26), "14.3");
        assert_eq!(sig3(0.0), "0");
    }
}
