//! Remote handlers: a WebSocket connection executes the commands of a topic, alone or as a
//! member of a handler group.
//!
//! - **Alone** (`handle` without `group`): the connection is the topic's one handler on the
//!   bus (`ws-handler:<principal>:<connection>:<id>`, see [`own_name`]). Its disconnect fails
//!   the commands it holds at once; an `ok: false` is retried by the node's policy; a
//!   `hand_back: true` is the bus's [`HandBack`] (not an attempt: see docs/gateway.md).
//! - **Group** (`handle` with `group`): one bus handler for the topic
//!   (`ws-handler:group:<principal>:<group>`, see [`group_bus_name`]) hands each command to
//!   a live member, round robin. A group belongs to one principal: another principal's
//!   `handle` of the topic is refused, whatever group it names. When
//!   that member disconnects, fails (`ok: false`), hands it back (`hand_back: true`) or
//!   loses the command from its full buffer, the command goes to the next member it has not
//!   been to: each member gets it
//!   at most once, and when every member has had it the sender gets a typed error (not
//!   retried again, so a command never bounces between members). A rejection (`reject:
//!   true`) is final at once. The group's bus handler ends with its last member.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use switchyard::{BoxError, Envelope, HandBack, Outcome, Permanent, SubscribeError, Subscription};

use super::conn::{CallResult, Conn};
use super::targets::{Hub, subscribe_error};
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

/// The error a command's sender gets when its remote handler's connection closed before
/// answering. Permanent: not retried.
#[derive(Debug, thiserror::Error)]
#[error(
    "remote handler disconnected before answering (WebSocket connection {conn} of principal {principal:?})"
)]
pub(crate) struct RemoteHandlerGone {
    conn: u64,
    principal: String,
}

/// A remote handler's `ok: false`.
#[derive(Debug, thiserror::Error)]
#[error("remote handler failed: {0}")]
pub(crate) struct RemoteHandlerFailed(String);

/// A remote handler's `hand_back: true` ("not mine, not now"): the reason it gave.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RemoteHandedBack(String);

/// The bus's hand-back for a remote handler's `hand_back: true`, after `delay` if it asked.
fn hand_back(error: String, delay: Option<std::time::Duration>) -> BoxError {
    let back = HandBack::new(RemoteHandedBack(error));
    Box::new(match delay {
        Some(d) => back.after(d),
        None => back,
    })
}

/// The command frame was evicted from a slow remote handler's buffer.
#[derive(Debug, thiserror::Error)]
#[error(
    "command not delivered to the remote handler: its outbound buffer was full (slow_client = drop_oldest)"
)]
pub(crate) struct RemoteHandlerSlow;

/// Every member of a handler group had the command and none answered it: each
/// disconnected, failed or was too slow. Permanent: each member was tried once already.
#[derive(Debug, thiserror::Error)]
#[error(
    "remote handler group {group:?}: {tried} member(s) tried once each, none answered ({last})"
)]
pub(crate) struct RemoteHandlerGroupFailed {
    group: String,
    tried: usize,
    last: String,
}

/// A handler group with no live member when a command came (they are leaving).
#[derive(Debug, thiserror::Error)]
#[error("remote handler group {group:?} has no connected member")]
pub(crate) struct RemoteHandlerGroupEmpty {
    group: String,
}

/// The bus name of a connection's own remote handler:
/// `ws-handler:<principal>:<connection>:<handler id>`, e.g. `ws-handler:alice:7:h1`. Distinct
/// for each registration of each connection (so `/v1/stats`, `/v1/topology` and `/metrics`
/// tell two handlers of one principal apart, as for subscriptions: see
/// [`own_name`](super::targets::own_name)) and never reused by this node.
pub(crate) fn own_name(principal: &str, conn: u64, hid: &str) -> String {
    format!("{}{principal}:{conn}:{hid}", super::HANDLER_PREFIX)
}

/// A registration refused by the bus: a topic that has its handler already names it, unless it
/// is another principal's remote handler (its name holds that principal and its group).
fn handle_error(e: SubscribeError, principal: &str) -> ApiError {
    if let SubscribeError::DuplicateHandler { topic, existing } = &e
        && existing.starts_with(super::HANDLER_PREFIX)
        && !is_own_registration(existing, principal)
    {
        return ApiError::new(
            ErrorKind::BadRequest,
            format!(
                "command topic {topic} already has a handler (a remote handler of another principal)"
            ),
        );
    }
    subscribe_error(e)
}

