//! `switchyard schema check`: the report and the CI exit codes (0 compatible, 1 incompatible,
//! 2 unreadable input or bad arguments).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use assert_cmd::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema/");
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.ends_with(".json") {
                format!("{dir}{a}")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["schema", "check"])
        .args(&args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_field_added_with_a_default_passes_every_mode() {
    for mode in ["backward", "forward", "full"] {
        let (code, out, err) =
            check(&["user-v1.json", "user-v2-email-default.json", "--mode", mode]);
        assert_eq!(code, 0, "{mode}: {out}{err}");
        assert_eq!(out.trim(), format!("compatible ({mode})"));
    }
}

#[test]
fn a_required_field_added_fails_backward_with_exit_1_and_names_the_field() {
    let (code, out, err) = check(&["user-v1.json", "user-v2-email-required.json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("INCOMPATIBLE (backward): 1 problem"), "{out}");
    assert!(out.contains("/email: field `email` is required"), "{out}");
    assert!(err.contains("is not backward compatible"), "{err}");
    // The same change read forward is fine.
    let (code, _, _) = check(&[
        "user-v1.json",
        "user-v2-email-required.json",
        "--mode",
        "forward",
    ]);
    assert_eq!(code, 0);
    let (code, out, _) = check(&["user-v1.json", "user-v2-email-required.json", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["issues"][0]["kind"], "missing_required_field");
    assert_eq!(v["issues"][0]["path"], "/email");
}

#[test]
fn unreadable_input_and_bad_arguments_exit_2() {
    let (code, _, err) = check(&["user-v1.json", "broken.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("is not JSON"), "{err}");
    let (code, _, err) = check(&["user-v1.json", "missing.json"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read"), "{err}");
    let (code, _, err) = check(&["user-v1.json", "user-v1.json", "--mode", "sideways"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown compatibility mode"), "{err}");
}

fn export(args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["schema", "export"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const PIPELINE_DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/data-pipeline/asyncapi.json"
);

#[test]
fn export_lang_python_from_a_document_writes_the_committed_pipeline_messages() {
    let (code, out, err) = export(&["--lang", "python", "--from", PIPELINE_DOC]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/pipeline_messages.py"
    ))
    .unwrap();
    assert_eq!(out, committed);
    assert!(out.contains("class PipelineRequest:"), "{out}");
    // To a file: the same text.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.py");
    let (code, out, err) = export(&[
        "--lang",
        "python",
        "--from",
        PIPELINE_DOC,
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), committed);
    // The document itself, from the file, as it is.
    let (code, out, _) = export(&["--from", PIPELINE_DOC]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PIPELINE_DOC).unwrap()).unwrap();
    assert_eq!(doc, committed);
}

#[test]
fn export_lang_python_of_something_that_is_not_a_document_fails_with_the_reason() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema/");
    let (code, out, err) = export(&["--lang", "python", "--from", &format!("{dir}user-v1.json")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("components.messages"), "{err}");
    let (code, _, err) = export(&["--lang", "cobol", "--from", PIPELINE_DOC]);
    assert_eq!(code, 2, "{err}");
}

/// `schema export -o` into a directory that does not exist (review rev22): exit 1, and the
/// error names the file and says its directory is missing; nothing is created.
#[test]
fn export_into_a_missing_directory_names_the_file_and_the_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, r#"{"asyncapi": "3.0.0"}"#).unwrap();
    let missing = dir.path().join("no-such-dir");
    let target = missing.join("out.json");
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["schema", "export", "--from"])
        .arg(&doc)
        .arg("-o")
        .arg(&target)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(target.to_str().unwrap()),
        "the file is named: {err}"
    );
    assert!(
        err.contains(&format!("directory {} does not exist", missing.display())),
        "the missing directory is said: {err}"
    );
    assert!(!missing.exists());
    // Into a directory that exists, the same command writes the file.
    let target = dir.path().join("out.json");
    let out = Command::cargo_bin("switchyard")
        .unwrap()
        .args(["schema", "export", "--from"])
        .arg(&doc)
        .arg("-o")
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&target).unwrap()).unwrap();
    assert_eq!(written["asyncapi"], "3.0.0");
}
