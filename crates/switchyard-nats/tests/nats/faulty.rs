//! The bus suite through `FaultyTransport` over NATS (drops, delays, copies, lost acks), one
//! module per kind of fault, each declaring what the bus still promises under it (see
//! `switchyard_conformance::faulty_bus_suite_tests!`). On the shared server; skips loudly
//! when it is unreachable and CI is not set.

use crate::harness::NatsHarness;

switchyard_conformance::faulty_bus_suite_tests!(NatsHarness::shared());
