//! The resilience stack keeps the envelope the bus delivered (`switchyard_core::delivered`)
//! for retries instead of a copy of its own (issue 18), and copies when there is none or it
//! is another message.

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::{BoxError, Envelope, Outcome, Topic, delivered};
use switchyard_middleware::resilience::{ResilienceConfig, ResilienceLayer};
use switchyard_middleware::retry::RetryPolicy;
use tower::{Layer, ServiceExt};

/// What the handler saw of one attempt.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    payload: String,
    attempt: u32,
    stamped: bool,
    /// References to the delivered envelope while the handler runs, if there is one.
    shared_refs: Option<usize>,
}

/// Runs a handler that records each attempt, changes its copy and fails, under the stack
/// with 3 attempts, with `scoped` as the delivered envelope (if any) while the call is made
/// and polled, as the bus does.
async fn attempts(env: Envelope, scoped: Option<Arc<Envelope>>) -> Vec<Seen> {
    attempts_on(env, scoped, false).await
}

/// [`attempts`], on a stack built `called_as_delivered` when `as_delivered`.
async fn attempts_on(
    env: Envelope,
    scoped: Option<Arc<Envelope>>,
    as_delivered: bool,
) -> Vec<Seen> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = tower::service_fn(move |mut e: Envelope| {
        s.lock().unwrap().push(Seen {
            payload: String::from_utf8_lossy(&e.payload).into_owned(),
            attempt: e.delivery.attempt,
            stamped: e.delivery.first_delivered_at.is_some(),
            shared_refs: delivered::with(Arc::strong_count),
        });
        e.payload = "changed by the handler".into();
        async { Err::<Outcome, BoxError>("backend down".into()) }
    });
    let config = ResilienceConfig::default().retry(
        RetryPolicy::default()
            .max_attempts(3)
            .initial_delay(Duration::from_millis(1)),
    );
    let mut layer = ResilienceLayer::new("delivered", config);
    if as_delivered {
        layer = layer.called_as_delivered();
    }
    let svc = layer.layer(handler);
    let result = match scoped {
        Some(shared) => delivered::scope(shared, svc.oneshot(env)).await,
        None => svc.oneshot(env).await,
    };
    assert!(result.is_err(), "every attempt failed");
    std::mem::take(&mut *seen.lock().unwrap())
}

fn message(payload: &str) -> Envelope {
    Envelope::new(Topic::new("orders.placed").unwrap(), payload.to_owned())
}

#[tokio::test(start_paused = true)]
async fn the_stack_keeps_the_delivered_envelope_and_retries_see_it_as_delivered() {
    for as_delivered in [false, true] {
        keeps_the_delivered_envelope(as_delivered).await;
    }
}

/// Both ways (compared, or vouched for by `called_as_delivered`, as the bus does), the stack
/// keeps the delivered envelope (a reference, or its place in the scope) and every attempt
/// gets it with the first delivery's stamp.
async fn keeps_the_delivered_envelope(as_delivered: bool) {
    // As the bus does: the shared envelope is as queued (not yet stamped), the handler's
    // copy is stamped with its first delivery.
    let queued = Arc::new(message("as published"));
    let mut first = Envelope::clone(&queued);
    first.delivery.attempt = 1;
    first.delivery.first_delivered_at = Some(std::time::SystemTime::now());
    let seen = attempts_on(first, Some(queued.clone()), as_delivered).await;
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for s in &seen {
        assert_eq!(s.payload, "as published", "{seen:?}");
        assert!(s.stamped, "the first delivery's stamp is kept: {seen:?}");
    }
    if as_delivered {
        // Vouched for, the stack leaves it in the scope (no reference of its own, no atomic
        // traffic for a call that succeeds) and copies it from there when it retries.
        assert_eq!(
            seen[0].shared_refs,
            Some(2),
            "only the test and the scope hold the delivered envelope"
        );
    } else {
        assert_eq!(
            seen[0].shared_refs,
            Some(3),
            "the test, the scope and the stack hold the delivered envelope (no copy of its own)"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_stack_copies_when_the_delivered_envelope_is_another_message_or_none() {
    let other = Arc::new(message("another message"));
    let seen = attempts(message("this one"), Some(other.clone())).await;
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(seen.iter().all(|s| s.payload == "this one"), "{seen:?}");
    assert_eq!(seen[0].shared_refs, Some(2), "the stack did not take it");
    // Same id, content changed by a layer outside the stack: copied too.
    let mut changed = Envelope::clone(&other);
    changed.payload = "changed outside".into();
    let seen = attempts(changed, Some(other)).await;
    assert!(
        seen.iter().all(|s| s.payload == "changed outside"),
        "{seen:?}"
    );
    let seen = attempts(message("outside the bus"), None).await;
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        seen.iter().all(|s| s.payload == "outside the bus"),
        "{seen:?}"
    );
}
