//! Authentication (static bearer tokens stored as SHA-256 hashes, JWT HS256/RS256) and
//! authorization (grants on topic patterns per principal).
//!
//! [`Auth::authenticate`] turns a bearer credential into a [`Principal`];
//! [`Auth::authorize`] checks one [`Action`] on one topic (or, for `subscribe`, one pattern).
//! Both count and log every denial; the gateway (HTTP and WebSocket) calls nothing else.
//!
//! With auth off every caller is the [`ANONYMOUS`] principal holding every grant.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use switchyard::Pattern;

use crate::config::{AuthConfig, JwtAlgorithm, JwtConfig, PrincipalConfig};
use crate::error::{ApiError, ErrorKind};

/// The principal every caller is when auth is off.
pub const ANONYMOUS: &str = "anonymous";

/// What a principal wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish an event to a topic.
    Publish,
    /// Subscribe to a pattern.
    Subscribe,
    /// Send a command or request to a topic, or handle one remotely.
    Send,
    /// Operator endpoints: registry, dead letters, topology, traces, status, stats.
    Admin,
}

impl Action {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Send => "send",
            Self::Admin => "admin",
        }
    }

    const ALL: [Action; 4] = [Self::Publish, Self::Subscribe, Self::Send, Self::Admin];

    fn index(self) -> usize {
        match self {
            Self::Publish => 0,
            Self::Subscribe => 1,
            Self::Send => 2,
            Self::Admin => 3,
        }
    }
}

/// An authenticated caller and its grants, and when the credential it presented expires (a
/// JWT's `exp`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Principal {
    inner: Arc<Grants>,
    /// A JWT's `exp` and the leeway allowed past it; `None` for a static token or anonymous.
    expiry: Option<(SystemTime, Duration)>,
}

#[derive(Debug)]
struct Grants {
    name: String,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    send: Vec<Pattern>,
    admin: bool,
}

impl Principal {
    /// The anonymous principal: every grant.
    pub fn anonymous() -> Self {
        Self {
            inner: Arc::new(Grants {
                name: ANONYMOUS.to_owned(),
                publish: vec![Pattern::all()],
                subscribe: vec![Pattern::all()],
                send: vec![Pattern::all()],
                admin: true,
            }),
            expiry: None,
        }
    }

