//! `switchyard schema export`: the AsyncAPI document against the registry and the official
//! schema; bad input.

use super::node::{TestNode, registry};
use super::*;

fn official_asyncapi_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../switchyard-contracts/tests/fixtures/asyncapi-3.0.0.schema.json"
    ))
    .unwrap();
    jsonschema::draft7::new(&schema).unwrap()
}

fn export_from(node: &TestNode) -> Value {
    let out = node.run(&["schema", "export"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

#[test]
fn schema_export_matches_the_registry_validates_and_changes_when_a_type_is_added() {
    let validator = official_asyncapi_validator();
    let node = TestNode::start(false);
    let doc = export_from(&node);
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let messages = doc["components"]["messages"].as_object().unwrap();
    let names: std::collections::BTreeSet<&str> = messages.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["Charge", "OrderPlaced"].into_iter().collect(),
        "{doc}"
    );
    let channels = doc["channels"].as_object().unwrap();
    let addresses: std::collections::BTreeSet<&str> = channels
        .values()
        .filter_map(|c| c["address"].as_str())
        .collect();
    assert!(
        addresses.contains("orders.placed") && addresses.contains("billing.charge"),
        "{addresses:?}"
    );
    // The payload is the registered schema: `order` and `amount` required, `note` optional.
    let payload = &messages["OrderPlaced"]["payload"];
    let required: Vec<&str> = payload["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["order", "amount"], "{payload}");
    assert!(payload["properties"]["note"].is_object(), "{payload}");
    // The producer declared, the live subscription a consumer.
    let ops = doc["operations"].as_object().unwrap();
    assert!(
        ops.keys().any(|k| k.starts_with("shop.send.")),
        "{:?}",
        ops.keys()
    );
    assert!(
        ops.keys()
            .any(|k| k.contains("orders-recorder") && k.contains(".receive.")),
        "{:?}",
        ops.keys()
    );
    // To a file: the same document.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ドキュメント.json");
    let out = node.run(&["schema", "export", "-o", f.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let from_file: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    assert_eq!(from_file, doc);
    // ...and from that file as Python, every registered type a class.
    let out = bin(&[
        "schema",
        "export",
        "--lang",
        "python",
        "--from",
        f.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("class OrderPlaced:") && stdout(&out).contains("class Charge:"),
        "{}",
        stdout(&out)
    );
    drop(node);

    // A node whose registry has one more type: the document has it, its doc comment's unicode
    // intact, and still validates.
    let node = TestNode::start(true);
    let doc2 = export_from(&node);
    let errors: Vec<String> = validator
        .iter_errors(&doc2)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let m = &doc2["components"]["messages"]["UserRenamed"];
    assert!(m.is_object(), "{doc2}");
    assert!(m.to_string().contains("名前 🚀"), "{m}");
    assert_ne!(
        doc2["components"]["messages"],
        doc["components"]["messages"]
    );
}

/// `schema export` with bad input: typed errors and the documented codes, no panic.
#[test]
fn schema_export_with_bad_input_fails_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let notjson = dir.path().join("x.json");
    std::fs::write(&notjson, "{{{").unwrap();
    let empty_doc = write(dir.path(), "e.json", &json!({"asyncapi": "3.0.0"}));
    let wrong = write(
        dir.path(),
        "w.json",
        &json!({"components": {"messages": 5}}),
    );
    // An unreadable or non-JSON `--from` is exit 2, as `schema check`'s unreadable input is.
    for args in [
        vec!["schema", "export", "--from", "/nonexistent/doc.json"],
        vec!["schema", "export", "--from", notjson.to_str().unwrap()],
        vec![
            "schema",
            "export",
            "--lang",
            "python",
            "--from",
            notjson.to_str().unwrap(),
        ],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("switchyard:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [
        vec!["schema", "export", "--lang", "python", "--from", &wrong],
        // Nothing listens there.
        vec!["schema", "export", "--url", "http://127.0.0.1:9"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 1, "{args:?}: {}{}", stdout(&out), stderr(&out));
        assert!(
            stderr(&out).contains("switchyard:"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // A document with no messages is an empty module, or a reason, but not a panic.
    let out = bin(&["schema", "export", "--lang", "python", "--from", &empty_doc]);
    no_panic(&out);
    assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
    // Unwritable output: exit 1 naming the file.
    let out = bin(&[
        "schema",
        "export",
        "--from",
        &empty_doc,
        "-o",
        "/nonexistent/dir/out.json",
    ]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write output"),
        "{}",
        stderr(&out)
    );
    for args in [
        vec!["schema", "export", "--lang"],
        vec!["schema", "export", "--lang", "rust"],
        vec!["schema", "export", "-o"],
    ] {
        let out = bin(&args);
        no_panic(&out);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
}

fn foreign_type(name: &str, topic: &str, schema: Value) -> switchyard_contracts::MessageType {
    switchyard_contracts::MessageType {
        name: name.into(),
        topic: topic.into(),
        kind: "event".into(),
        version: 1,
        content_type: "application/json".into(),
        schema,
        producers: Default::default(),
        consumers: Default::default(),
    }
}

/// Types only other languages publish, with unicode names and names that reduce to the same
/// AsyncAPI key, plus 300 types of 200 fields: the exported document keeps one message per
/// type, still validates, and the validator at the node uses each one's schema.
#[test]
fn unicode_colliding_and_many_types_export_valid_and_are_each_enforced() {
    let mut reg = registry(false);
    let obj = |field: &str, ty: &str| json!({"type": "object", "properties": {field: {"type": ty}}, "required": [field]});
    reg.insert(foreign_type(
        "Bestellung名前",
        "orders.de",
        obj("größe", "integer"),
    ))
    .unwrap();
    reg.insert(foreign_type(
        "Bestellung__",
        "orders.de2",
        obj("name", "string"),
    ))
    .unwrap();
    for t in 0..300 {
        let mut props = serde_json::Map::new();
        for f in 0..200 {
            props.insert(format!("f{f}"), json!({"type": "integer"}));
        }
        reg.insert(foreign_type(
            &format!("Bulk{t}"),
            &format!("bulk.t{t}"),
            json!({"type": "object", "properties": props, "required": ["f0"]}),
        ))
        .unwrap();
    }
    let validator = Validator::new(&reg).unwrap();
    let node = TestNode::start_with(reg, validator);
    let doc = export_from(&node);
    let errors: Vec<String> = official_asyncapi_validator()
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{:#?}", &errors[..errors.len().min(5)]);
    let messages = doc["components"]["messages"].as_object().unwrap();
    assert_eq!(
        messages.len(),
        2 + 2 + 300,
        "{:?}",
        messages.keys().take(10).collect::<Vec<_>>()
    );
    for key in messages.keys() {
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "{key}"
        );
    }
    // Both colliding types kept, each with its own payload.
    let payloads: Vec<String> = messages
        .values()
        .map(|m| m["payload"].to_string())
        .collect();
    assert!(
        payloads.iter().any(|p| p.contains("größe")),
        "unicode property lost"
    );
    assert!(payloads.iter().any(|p| p.contains("\"name\"")));

    // Enforced on each: the unicode field named in the refusal.
    let out = node.run(&["pub", "orders.de", r#"{"größe": "groß"}"#]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("/größe"), "{}", stderr(&out));
    let out = node.run(&["pub", "orders.de", r#"{"größe": 42}"#]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = node.run(&["pub", "bulk.t299", r#"{"f0": 1, "f199": "x"}"#]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("/f199"), "{}", stderr(&out));

    // Python from the served document: a non-ASCII property (`größe`, though Python 3 would
    // take it: the generator keeps to ASCII identifiers, so NFKC folding can never rename a
    // field) is the documented refusal naming it, exit 1, never a panic.
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "doc.json", &doc);
    let out = bin(&["schema", "export", "--lang", "python", "--from", &f]);
    no_panic(&out);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("`größe`"), "{}", stderr(&out));
    // Without that type, every other one is a class.
    let mut doc = doc;
    let messages = doc["components"]["messages"].as_object_mut().unwrap();
    let key = messages
        .iter()
        .find(|(_, m)| m["payload"].to_string().contains("größe"))
        .map(|(k, _)| k.clone())
        .unwrap();
    messages.remove(&key);
    let f = write(dir.path(), "doc2.json", &doc);
    let out = bin(&["schema", "export", "--lang", "python", "--from", &f]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let py = stdout(&out);
    assert!(
        py.contains("class Bulk299:"),
        "{}",
        &py[..py.len().min(500)]
    );
    assert!(py.contains("class OrderPlaced:"));
}

/// A payload near the body limit with an error per element: the refusal stays typed and
/// the node answers in bounded time; the answer's size is reported.
#[test]
fn a_huge_invalid_payload_is_refused_in_bounded_time() {
    let mut reg = Registry::new();
    reg.insert(foreign_type(
        "Samples",
        "sensors.samples",
        json!({"type": "object", "properties": {"xs": {"type": "array", "items": {"type": "integer"}}}, "required": ["xs"]}),
    ))
    .unwrap();
    let validator = Validator::new(&reg).unwrap();
    let node = TestNode::start_with(reg, validator);
    let xs: Vec<&str> = vec!["a"; 90_000];
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "big.json", &json!({ "xs": xs }));
    let started = Instant::now();
    let out = node.run(&["pub", "sensors.samples", "-f", &f]);
    let took = started.elapsed();
    assert_eq!(
        code(&out),
        1,
        "{}",
        &stderr(&out)[..stderr(&out).len().min(300)]
    );
    let err = stderr(&out);
    assert!(
        err.contains("invalid_message"),
        "{}",
        &err[..err.len().min(300)]
    );
    assert!(err.contains("/xs/0"), "{}", &err[..err.len().min(300)]);
    eprintln!("refusal: {} bytes of stderr in {took:?}", err.len());
    assert!(took < Duration::from_secs(20), "{took:?}");
    let dlq = node.dlq_len(1);
    let entry_error = dlq["items"][0]["error"].as_str().unwrap_or_default().len();
    eprintln!("dead letter error text: {entry_error} bytes");
}
