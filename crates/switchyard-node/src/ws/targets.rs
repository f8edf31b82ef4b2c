//! What WebSocket clients subscribe on the bus: one connection's own subscription, or a
//! consumer group shared by several connections. Remote handlers are in `handlers`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard::{BoxError, Envelope, HandBack, Outcome, SubscribeError, Subscription};

use super::conn::{Conn, Handed};
use super::frames::AckMode;
use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

/// A subscription's receivers: one connection (an ephemeral subscription) or the members of
/// a group. The bus subscription's handler hands each message to one of them.
pub(crate) struct Target {
    mode: AckMode,
    /// What it is, for dead-letter reasons and logs.
    label: String,
    members: Mutex<Vec<Member>>,
    next: AtomicUsize,
    metrics: Arc<crate::metrics::GatewayMetrics>,
    /// A group on a shared transport (log, NATS): with no live member here, a delivery goes
    /// back to the transport (its consumer group), not to the dead letters.
    hand_back: bool,
}

/// How long a delivery handed back for want of a member waits in the transport before it is
/// delivered again: long enough for this node to stop pulling the group's messages (its
/// last member's subscription is dropped a moment after its connection closed), so that it
/// goes to a member elsewhere instead of coming back here (each delivery counts towards
/// the transport's `max_deliver`).
const HAND_BACK_DELAY: Duration = Duration::from_millis(100);

/// No member of a group is connected to this node: why its delivery went back to the
/// transport.
#[derive(Debug, thiserror::Error)]
#[error("no connected member of {0} on this node")]
struct NoMemberHere(String);

/// A WebSocket subscriber's `nack` with `hand_back: true`.
#[derive(Debug, thiserror::Error)]
#[error("handed back by WebSocket connection {conn} ({label}){why}")]
struct SubscriberHandedBack {
    conn: u64,
    label: String,
    /// `": <the client's error>"`, or empty.
    why: String,
}

/// A WebSocket subscriber's `nack` with an `error` (and no delay): a failed attempt, whose
/// text the dead letter keeps.
#[derive(Debug, thiserror::Error)]
#[error("WebSocket subscriber (connection {conn}) failed: {error}")]
struct SubscriberFailed {
    conn: u64,
    error: String,
}

#[derive(Clone)]
struct Member {
    conn: Arc<Conn>,
    sid: Arc<str>,
}

impl Target {
    fn new(
        mode: AckMode,
        label: String,
        metrics: Arc<crate::metrics::GatewayMetrics>,
        hand_back: bool,
    ) -> Self {
        Self {
            mode,
            label,
            members: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            metrics,
            hand_back,
        }
    }

    fn add(&self, conn: Arc<Conn>, sid: Arc<str>) {
        lock(&self.members).push(Member { conn, sid });
    }

    /// Removes a connection's membership; returns how many members are left.
    fn remove(&self, conn: u64, sid: &str) -> usize {
        let mut m = lock(&self.members);
        m.retain(|x| !(x.conn.id == conn && &*x.sid == sid));
        m.len()
    }