    fn from_config(p: &PrincipalConfig) -> Result<Self, String> {
        let parse = |list: &[String]| -> Result<Vec<Pattern>, String> {
            list.iter()
                .map(|s| Pattern::new(s).map_err(|e| format!("principal {}: {e}", p.name)))
                .collect()
        };
        Ok(Self {
            inner: Arc::new(Grants {
                name: p.name.clone(),
                publish: parse(&p.publish)?,
                subscribe: parse(&p.subscribe)?,
                send: parse(&p.send)?,
                admin: p.admin,
            }),
            expiry: None,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The `exp` of the JWT it was authenticated with; `None` for a static token (which never
    /// expires) or the anonymous principal.
    pub fn token_exp(&self) -> Option<SystemTime> {
        self.expiry.map(|(exp, _)| exp)
    }

    /// Until when the credential is accepted: the JWT's `exp` plus `auth.jwt.leeway_s`
    /// (`None`: no end). A WebSocket opened with it is closed then.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.expiry.map(|(exp, leeway)| exp + leeway)
    }

    /// Resolves at [`valid_until`](Self::valid_until), on tokio's clock; never when there is
    /// no end. What a connection that outlives one request (a WebSocket, the live stream)
    /// waits on beside its work, to stop acting for a credential that has expired.
    pub(crate) fn credential_expiry(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let until = self.valid_until();
        async move {
            match until {
                Some(until) => {
                    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    /// What a connection is told when it ends because its credential expired.
    pub(crate) fn expired_error(&self) -> ApiError {
        let exp = self
            .token_exp()
            .map_or_else(String::new, crate::wire::rfc3339);
        ApiError::new(
            ErrorKind::Unauthenticated,
            format!("the token expired at {exp}; reconnect with a fresh one"),
        )
    }

    /// True when it holds the admin grant.
    pub fn is_admin(&self) -> bool {
        self.inner.admin
    }

    /// Whether the grants allow `action` on `topic` (a topic for publish and send, a pattern
    /// for subscribe, ignored for admin). A subscribe pattern is allowed only when every
    /// topic it can match is inside one granted pattern.
    pub fn allows(&self, action: Action, topic: &str) -> bool {
        let g = &self.inner;
        match action {
            Action::Admin => g.admin,
            Action::Publish => topic_in(&g.publish, topic),
            Action::Send => topic_in(&g.send, topic),
            Action::Subscribe => g
                .subscribe
                .iter()
                .any(|p| pattern_contains(p.as_str(), topic)),
        }
    }
}

fn topic_in(grants: &[Pattern], topic: &str) -> bool {
    match switchyard::Topic::new(topic) {
        Ok(t) => grants.iter().any(|p| p.matches(&t)),
        Err(_) => false,
    }
}

/// True when every topic matched by pattern `inner` is matched by pattern `outer`
/// (`*` one segment, `#` zero or more). Sound but conservative: a `#` in `inner` is only
/// covered by a `#` in `outer`.
pub fn pattern_contains(outer: &str, inner: &str) -> bool {
    let o: Vec<&str> = outer.split('.').collect();
    let i: Vec<&str> = inner.split('.').collect();
    let mut memo = HashMap::new();
    contains(&o, &i, &mut memo)
}

fn contains<'a>(o: &[&'a str], i: &[&'a str], memo: &mut HashMap<(usize, usize), bool>) -> bool {
    let key = (o.len(), i.len());
    if let Some(&v) = memo.get(&key) {
        return v;
    }
    let v = match (o.first(), i.first()) {
        (None, _) => i.is_empty(),
        (Some(&"#"), _) => {
            // `#` matches nothing here, or swallows the inner pattern's next segment
            // (whatever that segment matches, `#` matches too).
            contains(&o[1..], i, memo) || (!i.is_empty() && contains(o, &i[1..], memo))
        }
        (Some(_), None) => false,
        (Some(_), Some(&"#")) => false,
        (Some(&"*"), Some(_)) => contains(&o[1..], &i[1..], memo),
        (Some(a), Some(b)) => a == b && contains(&o[1..], &i[1..], memo),
    };
    memo.insert(key, v);
    v
}

/// Why a call was refused: 401 (who are you?) or 403 (not allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denial {
    /// `Unauthenticated` or `Forbidden`.
    pub kind: ErrorKind,
    /// Human-readable reason.
    pub reason: String,
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        ApiError::new(d.kind, d.reason)
    }
}

/// Denials counted since start.
#[derive(Debug, Default)]
pub struct DenialCounts {
    unauthenticated: AtomicU64,
    forbidden: [AtomicU64; 4],
}

impl DenialCounts {
    /// 401s so far.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    /// 403s so far for one action.
    pub fn forbidden(&self, action: Action) -> u64 {
        self.forbidden[action.index()].load(Ordering::Relaxed)
    }

    /// Every (action, count) of 403s.
    pub fn forbidden_all(&self) -> impl Iterator<Item = (Action, u64)> + '_ {
        Action::ALL.iter().map(|a| (*a, self.forbidden(*a)))
    }
}

/// JWT claims the node reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Required by the validation; a number of seconds since the epoch.
    exp: f64,
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// The node's authenticator and authorizer.
pub struct Auth {
    enabled: bool,
    /// SHA-256 hex of a token → principal name.
    tokens: HashMap<String, String>,
    jwt: Option<Jwt>,
    principals: HashMap<String, Principal>,
    anonymous: Principal,
    denials: DenialCounts,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.is_some())
            .field("principals", &self.principals.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The auth settings could not be turned into keys (a secret or key file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthSetupError(String);

impl Auth {
    /// Builds the authenticator from validated settings (keys are read here).
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let mut principals = HashMap::new();
        for p in &config.principals {
            let principal = Principal::from_config(p).map_err(AuthSetupError)?;
            principals.insert(p.name.clone(), principal);
        }
        let tokens = config
            .tokens
            .iter()
            .map(|t| (t.sha256.to_ascii_lowercase(), t.principal.clone()))
            .collect();
        let jwt = config.jwt.as_ref().map(jwt_verifier).transpose()?;
        Ok(Self {
            enabled: config.enabled,
            tokens,
            jwt,
            principals,
            anonymous: Principal::anonymous(),
            denials: DenialCounts::default(),
        })
    }

    /// An authenticator with auth off (everyone is [`ANONYMOUS`]).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            tokens: HashMap::new(),
            jwt: None,
            principals: HashMap::new(),
            anonymous: Principal::anonymous(),
            denials: DenialCounts::default(),
        }
    }

    /// True when credentials are required.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Denials so far.
    pub fn denials(&self) -> &DenialCounts {
        &self.denials
    }

    /// The principal of a bearer credential (the value after `Bearer `), or a 401 denial.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, Denial> {
        if !self.enabled {
            return Ok(self.anonymous.clone());
        }
        let Some(token) = bearer.map(str::trim).filter(|t| !t.is_empty()) else {
            return Err(
                self.unauthenticated("missing bearer token (Authorization: Bearer <token>)")
            );
        };
        let hash = sha256_hex(token.as_bytes());
        if let Some(name) = self.tokens.get(&hash) {
            return self.principal(name);
        }
        if let Some(jwt) = &self.jwt
            && token.matches('.').count() == 2
        {
            return match jsonwebtoken::decode::<Claims>(token, &jwt.key, &jwt.validation) {
                Ok(data) => {
                    let mut principal = self.principal(&data.claims.sub)?;
                    let exp = Duration::try_from_secs_f64(data.claims.exp.max(0.0))
                        .ok()
                        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d));
                    principal.expiry = exp.map(|e| (e, Duration::from_secs(jwt.validation.leeway)));
                    // jsonwebtoken compares whole seconds and accepts the second of
                    // `exp + leeway` itself; an open socket is closed at its start. Refused
                    // from that instant here too, so both agree.
                    match principal.valid_until() {
                        Some(until) if until <= SystemTime::now() => {
                            Err(self.unauthenticated("invalid JWT: ExpiredSignature"))
                        }
                        _ => Ok(principal),
                    }
                }
                Err(e) => Err(self.unauthenticated(&format!("invalid JWT: {e}"))),
            };
        }
        Err(self.unauthenticated("unknown bearer token"))
    }

    fn principal(&self, name: &str) -> Result<Principal, Denial> {
        match self.principals.get(name) {
            Some(p) => Ok(p.clone()),
            None => Err(self.unauthenticated(&format!("unknown principal {name:?}"))),
        }
    }

    /// A 401 denial for a credential the caller could not even present properly (wrong
    /// scheme); counted and logged like every denial.
    pub fn refuse(&self, reason: &str) -> Denial {
        self.unauthenticated(reason)
    }

    fn unauthenticated(&self, reason: &str) -> Denial {
        self.denials.unauthenticated.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason, "authentication refused");
        Denial {
            kind: ErrorKind::Unauthenticated,
            reason: reason.to_owned(),
        }
    }

    /// A 403 denial of `action` for `principal` for another reason than its grants (a layer
    /// rule of the declared topology); counted and logged like every denial.
    pub fn deny(&self, principal: &Principal, action: Action, reason: String) -> Denial {
        self.denials.forbidden[action.index()].fetch_add(1, Ordering::Relaxed);
        tracing::warn!(principal = principal.name(), action = action.as_str(), %reason, "refused by a layer rule");
        Denial {
            kind: ErrorKind::Forbidden,
            reason,
        }
    }

    /// Allows or refuses (403, counted and logged) `action` on `topic` for `principal`.
    pub fn authorize(
        &self,
        principal: &Principal,
        action: Action,
        topic: &str,
    ) -> Result<(), Denial> {
        if principal.allows(action, topic) {
            return Ok(());
        }
        self.denials.forbidden[action.index()].fetch_add(1, Ordering::Relaxed);
        let reason = match action {
            Action::Admin => format!("principal {:?} lacks the admin grant", principal.name()),
            Action::Subscribe => format!(
                "principal {:?} has no subscribe grant covering pattern {topic:?}",
                principal.name()
            ),
            _ => format!(
                "principal {:?} has no {} grant for topic {topic:?}",
                principal.name(),
                action.as_str()
            ),
        };
        tracing::warn!(principal = principal.name(), action = action.as_str(), topic, %reason, "authorization refused");
        Err(Denial {
            kind: ErrorKind::Forbidden,
            reason,
        })
    }
}

