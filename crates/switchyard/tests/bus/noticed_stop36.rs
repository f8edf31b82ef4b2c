//! Defects noticed at stop 36 and fixed after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard::{Bus, Message};
use tokio::sync::mpsc;

use crate::{Double, received};

/// A bus whose `Double` handler fails its first `failures` calls and reports the attempt
/// number of every call.
async fn flaky_double(failures: u32) -> (Bus, mpsc::UnboundedReceiver<u32>) {
    let bus = Bus::builder()
        .max_attempts(3)
        .retry_delay(Duration::from_millis(1))
        .build()
        .unwrap();
    let left = Arc::new(AtomicU32::new(failures));
    let (tx, rx) = mpsc::unbounded_channel();
    bus.handle(move |c: Double, ctx| {
        let (left, tx) = (left.clone(), tx.clone());
        async move {
            tx.send(ctx.attempt()).unwrap();
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(std::io::Error::other("bank unavailable"));
            }
            Ok(c.n * 2)
        }
    })
    .start()
    .await
    .unwrap()
    .detach();
    (bus, rx)
}

/// An envelope that was delivered four times before (a dead letter's, or one a handler got).
fn delivered_four_times() -> switchyard::Envelope {
    let mut env = Double { n: 21 }.to_envelope().unwrap();
    env.delivery.attempt = 4;
    env.delivery.first_delivered_at = Some(std::time::SystemTime::now());
    env
}

/// A send is a new delivery: an envelope re-sent after four attempts elsewhere (a dead
/// command replayed with `send_envelope`) gets the handler's full `max_attempts` (3: two
/// failures, then the answer on attempt 3), not what was left of the old count.
#[tokio::test]
async fn a_resent_envelope_gets_its_full_attempts() {
    let (bus, mut attempts) = flaky_double(2).await;
    let result = bus
        .send_envelope(delivered_four_times())
        .await
        .expect("answered on its third attempt");
    assert_eq!(result.attempts, 3);
    assert_eq!(received(&mut attempts, 3).await, vec![1, 2, 3]);
    assert!(bus.dead_letters().unwrap().is_empty());
}

/// The same for `request_envelope`.
#[tokio::test]
async fn a_re_requested_envelope_gets_its_full_attempts() {
    let (bus, mut attempts) = flaky_double(2).await;
    let result = bus
        .request_envelope(delivered_four_times(), Duration::from_secs(5))
        .await
        .expect("answered on its third attempt");
    assert_eq!(result.attempts, 3);
    assert_eq!(received(&mut attempts, 3).await, vec![1, 2, 3]);
    assert!(bus.dead_letters().unwrap().is_empty());
}
