//! Roles, the layer rules between them, and the topic convention `<domain>.<action>.<phase>`.

use std::fmt;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// What a component is in the layered model.
///
/// Requests flow `Manager → Service → Handler → Processor` inside one domain, feedback flows
/// back the same way, one layer at a time. Managers coordinate with each other across domains.
/// The CPM (control point manager) receives requests from the frontend and may address managers
/// and processors directly. System components (state tracker, error handler, monitors) receive
/// status, errors and metrics from everyone. Modules are plain Rust owned by a processor and
/// never appear on the bus, so they have no role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user interface side (through the gateway): reaches only the CPM.
    Frontend,
    /// The control point manager: entry point of every request from the frontend.
    Cpm,
    /// Coordinates a domain's workflow; talks to the CPM, other managers and its own service.
    Manager,
    /// Orchestrates a domain's business process between its manager and its handler.
    Service,
    /// Routes and transforms messages between its service and its processor.
    Handler,
    /// Does the work by calling modules directly; reports results to its handler (or the CPM).
    Processor,
    /// Cross-cutting infrastructure (state tracker, error handler, health, performance, alerts).
    System,
}

impl Role {
    /// Every role, in layer order.
    pub const ALL: [Role; 7] = [
        Role::Frontend,
        Role::Cpm,
        Role::Manager,
        Role::Service,
        Role::Handler,
        Role::Processor,
        Role::System,
    ];

    /// Lower-case name (`manager`, `processor`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Frontend => "frontend",
            Role::Cpm => "cpm",
            Role::Manager => "manager",
            Role::Service => "service",
            Role::Handler => "handler",
            Role::Processor => "processor",
            Role::System => "system",
        }
    }

    /// Height in the layers, top first: frontend 0, CPM 1, manager 2, service 3, handler 4,
    /// processor 5; system components are outside the layers.
    fn layer(self) -> Option<u8> {
        match self {
            Role::Frontend => Some(0),
            Role::Cpm => Some(1),
            Role::Manager => Some(2),
            Role::Service => Some(3),
            Role::Handler => Some(4),
            Role::Processor => Some(5),
            Role::System => None,
        }
    }

    /// Depth in the domain chain: manager 0, service 1, handler 2, processor 3 (its
    /// [`layer`](Self::layer) below the CPM's).
    fn depth(self) -> Option<u8> {
        self.layer()?.checked_sub(Role::Manager.layer()?)
    }

    /// The phase of the topic a request to this role is published on:
    /// manager `request`, service `submit`, handler `dispatch`, processor `execute`
    /// (CPM `request`, others `request`).
    pub fn request_phase(self) -> &'static str {
        match self {
            Role::Service => "submit",
            Role::Handler => "dispatch",
            Role::Processor => "execute",
            _ => "request",
        }
    }

    /// The phase of the topic on which this role reports a finished request (the result flowing
    /// back up): processor `processed`, handler `handled`, service `served`, manager and CPM
    /// `complete`.
    pub fn result_phase(self) -> &'static str {
        match self {
            Role::Processor => "processed",
            Role::Handler => "handled",
            Role::Service => "served",
            _ => "complete",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of the layer model. A forbidden edge names the rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The frontend reaches only the CPM.
    FrontendOnlyToCpm,
    /// Only the CPM talks to the frontend.
    OnlyCpmToFrontend,
    /// The CPM exchanges messages with managers and processors, never with services or handlers.
    CpmReachesManagersAndProcessors,
    /// Requests flow Manager → Service → Handler → Processor and feedback the reverse, one layer
    /// at a time: no layer may be skipped.
    OneLayerAtATime,
    /// Services, handlers and processors talk only inside their own domain.
    SameDomainBelowManager,
    /// Only managers talk to components of their own role (services, handlers and processors
    /// never talk to peers).
    NoPeerTalkBelowManager,
    /// System components address only the CPM, managers and other system components.
    SystemReachesCpmAndManagers,
    /// A component publishes only the topics it declared.
    UndeclaredPublish,
    /// Requests flow down and results flow up: a topic of a request phase (`request`,
    /// `submit`, `dispatch`, `execute`) goes only to a lower layer, one of a result phase
    /// (`processed`, `handled`, `served`, `complete`) only to a higher one (managers
    /// exchange both; system components are outside the layers).
    RequestsDownResultsUp,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Rule; 9] = [
        Rule::FrontendOnlyToCpm,
        Rule::OnlyCpmToFrontend,
        Rule::CpmReachesManagersAndProcessors,
        Rule::OneLayerAtATime,
        Rule::SameDomainBelowManager,
        Rule::NoPeerTalkBelowManager,
        Rule::SystemReachesCpmAndManagers,
        Rule::UndeclaredPublish,
        Rule::RequestsDownResultsUp,
    ];

    /// Short kebab-case id (`one-layer-at-a-time`).
    pub fn id(self) -> &'static str {
        match self {
            Rule::FrontendOnlyToCpm => "frontend-only-to-cpm",
            Rule::OnlyCpmToFrontend => "only-cpm-to-frontend",
            Rule::CpmReachesManagersAndProcessors => "cpm-reaches-managers-and-processors",
            Rule::OneLayerAtATime => "one-layer-at-a-time",
            Rule::SameDomainBelowManager => "same-domain-below-manager",
            Rule::NoPeerTalkBelowManager => "no-peer-talk-below-manager",
            Rule::SystemReachesCpmAndManagers => "system-reaches-cpm-and-managers",
            Rule::UndeclaredPublish => "undeclared-publish",
            Rule::RequestsDownResultsUp => "requests-down-results-up",
        }
    }

    /// The rule in one sentence.
    pub fn description(self) -> &'static str {
        match self {
            Rule::FrontendOnlyToCpm => "the frontend reaches only the CPM",
            Rule::OnlyCpmToFrontend => "only the CPM talks to the frontend",
            Rule::CpmReachesManagersAndProcessors => {
                "the CPM exchanges messages with managers and processors only, never with services or handlers"
            }
            Rule::OneLayerAtATime => {
                "requests flow Manager → Service → Handler → Processor and feedback flows back, one layer at a time"
            }
            Rule::SameDomainBelowManager => {
                "services, handlers and processors talk only inside their own domain (managers coordinate across domains)"
            }
            Rule::NoPeerTalkBelowManager => "only managers talk to components of their own role",
            Rule::SystemReachesCpmAndManagers => {
                "system components address only the CPM, managers and other system components"
            }
            Rule::UndeclaredPublish => "a component publishes only the topics it declared",
            Rule::RequestsDownResultsUp => {
                "requests (request, submit, dispatch, execute) flow down to a lower layer and results (processed, handled, served, complete) flow up to a higher one"
            }
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id(), self.description())
    }
}

