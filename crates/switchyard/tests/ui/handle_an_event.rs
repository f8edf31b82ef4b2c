// `Bus::handle` takes a command; an event (a `Message` without `Command`) is refused.
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
    let _ = bus.handle(|ev: UserCreated, _ctx: Ctx| async move {
        let _ = ev.id;
        Ok::<_, std::io::Error>(())
    });
}
