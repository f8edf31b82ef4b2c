//! `switchyard`: the command line of the switchyard message bus.
#![forbid(unsafe_code)]

mod demo;

use clap::{Parser, Subcommand};

/// A message bus for Rust systems built from components that talk only through publish/subscribe.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `switchyard=debug`.
    #[arg(long, global = true, default_value = "warn", env = "SWITCHYARD_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a small in-process flow (a publisher, a wildcard subscriber, a command with a
    /// result, a failing handler and a clean shutdown) and prints what happened.
    Demo,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo => demo::run(&mut std::io::stdout()).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