/// True when bus handler name `name` is a remote handler of `principal`: its own
/// (`ws-handler:<principal>:<connection>:h<n>`) or its group's
/// (`ws-handler:group:<escaped principal>:<group>`).
fn is_own_registration(name: &str, principal: &str) -> bool {
    if let Some(group) = name.strip_prefix(&group_bus_name(principal, "")) {
        return !group.contains(':');
    }
    let own_prefix = format!("{}{principal}:", super::HANDLER_PREFIX);
    name.strip_prefix(&own_prefix)
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(conn, hid)| {
            !conn.is_empty()
                && conn.bytes().all(|b| b.is_ascii_digit())
                && hid
                    .strip_prefix('h')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Registers `conn` as the one handler of command topic `topic`, named `name`.
async fn handle(
    state: &AppState,
    conn: &Arc<Conn>,
    name: &str,
    topic: &str,
    concurrency: usize,
) -> Result<Subscription, ApiError> {
    let c = conn.clone();
    let handler = switchyard::handler_fn(move |env: Envelope| {
        let conn = c.clone();
        async move { remote_call(conn, env).await }
    });
    state
        .bus
        .handle_envelope(name, topic, handler)
        .workers(concurrency.max(1))
        .start()
        .await
        .map_err(|e| handle_error(e, conn.principal.name()))
}

async fn remote_call(conn: Arc<Conn>, env: Envelope) -> Result<Outcome, BoxError> {
    let gone = || -> BoxError {
        Box::new(Permanent::new(RemoteHandlerGone {
            conn: conn.id,
            principal: conn.principal.name().to_owned(),
        }))
    };
    if conn.is_closed() {
        return Err(gone());
    }
    match conn.call(&env).await {
        None => Err(gone()),
        Some(CallResult::Ok {
            payload,
            content_type,
        }) => Ok(reply(&env, payload, content_type)),
        Some(CallResult::Failed {
            error,
            reject: true,
        }) => Ok(Outcome::reject(error)),
        Some(CallResult::Failed {
            error,
            reject: false,
        }) => Err(Box::new(RemoteHandlerFailed(error))),
        Some(CallResult::HandedBack { error, delay }) => Err(hand_back(error, delay)),
        Some(CallResult::Dropped) => Err(Box::new(RemoteHandlerSlow)),
    }
}

fn reply(env: &Envelope, payload: bytes::Bytes, content_type: String) -> Outcome {
    let mut reply = env.reply(payload);
    reply.set_content_type(content_type);
    Outcome::reply(reply)
}

/// The members of one handler group and the round-robin position.
struct HandlerGroup {
    name: String,
    members: Mutex<Vec<Arc<Conn>>>,
    next: AtomicUsize,
}

impl HandlerGroup {
    /// The next live member that is not in `tried` (connection numbers), round robin.
    fn pick(&self, tried: &[u64]) -> Option<Arc<Conn>> {
        let m = lock(&self.members);
        let n = m.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &m[(start + k) % n])
            .find(|c| !c.is_closed() && !tried.contains(&c.id))
            .cloned()
    }

    /// Hands `env` to one member after another until one answers; each at most once.
    async fn call(self: Arc<Self>, env: Envelope) -> Result<Outcome, BoxError> {
        let mut tried = Vec::new();
        let mut last = String::new();
        while let Some(member) = self.pick(&tried) {
            tried.push(member.id);
            last = match member.call(&env).await {
                Some(CallResult::Ok {
                    payload,
                    content_type,
                }) => return Ok(reply(&env, payload, content_type)),
                Some(CallResult::Failed {
                    error,
                    reject: true,
                }) => return Ok(Outcome::reject(error)),
                Some(CallResult::Failed {
                    error,
                    reject: false,
                }) => format!("connection {} failed: {error}", member.id),
                Some(CallResult::HandedBack { error, .. }) => {
                    format!("connection {} handed it back: {error}", member.id)
                }
                Some(CallResult::Dropped) => format!(
                    "connection {}: command dropped from its full outbound buffer",
                    member.id
                ),
                None => format!("connection {} disconnected before answering", member.id),
            };
            tracing::debug!(group = %self.name, message_id = %env.id, tried = tried.len(), %last, "remote handler group member did not answer; trying the next");
        }
        if tried.is_empty() {
            return Err(Box::new(Permanent::new(RemoteHandlerGroupEmpty {
                group: self.name.clone(),
            })));
        }
        Err(Box::new(Permanent::new(RemoteHandlerGroupFailed {
            group: self.name.clone(),
            tried: tried.len(),
            last,
        })))
    }
}

/// A handler group of the node: its topic's bus handler and its members.
pub(crate) struct HandlerGroupEntry {
    group: Arc<HandlerGroup>,
    /// The principal whose group it is: only its connections join it.
    principal: String,
    concurrency: usize,
    _subscription: Subscription,
}

/// What a `handle` asks for.
pub(crate) struct HandleSpec<'a> {
    pub(crate) topic: &'a str,
    /// The connection's id for this registration (`h1`, `h2`...), which names its own.
    pub(crate) hid: &'a str,
    pub(crate) group: Option<&'a str>,
    /// Given by the client (not the default).
    pub(crate) concurrency: Option<usize>,
    pub(crate) default_concurrency: usize,
}

/// A command topic this connection handles.
pub(crate) enum HandlerRecord {
    /// The topic's one handler (dropped: unregistered), named `name`.
    Own {
        name: String,
        _subscription: Subscription,
    },
    /// Membership of a handler group, whose bus name (`ws-handler:group:<principal>:<group>`,
    /// see [`group_bus_name`]) is `name`.
    Group { name: String },
}