    /// The next live member, round robin.
    fn pick(&self) -> Option<Member> {
        let m = lock(&self.members);
        let n = m.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &m[(start + k) % n])
            .find(|x| !x.conn.is_closed())
            .cloned()
    }

    /// The handler: hands `env` to a member and turns how that ended into the outcome.
    async fn handle(self: Arc<Self>, env: Envelope) -> Result<Outcome, BoxError> {
        loop {
            let Some(member) = self.pick() else {
                return self.nobody(&env);
            };
            match member.conn.deliver(&member.sid, self.mode, &env).await {
                Handed::Acked => return Ok(Outcome::Ack),
                // A failed attempt with the client's reason (kept in the dead letter), or, with
                // a delay or no reason, the retry it asked for.
                Handed::Nacked(None, Some(error)) => {
                    return Err(Box::new(SubscriberFailed {
                        conn: member.conn.id,
                        error,
                    }));
                }
                Handed::Nacked(after, _) => return Ok(Outcome::Retry { after }),
                Handed::Rejected(error) => {
                    return Ok(Outcome::reject(error.unwrap_or_else(|| {
                        format!(
                            "rejected by WebSocket connection {} ({})",
                            member.conn.id, self.label
                        )
                    })));
                }
                Handed::GaveBack(after, error) => {
                    return Err(self.handed_back(&member, after, error));
                }
                Handed::Dropped => return Ok(Outcome::retry()),
                // That member's connection closed: the next one gets it at once.
                Handed::Gone => continue,
            }
        }
    }

    /// A member's `nack` with `hand_back: true`: the bus's [`HandBack`], not an attempt. A
    /// transport's delivery goes back to the transport (after `after`), to be delivered
    /// again (to this subscription, or another member of the group on any node); any other
    /// (the memory transport) has nowhere to go back to and fails for good at once, as a
    /// Rust handler's hand-back does (docs/bus.md).
    fn handed_back(
        &self,
        member: &Member,
        after: Option<Duration>,
        why: Option<String>,
    ) -> BoxError {
        let back = HandBack::new(SubscriberHandedBack {
            conn: member.conn.id,
            label: self.label.clone(),
            why: why.map(|w| format!(": {w}")).unwrap_or_default(),
        });
        Box::new(match after {
            Some(d) => back.after(d),
            None => back,
        })
    }

    /// No member is connected here. A group on a shared transport hands the delivery back
    /// to it (after [`HAND_BACK_DELAY`]): a member on another node, or the group's next
    /// member, gets it. Otherwise (an own subscription, or the memory transport, where
    /// nothing else could take it) an auto-ack message is counted as abandoned (at most
    /// once) and a manual-ack one is dead-lettered, never lost silently.
    fn nobody(&self, env: &Envelope) -> Result<Outcome, BoxError> {
        if self.hand_back {
            tracing::debug!(target_label = %self.label, message_id = %env.id, "no member of the WebSocket group on this node: delivery handed back to the transport");
            return Err(Box::new(
                HandBack::new(NoMemberHere(self.label.clone())).after(HAND_BACK_DELAY),
            ));
        }
        Ok(match self.mode {
            AckMode::Auto => {
                self.metrics.ws_abandoned(1);
                tracing::debug!(target_label = %self.label, message_id = %env.id, "WebSocket subscriber gone: auto-ack delivery abandoned");
                Outcome::Ack
            }
            AckMode::Manual => Outcome::reject(format!(
                "no connected WebSocket subscriber for {} (it disconnected or unsubscribed before acking)",
                self.label
            )),
        })
    }
}

/// A subscription this connection holds.
pub(crate) enum SubRecord {
    /// Its own bus subscription (dropped: unsubscribed), named `name`.
    Own {
        name: String,
        target: Arc<Target>,
        _subscription: Subscription,
    },
    /// Membership of a shared group, whose bus name (`ws:group:<principal>:<group>`, see
    /// [`group_bus_name`]) is `name`.
    Group { name: String },
}

impl SubRecord {
    /// The name the bus lists the subscription under: `ws:<principal>:<connection>:<id>`
    /// for the connection's own (see [`own_name`]), `ws:group:<principal>:<group>` for a
    /// group (see [`group_bus_name`]).
    pub(crate) fn bus_name(&self) -> String {
        match self {
            Self::Own { name, .. } | Self::Group { name } => name.clone(),
        }
    }
}

/// The bus subscription name of WebSocket group `group` of `principal`:
/// `ws:group:<principal>:<group>`, the principal escaped by [`escape_principal`]. A group
/// belongs to one principal: another principal naming a group alike gets a group of its own
/// (docs/gateway.md, "Groups belong to a principal").
pub(crate) fn group_bus_name(principal: &str, group: &str) -> String {
    group_name_under(super::SUBSCRIPTION_PREFIX, principal, group)
}

/// `<prefix>group:<escaped principal>:<group>`: the bus name of a subscription group
/// ([`group_bus_name`]) or of a remote handler group (`handlers::group_bus_name`).
pub(crate) fn group_name_under(prefix: &str, principal: &str, group: &str) -> String {
    format!("{prefix}group:{}:{group}", escape_principal(principal))
}

/// A principal's name as it stands in a group's bus name: ASCII letters and digits as they
/// are, every other byte (of its UTF-8) as `-` and two upper-case hex digits (`svc_orders` is
/// `svc-5Forders`, `a-b` is `a-2Db`). The result holds only `A-Z a-z 0-9 -`: no `:` (so the
/// bus name splits one way) and no `_`, the character NATS puts for `:` in a consumer name
/// (so two principals' groups never map to one NATS consumer, as they would if
/// `svc_orders` and `svc:orders`, or `a` with group `b_c` and `a_b` with group `c`, were
/// written as they are); one name escapes one way, two names never alike.
pub(crate) fn escape_principal(principal: &str) -> String {
    let mut out = String::with_capacity(principal.len());
    for b in principal.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("-{b:02X}"));
        }
    }
    out
}

/// The bus subscription name of a connection's own subscription:
/// `ws:<principal>:<connection>:<subscription id>`, e.g. `ws:alice:7:s1`. Distinct for each
/// subscription of each connection (so `/v1/subscriptions`, `/v1/stats`, `/v1/topology` and
/// `/metrics` tell two clients of one principal apart), stable while it lives, and never
/// reused by this node (connection numbers only grow).
pub(crate) fn own_name(principal: &str, conn: u64, sid: &str) -> String {
    format!("{}{principal}:{conn}:{sid}", super::SUBSCRIPTION_PREFIX)
}

