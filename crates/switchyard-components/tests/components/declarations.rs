//! The `Component` trait implemented by hand, and declaration errors.

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus};
use switchyard_components::{
    Assembly, Component, ComponentCtx, DeclarationError, Handlers, Role, StartError,
};

use crate::{Note, WAIT};

/// A processor written as a struct: it doubles numbers.
struct Doubler {
    factor: u64,
    declare_extra: bool,
    register_extra: bool,
}

impl Doubler {
    async fn handle(factor: u64, note: Note, cx: ComponentCtx) -> Result<(), BoxError> {
        let ctx = cx.begin("double").await?;
        ctx.start().await?;
        ctx.complete(&(note.n * factor)).await?;
        Ok(())
    }
}

impl Component for Doubler {
    fn name(&self) -> &str {
        "math-processor"
    }
    fn role(&self) -> Role {
        Role::Processor
    }
    fn domain(&self) -> &str {
        "math"
    }
    fn subscribes(&self) -> Vec<String> {
        let mut s = vec!["math.double.execute".to_owned()];
        if self.declare_extra {
            s.push("math.triple.execute".to_owned());
        }
        s
    }
    fn publishes(&self) -> Vec<String> {
        Vec::new() // math.*.processed is implicit
    }
    fn register(self: Box<Self>, handlers: &mut Handlers) {
        let factor = self.factor;
        handlers.on::<Note, _, _, _, _>("math.double.execute", move |note, cx| {
            Doubler::handle(factor, note, cx)
        });
        if self.register_extra {
            handlers.on::<Note, _, _, _, _>("math.halve.execute", move |note, cx| {
                Doubler::handle(factor, note, cx)
            });
        }
    }
}

#[tokio::test]
async fn a_hand_written_component_runs() {
    let bus = Bus::new();
    let rec = Recorder::start(&bus, "math.double.processed")
        .await
        .unwrap();
    let running = Assembly::new(&bus)
        .component(Doubler {
            factor: 2,
            declare_extra: false,
            register_extra: false,
        })
        .start()
        .await
        .unwrap();
    let spec = running.topology().component("math-processor").unwrap();
    assert_eq!(spec.role(), Role::Processor);
    assert!(
        spec.publishes
            .iter()
            .any(|p| p.as_str() == "math.*.processed")
    );
    assert!(
        spec.publishes
            .iter()
            .any(|p| p.as_str() == "math.status.update")
    );
    bus.publish_to("math.double.execute", Note { n: 21 })
        .await
        .unwrap();
    let got = rec.wait_for(1, WAIT).await.unwrap();
    let done: switchyard_components::Completion<u64> =
        switchyard::Message::from_envelope(&got[0]).unwrap();
    assert_eq!(done.result, Some(42));
    assert_eq!(
        bus.registry().len(),
        2,
        "the component's one subscription and the recorder"
    );
}

#[tokio::test]
async fn a_declared_subscription_without_handler_is_refused() {
    let bus = Bus::new();
    let err = Assembly::new(&bus)
        .component(Doubler {
            factor: 2,
            declare_extra: true,
            register_extra: false,
        })
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Declaration(DeclarationError::MissingHandler { pattern, .. }) if pattern == "math.triple.execute"),
        "{err}"
    );
}

#[tokio::test]
async fn a_handler_on_an_undeclared_pattern_is_refused() {
    let bus = Bus::new();
    let err = Assembly::new(&bus)
        .component(Doubler {
            factor: 2,
            declare_extra: false,
            register_extra: true,
        })
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Declaration(DeclarationError::UndeclaredSubscription { pattern, .. }) if pattern == "math.halve.execute"),
        "{err}"
    );
    assert!(err.to_string().contains("math-processor"));
}

mod layered {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use switchyard::{Bus, Envelope};
    use switchyard_components::{Assembly, ComponentBuilder, Role};

    use crate::Note;

    /// Counts the calls to the handlers it wraps.
    #[derive(Clone)]
    struct CountLayer(Arc<AtomicUsize>);

    #[derive(Clone)]
    struct Count<S> {
        inner: S,
        calls: Arc<AtomicUsize>,
    }

    impl<S> tower::Layer<S> for CountLayer {
        type Service = Count<S>;
        fn layer(&self, inner: S) -> Count<S> {
            Count {
                inner,
                calls: self.0.clone(),
            }
        }
    }

    impl<S: tower::Service<Envelope>> tower::Service<Envelope> for Count<S> {
        type Response = S::Response;
        type Error = S::Error;
        type Future = S::Future;
        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }
        fn call(&mut self, env: Envelope) -> S::Future {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.inner.call(env)
        }
    }

    #[tokio::test]
    async fn component_layers_wrap_every_handler() {
        let bus = Bus::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let noop = |_: Envelope, _| async { Ok::<_, std::convert::Infallible>(()) };
        let _running = Assembly::new(&bus)
            .component(
                ComponentBuilder::new("a-service", Role::Service, "a")
                    .layer(CountLayer(calls.clone()))
                    .on_envelope("a.x.submit", noop)
                    .on_envelope("a.x.handled", noop),
            )
            .start()
            .await
            .unwrap();
        bus.publish_to("a.x.submit", Note { n: 1 }).await.unwrap();
        bus.publish_to("a.x.submit", Note { n: 2 }).await.unwrap();
        bus.publish_to("a.x.handled", Note { n: 3 }).await.unwrap();
        bus.run_until_idle().await;
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
