//! Review rev39: message contracts from the outside. Compatibility verdicts on the changes
//! serde attributes and integer / array / string widths make (`compat`), schemas against what
//! serde really writes (`shapes`), the AsyncAPI export with wildcards, commands and tagged or
//! generic payloads (`asyncapi`), and upcaster chains on every typed decode path (`upcast`).

mod asyncapi;
mod compat;
mod shapes;
mod upcast;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use switchyard::{DeadLetter, DeadLetterSink, Envelope, Topic};
use switchyard_contracts::{Compatibility, JsonSchema, Mode, check_compatibility, schemars};
use tokio::sync::mpsc;

pub(super) const WAIT: Duration = Duration::from_secs(10);

/// The JSON Schema schemars derives for `T` (as `Contract::schema` does).
pub(super) fn schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// The verdict of `old → new` under `mode`.
pub(super) fn verdict<Old: JsonSchema, New: JsonSchema>(mode: Mode) -> Compatibility {
    check_compatibility(&schema::<Old>(), &schema::<New>(), mode)
}

/// An envelope as a foreign publisher (or a typed one, with `type_name`) writes it.
pub(super) fn envelope(topic: &str, payload: &impl Serialize, type_name: Option<&str>) -> Envelope {
    let mut env = Envelope::new(
        Topic::new(topic).unwrap(),
        serde_json::to_vec(payload).unwrap(),
    );
    env.type_name = type_name.map(Into::into);
    env
}

/// Dead letters on a channel.
pub(super) struct Letters(pub(super) mpsc::UnboundedSender<DeadLetter>);
impl DeadLetterSink for Letters {
    fn put(&self, letter: DeadLetter) {
        let _ = self.0.send(letter);
    }
}

/// The next item of `rx`, or a panic naming what was awaited.
pub(super) async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed waiting for {what}"))
}
