//! Shortcut 3, the value on later attempts. ARCHITECTURE.md, step 1: "every typed handler of
//! that type gets a clone of it instead of decoding, on every attempt"; Decisions: "each
//! typed handler of that type gets its own clone on every attempt, so a handler that changes
//! its copy changes nothing another subscriber or a retry sees; the last holder gets the
//! value moved instead". These pin the case the others do not: one typed handler alone (the
//! message then travels unencoded and the handler may be the value's last holder), retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::{Bus, Shared};

use super::{Echo, Tok};

/// One typed subscription, alone on its topic, changes its copy and fails twice: the third
/// attempt gets the value as published, and nothing is dead-lettered.
#[tokio::test]
async fn a_lone_typed_handler_gets_the_published_value_on_every_attempt() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let _sub = bus
        .on("rev40-lone", move |mut tok: Tok, ctx: switchyard::Ctx| {
            let seen = Arc::clone(&seen2);
            async move {
                seen.lock().unwrap().push((ctx.attempt(), tok.clone()));
                if ctx.attempt() < 3 {
                    tok.text = format!("changed on attempt {}", ctx.attempt());
                    tok.n += 1000;
                    std::hint::black_box(&tok);
                    return Err(std::io::Error::other("not yet"));
                }
                Ok(())
            }
        })
        .max_attempts(3)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    assert!(
        bus.dead_letters().unwrap().is_empty(),
        "{:?}",
        bus.dead_letters().unwrap().list()
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 60);
    for (attempt, tok) in seen.iter() {
        assert_eq!(
            tok.text,
            format!("tok {}", tok.n),
            "attempt {attempt}: {tok:?}"
        );
        assert!(tok.n < 20, "attempt {attempt}: {tok:?}");
    }
}

/// The same with a `Shared<Tok>` handler alone, which fails twice.
#[tokio::test]
async fn a_lone_shared_handler_gets_the_published_value_on_every_attempt() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let _sub = bus
        .on(
            "rev40-lone-shared",
            move |tok: Shared<Tok>, ctx: switchyard::Ctx| {
                let seen = Arc::clone(&seen2);
                async move {
                    seen.lock().unwrap().push((ctx.attempt(), (*tok).clone()));
                    if ctx.attempt() < 3 {
                        return Err(std::io::Error::other("not yet"));
                    }
                    Ok(())
                }
            },
        )
        .max_attempts(3)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(Tok::new(n)).await.unwrap();
    }
    bus.run_until_idle().await;
    assert!(bus.dead_letters().unwrap().is_empty());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 60);
    for (_, tok) in seen.iter() {
        assert_eq!(tok.text, format!("tok {}", tok.n));
    }
}

/// A typed command run on its sender's task whose handler changes its copy and fails the
/// first two attempts: the third gets the command as sent, and the sender its answer.
#[tokio::test]
async fn an_inline_typed_command_gets_the_sent_value_on_every_attempt() {
    let bus = Bus::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let _sub = bus
        .handle(move |mut echo: Echo, ctx: switchyard::Ctx| {
            let seen = Arc::clone(&seen2);
            async move {
                seen.lock().unwrap().push(echo.clone());
                if ctx.attempt() < 3 {
                    echo.text.push_str(" changed");
                    return Err(std::io::Error::other("not yet"));
                }
                Ok(format!("{}:{}", echo.n, echo.text))
            }
        })
        .max_attempts(3)
        .retry_delay(Duration::ZERO)
        .start()
        .await
        .unwrap();
    for n in 0..20u64 {
        let out = bus
            .send(Echo {
                n,
                text: format!("e{n}"),
            })
            .await
            .unwrap();
        assert_eq!(out, format!("{n}:e{n}"));
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 60);
    for echo in seen.iter() {
        assert_eq!(echo.text, format!("e{}", echo.n));
    }
}
