//! Task fixsmall: an invalid log filter is a configuration error (`--log`,
//! `SWITCHYARD_LOG`, `[logging] filter`) while an invalid `RUST_LOG` is named and skipped;
//! `serve --demo` keeps the app's database under the log transport's data directory.

use super::*;

/// Waits (bounded) for a line of `buf` that `pick` accepts.
fn wait_line(buf: &Arc<Mutex<String>>, what: &str, pick: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(l) = buf.lock().unwrap().lines().find(|l| pick(l)) {
            return l.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within 90 s: {}",
            buf.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `--log` (and `SWITCHYARD_LOG`) that does not parse: exit 2 before anything runs, the
/// message naming the flag and the bad directive.
#[test]
fn an_invalid_log_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let refused = Node::try_start(dir.path(), MEMORY, &["--log", "info,no=such=filter"], &[]);
    let Err((code, err, _)) = refused else {
        panic!("serve --log info,no=such=filter started a node");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--log") && err.contains("no=such=filter"),
        "{err}"
    );
    let refused = Node::try_start(
        dir.path(),
        MEMORY,
        &[],
        &[("SWITCHYARD_LOG", "no=such=filter")],
    );
    let Err((code, err, _)) = refused else {
        panic!("SWITCHYARD_LOG=no=such=filter started a node");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no=such=filter"), "{err}");
    // Another command too: `--log` is global.
    let out = bin(dir.path())
        .args([
            "--log",
            "no=such=filter",
            "status",
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// `[logging] filter` that does not parse is refused like every other invalid key
/// (docs/cli.md: `invalid configuration`, exit 1, nothing listens), naming the key and the
/// bad directive.
#[test]
fn an_invalid_logging_filter_in_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let toml = MEMORY.replace("filter = \"warn\"", "filter = \"warn,no=such=filter\"");
    let Err((code, err, _)) = Node::try_start(dir.path(), &toml, &[], &[]) else {
        panic!("serve started with [logging] filter = \"warn,no=such=filter\"");
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("invalid configuration")
            && err.contains("logging.filter")
            && err.contains("no=such=filter"),
        "{err}"
    );
    // The environment override too.
    let Err((code, err, _)) = Node::try_start(
        dir.path(),
        MEMORY,
        &[],
        &[("SWITCHYARD_LOGGING__FILTER", "no=such=filter")],
    ) else {
        panic!("serve started with SWITCHYARD_LOGGING__FILTER=no=such=filter");
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("logging.filter"), "{err}");
}

/// `RUST_LOG` that does not parse follows tracing programs' convention: the node starts,
/// names the variable in a warning, and the config's filter applies.
#[test]
fn an_invalid_rust_log_is_named_and_the_config_filter_applies() {
    let dir = tempfile::tempdir().unwrap();
    let toml = MEMORY.replace("filter = \"warn\"", "filter = \"info\"");
    let node = Node::try_start(dir.path(), &toml, &[], &[("RUST_LOG", "no=such=filter")])
        .unwrap_or_else(|(c, e, _)| panic!("serve exited {c:?}: {e}"));
    wait_line(&node.stderr, "warning naming RUST_LOG", |l| {
        l.contains("RUST_LOG") && l.contains("no=such=filter")
    });
    // `info` from the config: the start is logged.
    wait_line(&node.stderr, "`node started` at info", |l| {
        l.contains("node started")
    });
}

fn sigterm(node: &mut Node) -> ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    node.wait_exit()
}

/// The number of the first `demo demo-NNNNN completed` line.
fn first_completed(node: &Node) -> u64 {
    let line = wait_line(&node.stdout, "completed demo run", |l| {
        l.starts_with("demo demo-") && l.contains(" completed ")
    });
    line["demo demo-".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// `serve --demo` on the log transport: the app's SQLite database is
/// `<data_dir>/demo/pipeline.db`, so a run's rows survive a restart as the bus's log does,
/// and the restarted trickle goes on numbering after the runs the database has.
#[test]
fn serve_demo_keeps_its_database_under_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[transport]\nkind = \"log\"\ndata_dir = \"{}\"\n\
         durability = \"never\"\n[logging]\nfilter = \"warn\"\n[bus]\nshutdown_timeout_ms = 2000\n",
        data.display()
    );
    let args = ["--demo", "--demo-interval-ms", "300"];
    let mut node = Node::start(dir.path(), &toml, &args);
    let first = first_completed(&node);
    assert!(sigterm(&mut node).success());
    drop(node);
    let db = data.join("demo").join("pipeline.db");
    assert!(
        db.is_file(),
        "the demo's database is not under the data dir ({} missing)",
        db.display()
    );
    let run = format!("demo-{first:05}");
    let store = || data_pipeline::modules::Store::in_dir(data.join("demo"));
    let rt = rt();
    let runs = rt.block_on(store().database().runs()).unwrap();
    assert!(runs.contains(&run), "{run} not in {runs:?}");

    // Restarted: the earlier run is still there, and new runs do not reuse its id.
    let mut node = Node::start(dir.path(), &toml, &args);
    let second = first_completed(&node);
    assert!(sigterm(&mut node).success());
    drop(node);
    assert!(
        second > first,
        "run ids restarted: demo-{second:05} after demo-{first:05}"
    );
    let runs = rt.block_on(store().database().runs()).unwrap();
    let later = format!("demo-{second:05}");
    assert!(runs.contains(&run) && runs.contains(&later), "{runs:?}");
    let report = rt.block_on(store().database().report(&run)).unwrap();
    assert!(
        report.is_some_and(|r| !r.is_empty()),
        "{run}'s report is gone"
    );
}