/// Group names: the group's bus subscription and transport consumer group are named after
/// them and their principal (`ws:group:<principal>:<group>`), apart from an application's
/// subscriptions.
pub(super) fn check_group_name(group: &str) -> Result<(), ApiError> {
    let ok = !group.is_empty()
        && group.len() <= 64
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::BadRequest,
            format!("group {group:?}: 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'"),
        ))
    }
}

pub(super) fn subscribe_error(e: SubscribeError) -> ApiError {
    let kind = match &e {
        SubscribeError::InvalidPattern(_) => ErrorKind::InvalidTopic,
        SubscribeError::ShuttingDown => ErrorKind::ShuttingDown,
        SubscribeError::InvalidConfig(_) | SubscribeError::DuplicateHandler { .. } => {
            ErrorKind::BadRequest
        }
        SubscribeError::Transport(_) => ErrorKind::NotReady,
        _ => ErrorKind::Internal,
    };
    ApiError::new(kind, e.to_string())
}

/// The header whose value is a message's ordering key (`ordering-key`, as the log, NATS and
/// the Postgres outbox name it).
pub(crate) const ORDERING_HEADER: &str = "ordering-key";

/// Starts the bus subscription feeding `target`.
async fn start_subscription(
    state: &AppState,
    name: &str,
    pattern: &str,
    target: Arc<Target>,
    workers: usize,
    ephemeral: bool,
) -> Result<Subscription, ApiError> {
    let handler = switchyard::handler_fn(move |env: Envelope| target.clone().handle(env));
    let mut builder = state
        .bus
        .subscribe(name, pattern, handler)
        .workers(workers.max(1))
        // Messages of one ordering key reach the client one at a time, each after the
        // previous one's ack, on every transport (the log and NATS key by the same header;
        // in memory only the bus's lanes do).
        .ordering_header(ORDERING_HEADER);
    if ephemeral {
        builder = builder.ephemeral();
        // The log starts ungrouped subscriptions at its oldest record; an ephemeral
        // subscriber wants what is published from now on.
        if state.health.transport.kind() == "log" {
            builder = builder.filter(published_from_now());
        }
    }
    builder.start().await.map_err(subscribe_error)
}

/// Keeps the messages stamped from now on. Message times come from the message clock
/// (`switchyard::clock`), which trails the system clock by up to about a microsecond and
/// differs by as much between threads: compared with a system clock reading taken just
/// before, a message made just after could look older and be skipped (review rev2: 9,965 of
/// 10,000). So "now" is taken a millisecond early: a message published within that
/// millisecond before the subscribe may come too; none published after it is missed.
fn published_from_now() -> impl Fn(&Envelope) -> bool + Send + Sync + 'static {
    let since = SystemTime::now()
        .checked_sub(std::time::Duration::from_millis(1))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    move |env| env.timestamp >= since
}

/// Most messages a manual-ack subscription may have unacked.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// Unacked messages of a manual-ack subscription by default.
pub(crate) const DEFAULT_IN_FLIGHT: usize = 16;

/// What a `subscribe` asks for.
pub(crate) struct SubscribeSpec<'a> {
    pub(crate) sid: Arc<str>,
    pub(crate) pattern: &'a str,
    pub(crate) group: Option<&'a str>,
    pub(crate) mode: AckMode,
    pub(crate) max_in_flight: usize,
}

