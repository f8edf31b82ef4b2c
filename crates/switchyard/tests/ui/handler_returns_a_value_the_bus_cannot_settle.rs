// An event handler's `Ok` value tells the bus how to settle the message: `()` (ack) or an
// `Outcome`. A `String` means nothing to it.
use serde::{Deserialize, Serialize};
use switchyard::{Bus, Ctx, Message};

#[derive(Clone, Serialize, Deserialize)]
struct UserCreated {
    id: u64,
}

impl Message for UserCreated {
    const TOPIC: &'static str = "users.created";
}

fn main() {
    let bus = Bus::new();
    let _ = bus.on("welcome", |ev: UserCreated, _ctx: Ctx| async move {
        Ok::<_, std::io::Error>(format!("welcome, user {}", ev.id))
    });
}
