//! Panic isolation in the bus's stack: a handler panicking in its call, on its first poll,
//! on a later poll, or on a retry is dead-lettered `panicked` (panics are not retried by
//! default) and the worker goes on with the next message; on both runtimes.

use std::time::Duration;

use super::*;

/// Where the handler panics, by the message's payload.
fn panicking(calls: Calls) -> switchyard::BoxHandler {
    boxed(tower::service_fn(move |e: Envelope| {
        let attempt = e.delivery.attempt;
        calls.lock().push((attempt, Instant::now()));
        let body = String::from_utf8(e.payload.to_vec()).unwrap();
        if body == "in call" {
            panic!("boom in call");
        }
        async move {
            match body.as_str() {
                "first poll" => panic!("boom on the first poll"),
                "later poll" => {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    panic!("boom on a later poll");
                }
                "on retry" if attempt == 1 => Err::<Outcome, BoxError>("fails first".into()),
                "on retry" => panic!("boom on the retry"),
                _ => Ok(Outcome::Ack),
            }
        }
    }))
}

async fn panics_are_isolated() {
    // The breaker out of reach: the five failures here would open the default one, and the
    // last message would wait out its cool-down (right, but not what this checks).
    let bus = Bus::builder()
        .with_resilience(|| {
            ResilienceConfig::default()
                .retry(exact(3, Duration::from_millis(5)))
                .breaker(BreakerConfig::default().failures(1_000))
        })
        .build()
        .unwrap();
    let calls = Calls::default();
    let sub = bus
        .subscribe("rows", "rows.#", panicking(calls.clone()))
        .start()
        .await
        .unwrap();
    let cases = [
        ("in call", "boom in call", 1),
        ("first poll", "boom on the first poll", 1),
        ("later poll", "boom on a later poll", 1),
        ("on retry", "boom on the retry", 2),
    ];
    for (i, (body, text, attempts)) in cases.into_iter().enumerate() {
        bus.publish_envelope(ev("rows.added", body)).await.unwrap();
        bus.publish_envelope(ev("rows.added", "fine"))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(30), bus.run_until_idle())
            .await
            .expect("settled");
        let letters = letters(&bus);
        assert_eq!(letters.len(), i + 1, "{body}: {letters:?}");
        let letter = letters
            .iter()
            .find(|l| l.envelope.payload == body.as_bytes())
            .unwrap_or_else(|| panic!("{body}: no letter in {letters:?}"));
        assert_eq!(letter.attempts, attempts, "{body}: not retried");
        assert!(letter.error.contains(text), "{body}: {}", letter.error);
        let s = sub.stats();
        assert_eq!(
            (s.acked, s.dead_lettered),
            (i as u64 + 1, i as u64 + 1),
            "{body}: the next message handled: {s:?}"
        );
    }
    assert_eq!(
        calls.lock().len(),
        4 * 2 + 1,
        "one retry, for `on retry` only"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panic_anywhere_in_an_attempt_is_dead_lettered_and_the_worker_goes_on() {
    panics_are_isolated().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_anywhere_in_an_attempt_is_dead_lettered_and_the_worker_goes_on_multi_thread() {
    panics_are_isolated().await;
}

/// A command handler panicking on its first poll (run on the sender's task): the sender
/// gets `Failed` with attempts 1 and the panic's text, and the next command is answered.
#[tokio::test(start_paused = true)]
async fn a_command_panicking_on_its_first_poll_fails_its_sender_and_the_next_is_answered() {
    let bus = Bus::builder().with_default_resilience().build().unwrap();
    let _h = bus
        .handle(|c: Charge, _| async move {
            if c.cents == 0 {
                panic!("zero cents");
            }
            Ok::<u64, BoxError>(c.cents)
        })
        .start()
        .await
        .unwrap();
    let err = bus.send(Charge { cents: 0 }).await.unwrap_err();
    match &err {
        SendError::Failed { error, attempts } => {
            assert_eq!(*attempts, 1, "{err}");
            assert!(error.contains("zero cents"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(bus.send(Charge { cents: 7 }).await.unwrap(), 7);
    assert_eq!(letters(&bus).len(), 1);
}

/// A handler's panic is dead-lettered `panicked` and counted in the subscription's
/// `panicked` (docs/bus.md: the reasons; `SubscriptionStats::panicked`: "attempts that
/// panicked"), without the stack and with it alike. Without it, it is; under the default
/// stack, whose panic capture turns the panic into an error (`PanicError`, wrapped in the
/// retry's `Permanent` give-up), the bus files it as `handler_failed` and counts no panic.
/// Fixed: the bus files a panic the stack caught as a panic.
#[tokio::test(start_paused = true)]
async fn a_handler_panic_is_dead_lettered_as_panicked_with_or_without_the_stack() {
    let builders: [(&str, MakeBus); 2] = [
        ("no stack", || Bus::builder().max_attempts(1)),
        ("default stack", || Bus::builder().with_default_resilience()),
    ];
    for (name, builder) in builders {
        let bus = builder().build().unwrap();
        let sub = bus
            .subscribe(
                "rows",
                "rows.#",
                boxed(tower::service_fn(|_e: Envelope| async {
                    if true {
                        panic!("boom");
                    }
                    Ok::<_, BoxError>(Outcome::Ack)
                })),
            )
            .start()
            .await
            .unwrap();
        bus.publish_envelope(ev("rows.added", "1")).await.unwrap();
        bus.run_until_idle().await;
        let letters = letters(&bus);
        assert_eq!(letters.len(), 1, "{name}");
        assert!(
            letters[0].error.contains("boom"),
            "{name}: {}",
            letters[0].error
        );
        let s = sub.stats();
        assert_eq!(
            (letters[0].reason, s.panicked),
            (DeadLetterReason::Panicked, 1),
            "{name}: the letter's reason and the panic count ({s:?})"
        );
    }
}
