//! The app's committed contracts: `examples/data-pipeline/asyncapi.json` is a valid AsyncAPI
//! 3.0.0 document and what the app generates today, and `examples/python/pipeline_messages.py`
//! is what the Python generator writes from it. Regenerate both with
//! `UPDATE_CONTRACTS=1 cargo test -p data-pipeline --test contracts`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

use std::path::PathBuf;

use serde_json::Value;
use switchyard_contracts::python;

const REGENERATE: &str = "regenerate with `UPDATE_CONTRACTS=1 cargo test -p data-pipeline --test contracts` and commit the result";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document_path() -> PathBuf {
    root().join("asyncapi.json")
}

fn python_path() -> PathBuf {
    root().join("../python/pipeline_messages.py")
}

fn update() -> bool {
    std::env::var("UPDATE_CONTRACTS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Compares `generated` with the committed file at `path` (or writes it under
/// UPDATE_CONTRACTS), failing with the first differing line and how to regenerate.
fn up_to_date(path: &PathBuf, generated: &str, same: impl Fn(&str) -> bool) {
    if update() {
        std::fs::write(path, generated).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} cannot be read ({e}): {REGENERATE}", path.display()));
    if !same(&committed) {
        let diff = committed
            .lines()
            .zip(generated.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}:\n  committed: {a}\n  generated: {b}", i + 1))
            .unwrap_or_else(|| "one is a prefix of the other".to_owned());
        panic!(
            "{} is out of date with what the app generates ({diff}); {REGENERATE}",
            path.display()
        );
    }
}

fn pretty(doc: &Value) -> String {
    serde_json::to_string_pretty(doc).unwrap() + "\n"
}

#[tokio::test]
async fn the_committed_asyncapi_document_is_up_to_date() {
    let doc = data_pipeline::contracts::asyncapi().await.unwrap();
    // Compared as JSON values: key order depends on serde_json's features in the build.
    up_to_date(&document_path(), &pretty(&doc), |committed| {
        serde_json::from_str::<Value>(committed).is_ok_and(|c| c == doc)
    });
}

#[tokio::test]
async fn the_document_is_generated_the_same_way_every_time() {
    let a = data_pipeline::contracts::asyncapi().await.unwrap();
    let b = data_pipeline::contracts::asyncapi().await.unwrap();
    assert_eq!(a, b);
}

#[test]
fn the_committed_asyncapi_document_validates_against_the_official_schema() {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../crates/switchyard-contracts/tests/fixtures/asyncapi-3.0.0.schema.json"
    ))
    .unwrap();
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(document_path()).unwrap()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // What the document says about the app: the frontend's request reaches the CPM with a
    // real schema, and every reference resolves.
    let msg = &doc["components"]["messages"]["PipelineRequest"];
    assert_eq!(msg["payload"]["properties"]["run_id"]["type"], "string");
    assert_eq!(
        doc["operations"]["frontend.send.PipelineRequest"]["channel"]["$ref"],
        "#/channels/cpm.pipeline.request"
    );
    assert_eq!(
        doc["operations"]["cpm.receive.PipelineCancel"]["action"],
        "receive"
    );
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let r = &r[..r.find('"').unwrap()];
        assert!(doc.pointer(&r[1..]).is_some(), "dangling {r}");
    }
    // The check can fail: a document without `info` is rejected.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!validator.is_valid(&broken));
}

#[tokio::test]
async fn the_committed_python_messages_are_up_to_date() {
    // From the app's document, not the committed file: under UPDATE_CONTRACTS the tests run
    // in parallel, and the file may not be rewritten yet. (crates/switchyard-cli/tests/schema.rs
    // checks that the committed module is what the CLI writes from the committed document.)
    let doc = data_pipeline::contracts::asyncapi().await.unwrap();
    let py = python::from_asyncapi(&doc).unwrap();
    for class in [
        "class PipelineRequest:",
        "class PipelineCancel:",
        "class Job:",
        "class RunsQuery:",
        "class RunQuery:",
    ] {
        assert!(py.contains(class), "{class} in\n{py}");
    }
    up_to_date(&python_path(), &py, |committed| committed == py);
}
