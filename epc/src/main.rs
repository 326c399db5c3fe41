//! `epc`: check, export, compile and run the expert-parallel kernels of MoE specs.
//!
//! With no subcommand it runs the main job on the embedded specs: every spec checked, rendered,
//! NVRTC-compiled and, on a GPU, run, verified against the CPU reference and timed.

mod cli;
mod commands;
mod inputs;
mod npy;
mod progress;
mod svg;
mod transport;
mod words;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EPC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
