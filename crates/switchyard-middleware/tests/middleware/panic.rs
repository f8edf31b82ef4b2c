use std::sync::{Arc, Mutex};

use switchyard_core::{BoxError, DeadLetterReason, DeadLetterSink, Envelope, Outcome};
use switchyard_middleware::catch_panic::{CatchPanicLayer, PanicError};
use switchyard_middleware::dlq::{DeadLetterQueue, InMemoryDeadLetters};
use tower::{Layer, ServiceExt};

use crate::common::{drive, env, queue_of};

#[tokio::test]
async fn panic_in_future_becomes_an_error_and_the_next_message_is_handled() {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let h = handled.clone();
    let svc = CatchPanicLayer::new().layer(tower::service_fn(move |e: Envelope| {
        let h = h.clone();
        async move {
            if e.payload.as_ref() == b"boom" {
                panic!("cannot parse {}", e.id);
            }
            h.lock().unwrap().push(e.id);
            Ok::<_, BoxError>(Outcome::Ack)
        }
    }));
    crate::common::assert_handler(&svc);
    let mut bad = env("a.b");
    bad.payload = "boom".into();
    let good = env("a.b");
    let queue = queue_of(vec![bad.clone(), good.clone()]);
    let dlq = Arc::new(InMemoryDeadLetters::new(10));
    // One worker: the same worker must survive the panic to handle the second message.
    let settled = drive(svc, queue, 1, dlq.clone() as Arc<dyn DeadLetterSink>).await;
    assert_eq!(settled.acked(), vec![good.id.clone()]);
    assert_eq!(*handled.lock().unwrap(), vec![good.id]);
    let letter = dlq.get(&bad.id).unwrap();
    assert_eq!(letter.reason, DeadLetterReason::Panicked);
    assert!(
        letter.error.contains(&format!("cannot parse {}", bad.id)),
        "{}",
        letter.error
    );
}

#[tokio::test]
async fn panic_in_synchronous_call_is_caught_too() {
    let svc = CatchPanicLayer::new().layer(tower::service_fn(|e: Envelope| {
        if e.payload.as_ref() == b"boom" {
            panic!("sync panic");
        }
        async { Ok::<_, BoxError>(Outcome::Ack) }
    }));
    let mut bad = env("a.b");
    bad.payload = "boom".into();
    let err = svc.clone().oneshot(bad).await.unwrap_err();
    assert_eq!(err.downcast::<PanicError>().unwrap().message, "sync panic");
    assert_eq!(svc.oneshot(env("a.b")).await.unwrap(), Outcome::Ack);
}
