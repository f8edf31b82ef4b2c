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
