//! switchyard-contracts: schema derivation, the registry, upcasters on messages from an
//! older build's log, compatibility verdicts, the AsyncAPI export.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail by panicking

mod asyncapi;
mod compat;
mod encrypt;
mod python;
mod review_rev29;
mod review_rev39;
mod review_rev6;
mod schema;
mod upcast;
mod validate;
