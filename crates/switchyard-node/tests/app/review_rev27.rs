//! Review rev27: the reference app as its user sees it, through the gateway calls the `/app`
//! page makes (as the `frontend` principal): uploaded CSVs good and bad, the failure and hold
//! switches, a reused run id, many runs at once, the history.

use std::time::Duration;

use serde_json::{Value, json};

use super::common::{client, error_of};
use super::{
    AppNode, FRONTEND_TOKEN, OPERATOR_TOKEN, await_step, config, follow, live, next_frame, query,
    start_run,
};

const HEADER: &str = "date,region,product,units,unit_price\n";

/// The run's record from `cpm.query.run`.
async fn run_of(node: &AppNode, run_id: &str) -> Value {
    query(node, "cpm.query.run", json!({"run_id": run_id})).await
}

/// `GET /v1/status` as the operator.
async fn status(node: &AppNode) -> Value {
    client()
        .get(node.url("/v1/status"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (at most 10 s) until the bus has no accepted message left unsettled and no
/// subscription has a delivery queued or in flight; panics with what is left otherwise.
async fn await_idle(node: &AppNode) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(node).await;
        let subs: Value = client()
            .get(node.url("/v1/subscriptions"))
            .bearer_auth(OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let busy: Vec<&Value> = subs["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["in_flight"] != 0 || s["depth"] != 0)
            .collect();
        if s["pending"] == 0 && busy.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still busy after 10 s: pending {}, {busy:?}",
            s["pending"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CSV with a row of each kind of mistake: every failed row is listed with its line (1 =
/// the header), column, rule and value; the good rows are counted and summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_row_of_an_uploaded_csv_is_listed_with_line_column_and_rule() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let csv = format!(
        "{HEADER}\
         2026-01-01,north,alpha,3,2.50\n\
         2026-01-02,north,alpha,three,2.50\n\
         2026-01-03,south,beta,2,abc\n\
         2026-01-04,south,\"beta, deluxe\",2,1.00\n\
         2026-13-05,south,beta,2,1.00\n\
         2026-01-06,east,beta,-1,1.00\n\
         2026-01-07,east,beta,1,\n\
         2026-01-08,east,beta,1,0\n\
         2026-01-09,west,gamma,4,1.25\n\
         2026-01-10,west,gamma,4,1.25,extra\n"
    );
    let correlation = start_run(
        &node,
        json!({"run_id": "bad-rows", "dataset": "", "csv": csv}),
    )
    .await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    let d = run_of(&node, "bad-rows").await;
    assert_eq!(d["staged"]["rows"], 10, "{}", d["staged"]);
    assert_eq!(d["quality"]["valid"], 2, "{}", d["quality"]);
    assert_eq!(d["quality"]["issues"], 8, "{}", d["quality"]);
    let failed: Vec<(u64, String, String, String)> = d["quality"]["failed_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["column"].as_str().unwrap().to_owned(),
                r["rule"].as_str().unwrap().to_owned(),
                r["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        (3, "units", "schema.integer", "three"),
        (4, "unit_price", "schema.number", "abc"),
        // RFC 4180: the quoted comma is part of the product, five fields.
        (5, "product", "rule.known_product", "beta, deluxe"),
        (6, "date", "schema.date", "2026-13-05"),
        (7, "units", "rule.units_non_negative", "-1"),
        (8, "unit_price", "schema.required", ""),
        (9, "unit_price", "rule.price_positive", "0"),
        (11, "row", "schema.columns", "6 fields"),
    ];
    let want: Vec<(u64, String, String, String)> = want
        .iter()
        .map(|(l, c, r, v)| (*l, (*c).into(), (*r).into(), (*v).into()))
        .collect();
    assert_eq!(failed, want);
    assert_eq!(
        d["features"]["total_revenue"].as_f64().unwrap(),
        3.0 * 2.5 + 4.0 * 1.25
    );
    node.stop().await;
}

/// RFC 4180: a quoted field is its value without the quotes, and a comma inside quotes is
/// part of the field. A spreadsheet export that quotes its text fields
/// (`"north"`, `"2.50"`) is a valid CSV of the five columns; a doubled quote, a line break
/// and a comma inside quotes are part of the field, and a row is reported on its first line.
///
/// Failed before the fix (3 runs of 3): `assertion left == right failed: {... "failed_rows":[{"column":
/// "region","fields":["2026-01-02","\"north\"","alpha","3","\"2.50\""],"line":3,"rule":
/// "rule.known_region","value":"\"north\""}],"issues":1,"valid":1} left: Number(1) right: 2`.
/// The staging step split each line on every `,` and kept the quotes (`l.split(',')`), so
/// `"north"` was an unknown region; it now reads the upload with the `csv` crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quoted_csv_field_is_read_as_its_value() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let csv = format!(
        "{HEADER}2026-01-01,north,alpha,1,1.00\n2026-01-02,\"north\",alpha,3,\"2.50\"\n\
         2026-01-03,\"south\",\"beta \"\"x\"\"\nline two\",1,1.00\n\
         2026-01-04,\"east, \",alpha,1,1.00\n"
    );
    let correlation = start_run(
        &node,
        json!({"run_id": "quoted", "dataset": "", "csv": csv}),
    )
    .await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    let d = run_of(&node, "quoted").await;
    assert_eq!(d["staged"]["rows"], 4, "{}", d["staged"]);
    assert_eq!(d["quality"]["valid"], 2, "{}", d["quality"]);
    // A doubled quote is one quote, a quoted line break is part of the field (the row is
    // reported on the line it starts on, and the next row on its own line), a quoted comma
    // is part of the field.
    assert_eq!(
        d["quality"]["failed_rows"],
        json!([
            {"line": 4, "column": "product", "rule": "rule.known_product",
             "value": "beta \"x\"\nline two",
             "fields": ["2026-01-03", "south", "beta \"x\"\nline two", "1", "1.00"]},
            {"line": 6, "column": "region", "rule": "rule.known_region", "value": "east,",
             "fields": ["2026-01-04", "east,", "alpha", "1", "1.00"]},
        ]),
        "{}",
        d["quality"]
    );
    node.stop().await;
}

/// A CSV the staging step cannot read at all fails the run with a typed error and no report:
/// wrong header, empty upload. A header with no rows ends (it does not hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_csv_fails_the_run_with_a_typed_error() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    for (id, csv, error_type) in [
        (
            "wrong-cols",
            "day,area,item,qty,price\n2026-01-01,north,alpha,1,1\n",
            "SchemaMismatch",
        ),
        ("empty", "", "EmptyDataset"),
    ] {
        let correlation = start_run(&node, json!({"run_id": id, "dataset": "", "csv": csv})).await;
        let (done, _) = follow(&mut ws, &correlation).await;
        assert_eq!(done["status"], "failed", "{id}: {done}");
        let d = run_of(&node, id).await;
        assert_eq!(d["run"]["status"], "failed", "{id}");
        assert_eq!(d["run"]["input"], "csv", "{id}");
        assert_eq!(
            d["run"]["error"]["error_type"], error_type,
            "{id}: {}",
            d["run"]
        );
        assert!(d["report"]["markdown"].is_null(), "{id}");
    }
    // Only the header: the run ends one way or the other, and its record says which.
    let correlation = start_run(
        &node,
        json!({"run_id": "header-only", "dataset": "", "csv": HEADER}),
    )
    .await;
    let (done, _) = follow(&mut ws, &correlation).await;
    let d = run_of(&node, "header-only").await;
    assert_eq!(d["run"]["status"], done["status"], "{}", d["run"]);
    assert_ne!(d["run"]["status"], "running");
    // A dataset that does not exist.
    let correlation = start_run(&node, json!({"run_id": "no-file", "dataset": "nope.csv"})).await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(run_of(&node, "no-file").await["run"]["input"], "file");
    await_idle(&node).await;
    node.stop().await;
}

/// A start the gateway cannot take is refused with a typed error, and no run starts: a body
/// that is not UTF-8, a CSV over `limits.max_body_bytes`, a CSV that is not a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_gateway_cannot_take_is_refused_with_a_typed_error() {
    let node = AppNode::start(config()).await;
    let post = |body: Vec<u8>| {
        client()
            .post(node.url("/v1/publish/cpm.pipeline.request"))
            .bearer_auth(FRONTEND_TOKEN)
            .header("x-source", "frontend")
            .header("content-type", "application/json")
            .body(body)
    };
    let mut latin1 = br#"{"run_id": "latin", "dataset": "", "csv": ""#.to_vec();
    latin1.extend_from_slice(
        b"date,region,product,units,unit_price\n2026-01-01,n\xf6rth,alpha,1,1\n",
    );
    latin1.extend_from_slice(br#""}"#);
    let (status, kind, message) = error_of(post(latin1).send().await.unwrap()).await;
    assert_eq!(status, 400, "{kind}: {message}");
    let mut huge = HEADER.to_owned();
    while huge.len() < 2 * 1024 * 1024 {
        huge.push_str("2026-01-01,north,alpha,1,1.00\n");
    }
    let body = serde_json::to_vec(&json!({"run_id": "huge", "dataset": "", "csv": huge})).unwrap();
    let (status, kind, message) = error_of(post(body).send().await.unwrap()).await;
    assert_eq!((status, kind.as_str()), (413, "too_large"), "{message}");
    assert!(message.contains("max_body_bytes"), "{message}");
    let body = serde_json::to_vec(&json!({"run_id": "num", "dataset": "", "csv": 5})).unwrap();
    let res = post(body).send().await.unwrap();
    let code = res.status().as_u16();
    // The gateway does not know the app's schema: it may accept the message; the CPM then
    // cannot decode it and no run starts.
    assert!(code == 202 || code == 400, "{code}");
    await_idle(&node).await;
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    assert_eq!(runs["runs"], json!([]), "{runs}");
    node.stop().await;
}

/// The failure switch: the domain fails on every attempt, the run fails, its dead letter is
/// listed with its attempts, nothing stays pending on the bus and the next run still
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_domain_fails_the_run_and_leaves_nothing_pending() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let correlation = start_run(
        &node,
        json!({"run_id": "fail-q", "dataset": "", "rows": 30, "fail": "quality"}),
    )
    .await;
    let (done, mut steps) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "failed", "{done}");
    await_step(&mut ws, &correlation, &mut steps, "quality", "failed").await;
    assert!(
        !steps.iter().any(|(d, _)| d == "analytics"),
        "no step after the failed one: {steps:?}"
    );
    let run = run_of(&node, "fail-q").await["run"].clone();
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["error_type"], "InjectedFailure", "{run}");
    let letters = run["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{run}");
    assert!(letters[0]["attempts"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(letters[0]["topic"], "quality.validate.execute", "{run}");
    await_idle(&node).await;
    let dlq: Value = client()
        .get(node.url("/v1/dlq"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        dlq["total"], 1,
        "one dead letter for one failed step: {dlq}"
    );
    let next = start_run(
        &node,
        json!({"run_id": "after-fail", "dataset": "", "rows": 30}),
    )
    .await;
    let (done, _) = follow(&mut ws, &next).await;
    assert_eq!(done["status"], "completed", "{done}");
    node.stop().await;
}

/// The hold switch: a run held in analytics is cancelled; it ends `cancelled` with fewer
/// than six domains, nothing stays in flight, a cancel of an unknown run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_run_cancelled_ends_cancelled_with_nothing_in_flight() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let correlation = start_run(
        &node,
        json!({"run_id": "held", "dataset": "", "rows": 30, "hold": "analytics"}),
    )
    .await;
    let mut steps = Vec::new();
    await_step(&mut ws, &correlation, &mut steps, "analytics", "running").await;
    assert_eq!(run_of(&node, "held").await["run"]["status"], "running");
    let cancel = |id: &str| {
        client()
            .post(node.url("/v1/publish/cpm.pipeline.cancel"))
            .bearer_auth(FRONTEND_TOKEN)
            .header("x-source", "frontend")
            .json(&json!({"run_id": id}))
            .send()
    };
    assert_eq!(cancel("no-such-run").await.unwrap().status(), 202);
    assert_eq!(cancel("held").await.unwrap().status(), 202);
    loop {
        let f = next_frame(&mut ws).await;
        let p = &f["message"]["payload"];
        if p["correlation_id"] == correlation.as_str()
            && p["role"] == "cpm"
            && p["to"] == "cancelled"
        {
            break;
        }
    }
    await_idle(&node).await;
    let d = run_of(&node, "held").await;
    assert_eq!(d["run"]["status"], "cancelled", "{}", d["run"]);
    assert!(
        d["run"]["domains"].as_array().unwrap().len() < 6,
        "{}",
        d["run"]
    );
    assert!(d["report"]["markdown"].is_null());
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        1,
        "the unknown cancel added nothing: {runs}"
    );
    node.stop().await;
}

