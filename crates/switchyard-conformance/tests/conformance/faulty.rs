//! The bus suite through a transport that drops, delays and duplicates deliveries and loses
//! acks (`FaultyTransport`), over the memory transport and the embedded log: one module per
//! kind of fault, each declaring what the bus still promises under it (see
//! `faulty_bus_suite_tests!` for what each fault means for the outcome). Tests that need a
//! promise a fault breaks skip, saying so.

/// Over the memory transport (not durable: what it holds is gone with it).
mod memory {
    use super::super::memory::Memory;

    switchyard_conformance::faulty_bus_suite_tests!(Memory);
}

/// Over the embedded log (durable: what the bus left is read by the next bus on it).
mod log {
    use super::super::log::Log;

    switchyard_conformance::faulty_bus_suite_tests!(Log::new());
}
