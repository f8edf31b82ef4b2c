//! Defaults from `switchyard-middleware` wired into the bus (feature `middleware`).

use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use switchyard_core::{DeadLetterSink, Envelope, Topic};
use switchyard_middleware::dlq::{FileDeadLetterQueue, FileDlqOptions};
use switchyard_middleware::metrics::record;
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use tower::Layer;

use crate::builder::{BuildError, BusBuilder, ResolveArgs, ResolvedResilience};
use crate::bus::Bus;
use crate::handler::{BoxHandler, SingleHandler};
use crate::state::{BusInner, ResilienceWrap, WrapTarget};

/// Where the default file dead-letter queue lives, under the bus's data directory.
pub const DEAD_LETTER_FILE: &str = "dead-letters.jsonl";

/// Makes the resilience config of one handler, told which: [`BusBuilder::with_resilience`]'s
/// (the same for every handler) or [`BusBuilder::with_resilience_for`]'s.
type ResilienceFactory = Arc<dyn Fn(&WrapTarget<'_>) -> ResilienceConfig + Send + Sync>;

/// Told of every resilience stack the bus builds; see [`BusBuilder::on_resilience_stack`].
pub(crate) type StackHook = Arc<dyn Fn(&WrapTarget<'_>, &ResilienceLayer) + Send + Sync>;

/// Whose breaker changes the bus publishes as `switchyard.breaker.*` events.
#[derive(Clone, Copy)]
enum BreakerPublishing {
    /// Every stack's (`with_resilience`: the bus's observer replaces the config's).
    Always,
    /// A stack's whose config has no observer of its own (`with_resilience_for`).
    Unobserved,
}

impl BusBuilder {
    /// The default resilience stack on every subscription and command handler:
    /// `ResilienceLayer` with `ResilienceConfig::default()` (trace, metrics, retry with 3
    /// attempts and full jitter from 100 ms to 10 s, breaker 5 failures / 30 s cool-down,
    /// 30 s timeout, panic capture, dedup off; the order is documented in
    /// `switchyard_middleware`). Breaker changes are published as `switchyard.breaker.opened`
    /// / `.half_opened` / `.closed` events.
    ///
    /// **Metrics labels**: each handler's metrics carry `handler` = its name and `topic` =
    /// the pattern it was registered for (`orders.*`, `#`; a command handler's topic), not
    /// the topics of the messages it handles, which publishers choose: one series per
    /// registration, however many topics flow through a wildcard. A config with
    /// `topic_label(TopicLabel::Topic)` (see [`with_resilience`](Self::with_resilience))
    /// labels by each message's topic instead, only for a bounded set of topics.
    ///
    /// Resolved in [`build`](Self::build), so the order of the builder calls does not matter:
    /// - **Attempts**: the layer does the retrying, and the worker calls the wrapped handler
    ///   once. [`max_attempts`](Self::max_attempts) (on the builder or a subscription), when
    ///   given, sets the layer's attempts; otherwise the retry policy's count is the default.
    ///   Either way it is the number of calls a failing message gets, and the number the
    ///   dead letter and `SendError::Failed` report.
    /// - **Backoff**: [`backoff`](Self::backoff) (on the builder or a subscription), when given,
    ///   sets the layer's backoff; otherwise the retry policy's is the default. Either way the
    ///   delays between attempts are the same whoever makes them.
    /// - **Batch handlers** (`on_batch`) are not wrapped (the stack takes one envelope); the
    ///   worker retries a failed batch itself, for the same number of attempts with the same
    ///   backoff, and dead-letters it like a single message.
    /// - **Dead letters**: with [`data_dir`](Self::data_dir) set, they go to a file queue there
    ///   ([`DEAD_LETTER_FILE`]) that survives restarts, unless
    ///   [`dead_letters`](Self::dead_letters) names a sink.
    /// - [`wrap_handlers`](Self::wrap_handlers) still applies, inside the stack.
    /// - **Workers**: with several workers per subscription, a worker that finds no message
    ///   gives back what the stack's readiness reserved (a half-open breaker's one trial call,
    ///   a `concurrency(n)` permit), so another worker's call or retry can take it.
    pub fn with_default_resilience(self) -> Self {
        self.with_resilience(ResilienceConfig::default)
    }

    /// Like [`with_default_resilience`](Self::with_default_resilience) with a config of your
    /// own, made once per handler by `config` (and once more at build, to read the retry
    /// policy's attempts). A later call replaces an earlier one (or a
    /// [`with_resilience_for`](Self::with_resilience_for)). The config's
    /// `TopicLabel::Pattern` label (the default) is resolved to the handler's registered
    /// pattern ([`ResilienceConfig::registered_for`]); another label is kept as given.
    pub fn with_resilience<F>(mut self, config: F) -> Self
    where
        F: Fn() -> ResilienceConfig + Send + Sync + 'static,
    {
        let config = Arc::new(config);
        let made = config.clone();
        let factory: ResilienceFactory = Arc::new(move |_: &WrapTarget<'_>| made());
        self.resilience = Some(Arc::new(move |args| {
            let defaults = config().retry;
            resolve(args, &defaults, &factory, BreakerPublishing::Always)
        }));
        self
    }

    /// The bus's resilience stack (as [`with_resilience`](Self::with_resilience) builds it,
    /// held by the workers as it is) with a config made for each handler: `config` is told
    /// the handler it is for ([`WrapTarget`]: its name, the pattern or command topic it was
    /// registered for, its kind), so that handlers can differ (a breaker of their own, a
    /// registry to count into, an observer that knows the handler). A later call replaces an
    /// earlier one (or a `with_resilience`). Resolved as `with_resilience` is, with these
    /// differences:
    ///
    /// - **Attempts and backoff**: [`max_attempts`](Self::max_attempts) and
    ///   [`backoff`](Self::backoff) (on the builder or a subscription) when given, otherwise
    ///   those of [`RetryPolicy::default`](switchyard_middleware::retry::RetryPolicy::default)
    ///   (3 attempts, full jitter from 100 ms to 10 s): they replace the attempts and backoff
    ///   of the configs' retry policies (the rest of each policy, its classifier say, is
    ///   kept).
    /// - **Breaker events**: a config with an observer of its own
    ///   ([`ResilienceConfig::on_breaker_transition`]) keeps it, and the bus publishes
    ///   nothing for that handler's breaker; the others' changes are published as
    ///   `switchyard.breaker.*` events.
    ///
    /// With [`on_resilience_stack`](Self::on_resilience_stack), the stack's handles (its
    /// breaker) are handed over as each stack is built. [`wrap_handlers`](Self::wrap_handlers)
    /// still applies, inside the stack.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use switchyard::Bus;
    /// use switchyard::middleware::breaker::{BreakerConfig, BreakerHandle};
    /// use switchyard::middleware::resilience::ResilienceConfig;
    ///
    /// let breakers: Arc<Mutex<Vec<(String, BreakerHandle)>>> = Arc::default();
    /// let seen = breakers.clone();
    /// let bus = Bus::builder()
    ///     .workers(4)
    ///     .with_resilience_for(|target| {
    ///         let config = ResilienceConfig::default().timeout(Duration::from_secs(5));
    ///         // Payments get a more patient breaker than the rest.
    ///         if target.name.starts_with("payments") {
    ///             config.breaker(BreakerConfig::default().failures(20))
    ///         } else {
    ///             config
    ///         }
    ///     })
    ///     .on_resilience_stack(move |target, stack| {
    ///         seen.lock().unwrap().push((target.name.to_owned(), stack.breaker()));
    ///     })
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok::<(), switchyard::BuildError>(())
    /// ```
    pub fn with_resilience_for<F>(mut self, config: F) -> Self
    where
        F: Fn(&WrapTarget<'_>) -> ResilienceConfig + Send + Sync + 'static,
    {
        let factory: ResilienceFactory = Arc::new(config);
        self.resilience = Some(Arc::new(move |args| {
            resolve(
                args,
                &switchyard_middleware::retry::RetryPolicy::default(),
                &factory,
                BreakerPublishing::Unobserved,
            )
        }));
        self
    }

    /// Calls `f` with each resilience stack the bus builds (under
    /// [`with_resilience`](Self::with_resilience) or
    /// [`with_resilience_for`](Self::with_resilience_for)), when its handler is registered,
    /// before it takes a message: the layer's [`breaker`](ResilienceLayer::breaker),
    /// [`dedup`](ResilienceLayer::dedup) and [`metrics`](ResilienceLayer::metrics) handles
    /// are the stack's. A later call replaces an earlier one. Without a resilience stack it
    /// is never called.
    pub fn on_resilience_stack<F>(mut self, f: F) -> Self
    where
        F: Fn(&WrapTarget<'_>, &ResilienceLayer) + Send + Sync + 'static,
    {
        self.stack_hook = Some(Arc::new(f));
        self
    }
}

/// Resolves the resilience settings at build: the default attempts and backoff (`defaults`'),
/// the file dead-letter queue (opened only when `data_dir` is set and no sink was given), and
/// the wrap.
fn resolve(
    args: ResolveArgs<'_>,
    defaults: &switchyard_middleware::retry::RetryPolicy,
    factory: &ResilienceFactory,
    publishing: BreakerPublishing,
) -> Result<ResolvedResilience, BuildError> {
    let dead_letters: Option<Arc<dyn DeadLetterSink>> = match args.data_dir {
        Some(dir) if args.no_sink_given => {
            let dlq =
                FileDeadLetterQueue::open(dir.join(DEAD_LETTER_FILE), FileDlqOptions::default())
                    .map_err(|e| BuildError::DeadLetters(e.to_string()))?;
            Some(Arc::new(dlq))
        }
        _ => None,
    };
    let default_attempts = defaults.get_max_attempts().max(1);
    let default_backoff = defaults.backoff().clone();
    let factory = factory.clone();
    let hook = args.stack_hook;
    let events = Arc::new(BreakerEvents {
        slot: args.slot,
        queue: OnceLock::new(),
    });
    let wrap: ResilienceWrap = Arc::new(
        move |target: &WrapTarget<'_>, handler: BoxHandler, attempts, backoff| {
            // Labelled by the pattern it was registered for (unless the config asks for
            // `TopicLabel::Topic`): as many label values as registrations.
            let mut config = factory(target).registered_for(target.pattern);
            config.retry = config
                .retry
                .max_attempts(attempts)
                .with_backoff(backoff.clone());
            if matches!(publishing, BreakerPublishing::Always) || !config.breaker.is_observed() {
                let events = events.clone();
                config = config.on_breaker_transition(move |event| events.publish(event));
            }
            // The layer's re-attempts are retries of the subscription too (the worker, which
            // calls the stack once, never sees them).
            let retries = target.retries();
            let config = config.on_retry(move |_| retries.count());
            // The stack is the outermost wrap of the handler (see `register`): the bus calls it
            // with the envelope it delivered, only the delivery bookkeeping restamped.
            // Held as it is, not boxed: its calls' futures run in a place it keeps.
            let layer = ResilienceLayer::new(target.name, config).called_as_delivered();
            if let Some(hook) = &hook {
                hook(target, &layer);
            }
            SingleHandler::resilient(layer.layer(crate::handler::InKept(handler)))
        },
    );
    Ok(ResolvedResilience {
        default_attempts,
        default_backoff,
        dead_letters,
        wrap,
    })
}

/// Publishes the bus's breaker changes as events, in the order they happened. The observer
/// runs inside the breaker and publishing is async, so the events go through one queue and
/// one task that publishes them one after the other (a task per event let a multi-thread
/// runtime publish `closed` before the `half_opened` that preceded it). The task holds the
/// bus weakly and ends with the stacks that feed it.
struct BreakerEvents {
    slot: Arc<OnceLock<Weak<BusInner>>>,
    /// Made, with its task, at the first change (on the runtime the breaker runs on).
    queue: OnceLock<tokio::sync::mpsc::UnboundedSender<Envelope>>,
}

impl BreakerEvents {
    fn publish(&self, event: &switchyard_middleware::breaker::BreakerEvent) {
        let (Ok(topic), Ok(payload)) = (Topic::new(event.topic()), serde_json::to_vec(event))
        else {
            return;
        };
        let env = Envelope::new(topic, payload).with_source(event.handler.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("breaker event not published: no tokio runtime");
            return;
        };
        let queue = self.queue.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
            let slot = self.slot.clone();
            rt.spawn(async move {
                while let Some(env) = rx.recv().await {
                    let Some(bus) = slot.get().and_then(Bus::from_weak) else {
                        return;
                    };
                    if let Err(e) = bus.publish_envelope(env).await {
                        tracing::warn!(error = %e, "breaker event not published");
                    }
                }
            });
            tx
        });
        if queue.send(env).is_err() {
            tracing::warn!("breaker event not published: the bus is gone");
        }
    }
}

impl Bus {
    /// Reports the bus's gauges through the `metrics` facade every `every`: queue depth per
    /// subscription, the default dead-letter store's size and evictions (when it is in use),
    /// active sessions. Install a recorder first
    /// (`switchyard_middleware::metrics::install_prometheus`). Stops when the bus shuts down.
    pub fn report_metrics(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut evicted_seen = 0;
            let mut tick = tokio::time::interval(every);
            while !bus.is_shutting_down() {
                tick.tick().await;
                let snapshot = bus.metrics_snapshot();
                for sub in &snapshot.subscriptions {
                    record::queue_depth(&sub.name, sub.depth);
                }
                let mut sessions: Vec<&str> = snapshot
                    .subscriptions
                    .iter()
                    .filter_map(|s| s.session.as_deref())
                    .collect();
                sessions.sort_unstable();
                sessions.dedup();
                record::active_sessions(sessions.len());
                // Only the default store is known here; another sink reports its own figures.
                if let (Some(size), Some(evicted)) =
                    (snapshot.dead_letters, snapshot.dead_letters_evicted)
                {
                    record::dlq_size(size);
                    record::dlq_evicted(evicted.saturating_sub(evicted_seen));
                    evicted_seen = evicted;
                }
            }
        })
    }
}

/// Used by tests and docs: the file the default dead-letter queue writes under `dir`.
pub fn dead_letter_file(dir: &Path) -> std::path::PathBuf {
    dir.join(DEAD_LETTER_FILE)
}
