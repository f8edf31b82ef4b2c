//! `wrap_handlers_with` tells the wrap each handler's name, the pattern (or command topic) it
//! was registered for and its kind, once per registration, whatever topics then flow.

use std::sync::{Arc, Mutex};

use switchyard::{Bus, Envelope, Outcome, SubscriptionKind, WrapTarget, handler_fn};
use tokio::sync::mpsc;

use crate::WAIT;

#[tokio::test]
async fn the_wrap_is_told_name_pattern_and_kind_once_per_registration() {
    let seen: Arc<Mutex<Vec<(String, String, SubscriptionKind)>>> = Arc::default();
    let s = seen.clone();
    let bus = Bus::builder()
        .wrap_handlers_with(move |t: &WrapTarget<'_>, h| {
            s.lock()
                .unwrap()
                .push((t.name.to_owned(), t.pattern.to_owned(), t.kind));
            h
        })
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.subscribe(
        "audit",
        "orders.*",
        handler_fn(move |env: Envelope| {
            let tx = tx.clone();
            async move {
                tx.send(env.topic.as_str().to_owned()).unwrap();
                Ok::<_, std::convert::Infallible>(Outcome::Ack)
            }
        }),
    )
    .start()
    .await
    .unwrap()
    .detach();
    bus.handle_envelope(
        "pricer",
        "quotes.ask",
        handler_fn(|env: Envelope| async move {
            Ok::<_, std::convert::Infallible>(Outcome::reply(env.reply("1")))
        }),
    )
    .start()
    .await
    .unwrap()
    .detach();
    for topic in ["orders.a", "orders.b", "orders.c"] {
        bus.publish_envelope(Envelope::new(switchyard::Topic::new(topic).unwrap(), "{}"))
            .await
            .unwrap();
        let got = tokio::time::timeout(WAIT, rx.recv()).await.unwrap();
        assert_eq!(got.as_deref(), Some(topic));
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            (
                "audit".to_owned(),
                "orders.*".to_owned(),
                SubscriptionKind::Event
            ),
            (
                "pricer".to_owned(),
                "quotes.ask".to_owned(),
                SubscriptionKind::Command
            ),
        ]
    );
}
