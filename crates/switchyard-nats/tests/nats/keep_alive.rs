//! A JetStream delivery the bus holds past the consumer's ack wait (a slow handler, in-place
//! retries whose backoffs add up past it) is kept alive with "in progress" (`+WPI`): the
//! server does not hand a second copy to the group while the first is still being worked on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::{Bus, Envelope, handler_fn};
use switchyard_conformance::Setup;
use switchyard_core::Publisher;
use switchyard_nats::NatsTransport;

use crate::harness::{NatsHarness, shared_unavailable};

const WAIT: Duration = Duration::from_secs(20);
const ACK_WAIT: Duration = Duration::from_secs(1);

/// Calls of the handler: the attempt number of each, and the most running at once.
#[derive(Default)]
struct Calls {
    attempts: Mutex<Vec<u32>>,
    running: AtomicUsize,
    most: AtomicUsize,
}

/// Runs one message through a bus on NATS (ack wait 1 s, four workers, group `worker`):
/// the handler works for `work` (a timer) and fails its first `fails` calls; the bus
/// retries in place after `retry_delay`. Returns the calls once the bus is idle, checking
/// that the delivery was acked (nothing unsettled on the transport, no dead letter).
async fn run(fails: usize, work: Duration, retry_delay: Duration) -> Option<Arc<Calls>> {
    if shared_unavailable().is_some() {
        return None;
    }
    let h = NatsHarness::shared();
    let setup = Setup::new().with_ack_wait(ACK_WAIT);
    let t = NatsTransport::connect(h.config(&setup)).await.unwrap();
    let bus = Bus::builder()
        .transport(t.clone())
        .max_attempts(3)
        .retry_delay(retry_delay)
        .build()
        .unwrap();
    let calls = Arc::new(Calls::default());
    let c = calls.clone();
    let _sub = bus
        .subscribe(
            "worker",
            &setup.all().unwrap().to_string(),
            handler_fn(move |e: Envelope| {
                let c = c.clone();
                async move {
                    c.attempts.lock().unwrap().push(e.delivery.attempt);
                    let now = c.running.fetch_add(1, Ordering::SeqCst) + 1;
                    c.most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(work).await;
                    c.running.fetch_sub(1, Ordering::SeqCst);
                    if c.attempts.lock().unwrap().len() <= fails {
                        Err::<switchyard::Outcome, switchyard::BoxError>("fails".into())
                    } else {
                        Ok(switchyard::Outcome::Ack)
                    }
                }
            }),
        )
        .workers(4)
        .start()
        .await
        .unwrap();
    let m = Envelope::new(setup.topic("held").unwrap(), "held");
    bus.publish_envelope(m.clone()).await.unwrap();
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .expect("not idle");
    assert_eq!(
        t.in_progress(&m.id).await.unwrap(),
        0,
        "the delivery is still unsettled"
    );
    assert!(
        bus.dead_letters().unwrap().list().is_empty(),
        "dead-lettered instead of acked"
    );
    bus.shutdown(WAIT).await.unwrap();
    t.close(Instant::now() + WAIT).await.unwrap();
    let _ = t.delete_stream(&setup.namespace).await;
    Some(calls)
}

fn assert_once(calls: &Calls, expected: &[u32]) {
    assert_eq!(
        *calls.attempts.lock().unwrap(),
        expected,
        "a second copy was handed out while the first was held (attempts of each call)"
    );
    assert_eq!(
        calls.most.load(Ordering::SeqCst),
        1,
        "two copies in flight at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_gets_no_second_copy() {
    let Some(calls) = run(0, ACK_WAIT * 3, Duration::from_millis(1)).await else {
        return;
    };
    assert_once(&calls, &[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_retries_whose_backoffs_pass_the_ack_wait_get_no_second_copy() {
    let Some(calls) = run(2, Duration::ZERO, ACK_WAIT * 2).await else {
        return;
    };
    assert_once(&calls, &[1, 2, 3]);
}
