//! A minimal node runner: `switchyard-node [CONFIG.toml]`. Loads the config (plus
//! `SWITCHYARD_*` env), serves until SIGINT/SIGTERM, and prints `listening on <url>` on
//! stdout once the listener is bound (tests read it to find an ephemeral port). The
//! operator CLI's `switchyard serve` is the user-facing way to run a node. A closed stdout
//! or stderr does not stop it: what it would print there is dropped.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use switchyard_node::{Node, NodeConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let path = std::env::args_os().nth(1).map(PathBuf::from);
    let config = match NodeConfig::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            say_error(&e);
            return ExitCode::from(2);
        }
    };
    switchyard_node::logging::init(&config.logging);
    let tls = config.tls.is_some();
    let node = match Node::start(config).await {
        Ok(n) => n,
        Err(e) => {
            say_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let listener = match node.bind().await {
        Ok(l) => l,
        Err(e) => {
            say_error(&e);
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        let scheme = if tls { "https" } else { "http" };
        // Not `println!`, which panics when stdout is closed (`switchyard-node | head`, a
        // reader that went away): the line is for a reader who may have gone.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    match node.serve(listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// `switchyard-node: <error>` on stderr; a closed stderr drops it (`eprintln!` would panic).
fn say_error(e: &dyn std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "switchyard-node: {e}");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