/// The latency switch slows a step by `slow_delay` (400 ms) and the run still completes with
/// every domain; the run records the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_run_completes_and_records_its_switch() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let correlation = start_run(
        &node,
        json!({"run_id": "slow-1", "dataset": "", "rows": 30, "slow": "insight"}),
    )
    .await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    let d = run_of(&node, "slow-1").await;
    let run = &d["run"];
    assert_eq!(run["slow"], "insight");
    let insight_ms = run["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "insight")
        .unwrap()[1]
        .as_u64()
        .unwrap();
    assert!(insight_ms >= 400, "{run}");
    assert!(d["performance_tracker"]["warmup"].as_u64().is_some(), "{d}");
    assert_eq!(
        run["performance_anomalies"],
        json!([]),
        "cold baselines flag nothing"
    );
    node.stop().await;
}

/// An upload just under `limits.max_body_bytes` (about 30 000 rows) goes through every
/// domain in a bounded time and every row is staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_near_the_body_limit_is_staged_whole() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let mut csv = HEADER.to_owned();
    let mut rows = 0;
    while csv.len() < 900 * 1024 {
        csv.push_str(&format!(
            "2026-01-{:02},north,alpha,{},1.50\n",
            rows % 28 + 1,
            rows % 9
        ));
        rows += 1;
    }
    let started = std::time::Instant::now();
    let correlation = start_run(&node, json!({"run_id": "big", "dataset": "", "csv": csv})).await;
    let (done, _) = follow(&mut ws, &correlation).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let d = run_of(&node, "big").await;
    assert_eq!(d["staged"]["rows"], rows, "{}", d["staged"]["rows"]);
    assert_eq!(d["quality"]["valid"], rows);
    assert_eq!(d["staged"]["preview"].as_array().unwrap().len(), 20);
    node.stop().await;
}

