//! Review rev42: the layered model of docs/components.md checked from the outside, as a team
//! building a system on it would (the users' manager → service → handler → processor chain of
//! the broker refactoring guide and the e2e pipeline plan: requests down, feedback up, one
//! correlation id end to end). One shared chain (`shop` domain, action `order`) with a CPM on
//! top and a processor whose behaviour each test chooses.

mod contexts;
mod edges;
mod export;
mod failures;
mod retries;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Envelope, MessageId, Topic};
use switchyard_components::{
    Assembly, Completion, ComponentBuilder, ContextConfig, EnforcementMode, Role, Running,
};
use tokio::sync::Semaphore;

use crate::{Note, WAIT};

/// The four request topics, down, and the four result topics, up.
pub const DOWN_AND_UP: [&str; 8] = [
    "shop.order.request",
    "shop.order.submit",
    "shop.order.dispatch",
    "shop.order.execute",
    "shop.order.processed",
    "shop.order.handled",
    "shop.order.served",
    "shop.order.complete",
];

/// What the processor does with one `execute` (n, 1-based delivery number of that message).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Completes with `2 n`.
    Double,
    /// Fails its context as an original failure (`Invalid`, not retryable).
    Reject,
    /// Returns an error from the handler (the bus retries the message).
    HandlerErr,
    /// Panics.
    Panic,
    /// Fails its context as an original, retryable failure (`Unavailable`).
    Flaky,
    /// Waits for the gate, then completes with `2 n` (ignoring a context that ended meanwhile).
    Hold,
}

/// Chooses the processor's outcome for (n, delivery number).
pub type Behaviour = Arc<dyn Fn(u64, u32) -> Outcome + Send + Sync>;

/// Options of the chain.
pub struct Opts {
    /// Worker tasks per subscription.
    pub workers: usize,
    /// Request context settings.
    pub contexts: ContextConfig,
    /// Extra components (system components, other domains).
    pub extra: Vec<ComponentBuilder>,
    /// Topics the CPM declares besides `shop.order.request`.
    pub cpm_publishes: Vec<&'static str>,
    /// A manager to use instead of the plain one (named `shop-manager`).
    pub manager: Option<ComponentBuilder>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            workers: 1,
            contexts: ContextConfig::default(),
            extra: Vec::new(),
            cpm_publishes: Vec::new(),
            manager: None,
        }
    }
}

/// A started chain.
pub struct Chain {
    /// The assembly.
    pub running: Running,
    /// Every `shop.order.complete` the CPM could see (recorded on the plain bus).
    pub top: Recorder,
    /// Each `Outcome::Hold` takes one permit before it completes (none at start).
    pub gate: Arc<Semaphore>,
    /// `execute` deliveries seen by the processor.
    pub executed: Arc<AtomicU32>,
}

/// A layer between two others: begins a context for a request on `down_in`, passes it on to
/// `down_out` from the context, and on a result on `up_in` completes or fails (propagated)
/// exactly the context the result belongs to — the pattern of docs/components.md §3.
fn middle(
    name: &str,
    role: Role,
    down_in: &str,
    down_out: &'static str,
    up_in: &str,
) -> ComponentBuilder {
    ComponentBuilder::new(name, role, "shop")
        .publishes(down_out)
        .on(down_in, move |n: Note, cx| async move {
            let ctx = cx.begin("order").await?;
            ctx.set_metadata("n", n.n.to_string())?;
            ctx.start().await?;
            ctx.publish_to(down_out, n).await?;
            Ok::<_, BoxError>(())
        })
        .on::<Completion<serde_json::Value>, _, _, _, _>(up_in, |done, cx| async move {
            if let Some(ctx) = cx.context_for(&done) {
                match done.error {
                    None => ctx.complete(&done.result).await?,
                    Some(e) => ctx.fail_propagated(&e).await?,
                }
            }
            Ok::<_, BoxError>(())
        })
}

