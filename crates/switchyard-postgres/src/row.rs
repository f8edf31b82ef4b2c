//! How an envelope is split into outbox columns and put back together.

use bytes::Bytes;
use switchyard::{Envelope, Headers};

use crate::Error;

/// The columns of one envelope: headers and payload apart, everything else as JSON.
pub(crate) struct Columns {
    pub headers: String,
    pub meta: String,
}

pub(crate) fn split(env: &Envelope) -> Result<Columns, Error> {
    let headers = serde_json::to_string(&env.headers())?;
    let mut rest = env.clone();
    rest.set_headers(Headers::new());
    rest.payload = Bytes::new();
    rest.delivery = Default::default();
    Ok(Columns {
        headers,
        meta: serde_json::to_string(&rest)?,
    })
}

pub(crate) fn join(meta: &str, headers: &str, payload: Vec<u8>) -> Result<Envelope, Error> {
    let mut env: Envelope = serde_json::from_str(meta)?;
    env.set_headers(serde_json::from_str(headers)?);
    env.payload = Bytes::from(payload);
    Ok(env)
}

#[cfg(test)]
mod tests {
    use switchyard::{Kind, Priority, Topic};

    use super::*;

    #[test]
    fn split_then_join_keeps_the_envelope() -> Result<(), Box<dyn std::error::Error>> {
        let parent = Envelope::new(Topic::new("a.b")?, "p");
        let env = Envelope::new(Topic::new("a.c")?, vec![0u8, 200, 255])
            .caused_by(&parent)
            .with_header("k", "v")
            .with_source("s")
            .with_priority(Priority::HIGH)
            .with_kind(Kind::Command);
        let c = split(&env)?;
        assert!(!c.meta.contains("\"k\""), "headers kept apart: {}", c.meta);
        let back = join(&c.meta, &c.headers, env.payload.to_vec())?;
        assert_eq!(back, env);
        Ok(())
    }
}