/// Many runs at once: each completes with its six domains under its own correlation id, and
/// the history lists them newest first, `limit` honoured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_at_once_each_complete_and_the_history_lists_them() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let n = 16;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            start_run(
                &node,
                json!({"run_id": format!("many-{i:02}"), "dataset": "", "rows": 40}),
            )
            .await,
        );
    }
    let mut open: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !open.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs never ended: {open:?}"
        );
        let f = next_frame(&mut ws).await;
        let m = &f["message"];
        if m["topic"] == "cpm.pipeline.complete" {
            let c = m["payload"]["correlation_id"].as_str().unwrap_or_default();
            if open.remove(c) {
                assert_eq!(m["payload"]["status"], "completed", "{m}");
            }
        }
    }
    let runs = query(&node, "cpm.query.runs", json!({})).await;
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs.len(), n);
    let listed: Vec<&str> = runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    let mut newest_first: Vec<String> = (0..n).map(|i| format!("many-{i:02}")).collect();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    for r in runs {
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["domains"].as_array().unwrap().len(), 6, "{r}");
        let i: usize = r["run_id"].as_str().unwrap()[5..].parse().unwrap();
        assert_eq!(r["correlation_id"], ids[i].as_str());
    }
    let limited = query(&node, "cpm.query.runs", json!({"limit": 3})).await;
    let limited: Vec<&str> = limited["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(limited, ["many-15", "many-14", "many-13"]);
    await_idle(&node).await;
    node.stop().await;
}

