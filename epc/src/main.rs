//! `epc`: check, export, compile and run the expert-parallel kernels of MoE specs.
//!
//! With no subcommand it runs the main job on the embedded specs: every spec checked, rendered,
//! NVRTC-compiled and, on a GPU, run, verified against the CPU reference and timed.

mod cli;
mod commands;
mod inputs;
mod install;
mod npy;
mod progress;
mod svg;
mod transport;
mod words;

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EPC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal()))
        .with_target(false)
        .init();
    // clap colours its help and errors on its own terms: only on a terminal, never with
    // NO_COLOR set. Progress bars are drawn only on a terminal and have no colours.
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether to colour a stream: only a terminal, and never when `NO_COLOR` is set to anything
/// but the empty string (<https://no-color.org>).
fn colour(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The error and its causes, `: `-separated, each cause once: a cause whose text its parent's
/// message already ends with (errors that print their source, such as `path: OS error`) is
/// not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut parent: Option<String> = None;
    for cause in e.chain() {
        let text = cause.to_string();
        match &parent {
            Some(p) if p.ends_with(&text) => {}
            Some(_) => {
                out.push_str(": ");
                out.push_str(&text);
            }
            None => out.push_str(&text),
        }
        parent = Some(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn a_cause_printed_by_its_parent_is_not_repeated() {
        // ep-codegen's I/O error prints `path: cause` and also gives the cause as its source.
        let io = ep_codegen::parse_spec_file(std::path::Path::new("/no/such/spec.yaml"))
            .expect_err("the file does not exist");
        let cause = std::error::Error::source(&io)
            .map(ToString::to_string)
            .expect("an I/O error has its OS error as source");
        let e = anyhow::Error::new(io).context("loading");
        let text = report(&e);
        assert!(text.starts_with("loading: /no/such/spec.yaml: "), "{text}");
        assert_eq!(text.matches(&cause).count(), 1, "{text}");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(report(&e), "outer: inner");
    }
}
