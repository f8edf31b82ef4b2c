//! Validation at the boundary: messages that arrive from outside (the node's gateway, a bus's
//! transport intake through [`Validator::intake_check`]) checked against the registered JSON Schema of their topic, per topic pattern
//! `off`, `warn` or `enforce`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use switchyard::{Envelope, Message, Topic};
//! use switchyard_contracts::{Contract, Enforcement, JsonSchema, Registry, Validator, Verdict};
//!
//! #[derive(Clone, Serialize, Deserialize, JsonSchema)]
//! struct OrderPlaced { order: u64, amount: f64 }
//! impl Message for OrderPlaced { const TOPIC: &'static str = "orders.placed"; }
//! impl Contract for OrderPlaced {}
//!
//! let mut registry = Registry::new();
//! registry.register::<OrderPlaced>()?;
//! let validator = Validator::new(&registry)?.mode("audit.#", Enforcement::Warn)?;
//!
//! let bad = Envelope::new(Topic::new("orders.placed")?, r#"{"order": 7, "amount": "ten"}"#);
//! match validator.check(&bad) {
//!     Verdict::Invalid { enforcement, issues, .. } => {
//!         assert_eq!(enforcement, Enforcement::Enforce);
//!         assert_eq!(issues[0].path, "/amount");
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use switchyard::IntakeVerdict;
use switchyard_core::{Envelope, Pattern, Topic};

use crate::registry::{Registry, RegistryError};
use crate::upcast::Upcasters;

/// What happens to a message that does not match its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Not checked.
    Off,
    /// Checked; an invalid message is logged and counted, and still delivered.
    Warn,
    /// Checked; an invalid message is dead-lettered with its validation errors, never delivered.
    Enforce,
}

impl Enforcement {
    /// `off`, `warn` or `enforce`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Warn => "warn",
            Self::Enforce => "enforce",
        }
    }
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not `off`, `warn` or `enforce`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid validation mode {0:?}: expected off, warn or enforce")]
pub struct ParseEnforcementError(pub String);

impl FromStr for Enforcement {
    type Err = ParseEnforcementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "warn" => Ok(Self::Warn),
            "enforce" => Ok(Self::Enforce),
            _ => Err(ParseEnforcementError(s.to_owned())),
        }
    }
}

/// One reason a message is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationIssue {
    /// JSON pointer into the payload (`""` for the whole payload, `/amount`, `/items/0/sku`).
    pub path: String,
    /// What is wrong there.
    pub reason: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(payload)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.reason)
    }
}

/// How many issues [`Verdict::describe`] lists before it counts the rest: the text of a
/// refusal (the gateway's 422 body and WebSocket error frame, the dead letter's reason, the
/// bus's intake rejection) stays a few kilobytes however many elements of a payload are wrong.
pub const MAX_DESCRIBED_ISSUES: usize = 20;

/// The result of checking one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not checked: validation is off for the topic, or no schema is registered for it.
    Unchecked,
    /// Matches the schema of `type_name`.
    Valid {
        /// The registered type it matched.
        type_name: String,
    },
    /// Does not match.
    Invalid {
        /// The mode of the topic: `Warn` (deliver) or `Enforce` (dead-letter).
        enforcement: Enforcement,
        /// The registered type it was checked against.
        type_name: String,
        /// The reasons, in the payload's order: all of them from
        /// [`Validator::check`], the first ones from [`Validator::check_summary`] (which
        /// formats no more than [`describe`](Verdict::describe) lists).
        issues: Vec<ValidationIssue>,
        /// How many reasons there are (at least `issues.len()`; exact either way).
        issue_count: usize,
    },
}

impl Verdict {
    /// Whether the message may be delivered (everything except an enforced invalid one).
    pub fn deliver(&self) -> bool {
        !matches!(
            self,
            Self::Invalid {
                enforcement: Enforcement::Enforce,
                ..
            }
        )
    }

