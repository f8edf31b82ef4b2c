//! The error handler: applies a retry policy to reported failures by asking the failing
//! domain's manager to retry, and dead-letters the failed request when attempts run out.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;
use switchyard::{DeadLetter, DeadLetterReason, DeadLetterSink, Message, MessageId};

use super::SYSTEM_DOMAIN;
use crate::component::{ComponentBuilder, ComponentCtx};
use crate::context::{Completion, ErrorReport};
use crate::role::{Role, exhausted_topic, retry_topic};

/// How many times a failing flow is tried per domain, and how long to wait between tries:
/// `switchyard_core`'s one retry policy, re-exported here. The error handler uses its attempts
/// and backoff ([`RetryPolicy::delay_for`]); whether a failure is retryable comes from the
/// [`ErrorReport`], not from the policy's classifier.
pub use switchyard::retry::RetryPolicy;

/// The subscription of `component` on this bus whose pattern takes `topic`
/// (`<component>:<pattern>`), or else the component's name.
fn failed_subscription(
    bus: &switchyard::Bus,
    component: &str,
    topic: &switchyard::Topic,
) -> String {
    let prefix = format!("{component}:");
    bus.registry()
        .into_iter()
        .find(|s| {
            s.name.starts_with(&prefix)
                && switchyard::Pattern::new(&s.pattern).is_ok_and(|p| p.matches(topic))
        })
        .map_or_else(|| component.to_owned(), |s| s.name)
}

/// Published on `<domain>.retry.request`: the error handler asks the domain's manager to try
/// the flow again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryRequest {
    /// The flow.
    pub correlation_id: MessageId,
    /// The failing domain.
    pub domain: SmolStr,
    /// The attempt about to be made (2 for the first retry).
    pub attempt: u32,
    /// The policy's maximum.
    pub max_attempts: u32,
    /// The component that failed.
    pub failed_component: SmolStr,
    /// Class of the error.
    pub error_type: String,
    /// What happened.
    pub message: String,
}

impl Message for RetryRequest {
    const TOPIC: &'static str = "system.retry.request";
}

/// Published on `<domain>.retry.exhausted`: the error handler gave up on the flow (it is in the
/// dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryExhausted {
    /// The flow.
    pub correlation_id: MessageId,
    /// The failing domain.
    pub domain: SmolStr,
    /// Attempts made.
    pub attempts: u32,
    /// The component that failed last.
    pub failed_component: SmolStr,
    /// Class of the last error.
    pub error_type: String,
    /// The last error.
    pub message: String,
}

impl Message for RetryExhausted {
    const TOPIC: &'static str = "system.retry.exhausted";
}

/// Counters of the error handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorHandlerStats {
    /// Error reports received.
    pub errors: u64,
    /// Of which propagated (only recorded).
    pub propagated: u64,
    /// Retry requests published.
    pub retries: u64,
    /// Flows given up (dead-lettered).
    pub gave_up: u64,
    /// Flows being tracked now.
    pub tracked: usize,
}

const MAX_TRACKED: usize = 100_000;
const MAX_HISTORY: usize = 1_000;

#[derive(Default)]
struct State {
    attempts: HashMap<(MessageId, SmolStr), u32>,
    order: VecDeque<(MessageId, SmolStr)>,
    given_up: HashMap<(MessageId, SmolStr), GivenUp>,
    history: VecDeque<ErrorReport>,
    stats: ErrorHandlerStats,
}

/// A flow (in one domain) the error handler gave up on.
struct GivenUp {
    /// Attempts made, dead-lettered ones included.
    attempts: u32,
    /// The id of the request it dead-lettered (the failing component's message, carried by
    /// the report): a replay of that dead letter publishes it again with this id, so a
    /// report of it failing again is that replay's (or a late duplicate's). `None` when the
    /// report carried no request (the error report itself was dead-lettered).
    request: Option<MessageId>,
}

