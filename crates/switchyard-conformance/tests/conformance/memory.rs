//! The suite on [`MemoryTransport`].

use std::time::Duration;

use futures::StreamExt;
use switchyard_conformance::memory::RequestError;
use switchyard_conformance::{
    Harness, MemoryConfig, MemoryTransport, ReplyFn, RequestFailure, ServeGuard, Setup,
    SuiteCapabilities,
};
use switchyard_core::{BoxError, BoxFuture, Envelope, Pattern, Subscriber};

pub struct Memory;

impl Harness for Memory {
    type Transport = MemoryTransport;

    fn name(&self) -> &str {
        "memory"
    }

    fn capabilities(&self) -> SuiteCapabilities {
        SuiteCapabilities {
            core: MemoryTransport::new().capabilities(),
            redelivery: true,
            dead_letters: true,
            restart: false,
            request_reply: true,
            durable_delivery_counts: false,
            // One process: a second memory transport is another, unconnected one.
            cross_process: false,
        }
    }

    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<MemoryTransport, BoxError>> {
        let config = MemoryConfig::default()
            .with_ack_wait(setup.ack_wait)
            .with_max_deliver(setup.max_deliver)
            .with_dead_letters(setup.dead_letters.clone());
        Box::pin(async move { Ok(MemoryTransport::with_config(config)) })
    }

    fn request(
        &self,
        transport: &MemoryTransport,
        request: Envelope,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Envelope, RequestFailure>> {
        let t = transport.clone();
        Box::pin(async move {
            t.request(request, deadline).await.map_err(|e| match e {
                RequestError::NoResponders => RequestFailure::NoResponders,
                RequestError::Timeout { .. } => RequestFailure::Timeout,
                other => RequestFailure::Other(other.into()),
            })
        })
    }

    fn serve(
        &self,
        transport: &MemoryTransport,
        pattern: &Pattern,
        handler: ReplyFn,
    ) -> BoxFuture<'static, Result<ServeGuard, BoxError>> {
        let requests = transport.respond(pattern);
        Box::pin(async move {
            let mut requests = requests?;
            let task = tokio::spawn(async move {
                // Requests left unanswered are kept, so their requesters time out.
                let mut silent = Vec::new();
                while let Some(req) = requests.next().await {
                    match handler(req.envelope.clone()) {
                        Some(reply) => {
                            req.reply(reply);
                        }
                        None => silent.push(req),
                    }
                }
            });
            Ok(ServeGuard::new(AbortOnDrop(task)))
        })
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

switchyard_conformance::conformance_tests!(Memory);

#[tokio::test]
async fn memory_full_group_refuses_publish() {
    use switchyard_core::{PublishError, Publisher, Topic};
    let t = MemoryTransport::with_config(MemoryConfig::default().with_capacity(2));
    let _sub = t
        .subscribe(&Pattern::new("a.#").unwrap(), Some("g"))
        .await
        .unwrap();
    let e = || Envelope::new(Topic::new("a.b").unwrap(), "x");
    t.publish(vec![e(), e()]).await.unwrap();
    let err = t.publish(vec![e()]).await.unwrap_err();
    assert!(matches!(err, PublishError::Full { .. }), "{err:?}");
}