/// WebSocket connections and consumer groups of one node.
#[derive(Default)]
pub struct Hub {
    /// Subscription groups, by bus name (which holds the principal: see [`group_bus_name`]).
    groups: tokio::sync::Mutex<HashMap<String, GroupEntry>>,
    /// Remote handler groups, by command topic (a topic has one handler on the bus).
    pub(super) handler_groups:
        tokio::sync::Mutex<HashMap<String, super::handlers::HandlerGroupEntry>>,
    pub(crate) connections: AtomicUsize,
    /// Connections open now by principal (`ws.max_connections_per_principal`).
    pub(crate) per_principal: super::slots::PerPrincipal,
    pub(crate) next_conn: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

struct GroupEntry {
    pattern: String,
    mode: AckMode,
    target: Arc<Target>,
    _subscription: Subscription,
}

impl Hub {
    /// Subscribes `conn`: its own ephemeral subscription, or membership of a group (made
    /// on first use, with this pattern and ack mode).
    pub(crate) async fn subscribe(
        &self,
        state: &AppState,
        conn: &Arc<Conn>,
        spec: SubscribeSpec<'_>,
    ) -> Result<SubRecord, ApiError> {
        let workers = match spec.mode {
            AckMode::Auto => 1,
            AckMode::Manual => spec.max_in_flight,
        };
        let Some(group) = spec.group else {
            let label = format!(
                "subscription {} of WebSocket connection {} ({})",
                spec.sid,
                conn.id,
                conn.principal.name()
            );
            let target = Arc::new(Target::new(spec.mode, label, state.metrics.clone(), false));
            target.add(conn.clone(), spec.sid.clone());
            let name = own_name(conn.principal.name(), conn.id, &spec.sid);
            let subscription =
                start_subscription(state, &name, spec.pattern, target.clone(), workers, true)
                    .await?;
            return Ok(SubRecord::Own {
                name,
                target,
                _subscription: subscription,
            });
        };
        check_group_name(group)?;
        // The group of this principal: another's group of that name is another group, so
        // it is never joined, never refuses this one, and its pattern is never told here.
        let name = group_bus_name(conn.principal.name(), group);
        let mut groups = self.groups.lock().await;
        if let Some(entry) = groups.get(&name) {
            if entry.pattern != spec.pattern || entry.mode != spec.mode {
                return Err(ApiError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "group {group:?} is subscribed to pattern {:?} with ack {}; join it with the same pattern and ack",
                        entry.pattern,
                        entry.mode.as_str()
                    ),
                ));
            }
            entry.target.add(conn.clone(), spec.sid.clone());
            return Ok(SubRecord::Group { name });
        }
        // On the log or NATS the group's bus subscription is its consumer group there.
        let shared = state.health.transport.kind() != "memory";
        let target = Arc::new(Target::new(
            spec.mode,
            format!("WebSocket group {group}"),
            state.metrics.clone(),
            shared,
        ));
        target.add(conn.clone(), spec.sid.clone());
        let subscription =
            start_subscription(state, &name, spec.pattern, target.clone(), workers, false).await?;
        groups.insert(
            name.clone(),
            GroupEntry {
                pattern: spec.pattern.to_owned(),
                mode: spec.mode,
                target,
                _subscription: subscription,
            },
        );
        Ok(SubRecord::Group { name })
    }

    /// Ends a subscription of connection `conn`: drops its own (and the `/v1/stats` rows
    /// kept under its name, which is never used again), or leaves its group (the group's bus
    /// subscription, and its `/v1/stats` rows, end with its last member: group names are the
    /// clients' choice, so rows kept by name would grow with client churn).
    pub(crate) async fn unsubscribe(
        &self,
        state: &AppState,
        conn: u64,
        sid: &str,
        record: SubRecord,
    ) {
        match record {
            SubRecord::Own {
                name,
                target,
                _subscription,
            } => {
                target.remove(conn, sid);
                drop(_subscription);
                state.handlers.forget(&name);
                state.latency.forget(&name);
            }
            SubRecord::Group { name } => {
                let mut groups = self.groups.lock().await;
                let left = match groups.get(&name) {
                    Some(entry) => entry.target.remove(conn, sid),
                    None => return,
                };
                if left == 0 {
                    // Under the lock: a group made again under this name meanwhile keeps its
                    // rows.
                    drop(groups.remove(&name));
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
    fn a_principal_escapes_to_letters_digits_and_dashes_one_way() {
        assert_eq!(escape_principal("alice"), "alice");
        assert_eq!(escape_principal("svc_orders"), "svc-5Forders");
        assert_eq!(escape_principal("a-b:c"), "a-2Db-3Ac");
        assert_eq!(escape_principal("é"), "-C3-A9");
        // Names NATS would map to one consumer name stay apart, and so do the splits of a
        // principal and a group name.
        let names = [
            group_bus_name("svc_orders", "g"),
            group_bus_name("svc:orders", "g"),
            group_bus_name("svc.orders", "g"),
            group_bus_name("a", "b_c"),
            group_bus_name("a_b", "c"),
            group_bus_name("a:b", "c"),
        ];
        let sanitized: std::collections::HashSet<String> = names
            .iter()
            .map(|n| {
                n.replace(
                    |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                    "_",
                )
            })
            .collect();
        assert_eq!(sanitized.len(), names.len(), "{names:?}");
    }

    #[test]
    fn an_ephemeral_log_subscriber_keeps_every_message_made_after_it_subscribed() {
        let topic = switchyard::Topic::new("t.x").unwrap();
        for _ in 0..10_000 {
            let keep = published_from_now();
            let env = Envelope::new(topic.clone(), "x");
            assert!(keep(&env), "a message made after the subscribe was skipped");
        }
    }
}
