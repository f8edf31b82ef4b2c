//! The Rust side of the Python examples and interop tests: a separate process on the same
//! embedded log or NATS stream as a Python bus, exchanging the same JSON messages.
//!
//! ```text
//! rust-peer log-publish <dir> <n>                      publish n OrderPlaced on orders.placed
//! rust-peer log-consume <dir> <group> <pattern> <n>    print n messages as JSON lines
//! rust-peer nats-echo <url> <stream> <prefix> <n>      answer n <prefix>.py.orders with
//!                                                      <prefix>.rust.confirmed, caused by them
//! rust-peer nats-interop <url> <stream> <prefix> <n>   print n events of <prefix>.events.#
//!                                                      (headers included) and serve the
//!                                                      command <prefix>.double meanwhile;
//!                                                      <prefix>.events.orders must match
//!                                                      the ForeignOrder schema (others are
//!                                                      dead-lettered); at the end print
//!                                                      every dead letter
//! ```
//!
//! Every line printed is one JSON object, so the Python side can assert on it.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Ctx, Envelope, Message, Pattern, Topic, handler_fn};
use switchyard_contracts::{MessageType, Registry, Validator};
use switchyard_log::{LogConfig, LogTransport};
use switchyard_nats::{NatsConfig, NatsTransport};
use tokio::sync::Notify;

/// The same fields as the Python `OrderPlaced` dataclass of the tests and examples.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderPlaced {
    id: u64,
    sku: String,
    qty: u32,
    #[serde(default)]
    tags: Vec<String>,
}
impl Message for OrderPlaced {
    const TOPIC: &'static str = "orders.placed";
}

/// What the Rust side answers an order with.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct OrderConfirmed {
    id: u64,
    by: String,
}
impl Message for OrderConfirmed {
    const TOPIC: &'static str = "orders.confirmed";
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn line(env: &Envelope) -> String {
    let payload: serde_json::Value =
        serde_json::from_slice(&env.payload).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "topic": env.topic.as_str(),
        "id": env.id.to_string(),
        "correlation_id": env.correlation_id.to_string(),
        "causation_id": env.causation_id().map(ToString::to_string),
        "type_name": env.type_name.as_deref(),
        "kind": env.kind.as_str(),
        "headers": env.headers().iter().collect::<std::collections::BTreeMap<_, _>>(),
        "payload": payload,
    })
    .to_string()
}

/// Counts handled messages; `wait` returns once `n` were seen, or errors after `timeout`.
#[derive(Clone, Default)]
struct Counter(Arc<(AtomicU64, Notify)>);

impl Counter {
    fn hit(&self) {
        self.0.0.fetch_add(1, Ordering::AcqRel);
        self.0.1.notify_waiters();
    }

    async fn wait(&self, n: u64, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.0.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = self.0.0.load(Ordering::Acquire);
            if seen >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!("saw {seen} of {n} messages within {timeout:?}").into());
            }
        }
    }
}

async fn log_publish(dir: &str, n: u64) -> Result<(), Error> {
    let bus = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir))?)
        .build()?;
    for id in 0..n {
        let order = OrderPlaced {
            id,
            sku: format!("sku-{id}"),
            qty: id as u32 + 1,
            tags: vec!["rust".into()],
        };
        let env = order.to_envelope()?;
        println!("{}", line(&env));
        bus.publish_envelope(env).await?;
    }
    bus.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

async fn log_consume(dir: &str, group: &str, pattern: &str, n: u64) -> Result<(), Error> {
    let bus = Bus::builder()
        .transport(LogTransport::open(LogConfig::new(dir))?)
        .build()?;
    let counter = Counter::default();
    let c = counter.clone();
    let _sub = bus
        .subscribe(
            group,
            pattern,
            handler_fn(move |env: Envelope| {
                let c = c.clone();
                async move {
                    println!("{}", line(&env));
                    c.hit();
                    Ok::<_, std::io::Error>(())
                }
            }),
        )
        .start()
        .await?;
    let result = counter.wait(n, Duration::from_secs(20)).await;
    bus.shutdown(Duration::from_secs(5)).await?;
    result
}

async fn nats_echo(url: &str, stream: &str, prefix: &str, n: u64) -> Result<(), Error> {
    let transport = NatsTransport::connect(
        NatsConfig::new(url)
            .with_stream(stream, [Pattern::new(&format!("{prefix}.#"))?])
            .with_max_age(Duration::from_secs(3600)),
    )
    .await?;
    let bus = Bus::builder().transport(transport).build()?;
    let counter = Counter::default();
    let c = counter.clone();
    let confirmed = Topic::new(&format!("{prefix}.rust.confirmed"))?;
    let _sub = bus
        .on("rust-echo", move |order: OrderPlaced, ctx: Ctx| {
            let (c, confirmed) = (c.clone(), confirmed.clone());
            async move {
                println!("{}", line(ctx.envelope()));
                let mut reply = OrderConfirmed {
                    id: order.id,
                    by: "rust".into(),
                }
                .to_envelope()?
                .caused_by(ctx.envelope());
                reply.topic = confirmed;
                ctx.bus().publish_envelope(reply).await?;
                c.hit();
                Ok::<_, Error>(())
            }
        })
        .pattern(&format!("{prefix}.py.orders"))
        .start()
        .await?;
    println!("{}", serde_json::json!({ "ready": true }));
    let result = counter.wait(n, Duration::from_secs(30)).await;
    bus.shutdown(Duration::from_secs(5)).await?;
    result
}