fn jwt_verifier(c: &JwtConfig) -> Result<Jwt, AuthSetupError> {
    let (key, alg) = match c.algorithm {
        JwtAlgorithm::HS256 => {
            let secret = match (&c.secret, &c.secret_env) {
                (Some(s), _) => s.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    AuthSetupError(format!("auth.jwt.secret_env: variable {var} is not set"))
                })?,
                (None, None) => {
                    return Err(AuthSetupError(
                        "auth.jwt: HS256 needs secret or secret_env".to_owned(),
                    ));
                }
            };
            (
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )
        }
        JwtAlgorithm::RS256 => {
            let path = c
                .public_key_pem
                .as_ref()
                .ok_or_else(|| AuthSetupError("auth.jwt: RS256 needs public_key_pem".to_owned()))?;
            let pem = std::fs::read(path).map_err(|e| {
                AuthSetupError(format!(
                    "auth.jwt.public_key_pem: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                AuthSetupError(format!(
                    "auth.jwt.public_key_pem: {} is not an RSA public key in PEM: {e}",
                    path.display()
                ))
            })?;
            (key, Algorithm::RS256)
        }
    };
    let mut validation = Validation::new(alg);
    validation.leeway = c.leeway_s;
    // `nbf` is checked when present (with the leeway); `exp` and `sub` are always required,
    // `iss`/`aud` when configured: a token leaving a configured claim out is refused as one
    // with another value is.
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(iss) = &c.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    match &c.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    Ok(Jwt { key, validation })
}