impl HandlerRecord {
    /// The name the bus lists the handler under: `ws-handler:<principal>:<connection>:<id>`
    /// for the connection's own (see [`own_name`]), `ws-handler:group:<principal>:<group>`
    /// for a group (see [`group_bus_name`]).
    pub(crate) fn bus_name(&self) -> &str {
        match self {
            Self::Own { name, .. } | Self::Group { name } => name,
        }
    }
}

/// The bus handler name of remote handler group `group` of `principal`:
/// `ws-handler:group:<principal>:<group>`, the principal escaped as in a subscription
/// group's name ([`escape_principal`](super::targets::escape_principal)).
pub(crate) fn group_bus_name(principal: &str, group: &str) -> String {
    super::targets::group_name_under(super::HANDLER_PREFIX, principal, group)
}

impl Hub {
    /// Registers `conn` as a handler of `spec.topic`: alone, or as a member of a group (its
    /// bus handler made on first use; the first member fixes the group's concurrency).
    pub(crate) async fn handle(
        &self,
        state: &AppState,
        conn: &Arc<Conn>,
        spec: HandleSpec<'_>,
    ) -> Result<HandlerRecord, ApiError> {
        let concurrency = spec.concurrency.unwrap_or(spec.default_concurrency);
        let Some(name) = spec.group else {
            let name = own_name(conn.principal.name(), conn.id, spec.hid);
            let subscription = handle(state, conn, &name, spec.topic, concurrency).await?;
            return Ok(HandlerRecord::Own {
                name,
                _subscription: subscription,
            });
        };
        super::targets::check_group_name(name)?;
        let principal = conn.principal.name();
        let mut groups = self.handler_groups.lock().await;
        if let Some(entry) = groups.get(spec.topic) {
            if entry.principal != principal {
                // Neither its name nor its settings are told to another principal.
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{} is handled by a handler group of another principal; handle another topic",
                        spec.topic
                    ),
                ));
            }
            if entry.group.name != name {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "{} is handled by group {:?}; join that group or handle another topic",
                        spec.topic, entry.group.name
                    ),
                ));
            }
            if spec.concurrency.is_some_and(|c| c != entry.concurrency) {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "handler group {name:?} runs {} commands at once (set by its first member); join it with that concurrency or without one",
                        entry.concurrency
                    ),
                ));
            }
            lock(&entry.group.members).push(conn.clone());
            return Ok(HandlerRecord::Group {
                name: group_bus_name(principal, name),
            });
        }
        let group = Arc::new(HandlerGroup {
            name: name.to_owned(),
            members: Mutex::new(vec![conn.clone()]),
            next: AtomicUsize::new(0),
        });
        let g = group.clone();
        let handler = switchyard::handler_fn(move |env: Envelope| g.clone().call(env));
        let subscription = state
            .bus
            .handle_envelope(&group_bus_name(principal, name), spec.topic, handler)
            .workers(concurrency.max(1))
            .start()
            .await
            .map_err(|e| handle_error(e, principal))?;
        groups.insert(
            spec.topic.to_owned(),
            HandlerGroupEntry {
                group,
                principal: principal.to_owned(),
                concurrency,
                _subscription: subscription,
            },
        );
        Ok(HandlerRecord::Group {
            name: group_bus_name(principal, name),
        })
    }

    /// Ends connection `conn`'s handling of `topic`: unregisters its own handler (and drops
    /// the `/v1/stats` rows kept under its name, which is never used again), or leaves the
    /// group (whose bus handler and `/v1/stats` rows end with its last member).
    pub(crate) async fn unhandle(
        &self,
        state: &AppState,
        conn: u64,
        topic: &str,
        record: HandlerRecord,
    ) {
        match record {
            HandlerRecord::Own {
                name,
                _subscription,
            } => {
                drop(_subscription);
                state.handlers.forget(&name);
                state.latency.forget(&name);
            }
            HandlerRecord::Group { name } => {
                let mut groups = self.handler_groups.lock().await;
                let left = match groups.get(topic) {
                    Some(entry) => {
                        let mut m = lock(&entry.group.members);
                        m.retain(|c| c.id != conn);
                        m.len()
                    }
                    None => return,
                };
                if left == 0 {
                    // Its rows go too (group names are the clients' choice): under the lock,
                    // so a group made again meanwhile keeps its own.
                    drop(groups.remove(topic));
                    state.handlers.forget(&name);
                    state.latency.forget(&name);
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_told_apart_by_its_principal() {
        assert!(is_own_registration("ws-handler:alice:7:h1", "alice"));
        assert!(is_own_registration(
            "ws-handler:group:alice:workers",
            "alice"
        ));
        assert!(is_own_registration("ws-handler:group:svc-5Fa:w", "svc_a"));
        assert!(!is_own_registration("ws-handler:bob:7:h1", "alice"));
        assert!(!is_own_registration("ws-handler:alice:x:7:h1", "alice"));
        assert!(!is_own_registration(
            "ws-handler:group:bob:workers",
            "alice"
        ));
        assert!(!is_own_registration(
            "ws-handler:group:alice-3Ax:w",
            "alice"
        ));
    }
}
