//! 10,000 requests that complete, fail, are cancelled or time out: the context table is empty
//! afterwards.

use std::time::Duration;

use switchyard::testkit::Recorder;
use switchyard::{BoxError, Bus};
use switchyard_components::{Assembly, ComponentBuilder, ContextConfig, Role};

use crate::Note;

const REQUESTS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_leave_no_context_behind() {
    let bus = Bus::new();
    let errors = Recorder::start(&bus, "work.error").await.unwrap();
    let running = Assembly::new(&bus)
        .contexts(ContextConfig {
            timeout: Duration::from_millis(300),
            sweep_interval: Duration::from_millis(20),
        })
        .component(
            ComponentBuilder::new("work-manager", Role::Manager, "work")
                .workers(4)
                .on::<Note, _, _, _, _>("work.job.request", |note, cx| async move {
                    let ctx = cx.begin("job").await?;
                    ctx.start().await?;
                    match note.n % 4 {
                        0 => ctx.complete(&note.n).await?,
                        1 => {
                            ctx.fail("Boom", format!("request {}", note.n), false)
                                .await?
                        }
                        2 => ctx.cancel("not needed").await?,
                        _ => {} // left running: the sweeper times it out
                    }
                    Ok::<_, BoxError>(())
                }),
        )
        .start()
        .await
        .unwrap();

    for n in 0..REQUESTS {
        bus.publish_to("work.job.request", Note { n })
            .await
            .unwrap();
    }
    // Every failure and every timeout publishes one error: wait for all of them.
    let expected_errors = (REQUESTS / 4 * 2) as usize;
    errors
        .wait_for(expected_errors, Duration::from_secs(60))
        .await
        .unwrap();
    bus.run_until_idle().await;

    let table = running.contexts();
    assert!(table.is_empty(), "{} contexts leaked", table.len());
    let stats = table.stats();
    assert_eq!(stats.created, REQUESTS);
    assert_eq!(stats.completed, REQUESTS / 4);
    assert_eq!(stats.cancelled, REQUESTS / 4);
    assert_eq!(stats.failed, REQUESTS / 2);
    assert_eq!(stats.timed_out, REQUESTS / 4);
    assert_eq!(stats.active, 0);
}