    /// One line naming the type and the issues, for a dead letter or an error response:
    /// the first [`MAX_DESCRIBED_ISSUES`], then `and N more (M issues)` when there are more
    /// (`M` is [`issue_count`](Self::Invalid::issue_count)), so the text does not grow with
    /// the payload. The same text from [`Validator::check`] and
    /// [`Validator::check_summary`].
    pub fn describe(&self) -> Option<String> {
        use fmt::Write as _;
        match self {
            Self::Invalid {
                type_name,
                issues,
                issue_count,
                ..
            } => {
                let mut text = format!("invalid against the schema of {type_name}: ");
                for (i, issue) in issues.iter().take(MAX_DESCRIBED_ISSUES).enumerate() {
                    if i > 0 {
                        text.push_str("; ");
                    }
                    // Writing into a String cannot fail.
                    let _ = write!(text, "{issue}");
                }
                let listed = issues.len().min(MAX_DESCRIBED_ISSUES);
                let total = (*issue_count).max(issues.len());
                if total > listed {
                    let _ = write!(text, "; and {} more ({total} issues)", total - listed);
                }
                Some(text)
            }
            _ => None,
        }
    }
}

impl From<&Verdict> for IntakeVerdict {
    /// `Invalid` under `Enforce` rejects, under `Warn` warns, with
    /// [`describe`](Verdict::describe) as the text; anything else is accepted.
    fn from(verdict: &Verdict) -> Self {
        match (verdict, verdict.describe()) {
            (
                Verdict::Invalid {
                    enforcement: Enforcement::Enforce,
                    ..
                },
                Some(text),
            ) => Self::Reject(text),
            (Verdict::Invalid { .. }, Some(text)) => Self::Warn(text),
            _ => Self::Accept,
        }
    }
}

/// A schema that could not be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidatorError {
    /// The registered schema of a type is not a valid JSON Schema.
    #[error("the schema of {type_name} does not compile: {reason}")]
    Schema {
        /// The type.
        type_name: String,
        /// Why.
        reason: String,
    },
    /// A topic pattern is not valid.
    #[error(transparent)]
    Pattern(#[from] RegistryError),
}

struct Compiled {
    topic: String,
    type_name: String,
    version: u32,
    schema: jsonschema::Validator,
}

/// Checks messages against the registered schemas of their topic.
///
/// Built from a [`Registry`]; every topic is `enforce` unless a pattern says otherwise (the
/// first matching pattern of [`mode`](Self::mode) wins, then [`default_mode`](Self::default_mode)).
/// A message whose `type_name` is a type registered on its topic is checked against that
/// type; one without (a foreign publisher's), or naming a type that is not registered on
/// its topic (unknown, or another topic's), against the types registered for its topic, valid
/// when it matches any. A message of an older `type_version` than every registered version of
/// its type is checked after the [`upcasters`](Self::upcasters) bring it to each registered
/// version, or as it is when the validator has none (or none with steps for its type, as the
/// bus decodes it): a version claim never exempts a payload.
pub struct Validator {
    compiled: Vec<Compiled>,
    modes: Vec<(Pattern, Enforcement)>,
    default: Enforcement,
    upcasters: Option<Upcasters>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field(
                "types",
                &self
                    .compiled
                    .iter()
                    .map(|c| &c.type_name)
                    .collect::<Vec<_>>(),
            )
            .field("modes", &self.modes)
            .field("default", &self.default)
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl Validator {
    /// Compiles the schema of every registered type.
    pub fn new(registry: &Registry) -> Result<Self, ValidatorError> {
        let mut compiled = Vec::new();
        for ty in registry.types() {
            let schema =
                jsonschema::validator_for(&ty.schema).map_err(|e| ValidatorError::Schema {
                    type_name: ty.name.clone(),
                    reason: e.to_string(),
                })?;
            compiled.push(Compiled {
                topic: ty.topic.clone(),
                type_name: ty.name.clone(),
                version: ty.version,
                schema,
            });
        }
        Ok(Self {
            compiled,
            modes: Vec::new(),
            default: Enforcement::Enforce,
            upcasters: None,
        })
    }

    /// The upcasters the bus uses: a message of an older version of its type is checked as
    /// they bring it to each registered version (a copy; the message itself is not changed).
    /// Without them, or when they have no steps for its type, such a message is checked as
    /// it is, against the registered versions (the bus decodes such a type as it is).
    ///
    /// ```
    /// # use switchyard_contracts::{Registry, Upcasters, Validator};
    /// let upcasters = Upcasters::new().step("OrderPlaced", 1, |v| Ok::<_, String>(v));
    /// let validator = Validator::new(&Registry::new())?.upcasters(upcasters);
    /// # let _ = validator;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Some(upcasters);
        self
    }

