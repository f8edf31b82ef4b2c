//! Handler priority groups, filters, batching and delayed delivery.
//! Run: `cargo run -p switchyard --example priority_and_batches`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Message};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: f64,
}
impl Message for Reading {
    const TOPIC: &'static str = "sensors.reading";
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    // validation (priority 10) finishes before storage (priority 0) starts
    let _validate = bus
        .on("validate", |r: Reading, _| async move {
            println!("1. validate {} = {}", r.sensor, r.value);
            Ok::<_, std::io::Error>(())
        })
        .handler_priority(10)
        .start()
        .await?;
    let _store = bus
        .on_batch("store", |batch: Vec<Reading>, _| async move {
            println!("2. store a batch of {}", batch.len());
            Ok::<_, std::io::Error>(())
        })
        .batch(3, Duration::from_millis(20))
        .start()
        .await?;
    let _alarms = bus
        .on("alarms", |r: Reading, _| async move {
            println!("   alarm: {} is at {}", r.sensor, r.value);
            Ok::<_, std::io::Error>(())
        })
        .filter(|env| env.payload.windows(5).any(|w| w == b"\"hot\""))
        .start()
        .await?;
    for (sensor, value) in [("cold", 1.0), ("hot", 99.0), ("cold", 2.0)] {
        bus.publish(Reading {
            sensor: sensor.into(),
            value,
        })
        .await?;
    }
    bus.publish_after(
        Duration::from_millis(50),
        Reading {
            sensor: "late".into(),
            value: 0.5,
        },
    )
    .await?;
    let report = bus
        .publish_and_wait(Reading {
            sensor: "waited".into(),
            value: 3.0,
        })
        .await?;
    println!(
        "publish_and_wait: {} handler(s) done, {} filtered, {} failure(s)",
        report.handled,
        report.filtered,
        report.failures.len()
    );
    bus.run_until_idle().await;
    Ok(())
}
