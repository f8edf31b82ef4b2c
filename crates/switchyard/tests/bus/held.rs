//! A worker calls its handler in the box the handler's last call ran in (issue 18, "handler
//! calls without a heap allocation per call"): each handler clone keeps one box of its own,
//! refilled in place by every call, and a call dropped unfinished is dropped with its box.
//!
//! The tests see the box through the address of the handler's future, which records where
//! it is polled. So that a box freed after a call cannot simply come back from the allocator
//! at the same address, each call first takes (and keeps) a block of the future's size: a
//! handler that boxed every call's future would see a new address each time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use switchyard::{BoxError, BoxHandler, Bus, Envelope, Message, Outcome};

use crate::{Ping, WAIT};

/// Where the futures of a handler's calls were polled, in call order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<usize>>>);

impl Seen {
    fn addresses(&self) -> Vec<usize> {
        self.0.lock().unwrap().clone()
    }
}

/// A handler's future of a known size: records its address at its first poll, then waits on
/// `wait` (if any) and acks.
struct Probe<const N: usize> {
    _pad: [u8; N],
    seen: Seen,
    recorded: bool,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl<const N: usize> Future for Probe<N> {
    type Output = Result<Outcome, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let address = &*self as *const Probe<N> as usize;
        let this = self.get_mut();
        if !std::mem::replace(&mut this.recorded, true) {
            this.seen.0.lock().unwrap().push(address);
        }
        if let Some(wait) = this.wait.as_mut() {
            std::task::ready!(wait.as_mut().poll(cx));
        }
        Poll::Ready(Ok(Outcome::Ack))
    }
}

/// A handler whose calls make [`Probe`]s (waiting on what `wait` makes), each call first
/// taking a block of a `Probe`'s size and keeping it for the rest of the test.
fn probing<const N: usize, W>(seen: Seen, wait: W) -> BoxHandler
where
    W: Fn() -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> + Clone + Send + Sync + 'static,
{
    let hog: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    switchyard::boxed(tower::service_fn(move |_env: Envelope| {
        // `with_capacity`, not `vec![0; n]`: glibc's `calloc` skips the cache of freed blocks.
        hog.lock()
            .unwrap()
            .push(Vec::with_capacity(std::mem::size_of::<Probe<N>>()));
        Probe::<N> {
            _pad: [0; N],
            seen: seen.clone(),
            recorded: false,
            wait: wait(),
        }
    }))
}

/// Publishes `n` messages to the handler `make` makes (a [`probing`] one recording in the
/// `Seen` it is given) with `workers` workers, waits until they are handled, and returns where
/// each call's future was polled (one per message).
async fn probe(
    bus: &Bus,
    workers: usize,
    n: u64,
    make: impl FnOnce(Seen) -> BoxHandler,
) -> Vec<usize> {
    let seen = Seen::default();
    let _sub = bus
        .subscribe("probe", Ping::TOPIC, make(seen.clone()))
        .workers(workers)
        .start()
        .await
        .unwrap();
    for n in 0..n {
        bus.publish(Ping { n }).await.unwrap();
    }
    tokio::time::timeout(WAIT, bus.run_until_idle())
        .await
        .unwrap();
    let addresses = seen.addresses();
    assert_eq!(addresses.len() as u64, n);
    addresses
}

/// One worker: every call's future runs in the same box (it ran in a new box per call
/// before: 20 addresses).
#[tokio::test(flavor = "current_thread")]
async fn a_workers_calls_run_in_one_box() {
    let bus = Bus::new();
    let addresses = probe(&bus, 1, 20, |seen| probing::<512, _>(seen, || None)).await;
    assert!(
        addresses.iter().all(|a| *a == addresses[0]),
        "every call ran in the first call's box: {addresses:x?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// Two workers, each with its own clone of the handler: calls in flight at the same time run
/// in two different boxes, and each worker keeps reusing its own (two addresses in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workers_clone_keeps_a_box_of_its_own() {
    let bus = Bus::new();
    // Every call waits until another call is in flight too: the two workers' calls overlap.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let wait = move || {
        let barrier = barrier.clone();
        Some(Box::pin(async move {
            barrier.wait().await;
        }) as Pin<Box<dyn Future<Output = ()> + Send>>)
    };
    let addresses = probe(&bus, 2, 10, |seen| probing::<512, _>(seen, wait)).await;
    let mut distinct = addresses.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        2,
        "one box per worker, kept across its calls: {addresses:x?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A `BoxHandler` boxed again (`switchyard::boxed`, as a node's latency wrap or any generic
/// code may do) is not wrapped a second time: its calls still run in one box (wrapped, the
/// inner handler's `tower::Service::call` boxed each call: 20 addresses).
#[tokio::test(flavor = "current_thread")]
async fn a_box_handler_boxed_again_keeps_its_calls_in_one_box() {
    let bus = Bus::new();
    let addresses = probe(&bus, 1, 20, |seen| {
        switchyard::boxed(switchyard::boxed(probing::<512, _>(seen, || None)))
    })
    .await;
    assert!(
        addresses.iter().all(|a| *a == addresses[0]),
        "every call ran in the first call's box: {addresses:x?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// A handler whose futures are large (here 8 KiB) gets a box per call, freed when the call
/// ends, instead of keeping one that large per worker for the life of the subscription
/// (kept, all 20 calls ran at one address).
#[tokio::test(flavor = "current_thread")]
async fn a_large_futures_box_is_not_kept_between_calls() {
    let bus = Bus::new();
    let addresses = probe(&bus, 1, 20, |seen| probing::<8192, _>(seen, || None)).await;
    let mut distinct = addresses.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        20,
        "each call ran in a box of its own: {addresses:x?}"
    );
    bus.shutdown(WAIT).await.unwrap();
}

/// Tells when it is dropped.
struct DropFlag(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A call still running at the shutdown deadline is dropped with its box (nothing of it
/// stays behind in the handler), and the message is reported as not handled.
#[tokio::test(flavor = "current_thread")]
async fn a_call_left_unfinished_at_shutdown_is_dropped() {
    let bus = Bus::new();
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    let flag = Arc::new(Mutex::new(Some(DropFlag(Some(dropped_tx)))));
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let _sub = bus
        .subscribe(
            "stuck",
            Ping::TOPIC,
            switchyard::handler_fn(move |_env: Envelope| {
                let flag = flag.lock().unwrap().take();
                let started = started_tx.lock().unwrap().take();
                async move {
                    let _flag = flag;
                    if let Some(tx) = started {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                    Ok::<_, BoxError>(())
                }
            }),
        )
        .workers(1)
        .start()
        .await
        .unwrap();
    bus.publish(Ping { n: 1 }).await.unwrap();
    tokio::time::timeout(WAIT, started).await.unwrap().unwrap();
    let report = bus.shutdown(Duration::from_millis(50)).await.unwrap();
    assert_eq!(report.left.len() + report.nacked.len(), 1);
    tokio::time::timeout(WAIT, dropped)
        .await
        .expect("the unfinished call was dropped")
        .unwrap();
}
