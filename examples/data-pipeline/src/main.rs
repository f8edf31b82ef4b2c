//! The data-pipeline reference app: CPM plus staging → quality → analytics → insight → report →
//! recommendation domains on one in-process bus, printing the results, the store, a readable
//! trace and the enforcement and error counters.
//!
//! ```text
//! cargo run -p data-pipeline            # one run
//! cargo run -p data-pipeline -- 200     # 200 runs: benchmark
//! cargo run -p data-pipeline -- 1 fail  # analytics fails twice, then is retried
//! cargo run -p data-pipeline -- 1 dlq   # analytics always fails: dead-lettered
//! cargo run -p data-pipeline -- 1 mermaid  # also print the topology
//! cargo run -p data-pipeline -- 1 dot      # the same in Graphviz DOT
//! cargo run -p data-pipeline -- 1 out=/tmp/pipeline  # CSV, tables and report on disk
//! cargo run -p data-pipeline -- 200 rows=5  # benchmark with almost no module work
//! cargo run -p data-pipeline -- 200 bare    # without the observing system components
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run -p data-pipeline  # on PostgreSQL
//! ```
//!
//! `DATABASE_URL` picks the database: unset or `sqlite:PATH` is SQLite, `postgres://...` is
//! PostgreSQL (tables in the schema `DATABASE_SCHEMA`, default `data_pipeline`).

use data_pipeline::{DemoConfig, FailurePlan, run_demo};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let fail = if has("fail") {
        Some(FailurePlan {
            domain: "analytics".into(),
            times: 2,
        })
    } else if has("dlq") {
        Some(FailurePlan {
            domain: "analytics".into(),
            times: u32::MAX,
        })
    } else {
        None
    };
    let data_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("out="))
        .map(Into::into);
    let report = run_demo(
        DemoConfig {
            runs,
            fail,
            data_dir,
            observers: !has("bare"),
            ..DemoConfig::default()
        }
        .with_env_database(),
    )
    .await?;
    println!("{}", report.summary());
    if has("mermaid") {
        println!(
            "== declared topology (Mermaid)\n{}",
            report.topology_mermaid
        );
        println!(
            "== observed topology (Mermaid)\n{}",
            report.observed_mermaid
        );
    }
    if has("dot") {
        println!("== declared topology (DOT)\n{}", report.topology_dot);
        println!("== observed topology (DOT)\n{}", report.observed_dot);
    }
    for path in &report.files_written {
        println!("wrote {}", path.display());
    }
    for letter in &report.dead_letters {
        println!("dead letter: {}", letter.error);
    }
    Ok(())
}
