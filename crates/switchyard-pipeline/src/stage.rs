//! The [`Stage`] trait and small stage building blocks: closures as stages, and the
//! [`Timeout`] and [`Retry`] wrappers (the pipeline's resilience layers).

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use crate::error::{StageError, StageErrorKind, short_type_name};
pub use switchyard_core::retry::{Backoff, Classify, Jitter, RetryPolicy};

/// One step of a pipeline: turns an `In` into an `Out`, or fails.
///
/// The runner calls [`init`](Self::init) once before the first input, [`run`](Self::run) once per
/// input (never concurrently: a stage owns its state through `&mut self`), and
/// [`finish`](Self::finish) once after the last input when the pipeline drains.
///
/// Futures are native `async fn`s in the trait (no boxing); they must be `Send` because each stage
/// runs in its own task.
///
/// ```
/// use switchyard_pipeline::{Stage, StageError};
///
/// struct Upper;
/// impl Stage<String, String> for Upper {
///     async fn run(&mut self, input: String) -> Result<String, StageError> {
///         Ok(input.to_uppercase())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a stage that takes `{In}` as input",
    label = "this stage does not implement `Stage<{In}, _>`",
    note = "in `Pipeline::then`, the next stage's input type must be the previous stage's output type (`{In}` here)"
)]
pub trait Stage<In, Out>: Send + 'static {
    /// Name used in the monitor and in dead letters. Defaults to the type's name.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<Self>()))
    }

    /// Prepares the stage (open files, connect sockets). An error stops the pipeline from starting.
    fn init(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Processes one input.
    fn run(&mut self, input: In) -> impl Future<Output = Result<Out, StageError>> + Send;

    /// Called once after the last input, when the pipeline drains (flush buffers here).
    fn finish(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }
}

/// A stage made from an async closure. Build one with [`stage_fn`].
pub struct FnStage<F> {
    name: Cow<'static, str>,
    f: F,
}

/// Makes a stage from an async closure `FnMut(In) -> impl Future<Output = Result<Out, StageError>>`.
///
/// ```
/// use switchyard_pipeline::{stage_fn, Pipeline, StageError};
/// let double = stage_fn("double", |x: u32| async move { Ok::<_, StageError>(x * 2) });
/// let _p: Pipeline<u32, u32> = Pipeline::new(double);
/// ```
pub fn stage_fn<In, Out, F, Fut>(name: impl Into<Cow<'static, str>>, f: F) -> FnStage<F>
where
    F: FnMut(In) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Out, StageError>> + Send,
{
    FnStage {
        name: name.into(),
        f,
    }
}

impl<In, Out, F, Fut> Stage<In, Out> for FnStage<F>
where
    F: FnMut(In) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Out, StageError>> + Send,
{
    fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }

    fn run(&mut self, input: In) -> impl Future<Output = Result<Out, StageError>> + Send {
        (self.f)(input)
    }
}

/// A stage made from a synchronous closure. Build one with [`map_fn`].
pub struct MapStage<F, In> {
    name: Cow<'static, str>,
    f: F,
    _in: PhantomData<fn(In)>,
}

/// Makes a stage from a synchronous closure `FnMut(In) -> Result<Out, StageError>`.
///
/// ```
/// use switchyard_pipeline::{map_fn, Pipeline, StageError};
/// let len = map_fn("len", |s: String| Ok::<_, StageError>(s.len()));
/// let _p: Pipeline<String, usize> = Pipeline::new(len);
/// ```
pub fn map_fn<In, Out, F>(name: impl Into<Cow<'static, str>>, f: F) -> MapStage<F, In>
where
    F: FnMut(In) -> Result<Out, StageError> + Send + 'static,
{
    MapStage {
        name: name.into(),
        f,
        _in: PhantomData,
    }
}

impl<In, Out, F> Stage<In, Out> for MapStage<F, In>
where
    In: Send + 'static,
    Out: Send,
    F: FnMut(In) -> Result<Out, StageError> + Send + 'static,
{
    fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }

    fn run(&mut self, input: In) -> impl Future<Output = Result<Out, StageError>> + Send {
        std::future::ready((self.f)(input))
    }
}

/// Fails a call of the inner stage that takes longer than a limit. Build with
/// [`StageExt::with_timeout`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

