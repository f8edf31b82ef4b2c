//! The conformance suite on NATS: the shared server for everything, an owned server (that
//! the test restarts) for the restart test.

use crate::harness::NatsHarness;

switchyard_conformance::conformance_tests!(NatsHarness::shared(), restart = NatsHarness::owned());
