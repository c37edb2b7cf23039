//! `distill report REPORT.json [--readme README.md]`: renders a benchmark report's Markdown,
//! HTML and chart again from its JSON, and optionally puts its headline table in a README.

use crate::report::{self, Report};
use anyhow::Result;
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
        report::update_readme(readme, &report, &dir.join(report::CHART))?;
        println!("updated {}", readme.display());
    }
    Ok(())
}
