//! On a transport, a subscription's filter or ordering key that panics runs in its pump: the
//! delivery is dead-lettered for that subscription (`Panicked`, as it arrived) and settled,
//! the pump goes on with the next delivery, and other subscriptions get the message.

use switchyard::{DeadLetterReason, Envelope, Outcome, Topic, handler_fn};
use tokio::sync::mpsc;

use crate::WAIT;

fn forward(tx: mpsc::UnboundedSender<String>) -> switchyard::BoxHandler {
    handler_fn(move |env: Envelope| {
        let tx = tx.clone();
        async move {
            tx.send(String::from_utf8_lossy(&env.payload).into_owned())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Outcome::Ack)
        }
    })
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_filter_or_key_on_the_log_dead_letters_that_delivery_only() {
    let dir = tempfile::tempdir().unwrap();
    let bus = crate::bus_on_log(dir.path());
    let (ftx, mut filtered) = mpsc::unbounded_channel();
    let (ktx, mut keyed) = mpsc::unbounded_channel();
    let (gtx, mut good) = mpsc::unbounded_channel();
    let f = bus
        .subscribe("filtered", "jobs.#", forward(ftx))
        .filter(|e| {
            assert!(&e.payload[..] != b"boom", "filter panics");
            true
        })
        .start()
        .await
        .unwrap();
    let k = bus
        .subscribe("keyed", "jobs.#", forward(ktx))
        .ordering_key(|e| {
            assert!(&e.payload[..] != b"boom", "key fn panics");
            Some("k".into())
        })
        .start()
        .await
        .unwrap();
    let _g = bus
        .subscribe("good", "jobs.#", forward(gtx))
        .start()
        .await
        .unwrap();
    for payload in ["boom", "fine"] {
        bus.publish_envelope(Envelope::new(Topic::new("jobs.created").unwrap(), payload))
            .await
            .unwrap();
    }
    assert_eq!(next(&mut good).await, "boom");
    assert_eq!(next(&mut good).await, "fine");
    assert_eq!(next(&mut filtered).await, "fine", "the pump went on");
    assert_eq!(next(&mut keyed).await, "fine", "the pump went on");
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let mut letters = bus.dead_letters().unwrap().list();
    letters.sort_by(|a, b| a.handler.cmp(&b.handler));
    assert_eq!(letters.len(), 2, "{letters:?}");
    for (letter, (name, why)) in letters.iter().zip([
        ("filtered", "filter panicked: filter panics"),
        ("keyed", "ordering key panicked: key fn panics"),
    ]) {
        assert_eq!(letter.reason, DeadLetterReason::Panicked);
        assert_eq!(letter.handler.as_deref(), Some(name));
        assert_eq!(&letter.envelope.payload[..], b"boom");
        assert!(letter.error.contains(why), "{}", letter.error);
    }
    assert_eq!((f.stats().panicked, f.stats().dead_lettered), (1, 1));
    assert_eq!((k.stats().panicked, k.stats().dead_lettered), (1, 1));
    bus.shutdown(WAIT).await.unwrap();
    drop(bus);
    // Settled: nothing comes back to those groups after a restart.
    let bus = crate::bus_on_log(dir.path());
    let (ftx, mut filtered) = mpsc::unbounded_channel();
    let _f = bus
        .subscribe("filtered", "jobs.#", forward(ftx))
        .start()
        .await
        .unwrap();
    bus.publish_envelope(Envelope::new(Topic::new("jobs.created").unwrap(), "after"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut filtered).await,
        "after",
        "boom was settled, not redelivered"
    );
    bus.shutdown(WAIT).await.unwrap();
}
