//! Defects noticed at stop 36: what a component publishes while handling a message of a
//! session stays in the session (as the bus's own `ctx.publish` does).

use serde::{Deserialize, Serialize};
use switchyard::session::SESSION_HEADER;
use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus, Message};
use switchyard_components::{Assembly, ComponentBuilder, Role};

use crate::{Note, WAIT};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Echo {
    n: u64,
}
impl Message for Echo {
    const TOPIC: &'static str = "shop.note.echo";
}

/// A component handling a session's message: its `publish`, its `publish_to`, and the
/// status update of the request context it begins all carry the session's header.
#[tokio::test]
async fn a_components_consequences_stay_in_the_session() {
    let bus = Bus::new();
    let echoed = Recorder::start(&bus, "shop.note.echo").await.unwrap();
    let again = Recorder::start(&bus, "shop.note.again").await.unwrap();
    let status = Recorder::start(&bus, "shop.status.update").await.unwrap();
    let _running = Assembly::new(&bus)
        .component(
            ComponentBuilder::new("shop-manager", Role::Manager, "shop")
                .publishes("shop.note.echo")
                .publishes("shop.note.again")
                .on(Note::TOPIC, |n: Note, cx| async move {
                    cx.begin("order").await?;
                    cx.publish(Echo { n: n.n }).await?;
                    cx.publish_to("shop.note.again", Echo { n: n.n }).await?;
                    Ok::<_, BoxError>(())
                }),
        )
        .start()
        .await
        .unwrap();
    let session = bus.session("s-1").await.unwrap();
    session.publish(Note { n: 1 }).await.unwrap();

    in_session(&echoed, "publish").await;
    in_session(&again, "publish_to").await;
    in_session(&status, "the context's status update").await;
}

/// The first envelope `recorder` gets carries the session's header.
async fn in_session(recorder: &Recorder, what: &str) {
    let got = recorder.wait_for(1, WAIT).await.unwrap();
    assert_eq!(got[0].header(SESSION_HEADER), Some("s-1"), "{what}");
}
