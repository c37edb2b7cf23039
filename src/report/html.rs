//! The report as one self-contained HTML page: inline CSS and inline SVG charts, no scripts and
//! no external resources, so it opens anywhere, offline.

use super::markdown::{self, HEADLINE, NONE};
use super::{Report, chart};
use anyhow::Result;
use distill_teacher::bootstrap::Interval;
use distill_teacher::compare::CompareReport;
use std::fmt::Write;

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2rem; }
.created { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.front td:first-child { font-weight: bold; }
.chart { margin: 1rem 0; }
.chart svg { max-width: 100%; height: auto; border: 1px solid #ddd; }
.note { color: #555; font-size: 0.9rem; }
code, pre { font-family: ui-monospace, monospace; font-size: 0.85rem; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }
";

/// The whole report as an HTML document.
pub fn render(report: &Report) -> Result<String> {
    let front = report.pareto_front();
    let mut out = String::new();
    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>{title}</h1>\n<p class=\"created\">Created {}</p>\n",
        escape(&report.created),
        title = escape(&report.title),
    )?;

    out += "<table class=\"headline\">\n<tr>";
    for h in HEADLINE {
        write!(out, "<th>{}</th>", escape(h))?;
    }
    out += "</tr>\n";
    for (i, m) in report.models.iter().enumerate() {
        let class = if front.contains(&i) {
            " class=\"front\""
        } else {
            ""
        };
        write!(out, "<tr{class}>")?;
        for (c, value) in markdown::headline_row(m).iter().enumerate() {
            // The Markdown cell escapes `|`; HTML needs no escape for it.
            let value = value.replace("\\|", "|");
            let num = if c >= 3 { " class=\"num\"" } else { "" };
            write!(out, "<td{num}>{}</td>", escape(&value))?;
        }
        out += "</tr>\n";
    }
    out += "</table>\n";
    writeln!(
        out,
        "<p class=\"note\">Bold: on the Pareto front of man-page perplexity against size (no \
         other model is both smaller and better). {NONE}: not measured or not applicable \
         (the teacher has no KL to itself).</p>"
    )?;

    if let Some(c) = &report.teacher_stages {
        out += &teacher_stages(c)?;
    }
    out += "<h2>Quality against size</h2>\n<div class=\"chart\">\n";
    out += &chart::quality_vs_size(report)?;
    out += "</div>\n<h2>Decode speed against size</h2>\n";
    match chart::decode_vs_size(report)? {
        Some(svg) => write!(out, "<div class=\"chart\">\n{svg}</div>\n")?,
        None => out += "<p class=\"note\">No model's speed was measured.</p>\n",
    }
    out += &plain_tables(report);

    let m = &report.machine;
    out += "<h2>Machine</h2>\n<table>\n";
    let memory = m
        .memory_bytes
        .map_or(NONE.to_string(), |b| format!("{:.1} GB", b as f64 / 1e9));
    for (k, v) in [
        ("CPU", m.cpu.clone()),
        ("cores", m.cores.to_string()),
        ("memory", memory),
        ("OS", m.os.clone()),
        ("device", m.device.clone()),
    ] {
        writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v))?;
    }
    out += "</table>\n";

    let e = &report.eval;
    writeln!(
        out,
        "<h2>Evaluation</h2>\n<p>Perplexity on at most {} evenly spaced, non-overlapping \
         windows of {} tokens per data file; KL and top-1 agreement against the teacher on the \
         man-page windows.</p>\n<table>\n<tr><th>data</th><th>file</th><th>sha256</th></tr>",
        e.windows, e.window
    )?;
    for d in &e.data {
        writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            escape(&d.name),
            escape(&d.path),
            escape(&d.sha256)
        )?;
    }
    out += "</table>\n";
    if let Some(s) = report.models.iter().find_map(|m| m.speed.as_ref()) {
        writeln!(
            out,
            "<p>Speed: prefill {} prompt tokens in one forward, then decode {} tokens one at a \
             time, median of {} runs after a warm-up; peak MB is the process's peak resident \
             memory meanwhile, weights included.</p>",
            s.prompt_tokens, s.decode_tokens, s.repeats
        )?;
    }

    let settings = serde_json::to_string_pretty(&report.settings).expect("JSON values serialize");
    write!(
        out,
        "<h2>Settings</h2>\n<pre>{}</pre>\n</body>\n</html>\n",
        escape(&settings)
    )?;
    Ok(out)
}

