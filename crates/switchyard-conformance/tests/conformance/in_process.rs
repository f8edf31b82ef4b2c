//! The bus-semantics suite on `Bus::new()`'s own in-process bus (no transport).

switchyard_conformance::bus_suite_tests!(switchyard_conformance::bus_suite::InProcess);
