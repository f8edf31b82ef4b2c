//! A Python process (the `switchyard` package) writes `version=2` and version-1 instances of a
//! class into the log; the Rust consumer with an upcaster sees the first as v2 (no upcast) and
//! upcasts the second.
//!
//! The interpreter is `SWITCHYARD_PYTHON` (default `python3`) and needs the package installed
//! (docs/python.md). Without `SWITCHYARD_PYTHON` set and without the package the test prints a
//! loud SKIPPING banner and passes (the workspace's test run comes before `.ci/run` installs the
//! package); with `SWITCHYARD_PYTHON` set it must run, and `.ci/run` runs it that way once the
//! package is installed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

fn python() -> Option<String> {
    let required = std::env::var("SWITCHYARD_PYTHON").ok();
    let py = required.clone().unwrap_or_else(|| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import switchyard"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(py);
    }
    assert!(
        required.is_none(),
        "SWITCHYARD_PYTHON={py} cannot `import switchyard`: install the package (docs/python.md)"
    );
    eprintln!(
        "\n==== SKIPPING review_rev29::python: {py} cannot `import switchyard` \
         (set SWITCHYARD_PYTHON to an interpreter with the package) ====\n"
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_v2_is_seen_as_v2_and_a_python_v1_is_upcast() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../switchyard-py/tests/test_review_rev29.py");
    let (py2, script2, dir2) = (py.clone(), script.clone(), dir.path().to_owned());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(py2)
                .arg(script2)
                .arg("write")
                .arg(dir2)
                .output()
        }),
    )
    .await
    .expect("the Python writer hung")
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let (ltx, mut letters) = mpsc::unbounded_channel();
    let bus = bus_on(dir.path(), Some(upcasters(calls.clone())), Letters(ltx));
    let (_sub, mut rx) = v2_handler(&bus, "billing").await;
    let v2_from_python = next(&mut rx).await;
    assert_eq!(
        v2_from_python,
        (
            v2::Order {
                id: 10,
                amount_cents: 250,
                currency: "NOK".into()
            },
            2
        )
    );
    let v1_from_python = next(&mut rx).await;
    assert_eq!(
        v1_from_python,
        (
            v2::Order {
                id: 11,
                amount_cents: 150,
                currency: "EUR".into()
            },
            1
        )
    );
    // One step ran, for the v1 record: the v2 one was not upcast (its payload has no
    // `amount`, so upcasting it would have failed and dead-lettered it).
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(letters.try_recv().is_err());
    bus.shutdown(WAIT).await.unwrap();
}