/// A command any NATS client can send: a request to `_sy.cmd.<prefix>.double`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Double {
    n: i64,
}
impl Message for Double {
    const TOPIC: &'static str = "double";
    const KIND: switchyard::Kind = switchyard::Kind::Command;
}
impl switchyard::Command for Double {
    type Output = i64;
}

/// Prints the events a foreign client publishes (kind and headers included) and serves a
/// command it sends with a plain NATS request.
async fn nats_interop(url: &str, stream: &str, prefix: &str, n: u64) -> Result<(), Error> {
    let transport = NatsTransport::connect(
        NatsConfig::new(url)
            .with_stream(stream, [Pattern::new(&format!("{prefix}.#"))?])
            .with_max_age(Duration::from_secs(3600)),
    )
    .await?;
    // Foreign orders are validated at the intake: an invalid one is dead-lettered, with
    // the path of each issue, and never reaches the handler.
    let bus = Bus::builder()
        .transport(transport)
        .intake_check(Validator::new(&foreign_orders(prefix)?)?.intake_check())
        .build()?;
    let counter = Counter::default();
    let c = counter.clone();
    // Each event is echoed on <prefix>.echo.<rest>, published from the handler: the echo
    // carries the event's correlation id and has the event's id as its causation.
    let (b, echo_prefix) = (bus.clone(), format!("{prefix}.echo"));
    let _events = bus
        .subscribe(
            "rust-interop",
            &format!("{prefix}.events.#"),
            handler_fn(move |env: Envelope| {
                let (c, b) = (c.clone(), b.clone());
                let echo = env
                    .topic
                    .as_str()
                    .split_once(".events.")
                    .map(|(_, rest)| format!("{echo_prefix}.{rest}"));
                async move {
                    println!("{}", line(&env));
                    if let Some(echo) = echo {
                        let topic = Topic::new(&echo).map_err(std::io::Error::other)?;
                        b.publish_envelope(Envelope::new(topic, env.payload.clone()))
                            .await
                            .map_err(std::io::Error::other)?;
                    }
                    c.hit();
                    Ok::<_, std::io::Error>(())
                }
            }),
        )
        .start()
        .await?;
    let _double = bus
        .handle(|cmd: Double, _ctx| async move {
            if cmd.n < 0 {
                return Err(format!("cannot double {}", cmd.n));
            }
            Ok(cmd.n * 2)
        })
        .pattern(&format!("{prefix}.double"))
        .start()
        .await?;
    println!("{}", serde_json::json!({ "ready": true }));
    let result = counter.wait(n, Duration::from_secs(30)).await;
    bus.shutdown(Duration::from_secs(5)).await?;
    for letter in bus.dead_letters().map(|d| d.list()).unwrap_or_default() {
        println!(
            "{}",
            serde_json::json!({
                "dead_letter": {
                    "topic": letter.envelope.topic.as_str(),
                    "reason": format!("{:?}", letter.reason),
                    "error": letter.error,
                }
            })
        );
    }
    result
}

/// The registry of `nats-interop`: `<prefix>.events.orders` carries `{id: integer, sku:
/// string}` and the command `<prefix>.double` `{n: integer}`, from a client in another
/// language (so they are described by hand).
fn foreign_orders(prefix: &str) -> Result<Registry, Error> {
    let mut registry = Registry::new();
    registry.insert(MessageType {
        name: "ForeignOrder".into(),
        topic: format!("{prefix}.events.orders"),
        kind: "event".into(),
        version: 1,
        content_type: "application/json".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": { "id": { "type": "integer" }, "sku": { "type": "string" } },
            "required": ["id", "sku"]
        }),
        producers: Default::default(),
        consumers: Default::default(),
    })?;
    registry.insert(MessageType {
        name: "Double".into(),
        topic: format!("{prefix}.double"),
        kind: "command".into(),
        version: 1,
        content_type: "application/json".into(),
        schema: serde_json::json!({
            "type": "object",
            "properties": { "n": { "type": "integer" } },
            "required": ["n"]
        }),
        producers: Default::default(),
        consumers: Default::default(),
    })?;
    Ok(registry)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    let arg = |i: usize| args.get(i).map(String::as_str);
    let result = match (arg(0), arg(1), arg(2), arg(3), arg(4)) {
        (Some("log-publish"), Some(dir), Some(_), None, None) => match num(2) {
            Some(n) => log_publish(dir, n).await,
            None => Err("n must be a number".into()),
        },
        (Some("log-consume"), Some(dir), Some(group), Some(pattern), Some(_)) => match num(4) {
            Some(n) => log_consume(dir, group, pattern, n).await,
            None => Err("n must be a number".into()),
        },
        (Some("nats-echo"), Some(url), Some(stream), Some(prefix), Some(_)) => match num(4) {
            Some(n) => nats_echo(url, stream, prefix, n).await,
            None => Err("n must be a number".into()),
        },
        (Some("nats-interop"), Some(url), Some(stream), Some(prefix), Some(_)) => match num(4) {
            Some(n) => nats_interop(url, stream, prefix, n).await,
            None => Err("n must be a number".into()),
        },
        _ => Err("usage: rust-peer log-publish <dir> <n> | log-consume <dir> <group> <pattern> <n> | nats-echo <url> <stream> <prefix> <n> | nats-interop <url> <stream> <prefix> <n>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rust-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
