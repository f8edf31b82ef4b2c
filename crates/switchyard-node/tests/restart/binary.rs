//! The standalone `switchyard-node` binary as a user runs it (task fixsmall): a closed
//! standard output does not kill it, and a `[logging] filter` that does not parse is a
//! configuration error.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_command(config: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard-node"));
    cmd.arg(config).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHYARD_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `switchyard-node | head -0`: stdout is a pipe whose reader is gone before the node prints
/// `listening on`. The node must go on serving (it used to panic in `println!`, exit 101).
#[test]
fn the_node_binary_survives_a_closed_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{port}\"\n[transport]\nkind = \"memory\"\n[logging]\nfilter = \"warn\"\n"),
    )
    .unwrap();
    // A pipe whose read end is closed before the child starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = node_command(&config)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let deadline = Instant::now() + WAIT;
    let answered = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("switchyard-node exited {status:?} with stdout closed: {err}");
        }
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if ok {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(answered, "the node never listened on {url}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async { reqwest::get(&url).await.unwrap().status() });
    assert!(status.is_success(), "{status}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node exited after its first line"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A `[logging] filter` that does not parse is refused like every invalid key: exit 2, the
/// message names the key and the bad directive, nothing listens.
#[test]
fn the_node_binary_refuses_an_invalid_logging_filter() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"memory\"\n[logging]\nfilter = \"info,no=such=filter\"\n",
    )
    .unwrap();
    let mut child = node_command(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let mut out = String::new();
            let _ = child.stdout.take().unwrap().read_to_string(&mut out);
            panic!("switchyard-node started with an invalid [logging] filter: {out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}: {err}");
    assert!(
        err.contains("logging.filter") && err.contains("no=such=filter"),
        "{err}"
    );
}