    /// The mode of topics matching `pattern` (`*` and `#` wildcards); earlier calls win.
    pub fn mode(mut self, pattern: &str, enforcement: Enforcement) -> Result<Self, ValidatorError> {
        let p = Pattern::new(pattern).map_err(|source| RegistryError::Topic {
            input: pattern.to_owned(),
            source,
        })?;
        self.modes.push((p, enforcement));
        Ok(self)
    }

    /// The mode of topics no pattern matches (default `enforce`).
    pub fn default_mode(mut self, enforcement: Enforcement) -> Self {
        self.default = enforcement;
        self
    }

    /// The mode that applies to `topic`.
    pub fn enforcement(&self, topic: &Topic) -> Enforcement {
        self.modes
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map_or(self.default, |(_, e)| *e)
    }

    /// The bus's intake check made of this validator: every message a bus takes in from its
    /// transport (e.g. NATS, from publishers that are not switchyard) is checked against the
    /// registered schemas, per topic `off` / `warn` / `enforce`; an enforced invalid one is
    /// dead-lettered with every issue (path and reason), never delivered.
    ///
    /// ```
    /// # use switchyard_contracts::{Registry, Validator};
    /// # let registry = Registry::new();
    /// let bus = switchyard::Bus::builder()
    ///     .intake_check(Validator::new(&registry)?.intake_check())
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A validator shared with something else (the node's gateway) plugs in through
    /// [`intake_verdict`](Self::intake_verdict): `move |env| shared.intake_verdict(env)`.
    pub fn intake_check(self) -> impl Fn(&Envelope) -> IntakeVerdict + Send + Sync + 'static {
        move |env| self.intake_verdict(env)
    }

    /// [`check_summary`](Self::check_summary) as the bus's intake check sees it.
    pub fn intake_verdict(&self, env: &Envelope) -> IntakeVerdict {
        IntakeVerdict::from(&self.check_summary(env))
    }

    /// Checks one message; an invalid one's verdict has every issue, formatted.
    pub fn check(&self, env: &Envelope) -> Verdict {
        self.check_keeping(env, usize::MAX)
    }

    /// Checks one message as [`check`](Self::check) does, but formats only the issues
    /// [`Verdict::describe`] lists (the first [`MAX_DESCRIBED_ISSUES`]) and counts the rest
    /// ([`issue_count`](Verdict::Invalid::issue_count) is exact): what a refusal needs, in
    /// time that does not grow with formatting every issue of a payload with tens of
    /// thousands. The node's gateway, its ZeroMQ ingest and the bus's intake check use it.
    pub fn check_summary(&self, env: &Envelope) -> Verdict {
        self.check_keeping(env, MAX_DESCRIBED_ISSUES)
    }

