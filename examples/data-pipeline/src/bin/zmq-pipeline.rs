//! ZeroMQ source → parse → process → metrics → export to a JSON-lines file.
//!
//! ```text
//! cargo run -p data-pipeline --bin zmq-pipeline -- [ENDPOINT] [OUTPUT]
//! ```
//!
//! Binds a PULL socket on ENDPOINT (default `tcp://127.0.0.1:5555`) and writes every valid reading,
//! enriched with its sensor's running statistics, to OUTPUT (default `zmq-demo.jsonl`). Send
//! readings with any PUSH socket, e.g. `python3 crates/switchyard-pipeline/tests/py/publish.py
//! tcp://127.0.0.1:5555 1000`. Stop with Ctrl-C or SIGTERM: the source stops, the stages drain, and
//! the monitor summary is printed.

use std::path::PathBuf;
use std::process::ExitCode;

use data_pipeline::sensors::{DemoConfig, run_zmq_demo};
use switchyard_pipeline::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config = DemoConfig::default();
    if let Some(endpoint) = args.next() {
        config.endpoint = endpoint;
    }
    if let Some(output) = args.next() {
        config.output = PathBuf::from(output);
    }
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run_zmq_demo(config, shutdown).await {
        Ok(report) if report.run.drained => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("zmq demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