/// The reward model's accuracy and the stage times: the Markdown sections' tables as HTML.
fn plain_tables(report: &Report) -> String {
    let mut out = String::new();
    if let Some(r) = &report.reward {
        out += "<h2>Reward model</h2>\n";
        out += &format!(
            "<p>How often the better answer of a pair scores higher, on the {} rankings of {}; a \
             tie counts as wrong.</p>\n<table>\n<tr><th>pair type (better&gt;worse)</th>\
             <th>pairs</th><th>accuracy</th></tr>\n",
            r.rankings,
            escape(&r.data)
        );
        for (name, a) in std::iter::once(("all pairs", &r.overall))
            .chain(r.by_pair_type.iter().map(|(k, a)| (k.as_str(), a)))
        {
            out += &format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td></tr>\n",
                escape(name),
                a.pairs,
                100.0 * a.accuracy
            );
        }
        out += "</table>\n";
    }
    if !report.stage_times.is_empty() {
        out += "<h2>Stage times</h2>\n<p>Running time of each stage, summed over the sittings \
                it took (time between sittings and while the process was stopped not \
                counted).</p>\n<table>\n<tr><th>stage</th><th>time</th></tr>\n";
        let total: f64 = report.stage_times.iter().map(|t| t.seconds).sum();
        for (stage, seconds) in report
            .stage_times
            .iter()
            .map(|t| (t.stage.as_str(), t.seconds))
            .chain(std::iter::once(("total", total)))
        {
            out += &format!(
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>\n",
                escape(stage),
                super::markdown::duration(seconds)
            );
        }
        out += "</table>\n";
    }
    out
}

/// The teacher's stages side by side: scores, gains with intervals, sample answers.
fn teacher_stages(c: &CompareReport) -> Result<String> {
    let mut out = String::from("<h2>Teacher stages</h2>\n");
    writeln!(
        out,
        "<p>{} held-out prompts answered greedily (at most {} tokens); means with {:.0}% \
         paired-bootstrap intervals ({} resamples).</p>\n<table>\n<tr><th>model</th>\
         <th>gold score</th><th>reward</th><th>MC accuracy</th><th>KL to {}</th>\
         <th>answer tokens</th></tr>",
        c.prompts_used,
        c.max_new_tokens,
        c.level * 100.0,
        c.bootstrap_samples,
        escape(c.reference.as_deref().unwrap_or(NONE))
    )?;
    let show = |i: &Option<Interval>| {
        i.map_or(NONE.to_string(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.estimate, i.low, i.high)
        })
    };
    for m in &c.models {
        writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}</td></tr>",
            escape(&m.name),
            show(&Some(m.gold)),
            show(&m.reward),
            show(&m.choice_accuracy),
            show(&m.kl_to_reference),
            m.answer_tokens
        )?;
    }
    out += "</table>\n<table>\n<tr><th>gain</th><th>metric</th><th>mean gain [CI]</th></tr>\n";
    for g in &c.gains {
        writeln!(
            out,
            "<tr><td>{} → {}</td><td>{}</td><td class=\"num\">{:+.3} [{:+.3}, {:+.3}]</td></tr>",
            escape(&g.from),
            escape(&g.to),
            escape(&g.metric),
            g.gain.estimate,
            g.gain.low,
            g.gain.high
        )?;
    }
    out += "</table>\n";
    for e in &c.examples {
        writeln!(
            out,
            "<p><b>{}</b>: {}</p>\n<ul>",
            escape(&e.id),
            escape(&e.prompt)
        )?;
        for a in &e.answers {
            writeln!(
                out,
                "<li><i>{}</i> (gold {:.2}): {}</li>",
                escape(&a.model),
                a.gold,
                escape(a.answer.trim())
            )?;
        }
        out += "</ul>\n";
    }
    Ok(out)
}

/// `text` safe in HTML and XML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::chart::POINT_CLASS;
    use crate::report::tests::sample;

    #[test]
    fn self_contained_with_one_point_per_model() {
        let report = sample();
        let html = render(&report).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<svg"), "no inline chart");
        let lower = html.to_ascii_lowercase();
        for external in ["src=", "href=", "url(", "<script", "<link", "@import"] {
            assert!(!lower.contains(external), "{external} in the page");
        }
        // Two charts: every model on the quality chart, three with a speed on the other.
        let points = html.matches(&format!("class=\"{POINT_CLASS}\"")).count();
        assert_eq!(points, report.models.len() + 3);
        for m in &report.models {
            assert!(
                html.contains(&format!("data-model=\"{}\"", m.name)),
                "{} has no point",
                m.name
            );
        }
        // The title is escaped; one table row per model (plus the header).
        assert!(html.contains("<h1>Demo &lt;run&gt; &amp; co</h1>"));
        let headline = &html[html.find("class=\"headline\"").unwrap()..];
        let headline = &headline[..headline.find("</table>").unwrap()];
        assert_eq!(headline.matches("<tr").count(), report.models.len() + 1);
        assert_eq!(headline.matches("class=\"front\"").count(), 3);
    }
}