/// Who is at one end of an edge: name, role and domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    /// Component name, unique in a topology.
    pub name: SmolStr,
    /// Its role.
    pub role: Role,
    /// Its domain (`analytics`, `staging`, `cpm`, `system`...).
    pub domain: SmolStr,
}

impl Endpoint {
    /// An endpoint.
    pub fn new(name: impl Into<SmolStr>, role: Role, domain: impl Into<SmolStr>) -> Self {
        Self {
            name: name.into(),
            role,
            domain: domain.into(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ({} of domain {})",
            self.name, self.role, self.domain
        )
    }
}

/// Whether `from` may send a message to `to`. `Err` names the rule the edge breaks.
///
/// A component may always send to itself.
///
/// ```
/// use switchyard_components::{check_edge, Endpoint, Role, Rule};
/// let m = Endpoint::new("analytics-manager", Role::Manager, "analytics");
/// let s = Endpoint::new("analytics-service", Role::Service, "analytics");
/// let p = Endpoint::new("analytics-processor", Role::Processor, "analytics");
/// assert!(check_edge(&m, &s).is_ok());
/// assert_eq!(check_edge(&m, &p), Err(Rule::OneLayerAtATime));
/// ```
pub fn check_edge(from: &Endpoint, to: &Endpoint) -> Result<(), Rule> {
    use Role::*;
    if from.name == to.name {
        return Ok(());
    }
    match (from.role, to.role) {
        (_, System) => Ok(()),
        (System, Cpm | Manager) => Ok(()),
        (System, _) => Err(Rule::SystemReachesCpmAndManagers),
        (Frontend, Cpm) => Ok(()),
        (Frontend, _) => Err(Rule::FrontendOnlyToCpm),
        (Cpm, Frontend) => Ok(()),
        (_, Frontend) => Err(Rule::OnlyCpmToFrontend),
        (Cpm, Cpm | Manager | Processor) => Ok(()),
        (Cpm, Service | Handler) => Err(Rule::CpmReachesManagersAndProcessors),
        (Manager | Processor, Cpm) => Ok(()),
        (Service | Handler, Cpm) => Err(Rule::CpmReachesManagersAndProcessors),
        (Manager, Manager) => Ok(()),
        (a, b) => {
            let (Some(da), Some(db)) = (a.depth(), b.depth()) else {
                // Every other role pair was handled above.
                return Err(Rule::OneLayerAtATime);
            };
            if da == db {
                Err(Rule::NoPeerTalkBelowManager)
            } else if da.abs_diff(db) != 1 {
                Err(Rule::OneLayerAtATime)
            } else if from.domain != to.domain {
                Err(Rule::SameDomainBelowManager)
            } else {
                Ok(())
            }
        }
    }
}

/// Which way a topic's phase (its last segment) says a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Down,
    Up,
}