impl<In, Out, S> Stage<In, Out> for Timeout<S>
where
    S: Stage<In, Out>,
    In: Send,
    Out: Send,
{
    fn name(&self) -> Cow<'static, str> {
        self.inner.name()
    }

    fn init(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.init()
    }

    async fn run(&mut self, input: In) -> Result<Out, StageError> {
        let limit = self.limit;
        match tokio::time::timeout(limit, self.inner.run(input)).await {
            Ok(r) => r,
            Err(_) => Err(StageError::timeout(limit)),
        }
    }

    fn finish(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.finish()
    }
}

/// Which stage errors are worth another attempt when the policy has no classifier of its own:
/// the transient kinds, `Timeout`, `Io` and `Unavailable`.
pub fn transient(e: &StageError) -> bool {
    matches!(
        e.kind,
        StageErrorKind::Timeout | StageErrorKind::Io | StageErrorKind::Unavailable
    )
}

/// A [`RetryPolicy`] classifier deciding on stage errors with `f` (for
/// [`RetryPolicy::classifier`]); any other error is not retried.
///
/// ```
/// use switchyard_pipeline::{retry_on, RetryPolicy, StageErrorKind};
/// let policy = RetryPolicy::attempts(4).classifier(retry_on(|e| e.kind == StageErrorKind::Io));
/// # let _ = policy;
/// ```
pub fn retry_on(f: fn(&StageError) -> bool) -> impl Classify {
    move |e: &(dyn std::error::Error + 'static)| e.downcast_ref::<StageError>().is_some_and(f)
}

/// The default classification of a stage's retry: [`transient`] stage errors.
fn transient_stage_error(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<StageError>().is_some_and(transient)
}

/// Retries the inner stage on errors the policy deems worth it ([`transient`] ones unless the
/// policy has a classifier), waiting the policy's backoff (`switchyard_core::retry`) between
/// attempts. The input must be `Clone` (each attempt consumes one copy). Build with
/// [`StageExt::with_retry`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<In, Out, S> Stage<In, Out> for Retry<S>
where
    S: Stage<In, Out>,
    In: Clone + Send + Sync,
    Out: Send,
{
    fn name(&self) -> Cow<'static, str> {
        self.inner.name()
    }

    fn init(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.init()
    }

    async fn run(&mut self, input: In) -> Result<Out, StageError> {
        let mut attempt = 1;
        loop {
            match self.inner.run(input.clone()).await {
                Ok(out) => return Ok(out),
                Err(e)
                    if attempt < self.policy.get_max_attempts()
                        && self.policy.is_retryable(&e, &transient_stage_error) =>
                {
                    let delay = self.policy.delay_for(attempt);
                    tracing::debug!(attempt, error = %e, delay_ms = delay.as_millis() as u64, "stage failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn finish(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.finish()
    }
}

/// Renames the inner stage. Build with [`StageExt::named`].
#[derive(Debug, Clone)]
pub struct Named<S> {
    inner: S,
    name: Cow<'static, str>,
}

impl<In, Out, S: Stage<In, Out>> Stage<In, Out> for Named<S> {
    fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }

    fn init(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.init()
    }

    fn run(&mut self, input: In) -> impl Future<Output = Result<Out, StageError>> + Send {
        self.inner.run(input)
    }

    fn finish(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        self.inner.finish()
    }
}

/// Any `tower::Service` as a stage: `poll_ready` then `call` for each input. This is how tower
/// middleware applies to a stage — for example `switchyard-middleware`'s resilience layers around
/// a `Service<Envelope, Response = Outcome>`. Build with [`service_stage`].
#[derive(Debug, Clone)]
pub struct ServiceStage<S> {
    service: S,
    name: Cow<'static, str>,
}

/// Makes a stage from a `tower::Service<In, Response = Out>`; its errors become `Other` stage
/// errors counted under the error's type name.
///
/// ```
/// use switchyard_pipeline::{service_stage, Pipeline, StageError};
/// let svc = tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x + 1) });
/// let _p: Pipeline<u32, u32> = Pipeline::new(service_stage("inc", svc));
/// ```
pub fn service_stage<S>(name: impl Into<Cow<'static, str>>, service: S) -> ServiceStage<S> {
    ServiceStage {
        service,
        name: name.into(),
    }
}

impl<In, S> Stage<In, S::Response> for ServiceStage<S>
where
    In: Send + 'static,
    S: tower::Service<In> + Send + 'static,
    S::Response: Send,
    S::Error: Into<switchyard_core::BoxError>,
    S::Future: Send,
{
    fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }

    async fn run(&mut self, input: In) -> Result<S::Response, StageError> {
        use tower::ServiceExt;
        let service = self.service.ready().await.map_err(boxed_stage_error)?;
        service.call(input).await.map_err(boxed_stage_error)
    }
}

/// A boxed error as an `Other` stage error, keeping its message and chain.
fn boxed_stage_error(e: impl Into<switchyard_core::BoxError>) -> StageError {
    let e: switchyard_core::BoxError = e.into();
    StageError {
        kind: StageErrorKind::Other,
        error_type: "service".into(),
        message: e.to_string(),
        source: Some(e),
    }
}

/// Wrappers available on every stage.
pub trait StageExt: Sized {
    /// Fails calls that take longer than `limit` with a `Timeout` error.
    fn with_timeout(self, limit: Duration) -> Timeout<Self> {
        Timeout { inner: self, limit }
    }

    /// Retries failures under `policy` (transient ones unless it has a classifier).
    fn with_retry(self, policy: RetryPolicy) -> Retry<Self> {
        Retry {
            inner: self,
            policy,
        }
    }

    /// Gives the stage another name in the monitor and dead letters.
    fn named(self, name: impl Into<Cow<'static, str>>) -> Named<Self> {
        Named {
            inner: self,
            name: name.into(),
        }
    }
}

impl<S> StageExt for S {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    struct Upper;
    impl Stage<String, String> for Upper {
        async fn run(&mut self, input: String) -> Result<String, StageError> {
            Ok(input.to_uppercase())
        }
    }

    #[tokio::test]
    async fn default_name_and_run() {
        let mut s = Upper;
        assert_eq!(Stage::<String, String>::name(&s), "Upper");
        assert_eq!(s.run("a".into()).await.unwrap(), "A");
        let mut n = Upper.named("shout");
        assert_eq!(Stage::<String, String>::name(&n), "shout");
        assert_eq!(n.run("b".into()).await.unwrap(), "B");
    }

    #[tokio::test]
    async fn tower_services_are_stages() {
        use tower::ServiceBuilder;
        let svc = ServiceBuilder::new()
            .map_request(|x: u32| x * 10)
            .service_fn(|x: u32| async move {
                if x == 0 {
                    Err(std::io::Error::other("zero"))
                } else {
                    Ok(x + 1)
                }
            });
        let mut stage = service_stage("svc", svc);
        assert_eq!(Stage::<u32, u32>::name(&stage), "svc");
        assert_eq!(stage.run(2).await.unwrap(), 21);
        let e = stage.run(0).await.unwrap_err();
        assert_eq!(e.kind, StageErrorKind::Other);
        assert_eq!(e.message, "zero");
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_fails_slow_calls() {
        let mut slow = stage_fn("slow", |x: u32| async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, StageError>(x)
        })
        .with_timeout(Duration::from_secs(1));
        let e = slow.run(1).await.unwrap_err();
        assert_eq!(e.kind, StageErrorKind::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_retries_transient_errors_only() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut flaky = stage_fn("flaky", move |x: u32| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(StageError::new(StageErrorKind::Unavailable, "not yet"))
                } else {
                    Ok(x + 1)
                }
            }
        })
        .with_retry(RetryPolicy::attempts(3));
        assert_eq!(flaky.run(1).await.unwrap(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut bad = map_fn("bad", move |_: u32| {
            c.fetch_add(1, Ordering::SeqCst);
            Err::<u32, _>(StageError::invalid("never"))
        })
        .with_retry(RetryPolicy::attempts(5));
        assert!(bad.run(1).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_waits_the_policys_backoff_and_asks_its_classifier() {
        let start = tokio::time::Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut picky = stage_fn("picky", move |_: u32| {
            let _ = tx.send(start.elapsed());
            async { Err::<u32, _>(StageError::invalid("bad row")) }
        })
        .with_retry(
            RetryPolicy::attempts(3)
                .initial_delay(Duration::from_secs(1))
                .jitter(Jitter::None)
                .classifier(retry_on(|e| e.kind == StageErrorKind::Invalid)),
        );
        assert!(picky.run(1).await.is_err());
        let mut at = Vec::new();
        while let Ok(t) = rx.try_recv() {
            at.push(t.as_secs());
        }
        assert_eq!(
            at,
            [0, 1, 3],
            "invalid is retried by this policy, 1 s then 2 s apart"
        );
    }
}
