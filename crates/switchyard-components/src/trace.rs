//! Correlation traces: record envelopes, then rebuild the causal tree of one correlation id
//! (who published what because of which message, with timings).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;
use smol_str::SmolStr;
use switchyard::{Bus, Envelope, Kind, MessageId, Outcome, SubscribeError, Subscription};

/// One message in a trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceNode {
    /// Message id.
    pub id: MessageId,
    /// Topic.
    pub topic: SmolStr,
    /// Kind.
    pub kind: Kind,
    /// Publishing component.
    pub source: Option<SmolStr>,
    /// Addressed component.
    pub target: Option<SmolStr>,
    /// Milliseconds since the root message of its tree (fractional).
    pub at_ms: f64,
    /// Milliseconds since its parent message (0 for a root).
    pub since_parent_ms: f64,
    /// Messages it caused, in publication order.
    pub children: Vec<TraceNode>,
}

impl TraceNode {
    /// This node and every descendant, depth first.
    pub fn count(&self) -> usize {
        1 + self.children.iter().map(TraceNode::count).sum::<usize>()
    }

    /// Depth of the subtree (1 for a leaf).
    pub fn depth(&self) -> usize {
        1 + self
            .children
            .iter()
            .map(TraceNode::depth)
            .max()
            .unwrap_or(0)
    }

    /// Every node of the subtree, depth first.
    pub fn walk(&self) -> Vec<&TraceNode> {
        let mut out = vec![self];
        for c in &self.children {
            out.extend(c.walk());
        }
        out
    }

    /// The first node (depth first) on `topic`.
    pub fn find(&self, topic: &str) -> Option<&TraceNode> {
        self.walk().into_iter().find(|n| n.topic == topic)
    }
}

/// The causal tree(s) of one correlation id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// The correlation id.
    pub correlation_id: MessageId,
    /// Messages with no recorded parent (normally exactly one: the request that started it).
    pub roots: Vec<TraceNode>,
    /// Milliseconds from the first to the last message.
    pub span_ms: f64,
}

/// Adds `id` and everything below it in `children` to `reached`.
fn reach(
    id: &MessageId,
    children: &HashMap<MessageId, Vec<&Envelope>>,
    reached: &mut HashSet<MessageId>,
) {
    let mut stack = vec![id.clone()];
    while let Some(id) = stack.pop() {
        if !reached.insert(id.clone()) {
            continue;
        }
        if let Some(kids) = children.get(&id) {
            stack.extend(kids.iter().map(|k| k.id.clone()));
        }
    }
}

fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

impl Trace {
    /// Builds the trace of `correlation_id` from recorded envelopes (others are ignored).
    /// A message whose causation id is not among them becomes a root.
    pub fn build(correlation_id: MessageId, envelopes: &[Envelope]) -> Self {
        let mut mine: Vec<&Envelope> = envelopes
            .iter()
            .filter(|e| e.correlation_id == correlation_id)
            .collect();
        mine.sort_by_key(|e| (e.timestamp, e.id.clone()));
        let mut seen = HashSet::new();
        mine.retain(|e| seen.insert(e.id.clone()));
        let ids: HashSet<MessageId> = mine.iter().map(|e| e.id.clone()).collect();
        let mut children: HashMap<MessageId, Vec<&Envelope>> = HashMap::new();
        let mut roots = Vec::new();
        for e in &mine {
            match e.causation_id().cloned() {
                Some(p) if ids.contains(&p) && p != e.id => children.entry(p).or_default().push(e),
                _ => roots.push(*e),
            }
        }
        // Causation ids come from outside (NATS headers, the gateway): messages naming each
        // other as cause form a cycle no root reaches. The earliest of each such group becomes
        // a root (its link to its cause is cut), so every message stays in the trace.
        let mut reached: HashSet<MessageId> = HashSet::new();
        for r in &roots {
            reach(&r.id, &children, &mut reached);
        }
        let mut cut = Vec::new();
        for e in &mine {
            if reached.contains(&e.id) {
                continue;
            }
            if let Some(kids) = e.causation_id().and_then(|p| children.get_mut(p)) {
                kids.retain(|c| c.id != e.id);
            }
            reach(&e.id, &children, &mut reached);
            cut.push(*e);
        }
        roots.extend(cut);
        roots.sort_by_key(|e| (e.timestamp, e.id.clone()));
        let first = mine.first().map(|e| e.timestamp);
        let last = mine.last().map(|e| e.timestamp);
        let span_ms = match (first, last) {
            (Some(a), Some(b)) => ms_between(a, b),
            _ => 0.0,
        };
        let roots = roots
            .into_iter()
            .map(|r| node(r, r.timestamp, r.timestamp, &children, 0))
            .collect();
        Self {
            correlation_id,
            roots,
            span_ms,
        }
    }

    /// Messages in the trace.
    pub fn len(&self) -> usize {
        self.roots.iter().map(TraceNode::count).sum()
    }

