//! Sessions scope handlers to one job: they see only that job's messages and disappear with it.
//! Run: `cargo run -p switchyard --example sessions`.

use serde::{Deserialize, Serialize};
use switchyard::testkit::Recorder;
use switchyard::{Bus, Command, Kind, Message};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Progress {
    percent: u8,
}
impl Message for Progress {
    const TOPIC: &'static str = "jobs.progress";
}

#[derive(Clone, Serialize, Deserialize)]
struct Plan;
impl Message for Plan {
    const TOPIC: &'static str = "jobs.plan";
    const KIND: Kind = Kind::Command;
}
impl Command for Plan {
    type Output = String;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::new();
    let lifecycle = Recorder::start(&bus, "switchyard.session.#").await?;
    let _default_plan = bus
        .handle(|_: Plan, _| async move { Ok::<_, std::io::Error>("default plan".to_owned()) })
        .start()
        .await?;
    let _audit = bus
        .on("audit", |p: Progress, ctx| async move {
            println!(
                "  audit (global) sees {p:?} from session {:?}",
                ctx.header("session-id")
            );
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await?;
    {
        let job = bus.session("job-42").await?;
        job.on("job-42-progress", |p: Progress, _| async move {
            println!("  job-42's own handler sees {p:?}");
            Ok::<_, std::io::Error>(())
        })
        .start()
        .await?
        .detach();
        job.handle(|_: Plan, _| async move {
            Ok::<_, std::io::Error>("job-42's special plan".to_owned())
        })
        .start()
        .await?
        .detach();
        println!("in job-42, plan = {}", job.send(Plan).await?);
        job.publish(Progress { percent: 50 }).await?;
        bus.publish(Progress { percent: 7 }).await?; // not in the session: only audit sees it
        bus.run_until_idle().await;
    } // job-42 ends here: its handlers are removed
    println!("after job-42, plan = {}", bus.send(Plan).await?);
    let events = lifecycle
        .wait_for(2, std::time::Duration::from_secs(1))
        .await?;
    for e in events {
        println!("{} {}", e.topic, String::from_utf8_lossy(&e.payload));
    }
    Ok(())
}
