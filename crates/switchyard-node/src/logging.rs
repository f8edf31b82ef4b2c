//! Process logging for a node binary: text or JSON lines through `tracing-subscriber`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global `tracing` subscriber described by `config` (`RUST_LOG` overrides the
/// filter). Returns `false` when a subscriber was already installed.
pub fn init(config: &LoggingConfig) -> bool {
    init_with_filter(config, None)
}

/// [`init`] with a filter chosen on a command line (`switchyard serve --log`): the first
/// of `filter`, `RUST_LOG` and `config.filter` that parses (tracing `EnvFilter` syntax) is
/// the filter, `info` when none does; `config.format` applies whatever the filter. Returns
/// `false` when a subscriber was already installed.
///
/// Log lines go to stderr; a write that fails (stderr closed) is dropped, never a panic.
pub fn init_with_filter(config: &LoggingConfig, filter: Option<&str>) -> bool {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .map_or_else(EnvFilter::try_from_default_env, Ok)
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_colours())
        .with_writer(std::io::stderr)
        // On by default: a line that cannot be written is reported with `eprintln!`, which
        // panics when stderr is a closed pipe (`switchyard serve 2>&1 | head`).
        .log_internal_errors(false);
    match config.format {
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    }
}

/// Whether log lines on stderr get terminal colours: only when stderr is a terminal and
/// `NO_COLOR` is not set, so a log written to a file, a pipe or a journal carries no escape
/// codes.
pub fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
