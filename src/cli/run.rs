//! `distill run RECIPE.toml [--resume]`: the stages of a recipe, from the teacher to exported
//! students and a benchmark report (see `crate::run`).

use anyhow::Result;
use clap::Args;
use distill_model::device::DeviceChoice;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// The recipe (e.g. recipes/quick.toml).
    recipe: PathBuf,
    /// Continue stages that were interrupted, from their checkpoints.
    #[arg(long)]
    resume: bool,
    /// Only read and check the recipe (keys, values, files) and tell where each stage stands
    /// (done, interrupted, changed, not started) up to the first unfinished one; runs and
    /// writes nothing.
    #[arg(long)]
    check: bool,
}

pub fn run(args: &RunArgs, device: DeviceChoice) -> Result<()> {
    let loaded = crate::run::recipe::load(&args.recipe)?;
    if args.check {
        println!(
            "{}: a valid recipe of {} stages, run folder {}",
            args.recipe.display(),
            crate::run::count_stages(&loaded.recipe),
            loaded.out.display()
        );
        if crate::run::status(&loaded, device)? {
            println!(
                "  every stage is done: report in {}",
                loaded.out.join("report").display()
            );
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let report = crate::run::run(&loaded, device, args.resume)?;
    println!("{}", crate::report::markdown::headline(&report));
    println!(
        "run {} finished in {:.1} min: report in {}, students in {}",
        loaded.title,
        started.elapsed().as_secs_f64() / 60.0,
        loaded.out.join("report").display(),
        loaded.out.join("export").display()
    );
    Ok(())
}
