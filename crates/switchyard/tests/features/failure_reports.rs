//! How failures are reported (issue 13, item 5): event handler failures are not worded as
//! commands, and `Bus::dead_letters` says in its type when it is not where letters go.

use std::sync::Arc;

use switchyard::{Bus, InMemoryDeadLetters, Outcome};

use crate::Tick;

#[tokio::test]
async fn event_handler_failures_are_not_worded_as_command_failures() {
    let bus = Bus::builder().max_attempts(1).build().unwrap();
    let _broken = bus
        .on("broken", |_: Tick, _| async move {
            Err::<(), _>(std::io::Error::other("disk full"))
        })
        .start()
        .await
        .unwrap();
    let _picky = bus
        .on("picky", |_: Tick, _| async move {
            Ok::<_, std::io::Error>(Outcome::reject("odd tick"))
        })
        .start()
        .await
        .unwrap();
    let report = bus.publish_and_wait(Tick { n: 1 }).await.unwrap();
    assert_eq!(report.failures.len(), 2);
    for failure in &report.failures {
        let text = failure.to_string();
        assert!(
            !text.contains("command"),
            "an event handler's failure is worded as a command's: {text}"
        );
        assert!(
            text.contains("disk full") || text.contains("odd tick"),
            "the cause is kept: {text}"
        );
    }
}

#[tokio::test]
async fn dead_letters_is_none_when_a_custom_sink_takes_them() {
    let sink = Arc::new(InMemoryDeadLetters::default());
    let custom = Bus::builder().dead_letters(sink.clone()).build().unwrap();
    assert!(
        custom.dead_letters().is_none(),
        "the default store is not where this bus's letters go"
    );
    let default = Bus::new();
    assert!(default.dead_letters().is_some_and(|d| d.is_empty()));
}
