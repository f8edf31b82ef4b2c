//! # switchyard-contracts
//!
//! Message contracts for switchyard: every [`Message`](switchyard_core::Message) that also
//! derives [`schemars::JsonSchema`] is a [`Contract`] and describes itself as JSON Schema with
//! its name and version; a [`Registry`] collects message types with their topics, kinds,
//! versions, schemas, producers and consumers; [`Upcasters`] bring old versions of a message
//! up to the one a handler decodes; [`check_compatibility`] tells whether two schema versions
//! are backward / forward / fully compatible; [`asyncapi`] exports the registry as an
//! AsyncAPI 3.0 document; [`python`] writes the registered messages as Python dataclasses;
//! [`Encryption`] keeps payloads encrypted on the transport.
#![forbid(unsafe_code)]

pub mod asyncapi;
mod compat;
mod contract;
mod encrypt;
pub mod python;
mod registry;
mod upcast;
mod validate;

pub use compat::{Compatibility, Issue, IssueKind, Mode, ParseModeError, check_compatibility};
pub use contract::Contract;
pub use encrypt::{
    CONTENT_TYPE_HEADER, Encryption, EncryptionError, KEY_BYTES, KEY_HEADER, Keyring,
    SEALED_CONTENT_TYPE,
};
pub use registry::{MessageType, Registry, RegistryError};
/// Re-exported so `#[derive(JsonSchema)]` needs no extra dependency: outside this crate add
/// `#[schemars(crate = "switchyard_contracts::schemars")]` next to the derive (as
/// `examples/data-pipeline` does).
pub use schemars::{self, JsonSchema};
pub use upcast::{UpcastError, Upcasters};
pub use validate::{
    Enforcement, MAX_DESCRIBED_ISSUES, ParseEnforcementError, ValidationIssue, Validator,
    ValidatorError, Verdict,
};

/// The guide (docs/contracts.md), compiled as doc tests so it cannot rot.
#[doc = include_str!("../../../docs/contracts.md")]
#[cfg(doctest)]
pub struct Guide;
