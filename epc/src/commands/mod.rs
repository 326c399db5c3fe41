//! One module per subcommand.

mod all;
mod bench;
mod check;
mod compile;
mod doctor;
mod export;
mod run;
mod soak;
mod tune;
mod verify;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{AllArgs, Cli, Command, SpecArgs};

/// Runs the chosen subcommand (the main job when none).
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let templates = cli.templates.as_deref();
    match cli.command.unwrap_or(Command::All(AllArgs {
        specs: SpecArgs { specs: Vec::new() },
        routings: 10,
        arch: None,
    })) {
        Command::All(args) => all::all(&args, templates),
        Command::Check(args) => check::check(&args),
        Command::Export { specs, out, force } => export::export(&specs, &out, force, templates),
        Command::Compile(args) => compile::compile(&args, templates),
        Command::Run(args) => run::run(&args, templates),
        Command::Bench(args) => bench::bench(&args, templates),
        Command::Tune(args) => tune::tune(&args, templates),
        Command::Soak(args) => soak::soak(&args, templates),
        Command::Doctor => doctor::doctor(),
    }
}
