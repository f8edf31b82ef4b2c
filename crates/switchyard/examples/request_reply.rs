//! Commands and requests: exactly one handler, a typed result back, a deadline.
//! Run: `cargo run -p switchyard --example request_reply`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Command, Kind, Message, SendError};

#[derive(Clone, Serialize, Deserialize)]
struct Quote {
    sku: String,
}
impl Message for Quote {
    const TOPIC: &'static str = "pricing.quote";
    const KIND: Kind = Kind::Command;
}
impl Command for Quote {
    type Output = u32;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    // no handler yet: fails at once, never hangs
    match bus.send(Quote { sku: "abc".into() }).await {
        Err(SendError::NoHandler { topic }) => println!("no handler for {topic} (as expected)"),
        other => println!("unexpected: {other:?}"),
    }
    let _pricing = bus
        .handle(|q: Quote, _ctx| async move {
            if q.sku == "slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Ok::<_, std::io::Error>(q.sku.len() as u32 * 100)
        })
        .workers(4)
        .start()
        .await?;
    let price = bus.send(Quote { sku: "abc".into() }).await?;
    println!("send    pricing.quote abc  -> {price}");
    let price = bus
        .request(Quote { sku: "abcd".into() }, Duration::from_millis(200))
        .await?;
    println!("request pricing.quote abcd -> {price} (within 200 ms)");
    match bus
        .request(Quote { sku: "slow".into() }, Duration::from_millis(200))
        .await
    {
        Err(SendError::Timeout { deadline }) => {
            println!("request pricing.quote slow -> timeout after {deadline:?}")
        }
        other => println!("unexpected: {other:?}"),
    }
    Ok(())
}