/// The direction of `topic` (a topic or a publish pattern) by its phase, if its last segment
/// is one of the eight phases of `<domain>.<action>.<phase>`: a role's
/// [`request_phase`](Role::request_phase) goes down, its
/// [`result_phase`](Role::result_phase) up.
fn phase_direction(topic: &str) -> Option<Direction> {
    let phase = topic.rsplit('.').next()?;
    if Role::ALL.iter().any(|r| r.request_phase() == phase) {
        Some(Direction::Down)
    } else if Role::ALL.iter().any(|r| r.result_phase() == phase) {
        Some(Direction::Up)
    } else {
        None
    }
}

/// Whether `from` may send `topic` (a topic, or a publish declaration) to `to` as far as the
/// topic's phase goes: a request phase (`request`, `submit`, `dispatch`, `execute`) only to a
/// lower layer, a result phase (`processed`, `handled`, `served`, `complete`) only to a
/// higher one, the layers being frontend, CPM, manager, service, handler, processor from the
/// top. Managers may send each other both (coordination across domains). A topic whose last
/// segment is not a phase (`shop.status.update`, a wildcard), a component sending to itself,
/// and system components (outside the layers) are not concerned. `Err` is
/// [`Rule::RequestsDownResultsUp`].
///
/// ```
/// use switchyard_components::{check_phase, Endpoint, Role, Rule};
/// let h = Endpoint::new("shop-handler", Role::Handler, "shop");
/// let p = Endpoint::new("shop-processor", Role::Processor, "shop");
/// assert!(check_phase(&h, &p, "shop.order.execute").is_ok());
/// assert!(check_phase(&p, &h, "shop.order.processed").is_ok());
/// assert_eq!(check_phase(&p, &h, "shop.order.dispatch"), Err(Rule::RequestsDownResultsUp));
/// assert_eq!(check_phase(&h, &p, "shop.order.handled"), Err(Rule::RequestsDownResultsUp));
/// ```
pub fn check_phase(from: &Endpoint, to: &Endpoint, topic: &str) -> Result<(), Rule> {
    if from.name == to.name {
        return Ok(());
    }
    let (Some(direction), Some(a), Some(b)) =
        (phase_direction(topic), from.role.layer(), to.role.layer())
    else {
        return Ok(());
    };
    let ok = match direction {
        Direction::Down => b > a,
        Direction::Up => b < a,
    } || (from.role == Role::Manager && to.role == Role::Manager);
    if ok {
        Ok(())
    } else {
        Err(Rule::RequestsDownResultsUp)
    }
}

/// Whether `from` may send a message on `topic` to `to`: [`check_edge`] (the roles), then
/// [`check_phase`] (the topic's phase). This is the check of
/// [`Topology::violations`](crate::Topology::violations) and of every runtime publish.
pub fn check_message(from: &Endpoint, to: &Endpoint, topic: &str) -> Result<(), Rule> {
    check_edge(from, to)?;
    check_phase(from, to, topic)
}

/// Builds a topic name by the convention `<domain>.<action>.<phase>`.
///
/// ```
/// use switchyard_components::{topic_name, Role};
/// assert_eq!(topic_name("analytics", "feature", "request"), "analytics.feature.request");
/// assert_eq!(
///     topic_name("analytics", "feature", Role::Processor.result_phase()),
///     "analytics.feature.processed"
/// );
/// ```
pub fn topic_name(domain: &str, action: &str, phase: &str) -> String {
    format!("{domain}.{action}.{phase}")
}

/// `<domain>.status.update`: where a domain's request contexts report state changes.
pub fn status_topic(domain: &str) -> String {
    format!("{domain}.status.update")
}

/// `<domain>.error`: where a domain's failures are reported for the error handler.
pub fn error_topic(domain: &str) -> String {
    format!("{domain}.error")
}

/// `<domain>.retry.request`: where the error handler asks a domain's manager to retry.
pub fn retry_topic(domain: &str) -> String {
    format!("{domain}.retry.request")
}

/// `<domain>.retry.exhausted`: where the error handler tells a domain's manager it gave up.
pub fn exhausted_topic(domain: &str) -> String {
    format!("{domain}.retry.exhausted")
}

/// `<domain>.health.heartbeat`: where a component says it is alive.
pub fn heartbeat_topic(domain: &str) -> String {
    format!("{domain}.health.heartbeat")
}