/// Consumes `*.error` and applies the [`RetryPolicy`] per (correlation id, domain):
/// an original (not propagated), retryable failure is answered with `<domain>.retry.request`
/// (at once, or after the policy's backoff delay through the bus's delayed delivery) until
/// attempts run out; then the request the failing component was handling (carried by the
/// report, [`ErrorReport::failed_request`]) goes to the dead-letter sink under the
/// component's subscription, so that replaying it re-runs that step (a report without it:
/// the error envelope, under `error-handler`), reason `HandlerFailed`, error text with the
/// correlation id; and `<domain>.retry.exhausted` is published. When the dead-lettered step
/// of a flow given up fails again (its replay did: the report carries the request with the
/// same id), the request is dead-lettered again at once; other failures in a flow given up
/// (its manager failing its context on `retry.exhausted`) are only recorded. A domain
/// completion (`<domain>.<action>.complete`) forgets the flow.
///
/// Attempts are counted per flow and domain, not per request: requests fanned out inside one
/// flow to one domain share the policy's attempts.
///
/// Dead letters go to the sink given with [`dead_letters`](Self::dead_letters), or else to the
/// bus's own sink (`Bus::dead_letter`: its in-memory store, or the sink it was built with).
#[derive(Clone)]
pub struct ErrorHandler {
    state: Arc<Mutex<State>>,
    policy: RetryPolicy,
    sink: Option<Arc<dyn DeadLetterSink>>,
}

impl std::fmt::Debug for ErrorHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorHandler")
            .field("policy", &self.policy)
            .field("stats", &self.stats())
            .finish()
    }
}

impl ErrorHandler {
    /// The component name.
    pub const NAME: &'static str = "error-handler";

