//! The intake check: a test every envelope the bus takes in from its transport passes before
//! it is queued for a handler (see [`BusBuilder::intake_check`](crate::BusBuilder::intake_check)).
//!
//! The bus knows nothing of schemas; `switchyard-contracts`' `Validator::intake_check` is the
//! check that validates foreign messages against the registered JSON Schemas.

use std::sync::Arc;

use switchyard_core::Envelope;

/// What the [intake check](crate::BusBuilder::intake_check) says about one envelope that
/// arrived over the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntakeVerdict {
    /// Deliver it.
    Accept,
    /// Deliver it, and log the text as a warning (counted in the subscription's
    /// `intake_warned`).
    Warn(String),
    /// Never deliver it: it goes to the dead-letter sink with reason `Rejected` and the text as
    /// its error, the transport delivery is settled (terminated, so it is not redelivered), and
    /// it is counted in the subscription's `intake_rejected` and `dead_lettered`.
    Reject(String),
}

/// The check as the bus keeps it.
pub(crate) type IntakeCheck = Arc<dyn Fn(&Envelope) -> IntakeVerdict + Send + Sync>;
