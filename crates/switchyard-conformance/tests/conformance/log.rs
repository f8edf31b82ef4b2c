//! The suite on the embedded log (`switchyard-log`): restart is close-and-reopen.

use std::time::Instant;

use switchyard_conformance::{Harness, Setup, SuiteCapabilities};
use switchyard_core::{BoxError, BoxFuture, Publisher, Subscriber};
use switchyard_log::{LogConfig, LogTransport};
use tempfile::TempDir;

pub struct Log {
    root: TempDir,
}

impl Log {
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, setup: &Setup) -> LogConfig {
        LogConfig::new(self.root.path().join(&setup.namespace))
            .with_ack_wait(setup.ack_wait)
            .with_max_deliver(setup.max_deliver)
            .with_dead_letters(setup.dead_letters.clone())
    }
}

impl Harness for Log {
    type Transport = LogTransport;

    fn name(&self) -> &str {
        "log"
    }

    fn capabilities(&self) -> SuiteCapabilities {
        let probe = tempfile::tempdir().unwrap();
        let core = LogTransport::open(LogConfig::new(probe.path()))
            .unwrap()
            .capabilities();
        SuiteCapabilities {
            core,
            redelivery: true,
            dead_letters: true,
            restart: true,
            request_reply: false,
            // The log keeps delivery counts in memory: a reopened log counts from 1 again.
            durable_delivery_counts: false,
            // One process: commands on the log stay in the process that sends them.
            cross_process: false,
        }
    }

    fn open<'a>(&'a self, setup: &'a Setup) -> BoxFuture<'a, Result<LogTransport, BoxError>> {
        let config = self.config(setup);
        Box::pin(async move { Ok(LogTransport::open(config)?) })
    }

    fn restart<'a>(
        &'a self,
        setup: &'a Setup,
        transport: LogTransport,
    ) -> BoxFuture<'a, Result<LogTransport, BoxError>> {
        let config = self.config(setup);
        Box::pin(async move {
            transport
                .close(Instant::now() + std::time::Duration::from_secs(10))
                .await?;
            drop(transport);
            Ok(LogTransport::open(config)?)
        })
    }
}

switchyard_conformance::conformance_tests!(Log::new());
