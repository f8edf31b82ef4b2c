//! `switchyard schema check`: the documented CI step on real evolution, hostile input.

use super::*;

// ---- the team's message, in three generations ----

mod v1 {
    use super::*;
    /// The first release.
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: u64,
    }
}
mod v2 {
    use super::*;
    /// v2: an optional field added (compatible both ways).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: u64,
        pub note: Option<String>,
    }
}
mod renamed {
    use super::*;
    /// A rename of `amount` (breaks: old data has no `amount_cents`).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount_cents: u64,
    }
}
mod retyped {
    use super::*;
    /// A type change of `amount` (integer → string: breaks both ways).
    #[derive(Clone, Serialize, Deserialize, JsonSchema)]
    #[schemars(crate = "switchyard_contracts::schemars")]
    pub struct OrderPlaced {
        pub order: String,
        pub amount: String,
    }
}

// ---- schema check: the CI step on real evolution ----

#[test]
fn ci_check_passes_an_added_optional_field_and_catches_a_rename_and_a_type_change() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(dir.path(), "v1.json", &schema_of::<v1::OrderPlaced>());
    let added = write(dir.path(), "v2.json", &schema_of::<v2::OrderPlaced>());
    let renamed = write(
        dir.path(),
        "renamed.json",
        &schema_of::<renamed::OrderPlaced>(),
    );
    let retyped = write(
        dir.path(),
        "retyped.json",
        &schema_of::<retyped::OrderPlaced>(),
    );

    for mode in ["backward", "forward", "full"] {
        let out = bin(&["schema", "check", &old, &added, "--mode", mode]);
        no_panic(&out);
        assert_eq!(code(&out), 0, "{mode}: {}{}", stdout(&out), stderr(&out));
        assert_eq!(stdout(&out).trim(), format!("compatible ({mode})"));
    }

    // The rename: new readers need `amount_cents`, which old data never has.
    let out = bin(&["schema", "check", &old, &renamed]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("/amount_cents"), "{}", stdout(&out));
    // Old readers need `amount`, which new data no longer has.
    let out = bin(&["schema", "check", &old, &renamed, "--mode", "forward"]);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    assert!(stdout(&out).contains("/amount"), "{}", stdout(&out));

    // The type change breaks every mode and names the field and both types.
    for mode in ["backward", "forward", "full"] {
        let out = bin(&["schema", "check", &old, &retyped, "--mode", mode, "--json"]);
        no_panic(&out);
        assert_eq!(code(&out), 1, "{mode}: {}{}", stdout(&out), stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        let issues = v["issues"].as_array().unwrap();
        assert!(issues.iter().any(|i| i["path"] == "/amount"), "{mode}: {v}");
    }
    // A schema against itself is compatible in every mode.
    let out = bin(&["schema", "check", &old, &old, "--mode", "full"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}

#[test]
fn check_with_unicode_field_names_reports_them_intact() {
    let dir = tempfile::tempdir().unwrap();
    let old =
        json!({"type": "object", "properties": {"名前": {"type": "string"}}, "required": ["名前"]});
    let new = json!({"type": "object",
        "properties": {"名前": {"type": "integer"}, "prénom🚀": {"type": "string"}},
        "required": ["名前", "prénom🚀"]});
    let (o, n) = (
        write(dir.path(), "o.json", &old),
        write(dir.path(), "n.json", &new),
    );
    let out = bin(&["schema", "check", &o, &n]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("/名前"), "{text}");
    assert!(text.contains("prénom🚀"), "{text}");
    // A unicode file name too.
    let u = write(dir.path(), "schéma-名前.json", &old);
    let out = bin(&["schema", "check", &u, &u]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn check_of_a_huge_schema_finishes_and_finds_the_one_break() {
    let dir = tempfile::tempdir().unwrap();
    let mut props = serde_json::Map::new();
    for i in 0..5000 {
        props.insert(format!("field_{i}"), json!({"type": "integer"}));
    }
    // ...and a deep nest of 200 objects.
    let mut deep = json!({"type": "integer"});
    for _ in 0..40 {
        deep = json!({"type": "object", "properties": {"x": deep}, "required": ["x"]});
    }
    props.insert("deep".into(), deep);
    let required: Vec<String> = (0..5000).map(|i| format!("field_{i}")).collect();
    let old = json!({"type": "object", "properties": props, "required": required});
    let mut new = old.clone();
    new["properties"]["field_4321"] = json!({"type": "string"});
    let (o, n) = (
        write(dir.path(), "o.json", &old),
        write(dir.path(), "n.json", &new),
    );
    let started = Instant::now();
    let out = bin(&["schema", "check", &o, &n, "--json"]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let issues = v["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "{v}");
    assert_eq!(issues[0]["path"], "/field_4321");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let out = bin(&["schema", "check", &o, &o, "--mode", "full"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    // Past serde_json's nesting limit (128) the file is refused with the reason, exit 2, not a
    // stack overflow.
    let mut deeper = json!({"type": "integer"});
    for _ in 0..200 {
        deeper = json!({"type": "object", "properties": {"x": deeper}});
    }
    let d = write(dir.path(), "d.json", &deeper);
    let out = bin(&["schema", "check", &d, &d]);
    no_panic(&out);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("recursion limit"), "{}", stderr(&out));
}

/// Every bad input to `schema check` is exit 2 with a `switchyard:`/`error:` line, never a
/// panic, never a verdict.
#[test]
fn check_with_bad_input_is_exit_2_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &schema_of::<v1::OrderPlaced>());
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.path().join("binary.json");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x7b]).unwrap();
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, r#"{"type": "object", "properties": {"#).unwrap();
    let dirpath = dir.path().to_str().unwrap().to_owned();
    for bad in [
        empty.to_str().unwrap(),
        binary.to_str().unwrap(),
        truncated.to_str().unwrap(),
        dirpath.as_str(),
        "/nonexistent/schema.json",
    ] {
        for args in [
            vec!["schema", "check", &good, bad],
            vec!["schema", "check", bad, &good],
        ] {
            let out = bin(&args);
            no_panic(&out);
            assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
            assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
            assert!(
                stderr(&out).contains("switchyard:") || stderr(&out).contains("error:"),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
    // Argument errors.
    for args in [
        vec!["schema", "check"],
        vec!["schema", "check", &good],
        vec!["schema", "check", &good, &good, &good],
        vec!["schema", "check", &good, &good, "--mode"],
        vec!["schema", "check", &good, &good, "--mode", "BACKWARDS"],
        vec!["schema", "frobnicate"],
        vec!["schema"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
    }
}

/// Valid JSON that is not a schema object (`42`, `[]`, `"s"`, `null`): a typed answer, never a
/// panic. JSON Schema allows `true` / `false` as schemas; anything else is not one.
#[test]
fn check_of_json_that_is_not_a_schema_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.json", &schema_of::<v1::OrderPlaced>());
    for (i, v) in [
        json!(42),
        json!([]),
        json!("s"),
        json!(null),
        json!({"type": 7}),
        json!({"$ref": "#/nowhere"}),
        json!({"$ref": "#"}),
    ]
    .iter()
    .enumerate()
    {
        let bad = write(dir.path(), &format!("bad{i}.json"), v);
        for args in [
            vec!["schema", "check", &good, &bad, "--mode", "full"],
            vec!["schema", "check", &bad, &good, "--mode", "full"],
            vec!["schema", "check", &bad, &bad, "--mode", "full"],
        ] {
            let out = bin(&args);
            no_panic(&out);
            let c = code(&out);
            assert!(
                matches!(c, 0..=2),
                "{v}: {args:?}: exit {c}: {}",
                stderr(&out)
            );
        }
    }
}
