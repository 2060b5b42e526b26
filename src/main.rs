//! The `phantom-fast` binary: command line in, exit code out; everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use phantom_fast::{
    cli::{Cli, Command},
    error::Error,
    export, server,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => cli.run.into_config().and_then(server::run_until_signal),
        Some(Command::Traces(args)) => args.run(&mut std::io::stdout().lock()),
        Some(Command::Stats(args)) => args.run_stats(&mut std::io::stdout().lock()),
        Some(Command::Faults(args)) => args.run(&mut std::io::stdout().lock()),
        Some(Command::Ca(args)) => args.run(&mut std::io::stdout().lock()),
        Some(Command::Export(args)) => args
            .into_parts()
            .and_then(|(settings, dir, start)| export::run_until_signal(settings, &dir, start)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("phantom-fast: {}", chain(&err));
            ExitCode::from(if err.is_bad_input() { 2 } else { 1 })
        }
    }
}

/// `error: cause: cause`, each source once.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `phantom-fast traces | head` must end quietly, as ripgrep does.
fn is_broken_pipe(err: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::BrokenPipe
        {
            return true;
        }
        source = cause.source();
    }
    false
}