    /// True when nothing was recorded for this correlation id.
    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The same trace without the nodes `keep` refuses; their children move up to the
    /// nearest kept ancestor (or become roots).
    pub fn pruned(&self, keep: impl Fn(&TraceNode) -> bool) -> Trace {
        fn prune(nodes: &[TraceNode], keep: &dyn Fn(&TraceNode) -> bool) -> Vec<TraceNode> {
            let mut out = Vec::new();
            for n in nodes {
                let kids = prune(&n.children, keep);
                if keep(n) {
                    out.push(TraceNode {
                        children: kids,
                        ..n.clone()
                    });
                } else {
                    out.extend(kids);
                }
            }
            // Lifted children keep publication order among their new siblings.
            out.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
            out
        }
        Trace {
            correlation_id: self.correlation_id.clone(),
            roots: prune(&self.roots, &keep),
            span_ms: self.span_ms,
        }
    }

    /// A text rendering, one message per line: `+12.3ms  topic  [source] → target` (`[?]` for a
    /// message published without a source, e.g. a raw envelope or a gateway client that sent no
    /// `x-source`). A message
    /// with one consequence is followed by it on the next line at the same indentation; several
    /// consequences branch with `├─` and `└─`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "trace {} ({} messages, {:.1} ms)",
            self.correlation_id,
            self.len(),
            self.span_ms
        );
        for r in &self.roots {
            render_node(&mut out, r, "", "");
        }
        out
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

const MAX_DEPTH: usize = 256;

fn node(
    e: &Envelope,
    root_at: SystemTime,
    parent_at: SystemTime,
    children: &HashMap<MessageId, Vec<&Envelope>>,
    depth: usize,
) -> TraceNode {
    let kids = if depth >= MAX_DEPTH {
        Vec::new()
    } else {
        children
            .get(&e.id)
            .map(|c| {
                c.iter()
                    .map(|k| node(k, root_at, e.timestamp, children, depth + 1))
                    .collect()
            })
            .unwrap_or_default()
    };
    TraceNode {
        id: e.id.clone(),
        topic: SmolStr::new(e.topic.as_str()),
        kind: e.kind,
        source: e.source().map(Into::into),
        target: e.target().map(Into::into),
        at_ms: ms_between(root_at, e.timestamp),
        since_parent_ms: ms_between(parent_at, e.timestamp),
        children: kids,
    }
}

/// Prints one node. A node with exactly one child continues at the same indentation (long
/// causal chains stay readable); several children branch with `├─` / `└─`.
fn render_node(out: &mut String, n: &TraceNode, prefix: &str, branch: &str) {
    let from = n.source.as_deref().unwrap_or("?");
    let _ = write!(
        out,
        "{prefix}{branch}+{:.1}ms  {}  [{from}]",
        n.at_ms, n.topic
    );
    if let Some(t) = &n.target {
        let _ = write!(out, " → {t}");
    }
    out.push('\n');
    let child_prefix = match branch {
        "├─ " => format!("{prefix}│  "),
        "└─ " => format!("{prefix}   "),
        _ => prefix.to_owned(),
    };
    match n.children.as_slice() {
        [only] => render_node(out, only, &child_prefix, ""),
        many => {
            let k = many.len();
            for (i, c) in many.iter().enumerate() {
                let b = if i + 1 == k { "└─ " } else { "├─ " };
                render_node(out, c, &child_prefix, b);
            }
        }
    }
}

/// Records every envelope published on the bus (bounded, oldest dropped first) so traces can
/// be rebuilt. Keep it alive while recording; dropping it unsubscribes.
pub struct TraceRecorder {
    seen: Arc<Mutex<VecDeque<Envelope>>>,
    _subscription: Subscription,
}

impl fmt::Debug for TraceRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceRecorder")
            .field("recorded", &self.len())
            .finish()
    }
}

impl TraceRecorder {
    /// Subscribes to `#` and keeps the last `capacity` envelopes.
    pub async fn start(bus: &Bus, capacity: usize) -> Result<Self, SubscribeError> {
        let seen = Arc::new(Mutex::new(VecDeque::new()));
        let s = seen.clone();
        let cap = capacity.max(1);
        let handler = switchyard::handler_fn(move |env: Envelope| {
            let s = s.clone();
            async move {
                let mut q = s.lock();
                if q.len() >= cap {
                    q.pop_front();
                }
                q.push_back(env);
                Ok::<_, std::convert::Infallible>(Outcome::Ack)
            }
        });
        let sub = bus
            .subscribe("trace-recorder", "#", handler)
            .queue_capacity(cap)
            .start()
            .await?;
        Ok(Self {
            seen,
            _subscription: sub,
        })
    }

    /// Envelopes recorded now.
    pub fn len(&self) -> usize {
        self.seen.lock().len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of what was recorded, oldest first.
    pub fn envelopes(&self) -> Vec<Envelope> {
        self.seen.lock().iter().cloned().collect()
    }

    /// The causal tree of one correlation id.
    pub fn trace(&self, correlation_id: MessageId) -> Trace {
        Trace::build(correlation_id, &self.envelopes())
    }
}