    /// An error handler with this policy.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            policy,
            sink: None,
        }
    }

    /// Sends dead letters to `sink` instead of the bus's own sink.
    pub fn dead_letters(mut self, sink: Arc<dyn DeadLetterSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Counters.
    pub fn stats(&self) -> ErrorHandlerStats {
        let st = self.state.lock();
        let mut s = st.stats;
        s.tracked = st.attempts.len();
        s
    }

    /// The last error reports received (at most 1000), oldest first.
    pub fn history(&self) -> Vec<ErrorReport> {
        self.state.lock().history.iter().cloned().collect()
    }

    /// Attempts made so far for one flow in one domain.
    pub fn attempts(&self, correlation_id: MessageId, domain: &str) -> u32 {
        let st = self.state.lock();
        let key = (correlation_id, SmolStr::new(domain));
        st.attempts
            .get(&key)
            .copied()
            .or_else(|| st.given_up.get(&key).map(|g| g.attempts))
            .unwrap_or(0)
    }

    /// The component to add to an assembly.
    pub fn component(&self) -> ComponentBuilder {
        let on_error = self.clone();
        let on_done = self.clone();
        ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .publishes("*.retry.request")
            .publishes("*.retry.exhausted")
            .on::<ErrorReport, _, _, _, _>("*.error", move |report, cx| {
                let me = on_error.clone();
                async move { me.on_error(report, cx).await }
            })
            .on::<Completion<serde_json::Value>, _, _, _, _>("*.*.complete", move |done, _cx| {
                let me = on_done.clone();
                async move {
                    if done.is_ok() {
                        let key = (done.correlation_id, done.domain.clone());
                        me.state.lock().attempts.remove(&key);
                    }
                    Ok::<_, std::convert::Infallible>(())
                }
            })
    }

    /// Dead-letters a flow given up after `attempts`: the request the failing component
    /// was handling when the report carries it (replaying it re-runs that step; the dead
    /// letter names the component's subscription on its topic), else the error report
    /// itself (handler `error-handler`). The error text names the flow, the domain, the
    /// component and the error.
    fn dead_letter(&self, report: &ErrorReport, cx: &ComponentCtx, attempts: u32) {
        let text = format!(
            "correlation {}: {} in {} failed after {attempts} attempt(s): {}: {}",
            report.correlation_id,
            report.domain,
            report.component,
            report.error_type,
            report.message
        );
        tracing::warn!(correlation_id = %report.correlation_id, %text, "giving up: dead-lettered");
        let request = report.failed_request.as_ref().and_then(|r| {
            r.to_envelope(report.correlation_id.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "failed request not re-addressable"))
                .ok()
        });
        let mut letter = match request {
            Some(env) => {
                let handler = failed_subscription(cx.raw_bus(), &report.component, &env.topic);
                DeadLetter::new(env, DeadLetterReason::HandlerFailed, text).with_handler(handler)
            }
            // The error envelope, filed under the flow it belongs to.
            None => {
                let envelope = cx
                    .envelope()
                    .clone()
                    .with_correlation_id(report.correlation_id.clone());
                DeadLetter::new(envelope, DeadLetterReason::HandlerFailed, text)
                    .with_handler(Self::NAME)
            }
        };
        letter.attempts = attempts;
        match &self.sink {
            Some(s) => s.put(letter),
            // The bus's configured sink (its default store, or the one it was given).
            None => cx.raw_bus().dead_letter(letter),
        }
    }

    async fn on_error(
        &self,
        report: ErrorReport,
        cx: ComponentCtx,
    ) -> Result<(), switchyard::PublishError> {
        enum Decision {
            Record,
            Retry(u32),
            GiveUp(u32),
            /// The step of a flow already given up whose request was dead-lettered failed
            /// again: a replayed dead letter (or a late duplicate). Dead-lettered again at
            /// once, the manager not told again.
            DeadLetterAgain(u32),
        }
        let key = (report.correlation_id.clone(), report.domain.clone());
        let decision = {
            let mut st = self.state.lock();
            st.stats.errors += 1;
            if st.history.len() >= MAX_HISTORY {
                st.history.pop_front();
            }
            st.history.push_back(report.clone());
            let given_up = st.given_up.get_mut(&key);
            let again = given_up.is_some();
            // Only a failure of the dead-lettered request itself is a replayed step: any
            // other original failure in a flow given up (its manager failing its own context
            // on `retry.exhausted`, say) is recorded, not dead-lettered a second time.
            let replayed = match (report.propagated, given_up, &report.failed_request) {
                (false, Some(g), Some(failed))
                    if g.request.as_ref().is_some_and(|id| *id == failed.id) =>
                {
                    g.attempts += 1;
                    Some(g.attempts)
                }
                _ => None,
            };
            if let Some(attempts) = replayed {
                st.stats.gave_up += 1;
                Decision::DeadLetterAgain(attempts)
            } else if report.propagated || again {
                st.stats.propagated += u64::from(report.propagated);
                Decision::Record
            } else {
                if !st.attempts.contains_key(&key) {
                    if st.order.len() >= MAX_TRACKED
                        && let Some(old) = st.order.pop_front()
                    {
                        st.attempts.remove(&old);
                    }
                    st.order.push_back(key.clone());
                }
                let n = st.attempts.entry(key.clone()).or_insert(0);
                *n += 1;
                let made = *n;
                if report.retryable && made < self.policy.get_max_attempts() {
                    st.stats.retries += 1;
                    Decision::Retry(made + 1)
                } else {
                    st.stats.gave_up += 1;
                    st.attempts.remove(&key);
                    if st.given_up.len() >= MAX_TRACKED {
                        st.given_up.clear();
                    }
                    let request = report.failed_request.as_ref().map(|r| r.id.clone());
                    st.given_up.insert(
                        key,
                        GivenUp {
                            attempts: made,
                            request,
                        },
                    );
                    Decision::GiveUp(made)
                }
            }
        };
        match decision {
            Decision::Record => Ok(()),
            Decision::Retry(attempt) => {
                tracing::info!(correlation_id = %report.correlation_id, domain = %report.domain,
                    attempt, error = %report.message, "asking for a retry");
                let req = RetryRequest {
                    correlation_id: report.correlation_id,
                    domain: report.domain.clone(),
                    attempt,
                    max_attempts: self.policy.get_max_attempts(),
                    failed_component: report.component.clone(),
                    error_type: report.error_type.clone(),
                    message: report.message.clone(),
                };
                // `attempt` is the one about to be made: `attempt - 1` have failed.
                let delay = self.policy.delay_for(attempt.saturating_sub(1));
                if delay.is_zero() {
                    return cx.publish_to(&retry_topic(&report.domain), req).await;
                }
                let mut env = crate::consequence_of(req.to_envelope()?, cx.envelope());
                env.topic = switchyard::Topic::new(&retry_topic(&report.domain))?;
                cx.bus()
                    .schedule(
                        tokio::time::Instant::now()
                            .checked_add(delay)
                            .unwrap_or_else(tokio::time::Instant::now),
                        env,
                    )
                    .map(|_| ())
            }
            Decision::DeadLetterAgain(attempts) => {
                self.dead_letter(&report, &cx, attempts);
                Ok(())
            }
            Decision::GiveUp(attempts) => {
                self.dead_letter(&report, &cx, attempts);
                let gave_up = RetryExhausted {
                    correlation_id: report.correlation_id,
                    domain: report.domain.clone(),
                    attempts,
                    failed_component: report.component.clone(),
                    error_type: report.error_type.clone(),
                    message: report.message.clone(),
                };
                cx.publish_to(&exhausted_topic(&report.domain), gave_up)
                    .await
            }
        }
    }
}