/// Lower-case hex SHA-256 of `bytes` (what `auth.tokens[].sha256` holds).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_of_patterns() {
        assert!(pattern_contains("a.#", "a.b.c"));
        assert!(pattern_contains("a.#", "a.*"));
        assert!(pattern_contains("a.#", "a.#"));
        assert!(pattern_contains("a.#", "a"));
        assert!(pattern_contains("#", "x.#.y"));
        assert!(pattern_contains("a.*", "a.b"));
        assert!(pattern_contains("a.*.c", "a.*.c"));
        assert!(!pattern_contains("a.*", "a.#"));
        assert!(!pattern_contains("a.*", "a.b.c"));
        assert!(!pattern_contains("a.b", "a.*"));
        assert!(!pattern_contains("a.#", "#"));
        assert!(!pattern_contains("a.#", "b.c"));
    }

    /// Containment is sound: whenever it says yes, every sampled topic the inner pattern
    /// matches is matched by the outer one.
    #[test]
    fn containment_is_sound_on_samples() {
        let segs = ["a", "b", "*", "#"];
        let mut patterns = Vec::new();
        for n in 1..=3 {
            let mut idx = vec![0usize; n];
            loop {
                patterns.push(idx.iter().map(|&i| segs[i]).collect::<Vec<_>>().join("."));
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < segs.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        let mut topics = Vec::new();
        for n in 1..=4 {
            for bits in 0..(1u32 << n) {
                topics.push(
                    (0..n)
                        .map(|i| if bits & (1 << i) == 0 { "a" } else { "b" })
                        .collect::<Vec<_>>()
                        .join("."),
                );
            }
        }
        for o in &patterns {
            let op = Pattern::new(o).unwrap();
            for i in &patterns {
                let ip = Pattern::new(i).unwrap();
                if pattern_contains(o, i) {
                    for t in &topics {
                        let t = switchyard::Topic::new(t).unwrap();
                        assert!(
                            !ip.matches(&t) || op.matches(&t),
                            "{o} said to contain {i} but misses {t}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sha256_hex_of_known_input() {
        assert_eq!(
            sha256_hex(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }
}
