//! The report's charts as SVG, drawn with plotters: man-page perplexity against size with the
//! Pareto front, and decode speed against size. Each model is one `<circle>` of class
//! [`POINT_CLASS`] carrying its name (`data-model`, and a `<title>` tooltip).

use super::Report;
use super::html::escape;
use super::markdown::sig3;
use anyhow::{Result, anyhow};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// The CSS class of every model's marker.
pub const POINT_CLASS: &str = "model-point";

const SIZE: (u32, u32) = (880, 520);
/// Marker colours (matplotlib's blue and red), also used by the HTML legend.
pub const TEACHER: RGBColor = RGBColor(31, 119, 180);
/// See [`TEACHER`].
pub const STUDENT: RGBColor = RGBColor(214, 39, 40);
const FRONT: RGBColor = RGBColor(140, 140, 140);
const FONT: &str = "sans-serif";

/// One model on a chart.
struct Point {
    name: String,
    teacher: bool,
    x: f64,
    y: f64,
}

/// What one chart shows.
struct Plot {
    caption: &'static str,
    x_desc: &'static str,
    y_desc: &'static str,
    points: Vec<Point>,
    /// A line through these points (the Pareto front), if any.
    line: Vec<(f64, f64)>,
}

/// Man-page perplexity (log scale) against megabytes on disk, the Pareto front as a line.
pub fn quality_vs_size(report: &Report) -> Result<String> {
    let points = points(report, |m| Some(m.quality.man_perplexity));
    let line = report
        .pareto_front()
        .into_iter()
        .map(|i| &report.models[i])
        .map(|m| (m.bytes_on_disk as f64 / 1e6, m.quality.man_perplexity))
        .filter(|&(_, y)| y > 0.0)
        .collect();
    let plot = Plot {
        caption: "Man-page perplexity against size",
        x_desc: "size on disk (MB)",
        y_desc: "man-page test perplexity (log scale; lower is better)",
        points,
        line,
    };
    let (lo, hi) = y_bounds(&plot.points, 1.0, 10.0);
    let (lo, hi) = (lo / 1.15, hi * 1.15);
    draw(
        &plot,
        (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
    )
}

/// Labelled values for a log axis over `lo..=hi`: 1, 2 and 5 per decade (only powers of ten
/// over many decades, more steps over a narrow range), so a few labels always show.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        (lo.log10().floor() as i32..=hi.log10().ceil() as i32)
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (lo..=hi).contains(v))
            .collect()
    };
    let standard = ticks(&[1.0, 2.0, 5.0]);
    if standard.len() > 12 {
        return ticks(&[1.0]);
    }
    if standard.len() >= 4 {
        return standard;
    }
    let finer = ticks(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]);
    if finer.len() >= 4 {
        return finer;
    }
    let halves: Vec<f64> = (2..20).map(|i| f64::from(i) / 2.0).collect();
    ticks(&halves)
}

/// Decode tokens/s against megabytes on disk, for the models with a speed; `None` if none has.
pub fn decode_vs_size(report: &Report) -> Result<Option<String>> {
    let points = points(report, |m| m.speed.as_ref().map(|s| s.decode_tokens_per_s));
    if points.is_empty() {
        return Ok(None);
    }
    let plot = Plot {
        caption: "Decode speed against size",
        x_desc: "size on disk (MB)",
        y_desc: "decode tokens/s (higher is better)",
        points,
        line: Vec::new(),
    };
    let (_, hi) = y_bounds(&plot.points, 0.0, 1.0);
    draw(&plot, 0.0..hi * 1.2).map(Some)
}

/// Each model with a positive, finite `y`, at its size in MB.
fn points(report: &Report, y: impl Fn(&super::ModelResult) -> Option<f64>) -> Vec<Point> {
    report
        .models
        .iter()
        .filter_map(|m| {
            let y = y(m).filter(|v| v.is_finite() && *v > 0.0)?;
            Some(Point {
                name: m.name.clone(),
                teacher: m.role == super::Role::Teacher,
                x: m.bytes_on_disk as f64 / 1e6,
                y,
            })
        })
        .collect()
}

/// The least and greatest `y`, or the defaults without points.
fn y_bounds(points: &[Point], lo: f64, hi: f64) -> (f64, f64) {
    if points.is_empty() {
        return (lo, hi);
    }
    let min = points.iter().map(|p| p.y).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.y).fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Draws `plot` with a linear size axis and the `y` axis given, teacher then students.
fn draw<Y>(plot: &Plot, y: Y) -> Result<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let x_max = plot.points.iter().map(|p| p.x).fold(0.0, f64::max);
    let x_max = if x_max > 0.0 { x_max * 1.2 } else { 1.0 };
    // Markers in drawing order, to name the circles afterwards.
    let (teachers, students): (Vec<&Point>, Vec<&Point>) =
        plot.points.iter().partition(|p| p.teacher);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot.caption, (FONT, 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, y)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(plot.x_desc)
            .y_desc(plot.y_desc)
            .label_style((FONT, 14))
            .y_labels(12)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| tick(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_error)?;
        if plot.line.len() > 1 {
            chart
                .draw_series(LineSeries::new(
                    plot.line.iter().copied(),
                    FRONT.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label("Pareto front")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], FRONT.stroke_width(2)));
        }
        for (group, colour, label) in [
            (&teachers, TEACHER, "teacher"),
            (&students, STUDENT, "student"),
        ] {
            if group.is_empty() {
                continue;
            }
            chart
                .draw_series(
                    group
                        .iter()
                        .map(|p| Circle::new((p.x, p.y), 6, colour.filled())),
                )
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .draw_series(
                labels(&plot.points)
                    .into_iter()
                    .map(|(at, text)| EmptyElement::at(at) + Text::new(text, (9, -16), (FONT, 14))),
            )
            .map_err(plot_error)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 14))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    let names: Vec<&str> = teachers
        .iter()
        .chain(&students)
        .map(|p| p.name.as_str())
        .collect();
    name_points(&svg, &names)
}

