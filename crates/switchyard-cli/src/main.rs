//! `switchyard`: the command line of the switchyard message bus: run a node (`serve`),
//! operate a running one (`pub`, `sub`, `send`, `request`, `tail`, `dlq`, `topology`,
//! `trace`, `status`, `bench`), check and export message contracts (`schema`), and the
//! in-process demos.
//!
//! Exit codes: 0 ok, 1 failure (including an unreachable node and a demo run that failed),
//! 2 usage.
#![forbid(unsafe_code)]

mod client;
mod demo;
mod ops;
mod schema;
mod serve;
mod ws;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use client::{Client, ClientError, Remote};

/// A message bus for Rust systems built from components that talk only through publish/subscribe.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `switchyard=debug`. Default
    /// `warn`; for `serve`, given explicitly it wins over `RUST_LOG` and the config's
    /// `[logging] filter`, and the config's `[logging] format` applies. A filter that does
    /// not parse is a usage error (exit 2) naming the bad directive.
    #[arg(long, global = true, env = "SWITCHYARD_LOG", value_name = "FILTER", value_parser = parse_log_filter)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a node: the bus on the configured transport behind the HTTP/WebSocket gateway,
    /// until SIGINT/SIGTERM (then the bus drains).
    Serve(serve::ServeArgs),
    /// Publishes an event; prints `{"id", "correlation_id"}`.
    #[command(name = "pub")]
    Pub {
        #[command(flatten)]
        message: ops::MessageArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follows a topic pattern over the WebSocket; one JSON line per message.
    Sub {
        /// Topic pattern: `*` is one segment, `#` any number.
        pattern: String,
        /// Consumer group (subscribers of one group share the messages). Default: this
        /// client alone gets every message.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// Exit after this many messages.
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
        /// Line format.
        #[arg(long, value_enum, default_value = "json")]
        format: ws::LineFormat,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follows every message (`sub '#'`), one readable line each.
    Tail {
        /// Exit after this many messages.
        #[arg(long, short = 'n', value_name = "N")]
        count: Option<u64>,
        /// Line format.
        #[arg(long, value_enum, default_value = "text")]
        format: ws::LineFormat,
        #[command(flatten)]
        remote: Remote,
    },
    /// Sends a command to its one handler; prints the reply JSON.
    Send {
        #[command(flatten)]
        message: ops::MessageArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Sends a request with a deadline; prints the reply JSON.
    Request {
        #[command(flatten)]
        message: ops::MessageArgs,
        /// The node's deadline in milliseconds (default: the node's, 5000).
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Dead letters: list, show, replay, purge.
    Dlq {
        #[command(subcommand)]
        command: ops::DlqCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// The component topology (or the subscriptions the bus knows) as a graph.
    Topology {
        /// Output format.
        #[arg(long, value_enum, default_value = "mermaid")]
        format: ops::TopologyFormat,
        #[command(flatten)]
        remote: Remote,
    },
    /// Every recorded message of one correlation id, as its causal tree.
    Trace {
        /// The correlation id (a ULID).
        correlation_id: String,
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Version, uptime, transport, readiness and counts of the node.
    Status {
        /// Print the node's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Publishes many messages through HTTP and reports rate and latency.
    Bench {
        /// Topic to publish to.
        #[arg(long, default_value = "bench.load")]
        topic: String,
        /// Messages to publish.
        #[arg(long, short = 'n', default_value_t = 10_000)]
        count: u64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Payload size in bytes (roughly).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Message contracts: `check OLD NEW` (schema compatibility, for CI), `export` (AsyncAPI,
    /// or `--lang python` dataclasses).
    Schema {
        #[command(subcommand)]
        command: schema::SchemaCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Prints a shell completion script: `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    /// Exits 1 when a run failed.
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

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The command ran and failed (exit 1).
    #[error("{0}")]
    Failure(String),
    /// A call to the node failed (exit 1; a bad URL or config file is a usage error).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A demo failed (exit 1).
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
    /// Writing the output failed (exit 1; a closed pipe ends the command quietly).
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) | CliError::Client(ClientError::Setup(_)) => ExitCode::from(2),
            CliError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_from(hoist_connection_options(std::env::args_os().collect()));
    let log = cli.log.as_deref();
    // `serve` installs the node's logging once its config is read ([logging], RUST_LOG).
    if !matches!(cli.command, Command::Serve(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(log.unwrap_or("warn")))
            .with_ansi(switchyard_node::logging::stderr_colours())
            .with_writer(std::io::stderr)
            // A closed stderr drops log lines rather than panicking (see `logging::init`).
            .log_internal_errors(false)
            .init();
    }
    match run(cli.command, log).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            if !matches!(&e, CliError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
                warn(format_args!("{e}"));
            }
            code
        }
    }
}

/// `--log` (and `SWITCHYARD_LOG`): a tracing `EnvFilter`; one that does not parse is refused
/// by the argument parser (exit 2), its message naming the flag, the value and the bad
/// directive, rather than a node or command that runs with another filter than asked for.
fn parse_log_filter(filter: &str) -> Result<String, String> {
    switchyard_node::logging::check_filter(filter)
        .map(|()| filter.to_owned())
        .map_err(|e| e.to_string())
}

/// Writes `switchyard: <what>` to stderr; a closed stderr (`switchyard serve 2>&1 | head`)
/// is not worth a panic.
fn warn(what: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "switchyard: {what}");
}

async fn run(command: Command, log: Option<&str>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Serve(args) => {
            drop(out);
            serve::run(args, log).await
        }
        Command::Pub { message, remote } => {
            ops::publish(&Client::new(&remote)?, &message, &mut out).await
        }
        Command::Send { message, remote } => {
            ops::send(&Client::new(&remote)?, &message, &mut out).await
        }
        Command::Request {
            message,
            timeout_ms,
            remote,
        } => ops::request(&Client::new(&remote)?, &message, timeout_ms, &mut out).await,
        Command::Sub {
            pattern,
            group,
            count,
            format,
            remote,
        } => {
            let what = ws::Follow {
                pattern,
                group,
                count,
                format,
            };
            ws::follow(&Client::new(&remote)?, &what, &mut out).await
        }
        Command::Tail {
            count,
            format,
            remote,
        } => {
            let what = ws::Follow {
                pattern: "#".to_owned(),
                group: None,
                count,
                format,
            };
            ws::follow(&Client::new(&remote)?, &what, &mut out).await
        }
        Command::Dlq { command, remote } => {
            ops::dlq(&Client::new(&remote)?, &command, &mut out).await
        }
        Command::Topology { format, remote } => {
            ops::topology(&Client::new(&remote)?, format, &mut out).await
        }
        Command::Trace {
            correlation_id,
            json,
            remote,
        } => ops::trace(&Client::new(&remote)?, &correlation_id, json, &mut out).await,
        Command::Status { json, remote } => {
            ops::status(&Client::new(&remote)?, json, &mut out).await
        }
        Command::Bench {
            topic,
            count,
            concurrency,
            size,
            remote,
        } => {
            ops::bench(
                &Client::new(&remote)?,
                &topic,
                count,
                concurrency,
                size,
                &mut out,
            )
            .await
        }
        Command::Schema {
            command:
                schema::SchemaCommand::Check {
                    old,
                    new,
                    mode,
                    json,
                },
            ..
        } => schema::check(&old, &new, mode, json, &mut out),
        Command::Schema {
            command:
                schema::SchemaCommand::Export {
                    out: to,
                    lang,
                    from,
                },
            remote,
        } => {
            let client = || Ok(Client::new(&remote)?);
            schema::export(client, from.as_deref(), lang, to.as_deref(), &mut out).await
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "switchyard", &mut out);
            Ok(())
        }
        Command::Demo { kind: None } => Ok(demo::run(&mut out).await?),
        Command::Demo {
            kind: Some(DemoKind::Pipeline { rows, runs }),
        } => {
            drop(out);
            Ok(demo::run_pipeline(rows, runs).await?)
        }
        Command::Demo {
            kind: Some(DemoKind::Zmq { endpoint, output }),
        } => {
            drop(out);
            Ok(demo::run_zmq(endpoint, output).await?)
        }
    }
}

/// The connection options every operator command takes (`client::Remote`).
const CONNECTION_OPTIONS: [&str; 4] = ["--url", "--token", "--config", "--http-timeout"];

/// Moves connection options written before the command to right after it, so that
/// `switchyard --url URL status` is `switchyard status --url URL` (clap takes an option
/// defined on a subcommand only after that subcommand's name). `--log`, the top-level
/// option, stays where it is; anything else before the command is left for clap to refuse.
fn hoist_connection_options(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut moved = Vec::new();
    let mut rest = args.into_iter();
    kept.extend(rest.next()); // the program's name
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str() else {
            kept.push(arg);
            break;
        };
        let name = text.split_once('=').map_or(text, |(n, _)| n);
        let takes_value = !text.contains('=');
        if CONNECTION_OPTIONS.contains(&name) {
            moved.push(arg);
            if takes_value {
                moved.extend(rest.next());
            }
        } else if name == "--log" {
            kept.push(arg);
            if takes_value {
                kept.extend(rest.next());
            }
        } else {
            // The command (or something clap will explain): the moved options follow it.
            kept.push(arg);
            break;
        }
    }
    kept.extend(moved);
    kept.extend(rest);
    kept
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    /// Every connection flag is accepted after a nested subcommand (`dlq list`) as well as
    /// before it, the token included.
    #[test]
    fn connection_flags_are_accepted_after_a_nested_subcommand() {
        for args in [
            [
                "switchyard",
                "dlq",
                "list",
                "--token",
                "t0k",
                "--url",
                "http://n:1",
            ],
            [
                "switchyard",
                "dlq",
                "--token",
                "t0k",
                "--url",
                "http://n:1",
                "list",
            ],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Dlq { remote, .. } = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            assert_eq!(remote.token.as_deref(), Some("t0k"), "{args:?}");
            assert_eq!(remote.url.as_deref(), Some("http://n:1"), "{args:?}");
        }
    }

    /// Connection options before the command (review rev7: a usage error before) reach it,
    /// in both spellings, with `--log` before them as well; `serve`'s own `--config` too.
    #[test]
    fn connection_options_before_the_command_reach_it() {
        let parse = |args: &[&str]| {
            let args = args.iter().map(std::ffi::OsString::from).collect();
            Cli::try_parse_from(hoist_connection_options(args)).unwrap()
        };
        for args in [
            &[
                "switchyard",
                "--url",
                "http://n:1",
                "--token=t0k",
                "dlq",
                "list",
            ][..],
            &[
                "switchyard",
                "--log",
                "info",
                "--url=http://n:1",
                "--token",
                "t0k",
                "dlq",
                "list",
            ],
        ] {
            let cli = parse(args);
            let Command::Dlq { remote, .. } = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            assert_eq!(remote.token.as_deref(), Some("t0k"), "{args:?}");
            assert_eq!(remote.url.as_deref(), Some("http://n:1"), "{args:?}");
        }
        let cli = parse(&["switchyard", "--config", "node.toml", "serve"]);
        assert!(
            matches!(cli.command, Command::Serve(_)),
            "{:?}",
            cli.command
        );
    }
}
