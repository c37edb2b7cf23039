//! `distill report REPORT.json [--readme README.md [--chart FILE]]`: renders a benchmark report's Markdown,
//! HTML and chart again from its JSON, and optionally puts its headline table in a README.

use crate::report::{self, Report};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ReportArgs {
    /// A `report.json` written by `distill run`; the renderings go next to it.
    report: PathBuf,
    /// Replace the text between `<!-- report:begin -->` and `<!-- report:end -->` in this file
    /// with the headline table and a link to the chart.
    #[arg(long)]
    readme: Option<PathBuf>,
    /// With `--readme`: copy the chart to this file and link the copy (e.g. a file the
    /// repository keeps, where the run folder is not kept); default: link the report's own.
    #[arg(long, requires = "readme")]
    chart: Option<PathBuf>,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let report = Report::read(&args.report)?;
    let dir = match args.report.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    report::write_renderings(&report, dir)?;
    for name in [report::MARKDOWN, report::HTML, report::CHART] {
        println!("wrote {}", dir.join(name).display());
    }
    if let Some(readme) = &args.readme {
        let mut chart = dir.join(report::CHART);
        if let Some(copy) = &args.chart {
            let svg = std::fs::read(&chart)
                .with_context(|| format!("cannot read {}", chart.display()))?;
            if let Some(parent) = copy.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            distill_model::fsutil::write_bytes_atomic(copy, &svg)
                .with_context(|| format!("cannot write {}", copy.display()))?;
            println!("copied the chart to {}", copy.display());
            chart = copy.clone();
        }
        report::update_readme(readme, &report, &chart)?;
        println!("updated {}", readme.display());
    }
    Ok(())
}
