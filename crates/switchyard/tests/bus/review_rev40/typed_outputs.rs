//! Shortcuts 2 and 5: a typed command's output on the inline path. ARCHITECTURE.md,
//! Decisions, "A command to a free handler runs on its sender's task": "the typed output
//! slot a thread-local swapped around calls and polls, `state::TypedSlot`, instead of a tokio
//! task-local". Several typed sends polled together by one task (`join`), of one type and of
//! two, with handlers that wait different numbers of polls, and typed sends nested inside a
//! typed handler: each sender must get its own command's output.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard::{Bus, Kind, Message};

use super::Echo;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Square {
    n: u64,
    yields: u32,
}
impl Message for Square {
    const TOPIC: &'static str = "rev40.square";
    const KIND: Kind = Kind::Command;
}
impl switchyard::Command for Square {
    type Output = u64;
}

async fn square_handler(bus: &Bus, workers: usize) -> switchyard::Subscription {
    bus.handle(|sq: Square, _ctx: switchyard::Ctx| async move {
        for _ in 0..sq.yields {
            tokio::task::yield_now().await;
        }
        Ok::<_, std::io::Error>(sq.n * sq.n)
    })
    .workers(workers)
    .start()
    .await
    .unwrap()
}

/// Echo answers `"<n>:<text>"` after `n % 4` yields; when `text` asks, it first sends a
/// `Square` and an `Echo` of its own and puts their outputs in its answer.
async fn echo_handler(bus: &Bus, workers: usize) -> switchyard::Subscription {
    bus.handle(|echo: Echo, ctx: switchyard::Ctx| async move {
        for _ in 0..echo.n % 4 {
            tokio::task::yield_now().await;
        }
        if echo.text == "nest" {
            let sq = ctx
                .send(Square {
                    n: echo.n,
                    yields: (echo.n % 3) as u32,
                })
                .await
                .unwrap();
            let inner = ctx
                .send(Echo {
                    n: echo.n + 1,
                    text: "inner".into(),
                })
                .await
                .unwrap();
            return Ok::<_, std::io::Error>(format!("{}:nest sq={sq} inner=[{inner}]", echo.n));
        }
        Ok(format!("{}:{}", echo.n, echo.text))
    })
    .workers(workers)
    .start()
    .await
    .unwrap()
}

/// Sends of two command types joined on one task, each handler free to run many at once
/// (so every send may run inline on this one task, interleaved): every output is its own.
#[tokio::test]
async fn joined_typed_sends_on_one_task_each_get_their_own_output() {
    let bus = Bus::new();
    let _sq = square_handler(&bus, 64).await;
    let _echo = echo_handler(&bus, 64).await;
    for round in 0..5u64 {
        let squares = futures::future::join_all((0..40u64).map(|n| {
            bus.send(Square {
                n: n + round,
                yields: ((n * 7 + round) % 5) as u32,
            })
        }));
        let echoes = futures::future::join_all((0..40u64).map(|n| {
            bus.send(Echo {
                n: n + round,
                text: format!("r{round}"),
            })
        }));
        let (squares, echoes) = tokio::join!(squares, echoes);
        for (n, out) in squares.into_iter().enumerate() {
            let n = n as u64 + round;
            assert_eq!(out.unwrap(), n * n, "square of {n}");
        }
        for (n, out) in echoes.into_iter().enumerate() {
            let n = n as u64 + round;
            assert_eq!(out.unwrap(), format!("{n}:r{round}"));
        }
    }
}

/// Typed sends nested in a typed handler run inline (of another type, and of its own type
/// while a second worker slot is free), joined with plain sends on the same task.
#[tokio::test]
async fn typed_sends_nested_in_an_inline_handler_get_their_own_outputs() {
    let bus = Bus::new();
    let _sq = square_handler(&bus, 4).await;
    let _echo = echo_handler(&bus, 8).await;
    for n in 0..30u64 {
        let nested = bus.send(Echo {
            n,
            text: "nest".into(),
        });
        let plain = bus.send(Square {
            n: n + 100,
            yields: (n % 4) as u32,
        });
        let timed = bus.request(
            Echo {
                n: n + 200,
                text: "t".into(),
            },
            Duration::from_secs(5),
        );
        let (nested, plain, timed) = tokio::join!(nested, plain, timed);
        assert_eq!(
            nested.unwrap(),
            format!("{n}:nest sq={} inner=[{}:inner]", n * n, n + 1)
        );
        assert_eq!(plain.unwrap(), (n + 100) * (n + 100));
        assert_eq!(timed.unwrap(), format!("{}:t", n + 200));
    }
}
