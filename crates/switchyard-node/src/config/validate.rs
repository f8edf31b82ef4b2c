//! Checking a loaded [`NodeConfig`]: every key's value against what is allowed, so a node
//! never starts half-configured.

use super::*;

impl NodeConfig {
    /// Checks every value; the error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.auth.enabled && !self.listen.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "listen",
                self.listen,
                "a non-loopback address needs auth: set auth.enabled = true with tokens or jwt, \
                 or listen on 127.0.0.1",
            ));
        }
        self.validate_auth()?;
        if let Err(e) = crate::logging::check_filter(&self.logging.filter) {
            return Err(ConfigError::invalid(
                "logging.filter",
                format!("{:?}", self.logging.filter),
                format!("tracing filter directives, e.g. \"info,switchyard_node=debug\" ({e})"),
            ));
        }
        if let Some(enc) = &self.encryption {
            enc.build()?;
        }
        let l = &self.limits;
        positive("limits.max_body_bytes", l.max_body_bytes as u64)?;
        positive("limits.max_message_bytes", l.max_message_bytes as u64)?;
        positive(
            "limits.default_request_timeout_ms",
            l.default_request_timeout_ms,
        )?;
        positive("limits.send_timeout_ms", l.send_timeout_ms)?;
        if l.max_request_timeout_ms < l.default_request_timeout_ms {
            return Err(ConfigError::invalid(
                "limits.max_request_timeout_ms",
                l.max_request_timeout_ms,
                format!(
                    "at least limits.default_request_timeout_ms ({})",
                    l.default_request_timeout_ms
                ),
            ));
        }
        if let Some(rate) = l.publish_rate {
            positive("limits.publish_rate.per_second", u64::from(rate.per_second))?;
            if rate.burst == Some(0) {
                return Err(ConfigError::invalid(
                    "limits.publish_rate.burst",
                    0,
                    "at least 1",
                ));
            }
        }
        positive("ws.outbound_buffer", self.ws.outbound_buffer as u64)?;
        positive("ws.max_frame_bytes", self.ws.max_frame_bytes as u64)?;
        positive("ws.max_connections", self.ws.max_connections as u64)?;
        if let Some(per) = self.ws.max_connections_per_principal {
            positive("ws.max_connections_per_principal", per as u64)?;
            if per > self.ws.max_connections {
                return Err(ConfigError::invalid(
                    "ws.max_connections_per_principal",
                    per,
                    format!("at most ws.max_connections ({})", self.ws.max_connections),
                ));
            }
        }
        positive("retention.dead_letters", self.retention.dead_letters as u64)?;
        positive("bus.queue_capacity", self.bus.queue_capacity as u64)?;
        positive("bus.workers", self.bus.workers as u64)?;
        match &self.transport {
            TransportConfig::Memory => {}
            TransportConfig::Log(log) => {
                if log.data_dir.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        "transport.data_dir",
                        "\"\"",
                        "a directory path",
                    ));
                }
                if log.segment_bytes < 4096 {
                    return Err(ConfigError::invalid(
                        "transport.segment_bytes",
                        log.segment_bytes,
                        "at least 4096",
                    ));
                }
                positive("transport.ack_wait_ms", log.ack_wait_ms)?;
                if log.durability == Durability::Interval {
                    positive("transport.sync_interval_ms", log.sync_interval_ms)?;
                }
            }
            TransportConfig::Nats(nats) => {
                if !(nats.url.starts_with("nats://")
                    || nats.url.starts_with("tls://")
                    || nats.url.starts_with("ws://")
                    || nats.url.starts_with("wss://"))
                {
                    return Err(ConfigError::invalid(
                        "transport.url",
                        &nats.url,
                        "a nats://, tls://, ws:// or wss:// URL",
                    ));
                }
                if nats.streams.is_empty() {
                    return Err(ConfigError::invalid(
                        "transport.streams",
                        "[]",
                        "at least one stream, e.g. [[transport.streams]] name = \"events\" \
                         patterns = [\"orders.#\"]; a topic no stream holds cannot be published \
                         (one stream on \"#\" would also capture NATS's own _INBOX replies)",
                    ));
                }
                positive("transport.replicas", nats.replicas as u64)?;
                positive("transport.ephemeral_inactive_s", nats.ephemeral_inactive_s)?;
                if nats.max_age_s > 0 && nats.max_age_s < NATS_DUPLICATE_WINDOW_S {
                    return Err(ConfigError::invalid(
                        "transport.max_age_s",
                        nats.max_age_s,
                        format!(
                            "0 (no age limit) or at least {NATS_DUPLICATE_WINDOW_S}: JetStream \
                             refuses an age limit below the duplicate window (2 min)"
                        ),
                    ));
                }
                positive("transport.ack_wait_ms", nats.ack_wait_ms)?;
                for (i, s) in nats.streams.iter().enumerate() {
                    let ok = !s.name.is_empty()
                        && s.name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    if !ok {
                        return Err(ConfigError::invalid(
                            format!("transport.streams[{i}].name"),
                            format!("{:?}", s.name),
                            "ASCII letters, digits, '-' and '_'",
                        ));
                    }
                    if s.patterns.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("transport.streams[{i}].patterns"),
                            "[]",
                            "at least one topic pattern",
                        ));
                    }
                    for (j, p) in s.patterns.iter().enumerate() {
                        pattern(&format!("transport.streams[{i}].patterns[{j}]"), p)?;
                    }
                }
            }
        }
        for (i, z) in self.ingest.zmq.iter().enumerate() {
            if !(z.endpoint.starts_with("tcp://") || z.endpoint.starts_with("ipc://")) {
                return Err(ConfigError::invalid(
                    format!("ingest.zmq[{i}].endpoint"),
                    format!("{:?}", z.endpoint),
                    "a tcp://host:port or ipc://path endpoint",
                ));
            }
            if let Err(e) = Topic::new(&z.topic) {
                return Err(ConfigError::invalid(
                    format!("ingest.zmq[{i}].topic"),
                    format!("{:?}", z.topic),
                    format!("a topic ({e})"),
                ));
            }
            if z.max_message_bytes == Some(0) {
                return Err(ConfigError::invalid(
                    format!("ingest.zmq[{i}].max_message_bytes"),
                    0,
                    "at least 1",
                ));
            }
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
                if !path.is_file() {
                    return Err(ConfigError::invalid(
                        key,
                        path.display(),
                        "an existing PEM file",
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let mut names = std::collections::HashSet::new();
        for (i, p) in a.principals.iter().enumerate() {
            if p.name.is_empty() {
                return Err(ConfigError::invalid(
                    format!("auth.principals[{i}].name"),
                    "\"\"",
                    "a non-empty name",
                ));
            }
            if p.name == crate::auth::ANONYMOUS {
                return Err(ConfigError::invalid(
                    format!("auth.principals[{i}].name"),
                    format!("{:?}", p.name),
                    "any name but the reserved \"anonymous\"",
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("auth.principals[{i}].name"),
                    format!("{:?}", p.name),
                    "a name not used by another principal",
                ));
            }
            for (action, list) in [
                ("publish", &p.publish),
                ("subscribe", &p.subscribe),
                ("send", &p.send),
            ] {
                for (j, pat) in list.iter().enumerate() {
                    pattern(&format!("auth.principals[{i}].{action}[{j}]"), pat)?;
                }
            }
        }
        for (i, t) in a.tokens.iter().enumerate() {
            let ok = t.sha256.len() == 64
                && t.sha256
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].sha256"),
                    format!("{:?}", t.sha256),
                    "64 lower-case hex digits (printf %s TOKEN | sha256sum)",
                ));
            }
            if !names.contains(t.principal.as_str()) {
                return Err(ConfigError::invalid(
                    format!("auth.tokens[{i}].principal"),
                    format!("{:?}", t.principal),
                    "the name of a principal in [[auth.principals]]",
                ));
            }
        }
        if let Some(jwt) = &a.jwt {
            match jwt.algorithm {
                JwtAlgorithm::HS256 => {
                    let secret = match (&jwt.secret, &jwt.secret_env) {
                        (Some(s), None) => Some(s.clone()),
                        (None, Some(var)) => std::env::var(var).ok(),
                        _ => {
                            return Err(ConfigError::invalid(
                                "auth.jwt.secret",
                                "(secret and secret_env)",
                                "exactly one of auth.jwt.secret or auth.jwt.secret_env for HS256",
                            ));
                        }
                    };
                    match secret {
                        Some(s) if s.len() >= 32 => {}
                        Some(s) => {
                            return Err(ConfigError::invalid(
                                "auth.jwt.secret",
                                format!("({} bytes)", s.len()),
                                "at least 32 bytes",
                            ));
                        }
                        None => {
                            return Err(ConfigError::invalid(
                                "auth.jwt.secret_env",
                                format!("{:?}", jwt.secret_env.as_deref().unwrap_or_default()),
                                "the name of a set environment variable",
                            ));
                        }
                    }
                }
                JwtAlgorithm::RS256 => match &jwt.public_key_pem {
                    Some(p) if p.is_file() => {}
                    Some(p) => {
                        return Err(ConfigError::invalid(
                            "auth.jwt.public_key_pem",
                            p.display(),
                            "an existing PEM file",
                        ));
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            "auth.jwt.public_key_pem",
                            "(none)",
                            "a PEM public key path for RS256",
                        ));
                    }
                },
            }
        }
        if a.enabled && a.tokens.is_empty() && a.jwt.is_none() {
            return Err(ConfigError::invalid(
                "auth.enabled",
                true,
                "auth.tokens or auth.jwt configured (otherwise nobody could authenticate)",
            ));
        }
        Ok(())
    }
}

/// JetStream's duplicate window the node's streams use (the `NatsConfig` default), seconds.
const NATS_DUPLICATE_WINDOW_S: u64 = 120;

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(ConfigError::invalid(key, 0, "at least 1"))
    } else {
        Ok(())
    }
}

fn pattern(key: &str, p: &str) -> Result<(), ConfigError> {
    Pattern::new(p)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("{p:?}"), format!("a topic pattern ({e})")))
}