/// An axis label: about three significant digits without trailing zeros (`8`, `1.5`, `250`).
fn tick(v: f64) -> String {
    let s = sig3(v);
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// One label per position: the names of models drawn at the same point (students of one
/// shape and format often are) joined, so they do not print over each other.
fn labels(points: &[Point]) -> Vec<((f64, f64), String)> {
    let mut labels: Vec<((f64, f64), String)> = Vec::new();
    for p in points {
        match labels.iter_mut().find(|(at, _)| *at == (p.x, p.y)) {
            Some((_, text)) => *text += &format!(", {}", p.name),
            None => labels.push(((p.x, p.y), p.name.clone())),
        }
    }
    labels
}

fn plot_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("cannot draw the chart: {e}")
}

/// `svg` with its `<circle .../>` markers, drawn in `names`' order, given the class
/// [`POINT_CLASS`], a `data-model` attribute and a `<title>`.
fn name_points(svg: &str, names: &[&str]) -> Result<String> {
    let mut out = String::with_capacity(svg.len() + names.len() * 96);
    let mut rest = svg;
    for name in names {
        let start = rest
            .find("<circle ")
            .ok_or_else(|| anyhow!("the chart has fewer markers than models"))?;
        let end = start
            + rest[start..]
                .find("/>")
                .ok_or_else(|| anyhow!("an unclosed <circle> in the chart"))?;
        let name = escape(name);
        out += &rest[..start];
        out += &format!(
            "<circle class=\"{POINT_CLASS}\" data-model=\"{name}\" {}><title>{name}</title></circle>",
            rest[start + "<circle ".len()..end].trim_end()
        );
        rest = &rest[end + 2..];
    }
    if rest.contains("<circle ") {
        return Err(anyhow!("the chart has more markers than models"));
    }
    out += rest;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    fn markers(svg: &str) -> Vec<String> {
        let needle = format!("class=\"{POINT_CLASS}\" data-model=\"");
        svg.match_indices(&needle)
            .map(|(i, _)| {
                let rest = &svg[i + needle.len()..];
                rest[..rest.find('"').unwrap()].to_string()
            })
            .collect()
    }

    #[test]
    fn one_named_marker_per_model() {
        let report = sample();
        let svg = quality_vs_size(&report).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert_eq!(svg.matches("<circle").count(), report.models.len());
        let mut names = markers(&svg);
        names.sort();
        let mut want: Vec<String> = report.models.iter().map(|m| m.name.clone()).collect();
        want.sort();
        assert_eq!(names, want);
        // The front is one grey line through its three points (and the legend's sample).
        let front: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains("stroke=\"#8C8C8C\""))
            .collect();
        assert_eq!(front.len(), 2, "{front:?}");
        assert_eq!(front[0].split(',').count() - 1, 3, "{}", front[0]);
        // Only models with a speed are on the speed chart.
        let speed = decode_vs_size(&report).unwrap().unwrap();
        assert_eq!(markers(&speed).len(), 3);
        assert!(!markers(&speed).contains(&"dominated".to_string()));
    }

    #[test]
    fn names_are_escaped_and_counts_checked() {
        let svg = "<svg><circle cx=\"1\" r=\"2\"/>\n<circle cx=\"3\"/></svg>";
        let named = name_points(svg, &["a<b", "c\"d"]).unwrap();
        assert!(
            named.contains("data-model=\"a&lt;b\" cx=\"1\" r=\"2\"><title>a&lt;b</title></circle>"),
            "{named}"
        );
        assert!(named.contains("data-model=\"c&quot;d\""), "{named}");
        assert!(name_points(svg, &["only one"]).is_err());
        assert!(name_points(svg, &["a", "b", "c"]).is_err());
    }

    #[test]
    fn models_at_one_point_share_a_label() {
        let mut report = sample();
        report.models[3].bytes_on_disk = report.models[1].bytes_on_disk;
        report.models[3].speed = report.models[1].speed.clone();
        let speed = decode_vs_size(&report).unwrap().unwrap();
        assert_eq!(markers(&speed).len(), 4);
        assert!(
            speed.contains(">\npruned-kd, dominated\n</text>"),
            "{speed}"
        );
    }

    #[test]
    fn log_axes_get_a_few_round_labels() {
        assert_eq!(
            log_ticks(6.0, 810.0),
            [10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(log_ticks(6.4, 20.6), [8.0, 10.0, 15.0, 20.0]);
        assert_eq!(log_ticks(6.4, 8.6), [6.5, 7.0, 7.5, 8.0, 8.5]);
        assert_eq!(log_ticks(1.0, 1e6), [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]);
        let labels: Vec<String> = [8.0, 15.0, 0.25, 250.0].map(tick).to_vec();
        assert_eq!(labels, ["8", "15", "0.25", "250"]);
    }

    #[test]
    fn no_speed_no_speed_chart() {
        let mut report = sample();
        for m in &mut report.models {
            m.speed = None;
        }
        assert!(decode_vs_size(&report).unwrap().is_none());
    }
}
