//! `--help` against docs/cli.md, and the README's commands against `serve --demo`.

use super::*;

/// Runs the binary with `args` and `env` in `dir`, bounded by [`WAIT`].
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = bin(dir);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    // Bounded: a command that hangs is killed (by its own pid) after WAIT.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("switchyard {args:?} did not finish in {WAIT:?}");
        }
    }
}

fn help(dir: &Path, args: &[&str]) -> String {
    let mut a = args.to_vec();
    a.push("--help");
    let out = run(dir, &a, &[]);
    assert!(out.status.success(), "{a:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every flag docs/cli.md's synopses name is in the subcommand's `--help`, with the default
/// docs/cli.md states; a usage error is exit 2 with `error:`.
#[test]
fn help_matches_cli_md() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["serve"],
            &[
                "--config",
                "--listen",
                "--demo",
                "--demo-interval-ms",
                "[default: 1500]",
                "--log",
            ],
        ),
        (
            &["pub"],
            &[
                "--file",
                "--content-type",
                "--message-id",
                "--correlation-id",
                "--causation-id",
                "--traceparent",
                "--priority",
                "--source",
                "--header",
                "--url",
                "--token",
                "--config",
                "--http-timeout",
                "[default: 60]",
            ],
        ),
        (&["send"], &["--file", "--header", "--url"]),
        (&["request"], &["--timeout-ms", "5000"]),
        (
            &["sub"],
            &["--group", "--count", "--format", "[default: json]"],
        ),
        (&["tail"], &["--count", "--format", "[default: text]"]),
        (
            &["dlq", "list"],
            &[
                "--topic",
                "--subscription",
                "--limit",
                "--offset",
                "--json",
                "[default: 100]",
            ],
        ),
        (&["dlq", "show"], &["<ID>"]),
        (
            &["dlq", "replay"],
            &["--all", "--topic", "--batch", "[default: 200]"],
        ),
        (&["dlq", "purge"], &["--all", "--topic"]),
        (
            &["topology"],
            &["--format", "mermaid", "dot", "json", "[default: mermaid]"],
        ),
        (&["trace"], &["--json"]),
        (&["status"], &["--json"]),
        (
            &["bench"],
            &[
                "--topic",
                "[default: bench.load]",
                "--count",
                "[default: 10000]",
                "--concurrency",
                "[default: 16]",
                "--size",
                "[default: 64]",
            ],
        ),
        (
            &["schema", "check"],
            &["--mode", "backward", "forward", "full", "--json"],
        ),
        (&["completions"], &["bash", "zsh", "fish"]),
        (
            &["schema", "export"],
            &[
                "--lang",
                "asyncapi",
                "python",
                "--from",
                "--out",
                "[default: asyncapi]",
            ],
        ),
        (&["demo", "pipeline"], &["--rows", "--runs"]),
    ];
    for (args, needles) in cases {
        let h = help(d, args);
        for n in *needles {
            assert!(
                h.contains(n),
                "switchyard {args:?} --help lacks {n:?}:\n{h}"
            );
        }
    }
    // `--token`'s value never shows in --help, even when set in the environment.
    let out = run(
        d,
        &["pub", "--help"],
        &[("SWITCHYARD_TOKEN", "s3cret-value")],
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret-value"));
    // The text line format as docs/cli.md writes it (and as `tail` prints it).
    let h = help(d, &["tail"]);
    assert!(h.contains("timestamp kind topic corr="), "{h}");
    // Usage errors: exit 2 with `error:` (the parser's) or `switchyard:` naming the option.
    for (args, says) in [
        (&["frobnicate"][..], "error:"),
        (&["pub"][..], "error:"),
        (&["serve", "--bogus"][..], "error:"),
        (&["completions", "tcsh"][..], "error:"),
        (&["pub", "a.b", "-H", "novalue"][..], "error:"),
        (&["pub", "a.b", "--url", "ftp://x"][..], "switchyard: --url"),
        (
            &["status", "--config", "/nonexistent/cli.toml"][..],
            "switchyard: cannot read",
        ),
    ] {
        let out = run(d, args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with(says),
            "{args:?}: {out:?}"
        );
    }
}

/// The README's commands, as written, against `serve --demo` (memory transport, a run every
/// 200 ms, the URL from `SWITCHYARD_URL`): `tail`, `pub`, `send cpm.query.runs '{}'`,
/// `dlq list` (entries within seconds), `topology --format mermaid`, `trace`, `status`.
#[test]
fn readme_commands_work_against_serve_demo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Node::start(d, MEMORY, &["--demo", "--demo-interval-ms", "200"]);
    let env = [("SWITCHYARD_URL", node.url.as_str())];

    let out = run(d, &["tail", "-n", "1"], &env);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(" corr="), "{line}");

    let out = run(d, &["pub", "orders.placed", r#"{"id": 42}"#], &env);
    assert!(out.status.success(), "{out:?}");
    let ids: Value = serde_json::from_slice(&out.stdout).unwrap();
    let corr = ids["correlation_id"].as_str().unwrap().to_owned();
    assert!(ids["id"].is_string(), "{ids}");

    let out = run(d, &["send", "cpm.query.runs", "{}"], &env);
    assert!(out.status.success(), "{out:?}");
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(reply["payload"]["runs"].is_array(), "{reply}");

    let deadline = Instant::now() + WAIT;
    loop {
        let out = run(d, &["dlq", "list"], &env);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let last = text.lines().last().unwrap_or_default().to_owned();
        // `K of N dead letter(s)`, or `no dead letters (total 0)` while there are none.
        if last.ends_with("dead letter(s)") && !last.starts_with("0 of") {
            break;
        }
        assert!(last.starts_with("no dead letters"), "{text}");
        assert!(
            Instant::now() < deadline,
            "no dead letter within {WAIT:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let out = run(d, &["topology", "--format", "mermaid"], &env);
    assert!(out.status.success(), "{out:?}");
    let mermaid = String::from_utf8(out.stdout).unwrap();
    assert!(
        mermaid.starts_with("flowchart") && mermaid.contains("frontend"),
        "{mermaid}"
    );

    let out = run(d, &["trace", &corr], &env);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("orders.placed")
    );

    let out = run(d, &["status"], &env);
    assert!(out.status.success(), "{out:?}");
    let status = String::from_utf8(out.stdout).unwrap();
    assert!(
        status.contains("ready") && status.contains("memory"),
        "{status}"
    );
}
