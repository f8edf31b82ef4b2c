//! The state tracker: the current state of every active request, from status updates.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use smol_str::SmolStr;

use super::SYSTEM_DOMAIN;
use crate::component::ComponentBuilder;
use crate::context::{RequestId, RequestState, StatusUpdate};
use crate::role::Role;

/// What the tracker knows about one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackedRequest {
    /// The last status update.
    pub last: StatusUpdate,
    /// Every state seen, in order (starting with the creation state).
    pub states: Vec<RequestState>,
}

#[derive(Default)]
struct State {
    active: HashMap<RequestId, TrackedRequest>,
    ended: VecDeque<TrackedRequest>,
    anomalies: Vec<String>,
    updates: u64,
}

/// Keeps the current state of every active request (from `*.status.update`), a bounded
/// history of ended ones, and the updates that did not follow the state machine.
///
/// ```
/// use switchyard_components::builtin::StateTracker;
/// let tracker = StateTracker::new(1000);
/// let component = tracker.component(); // add it to an Assembly
/// # let _ = component;
/// assert!(tracker.active().is_empty());
/// ```
#[derive(Clone)]
pub struct StateTracker {
    state: Arc<Mutex<State>>,
    keep_ended: usize,
}

impl std::fmt::Debug for StateTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateTracker")
            .field("active", &self.active().len())
            .finish()
    }
}

impl StateTracker {
    /// The component name.
    pub const NAME: &'static str = "state-tracker";

    /// A tracker keeping the last `keep_ended` ended requests.
    pub fn new(keep_ended: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            keep_ended,
        }
    }

    /// The component to add to an assembly (subscribes to `*.status.update`).
    pub fn component(&self) -> ComponentBuilder {
        let me = self.clone();
        ComponentBuilder::new(Self::NAME, Role::System, SYSTEM_DOMAIN)
            .on::<StatusUpdate, _, _, _, _>("*.status.update", move |u, _cx| {
                let me = me.clone();
                async move {
                    me.apply(u);
                    Ok::<_, std::convert::Infallible>(())
                }
            })
    }

    /// Applies one update (what the subscription does).
    pub fn apply(&self, u: StatusUpdate) {
        let mut st = self.state.lock();
        st.updates += 1;
        let id = u.request_id;
        let anomaly = match (st.active.get(&id), u.from) {
            (None, None) if u.to == RequestState::Pending => None,
            (None, None) => Some(format!("request {id} created in state {}", u.to)),
            (None, Some(from)) => Some(format!(
                "request {id}: {from} → {} for an unknown request",
                u.to
            )),
            (Some(t), from) => {
                let last = t.last.to;
                if from != Some(last) || !last.can_become(u.to) {
                    Some(format!(
                        "request {id}: update {:?} → {} does not follow {last}",
                        from, u.to
                    ))
                } else {
                    None
                }
            }
        };
        if let Some(a) = anomaly {
            tracing::warn!(anomaly = %a, component = %u.component, "status update out of the state machine");
            if st.anomalies.len() < 10_000 {
                st.anomalies.push(a);
            }
        }
        let to = u.to;
        let entry = st.active.entry(id).or_insert_with(|| TrackedRequest {
            last: u.clone(),
            states: Vec::new(),
        });
        entry.states.push(to);
        entry.last = u;
        if to.is_terminal()
            && let Some(done) = st.active.remove(&id)
        {
            if st.ended.len() >= self.keep_ended {
                st.ended.pop_front();
            }
            if self.keep_ended > 0 {
                st.ended.push_back(done);
            }
        }
    }

    /// The current state of one request (active or recently ended).
    pub fn get(&self, id: RequestId) -> Option<TrackedRequest> {
        let st = self.state.lock();
        st.active.get(&id).cloned().or_else(|| {
            st.ended
                .iter()
                .rev()
                .find(|t| t.last.request_id == id)
                .cloned()
        })
    }

    /// Every active request.
    pub fn active(&self) -> Vec<TrackedRequest> {
        self.state.lock().active.values().cloned().collect()
    }

    /// Recently ended requests, oldest first.
    pub fn ended(&self) -> Vec<TrackedRequest> {
        self.state.lock().ended.iter().cloned().collect()
    }

    /// Requests (active or ended) of one component.
    pub fn of_component(&self, component: &str) -> Vec<TrackedRequest> {
        let st = self.state.lock();
        let c = SmolStr::new(component);
        st.active
            .values()
            .chain(st.ended.iter())
            .filter(|t| t.last.component == c)
            .cloned()
            .collect()
    }

    /// Updates that did not follow the state machine (should be empty).
    pub fn anomalies(&self) -> Vec<String> {
        self.state.lock().anomalies.clone()
    }

    /// Status updates received.
    pub fn updates(&self) -> u64 {
        self.state.lock().updates
    }
}