/// The CPM (publishes requests to the manager, receives its completions), the shop manager,
/// service, handler and processor.
pub async fn chain(bus: &Bus, behaviour: Behaviour, opts: Opts) -> Chain {
    let top = Recorder::start(bus, "shop.order.complete").await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let executed = Arc::new(AtomicU32::new(0));
    let deliveries = Arc::new(parking_lot::Mutex::new(
        std::collections::HashMap::<u64, u32>::new(),
    ));
    let mut cpm = ComponentBuilder::new("cpm", Role::Cpm, "cpm").publishes("shop.order.request");
    for t in &opts.cpm_publishes {
        cpm = cpm.publishes(t);
    }
    let cpm = cpm
        .on::<Completion<serde_json::Value>, _, _, _, _>("shop.order.complete", |_, _| async {
            Ok::<_, BoxError>(())
        });
    let manager = match opts.manager {
        Some(m) => m,
        None => middle(
            "shop-manager",
            Role::Manager,
            "shop.order.request",
            "shop.order.submit",
            "shop.order.served",
        ),
    };
    let service = middle(
        "shop-service",
        Role::Service,
        "shop.order.submit",
        "shop.order.dispatch",
        "shop.order.handled",
    );
    let handler = middle(
        "shop-handler",
        Role::Handler,
        "shop.order.dispatch",
        "shop.order.execute",
        "shop.order.processed",
    );
    let (g, ex) = (gate.clone(), executed.clone());
    let processor = ComponentBuilder::new("shop-processor", Role::Processor, "shop").on(
        "shop.order.execute",
        move |n: Note, cx| {
            let (behaviour, g, ex, deliveries) =
                (behaviour.clone(), g.clone(), ex.clone(), deliveries.clone());
            async move {
                ex.fetch_add(1, Ordering::SeqCst);
                let delivery = {
                    let mut d = deliveries.lock();
                    let e = d.entry(n.n).or_default();
                    *e += 1;
                    *e
                };
                let ctx = cx.begin("order").await?;
                ctx.start().await?;
                match behaviour(n.n, delivery) {
                    Outcome::Double => ctx.complete(&(n.n * 2)).await?,
                    Outcome::Reject => {
                        ctx.fail("Invalid", format!("order {} is invalid", n.n), false)
                            .await?
                    }
                    Outcome::HandlerErr => return Err(BoxError::from("module call failed")),
                    Outcome::Panic => panic!("bug in a module"),
                    Outcome::Flaky => ctx.fail("Unavailable", "upstream down", true).await?,
                    Outcome::Hold => {
                        g.acquire().await?.forget();
                        // The context may have timed out meanwhile: that is the point.
                        let _ = ctx.complete(&(n.n * 2)).await;
                    }
                }
                Ok::<_, BoxError>(())
            }
        },
    );
    let w = opts.workers;
    let mut asm = Assembly::new(bus)
        .mode(EnforcementMode::Strict)
        .contexts(opts.contexts)
        .component(cpm.workers(w))
        .component(manager.workers(w))
        .component(service.workers(w))
        .component(handler.workers(w))
        .component(processor.workers(w));
    for c in opts.extra {
        asm = asm.component(c);
    }
    let running = asm.start().await.unwrap();
    Chain {
        running,
        top,
        gate,
        executed,
    }
}

/// Publishes `shop.order.request` for `n` from the CPM in flow `flow`; returns the message id.
pub async fn send(chain: &Chain, flow: &MessageId, n: u64) -> MessageId {
    let env = Envelope::new(
        Topic::new("shop.order.request").unwrap(),
        serde_json::to_vec(&Note { n }).unwrap(),
    )
    .with_correlation_id(flow.clone());
    let id = env.id.clone();
    chain
        .running
        .component_bus("cpm")
        .unwrap()
        .publish_envelope(env)
        .await
        .unwrap();
    id
}

/// The manager's completions seen by the top for `flow`, decoded.
pub fn results_of(chain: &Chain, flow: &MessageId) -> Vec<Completion<serde_json::Value>> {
    chain
        .top
        .envelopes()
        .iter()
        .filter(|e| &e.correlation_id == flow)
        .map(|e| serde_json::from_slice(&e.payload).unwrap())
        .collect()
}

/// Waits until the top saw `n` completions in all.
pub async fn wait_top(chain: &Chain, n: usize) -> Vec<Envelope> {
    chain.top.wait_for(n, WAIT).await.unwrap()
}
