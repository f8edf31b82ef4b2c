//! The envelope's serialized form is a contract (the log's records, NATS, the node's JSON):
//! these fixtures were written by the envelope before its rare fields moved behind a box, and
//! must keep coming out byte for byte, and reading back into the same envelope.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, UNIX_EPOCH};

use switchyard_core::{Envelope, Kind, MessageId, Priority, Topic};

const FULL: &str = r#"{"id":"01J8T5CY4TQKFF04HMASW9NF6Y","topic":"orders.placed","kind":"command","correlation_id":"corr-42","causation_id":"00000000000000000000000007","source":"billing","target":"shipping-service","priority":192,"timestamp":{"secs_since_epoch":1790000000,"nanos_since_epoch":123456789},"headers":{"tenant":"acme","x-trace":"00-abc-01"},"content_type":"application/msgpack","type_name":"Placed","type_version":3,"payload":[123,34,110,34,58,55,125],"delivery":{"attempt":2,"first_delivered_at":{"secs_since_epoch":1790000001,"nanos_since_epoch":5}}}"#;

const MINIMAL: &str = r#"{"id":"00000000000000000000000001","topic":"a.b","kind":"event","correlation_id":"00000000000000000000000001","causation_id":null,"source":null,"target":null,"priority":128,"timestamp":{"secs_since_epoch":1790000000,"nanos_since_epoch":0},"headers":{},"content_type":"application/json","type_name":null,"type_version":1,"payload":[120],"delivery":{"attempt":0,"first_delivered_at":null}}"#;

/// Every field set, the rare ones included.
fn full() -> Envelope {
    let mut env = Envelope::new(Topic::new("orders.placed").unwrap(), &b"{\"n\":7}"[..])
        .with_kind(Kind::Command)
        .with_priority(Priority::HIGH)
        .with_source("billing")
        .with_target("shipping-service")
        .with_header("tenant", "acme")
        .with_header("x-trace", "00-abc-01")
        .with_content_type("application/msgpack");
    env.id = MessageId::from_u128(0x0192_3456_789a_bcde_f012_3456_789a_bcde);
    env.correlation_id = "corr-42".parse().unwrap();
    env.set_causation_id(Some(MessageId::from_u128(7)));
    env.timestamp = UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
    env.type_name = Some("Placed".into());
    env.type_version = 3;
    env.delivery.attempt = 2;
    env.delivery.first_delivered_at = Some(UNIX_EPOCH + Duration::new(1_790_000_001, 5));
    env
}

/// Nothing but the defaults.
fn minimal() -> Envelope {
    let mut env = Envelope::new(Topic::new("a.b").unwrap(), &b"x"[..]);
    env.id = MessageId::from_u128(1);
    env.correlation_id = env.id.clone();
    env.timestamp = UNIX_EPOCH + Duration::new(1_790_000_000, 0);
    env
}

#[test]
fn json_is_byte_for_byte_the_earlier_format() {
    assert_eq!(serde_json::to_string(&full()).unwrap(), FULL);
    assert_eq!(serde_json::to_string(&minimal()).unwrap(), MINIMAL);
}

#[test]
fn the_earlier_format_reads_back_into_the_same_envelope() {
    let back: Envelope = serde_json::from_str(FULL).unwrap();
    assert_eq!(back, full());
    assert_eq!(back.source(), Some("billing"));
    assert_eq!(back.target(), Some("shipping-service"));
    assert_eq!(back.causation_id(), Some(&MessageId::from_u128(7)));
    assert_eq!(back.header("x-trace"), Some("00-abc-01"));
    assert_eq!(back.content_type(), "application/msgpack");
    let back: Envelope = serde_json::from_str(MINIMAL).unwrap();
    assert_eq!(back, minimal());
    assert_eq!(back.content_type(), "application/json");
    assert!(back.headers().is_empty());
}

#[test]
fn rare_fields_at_their_defaults_equal_absent_ones() {
    let plain = minimal();
    let mut touched = plain.clone();
    touched.set_source(Some("s".into()));
    assert_ne!(touched, plain);
    touched.set_source(None);
    touched.headers_mut().insert("k", "v");
    touched.headers_mut().remove("k");
    touched.set_content_type("text/plain");
    touched.set_content_type("application/json");
    assert_eq!(touched, plain);
    assert_eq!(
        serde_json::to_string(&touched).unwrap(),
        serde_json::to_string(&plain).unwrap()
    );
}