/// Two runs with the same run id, the first still under way when the second starts: the
/// second is refused ("run dup is already under way", error type `RunIdInUse`, on its own
/// `cpm.pipeline.complete`), and the first keeps its own record, domains and outcome.
///
/// Failed before the fix (review rev27, 3 runs of 3): `assertion left == right failed:
/// {"correlation_id": "01M96XJKSVSX..." (the second run's), "dead_letters":[... the first
/// run's ...], "domains":[["staging",405],["staging",367],["quality",5],["quality",5], ...],
/// "status":"completed"} left: 9 right: 6`: the registry (keyed by run id) replaced the first
/// run's record with the second's and gave it both runs' domains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_one_run_id_keep_their_own_outcomes() {
    let node = AppNode::start(config()).await;
    let mut ws = live(&node).await;
    let first = start_run(
        &node,
        json!({"run_id": "dup", "dataset": "", "rows": 30, "slow": "staging", "fail": "insight"}),
    )
    .await;
    let mut steps = Vec::new();
    await_step(&mut ws, &first, &mut steps, "staging", "running").await;
    let second = start_run(&node, json!({"run_id": "dup", "dataset": "", "rows": 50})).await;
    let mut outcomes = std::collections::HashMap::new();
    while outcomes.len() < 2 {
        let f = next_frame(&mut ws).await;
        let m = &f["message"];
        if m["topic"] == "cpm.pipeline.complete" {
            let c = m["payload"]["correlation_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if c == first || c == second {
                outcomes.insert(c, m["payload"].clone());
            }
        }
    }
    let refused = &outcomes[&second];
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["error"]["error_type"], "RunIdInUse", "{refused}");
    assert_eq!(
        refused["error"]["message"], "run dup is already under way",
        "{refused}"
    );
    assert_eq!(outcomes[&first]["status"], "failed", "{}", outcomes[&first]);
    await_idle(&node).await;
    let d = run_of(&node, "dup").await;
    let run = &d["run"];
    assert_eq!(run["correlation_id"], first.as_str(), "{run}");
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["error_type"], "InjectedFailure", "{run}");
    let domains: Vec<&str> = run["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d[0].as_str().unwrap())
        .collect();
    assert_eq!(domains, ["staging", "quality", "analytics"], "{run}");
    // The first run staged its own 30 rows, not the refused start's 50.
    assert_eq!(d["staged"]["rows"], 30, "{}", d["staged"]);
    // Once the first run has ended, the id may be used again: the new run replaces its record.
    let third = start_run(&node, json!({"run_id": "dup", "dataset": "", "rows": 20})).await;
    let (done, _) = follow(&mut ws, &third).await;
    assert_eq!(done["status"], "completed", "{done}");
    let d = run_of(&node, "dup").await;
    assert_eq!(d["run"]["correlation_id"], third.as_str(), "{}", d["run"]);
    assert_eq!(
        d["run"]["domains"].as_array().unwrap().len(),
        6,
        "{}",
        d["run"]
    );
    assert_eq!(d["staged"]["rows"], 20, "{}", d["staged"]);
    node.stop().await;
}
