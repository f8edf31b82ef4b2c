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
    /// Runs a demo. Without a kind: a small in-process flow (a publisher, a wildcard
    /// subscriber, a command with a result, a failing handler and a clean shutdown).
    Demo {
        #[command(subcommand)]
        kind: Option<DemoKind>,
    },
}

#[derive(Debug, Subcommand)]
enum DemoKind {
    /// The layered reference app: frontend → CPM → managers → services → handlers →
    /// processors → modules, with status updates, errors, enforcement and a causal trace.
    Pipeline {
        /// Rows of generated data.
        #[arg(long, default_value_t = 600)]
        rows: usize,
        /// Pipeline runs, one after another.
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// A typed stage pipeline fed by a ZeroMQ PULL socket, exporting JSON lines, until
    /// SIGINT/SIGTERM; then it drains and prints the monitor summary.
    Zmq {
        /// Endpoint to bind.
        #[arg(long, default_value = "tcp://127.0.0.1:5555")]
        endpoint: String,
        /// Output file (JSON lines).
        #[arg(long, default_value = "zmq-demo.jsonl")]
        output: std::path::PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Demo { kind: None } => demo::run(&mut std::io::stdout()).await,
        Command::Demo {
            kind: Some(DemoKind::Pipeline { rows, runs }),
        } => demo::run_pipeline(rows, runs).await,
        Command::Demo {
            kind: Some(DemoKind::Zmq { endpoint, output }),
        } => demo::run_zmq(endpoint, output).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
