//! The run's per-step log: a CSV rewritten atomically after every step (so a resumed run's
//! file is the uninterrupted run's), and an SVG plot of its columns at the end.

use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One PPO step's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoLogRow {
    /// Step (1-based).
    pub step: usize,
    /// Mean reward-model score of the rollout's responses.
    #[serde(with = "super::exact")]
    pub score: f64,
    /// Mean gold score, when a gold scorer is given.
    #[serde(with = "super::exact::option")]
    pub gold: Option<f64>,
    /// Mean KL estimate to the reference, nats per response (Σ log π − log π_ref).
    #[serde(with = "super::exact")]
    pub kl: f64,
    /// Mean entropy of the policy per response token, nats.
    #[serde(with = "super::exact")]
    pub entropy: f64,
    /// Share of tokens whose policy ratio was clipped, over the step's updates.
    #[serde(with = "super::exact")]
    pub clip_frac: f64,
    /// Mean clipped value loss over the step's updates.
    #[serde(with = "super::exact")]
    pub value_loss: f64,
    /// Mean clipped surrogate loss over the step's updates.
    #[serde(with = "super::exact")]
    pub policy_loss: f64,
    /// Mean pretraining next-token loss over the step's updates, with PPO-ptx.
    #[serde(with = "super::exact::option")]
    pub ptx_loss: Option<f64>,
    /// The KL coefficient β the step's rewards used.
    #[serde(with = "super::exact")]
    pub beta: f64,
    /// Mean response length, tokens (the stop token included).
    #[serde(with = "super::exact")]
    pub response_length: f64,
}

/// The CSV header, the columns in [`PpoLogRow`]'s order.
pub const CSV_HEADER: &str =
    "step,score,gold,kl,entropy,clip_frac,value_loss,policy_loss,ptx_loss,beta,response_length";

/// Writes every row to `path` as CSV, atomically; an absent value is an empty field.
pub fn write_csv(path: &Path, rows: &[PpoLogRow]) -> std::io::Result<()> {
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    distill_model::fsutil::write_atomic(path, |out| {
        writeln!(out, "{CSV_HEADER}")?;
        for r in rows {
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                r.step,
                r.score,
                opt(r.gold),
                r.kl,
                r.entropy,
                r.clip_frac,
                r.value_loss,
                r.policy_loss,
                opt(r.ptx_loss),
                r.beta,
                r.response_length
            )?;
        }
        Ok(())
    })
}

/// One evaluation of the policy on the held-out selection prompts
/// ([`PpoConfig::select_prompts`](super::PpoConfig::select_prompts)): the means over its
/// answers, greedy or sampled ([`PpoConfig::select_samples`](super::PpoConfig::select_samples)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectRow {
    /// Steps done when evaluated; 0 is the SFT policy.
    pub step: usize,
    /// Mean gold score.
    #[serde(with = "super::exact")]
    pub gold: f64,
    /// Mean reward-model score.
    #[serde(with = "super::exact")]
    pub score: f64,
    /// Mean answer length, tokens (the stop token included).
    #[serde(with = "super::exact")]
    pub response_length: f64,
}

/// The selection log's CSV header, the columns in [`SelectRow`]'s order, then `kept`.
pub const SELECT_CSV_HEADER: &str = "step,gold,score,response_length,kept";

/// The evaluation whose policy is kept: the highest mean gold score, the earliest on a tie.
pub fn selected(rows: &[SelectRow]) -> Option<&SelectRow> {
    rows.iter()
        .fold(None, |best: Option<&SelectRow>, r| match best {
            Some(b) if b.gold >= r.gold => Some(b),
            _ => Some(r),
        })
}

/// Writes the selection log to `path` as CSV, atomically; `kept` is 1 on the selected row.
pub fn write_select_csv(path: &Path, rows: &[SelectRow]) -> std::io::Result<()> {
    let kept = selected(rows).map(|r| r.step);
    distill_model::fsutil::write_atomic(path, |out| {
        writeln!(out, "{SELECT_CSV_HEADER}")?;
        for r in rows {
            let k = u8::from(kept == Some(r.step));
            writeln!(
                out,
                "{},{},{},{},{k}",
                r.step, r.gold, r.score, r.response_length
            )?;
        }
        Ok(())
    })
}

/// Plots the log's columns against the step, one panel each, into an SVG file at `path`.
pub fn plot_svg(path: &Path, rows: &[PpoLogRow]) -> Result<(), String> {
    type Column = (&'static str, fn(&PpoLogRow) -> Option<f64>);
    let columns: [Column; 8] = [
        ("score (reward model)", |r| Some(r.score)),
        ("gold score", |r| r.gold),
        ("KL to reference (nats/response)", |r| Some(r.kl)),
        ("entropy (nats/token)", |r| Some(r.entropy)),
        ("clip fraction", |r| Some(r.clip_frac)),
        ("value loss", |r| Some(r.value_loss)),
        ("KL coefficient β", |r| Some(r.beta)),
        ("ptx loss", |r| r.ptx_loss),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 1100)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let last = rows.last().map_or(1, |r| r.step).max(1) as f64;
        for (area, (name, get)) in root.split_evenly((4, 2)).iter().zip(columns) {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| get(r).map(|v| (r.step as f64, v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            let (lo, hi) = points
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
                    (lo.min(v), hi.max(v))
                });
            let (lo, hi) = if points.is_empty() {
                (0.0, 1.0)
            } else {
                let pad = ((hi - lo) * 0.05).max(1e-6);
                (lo - pad, hi + pad)
            };
            let caption = if points.is_empty() {
                format!("{name}: not logged")
            } else {
                name.to_string()
            };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..last, lo..hi)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("step")
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), &BLUE))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 2, BLUE.filled())))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    distill_model::fsutil::write_bytes_atomic(path, svg.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, score: f64, gold: Option<f64>) -> PpoLogRow {
        PpoLogRow {
            step,
            score,
            gold,
            kl: 0.5,
            entropy: 2.0,
            clip_frac: 0.1,
            value_loss: 0.3,
            policy_loss: -0.01,
            ptx_loss: None,
            beta: 0.2,
            response_length: 12.0,
        }
    }

    #[test]
    fn csv_has_a_header_and_empty_fields_for_absent_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv");
        write_csv(&path, &[row(1, 0.25, None), row(2, 0.5, Some(0.75))]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "1,0.25,,0.5,2,0.1,0.3,-0.01,,0.2,12");
        assert_eq!(lines[2], "2,0.5,0.75,0.5,2,0.1,0.3,-0.01,,0.2,12");
        let svg = dir.path().join("log.svg");
        plot_svg(&svg, &[row(1, 0.25, None), row(2, 0.5, Some(0.75))]).unwrap();
        let svg = std::fs::read_to_string(&svg).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{svg:.200}"
        );
        assert!(svg.contains("ptx loss: not logged"));
    }

    #[test]
    fn selection_keeps_the_earliest_highest_gold_score() {
        let sel = |step, gold| SelectRow {
            step,
            gold,
            score: 1.0,
            response_length: 10.0,
        };
        let rows = [sel(0, 0.3), sel(10, 0.5), sel(20, 0.5), sel(30, 0.4)];
        assert_eq!(selected(&rows).unwrap().step, 10);
        assert_eq!(selected(&rows[..1]).unwrap().step, 0);
        assert!(selected(&[]).is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("select.csv");
        write_select_csv(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], SELECT_CSV_HEADER);
        assert_eq!(lines[1], "0,0.3,1,10,0");
        assert_eq!(lines[2], "10,0.5,1,10,1");
        assert_eq!(lines[3], "20,0.5,1,10,0");
    }
}
