//! The bus's own retries back off as configured (issue 14, item 2): exponential with jitter,
//! for single and batch handlers alike, on the virtual clock.

use std::time::Duration;

use switchyard::{Backoff, Bus, Jitter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Ping;

/// Receives `n` attempt times, failing the test if they do not come.
async fn times(rx: &mut mpsc::UnboundedReceiver<Instant>, n: usize) -> Vec<Instant> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("attempt {} never came", i + 1))
            .expect("the handler is alive");
        out.push(t);
    }
    out
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// tokio's timer rounds a deadline up to the next millisecond.
const TICK: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn the_bus_backs_off_exponentially_within_the_jitter_bounds() {
    let backoff = || {
        Backoff::exponential(Duration::from_millis(100))
            .multiplier(2)
            .max_delay(Duration::from_secs(1))
            .jitter(Jitter::Equal)
            .seed(7)
    };
    let bus = Bus::builder()
        .max_attempts(6)
        .backoff(backoff())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("flaky", move |_: Ping, _| {
            let _ = tx.send(Instant::now());
            async { Err::<(), _>("still down") }
        })
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    let gaps = gaps(&times(&mut rx, 6).await);

    let reference = backoff();
    for (i, gap) in gaps.iter().enumerate() {
        let failed = i as u32 + 1;
        let cap = reference.cap(failed);
        assert!(
            *gap >= cap / 2 && *gap <= cap + TICK,
            "wait after attempt {failed} was {gap:?}, outside {:?}..={cap:?}",
            cap / 2
        );
        // The same seed draws the same delays: the jitter is the configured one.
        let expected = reference.delay_for(failed);
        assert!(
            gap.abs_diff(expected) <= TICK,
            "wait after attempt {failed}: {gap:?}, the seeded delay is {expected:?}"
        );
    }
    assert!(
        gaps[4] > gaps[0] && gaps[3] > gaps[1],
        "the waits grow: {gaps:?}"
    );
    assert!(
        gaps.iter()
            .enumerate()
            .any(|(i, g)| g.abs_diff(reference.cap(i as u32 + 1)) > TICK),
        "jittered, not the bare caps: {gaps:?}"
    );
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 6);
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_backs_off_like_a_single_message() {
    let bus = Bus::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(100)).jitter(Jitter::None))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on_batch("store", move |_: Vec<Ping>, _| {
            let _ = tx.send(Instant::now());
            async { Err::<(), _>("database down") }
        })
        .batch(10, Duration::from_millis(5))
        .start()
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(Ping { n }).await.unwrap();
    }
    let gaps = gaps(&times(&mut rx, 3).await);
    let want = [100, 200].map(Duration::from_millis);
    for (gap, want) in gaps.iter().zip(want) {
        assert!(gap.abs_diff(want) <= TICK, "waits {gaps:?}, want {want:?}");
    }
    bus.run_until_idle().await;
    let letters = bus.dead_letters().unwrap().list();
    assert_eq!(letters.len(), 3, "every message of the batch");
    assert!(letters.iter().all(|l| l.attempts == 3), "{letters:?}");
}

#[tokio::test(start_paused = true)]
async fn a_subscriptions_backoff_wins_over_the_bus_default() {
    let bus = Bus::builder()
        .max_attempts(2)
        .retry_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = bus
        .on("quick", move |_: Ping, _| {
            let _ = tx.send(Instant::now());
            async { Err::<(), _>("nope") }
        })
        .backoff(Backoff::fixed(Duration::from_millis(250)))
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    let gaps = gaps(&times(&mut rx, 2).await);
    assert!(
        gaps[0].abs_diff(Duration::from_millis(250)) <= TICK,
        "{gaps:?}"
    );
}