    /// [`check`](Self::check), formatting the first `keep` issues of the schema.
    fn check_keeping(&self, env: &Envelope, keep: usize) -> Verdict {
        let enforcement = self.enforcement(&env.topic);
        if enforcement == Enforcement::Off {
            return Verdict::Unchecked;
        }
        let mut candidates: Vec<&Compiled> = self
            .compiled
            .iter()
            .filter(|c| c.topic == env.topic.as_str())
            .collect();
        if candidates.is_empty() {
            return Verdict::Unchecked;
        }
        // The type name is the publisher's claim. Only a type registered on this topic narrows
        // the check; any other name (unknown, or another topic's type) is checked like a
        // foreign message against every type of the topic, never let through unchecked.
        let mut stray_name = None;
        // `Some(name)`: the message claims a version older than every registered version of
        // its type `name`; it is checked as upcast (or as it is, without upcasters).
        let mut older = None;
        if let Some(n) = env.type_name.as_deref() {
            if candidates.iter().any(|c| c.type_name == n) {
                candidates.retain(|c| c.type_name == n);
                if candidates.iter().all(|c| env.type_version < c.version) {
                    older = Some(n);
                }
            } else {
                stray_name = Some(n);
            }
        }
        let stray = |issues: &mut Vec<ValidationIssue>| {
            if let Some(n) = stray_name {
                issues.insert(
                    0,
                    ValidationIssue {
                        path: String::new(),
                        reason: format!(
                            "type `{n}` is not registered on topic `{}`; checked against the types that are",
                            env.topic.as_str()
                        ),
                    },
                );
            }
            if let Some(n) = older {
                let why = match &self.upcasters {
                    None => "no upcasters given to the validator",
                    Some(ups) if !ups.has(n) => "the validator's upcasters have no steps for it",
                    Some(_) => "",
                };
                if !why.is_empty() {
                    issues.insert(
                        0,
                        ValidationIssue {
                            path: String::new(),
                            reason: format!(
                                "`{n}` version {} is older than every registered version; checked as it is ({why})",
                                env.type_version
                            ),
                        },
                    );
                }
            }
        };
        let payload: serde_json::Value = match serde_json::from_slice(&env.payload) {
            Ok(v) => v,
            Err(e) => {
                let mut issues = vec![ValidationIssue {
                    path: String::new(),
                    reason: format!("not JSON: {e}"),
                }];
                stray(&mut issues);
                return Verdict::Invalid {
                    issue_count: issues.len(),
                    enforcement,
                    type_name: candidates
                        .first()
                        .map(|c| c.type_name.clone())
                        .unwrap_or_default(),
                    issues,
                };
            }
        };
        let mut first_failure = None;
        for c in candidates {
            let upcast = match (older, &self.upcasters) {
                // A type with no steps at all is checked as it is, as the bus decodes it
                // (`Upcast::upcast` leaves it alone): not refused for a gap.
                (Some(n), Some(ups)) if ups.has(n) => {
                    match upcast_caught(ups, n, env.type_version, c.version, payload.clone()) {
                        Ok(v) => Some(v),
                        Err(why) => {
                            let issue = ValidationIssue {
                                path: String::new(),
                                reason: format!("not upcast: {why}"),
                            };
                            first_failure.get_or_insert((c.type_name.clone(), vec![issue], 1));
                            continue;
                        }
                    }
                }
                _ => None,
            };
            // Formatting an issue (its path and message) is most of the cost of a payload
            // with many: only the first `keep` are, the rest are counted. A later candidate's
            // issues are not needed once one failed (the verdict reports the first).
            let mut issues = Vec::new();
            let mut count = 0usize;
            let keep_here = if first_failure.is_some() { 0 } else { keep };
            for e in c.schema.iter_errors(upcast.as_ref().unwrap_or(&payload)) {
                if issues.len() < keep_here {
                    issues.push(ValidationIssue {
                        path: e.instance_path().to_string(),
                        reason: e.to_string(),
                    });
                }
                count += 1;
            }
            if count == 0 {
                return Verdict::Valid {
                    type_name: c.type_name.clone(),
                };
            }
            first_failure.get_or_insert((c.type_name.clone(), issues, count));
        }
        let (type_name, mut issues, count) = first_failure.unwrap_or_default();
        let before = issues.len();
        stray(&mut issues);
        Verdict::Invalid {
            enforcement,
            type_name,
            issue_count: count + (issues.len() - before),
            issues,
        }
    }
}

/// [`Upcasters::upcast_value`] with a panic in a step caught: the text of the error, or
/// "the upcaster step panicked: <message>" (a verdict, never a panic out of
/// [`Validator::check`]).
fn upcast_caught(
    ups: &Upcasters,
    name: &str,
    from: u32,
    to: u32,
    payload: serde_json::Value,
) -> Result<serde_json::Value, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ups.upcast_value(name, from, to, payload)
    })) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(panic) => Err(format!(
            "the upcaster step panicked: {}",
            switchyard_core::error::panic_text(&*panic).unwrap_or("non-string panic payload")
        )),
    }
}
