//! Process logging for a node binary: text or JSON lines through `tracing-subscriber`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// A log filter directive that does not parse (tracing `EnvFilter` syntax).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter directive {directive:?}: {reason}")]
pub struct FilterError {
    /// The first directive (between commas) that does not parse.
    pub directive: String,
    /// Why, as `tracing-subscriber` says it.
    pub reason: String,
}

/// Checks a filter (comma-separated `EnvFilter` directives, e.g. `info,switchyard_node=debug`)
/// and names the first directive that does not parse. An empty filter is valid (it lets
/// errors through only, as `EnvFilter` does).
pub fn check_filter(filter: &str) -> Result<(), FilterError> {
    // `EnvFilter` splits on commas too; each directive is parsed on its own to name the
    // bad one.
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if let Err(e) = EnvFilter::builder().parse(directive) {
            return Err(FilterError {
                directive: directive.to_owned(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}

/// Installs the global `tracing` subscriber described by `config` (`RUST_LOG` overrides the
/// filter). Returns `false` when a subscriber was already installed.
pub fn init(config: &LoggingConfig) -> bool {
    init_with_filter(config, None)
}

/// [`init`] with a filter chosen on a command line (`switchyard serve --log`): the filter is
/// `filter` when given, else `RUST_LOG` when set, else `config.filter` (tracing `EnvFilter`
/// syntax); `config.format` applies whatever the filter. Returns `false` when a subscriber
/// was already installed.
///
/// `filter` and `config.filter` are meant to be checked before ([`check_filter`]; the CLI
/// and [`NodeConfig::validate`](crate::NodeConfig::validate) refuse a bad one). `RUST_LOG`
/// follows the convention of tracing programs instead: one that does not parse is named in
/// a warning (the first line logged) and the next source applies, so a stray variable in
/// the environment never stops a node. A `filter` that does not parse falls back the same
/// way; `info` when nothing parses.
///
/// Log lines go to stderr; a write that fails (stderr closed) is dropped, never a panic.
pub fn init_with_filter(config: &LoggingConfig, filter: Option<&str>) -> bool {
    let mut ignored: Vec<String> = Vec::new();
    let mut pick = |source: &str, text: Option<&str>| -> Option<EnvFilter> {
        let text = text?;
        match EnvFilter::try_new(text) {
            Ok(f) => Some(f),
            Err(e) => {
                ignored.push(format!("{source} {text:?} is not a valid log filter ({e})"));
                None
            }
        }
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = pick("the given filter", filter)
        .or_else(|| pick("RUST_LOG", rust_log.as_deref()))
        .or_else(|| pick("[logging] filter", Some(&config.filter)))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_colours())
        .with_writer(std::io::stderr)
        // On by default: a line that cannot be written is reported with `eprintln!`, which
        // panics when stderr is a closed pipe (`switchyard serve 2>&1 | head`).
        .log_internal_errors(false);
    let installed = match config.format {
        LogFormat::Json => builder.json().with_current_span(false).try_init().is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };
    if installed {
        for why in ignored {
            tracing::warn!("{why}; the next source of the filter applies");
        }
    }
    installed
}

/// Whether log lines on stderr get terminal colours: only when stderr is a terminal and
/// `NO_COLOR` is not set, so a log written to a file, a pipe or a journal carries no escape
/// codes.
pub fn stderr_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
