// A handler's first argument must be a `Message`: this type has serde but no topic.
use serde::{Deserialize, Serialize};
use switchyard::{Bus, Ctx};

#[derive(Clone, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

fn main() {
    let bus = Bus::new();
    let _ = bus.on("pong", |ping: Ping, _ctx: Ctx| async move {
        let _ = ping.n;
        Ok::<_, std::io::Error>(())
    });
}
