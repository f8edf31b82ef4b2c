//! ZeroMQ PULL ingest (feature `zmq`): each `[[ingest.zmq]]` endpoint is a
//! `switchyard_pipeline::zmq::ZmqSource` feeding a one-stage pipeline that publishes every
//! message to its topic. A message over the size limit is dead-lettered (reason
//! `DecodeFailed`, raw bytes kept) and counted by the pipeline's monitor under error type
//! `too_large`; a publish the bus refuses fails the run, which the runner dead-letters.

use bytes::Bytes;
use switchyard::{Envelope, Topic};
use switchyard_pipeline::zmq::ZmqSource;
use switchyard_pipeline::{
    Monitor, Pipeline, Runner, RunningPipeline, StageError, StageErrorKind, stage_fn,
};

use crate::config::ZmqIngestConfig;
use crate::error::NodeError;
use crate::state::AppState;

/// One running ingest endpoint.
pub(crate) struct Ingest {
    endpoint: String,
    running: RunningPipeline<Bytes>,
}

impl Ingest {
    /// Stops receiving and drains what was received.
    pub(crate) async fn stop(self) {
        let report = self.running.shutdown().await;
        tracing::info!(endpoint = %self.endpoint, accepted = report.monitor.accepted, "ingest stopped");
    }
}

/// Starts every configured endpoint; on an error the ones already started are stopped.
pub(crate) async fn start_all(state: &AppState) -> Result<Vec<Ingest>, NodeError> {
    let mut started = Vec::new();
    for c in &state.config.ingest.zmq {
        match start(state, c).await {
            Ok(i) => started.push(i),
            Err(e) => {
                for i in started {
                    i.stop().await;
                }
                return Err(e);
            }
        }
    }
    Ok(started)
}

async fn start(state: &AppState, c: &ZmqIngestConfig) -> Result<Ingest, NodeError> {
    let err = |message: String| NodeError::Ingest {
        endpoint: c.endpoint.clone(),
        message,
    };
    let topic = Topic::new(&c.topic).map_err(|e| err(e.to_string()))?;
    let limit = c
        .max_message_bytes
        .unwrap_or(state.config.limits.max_message_bytes);
    let name = format!("zmq-ingest:{}", c.topic);
    let bus = state.bus.clone();
    let content_type = c.content_type.clone();
    let publish_topic = topic.clone();
    let validator = state.validator.clone();
    let publish = stage_fn("publish", move |payload: Bytes| {
        let bus = bus.clone();
        let mut env = Envelope::new(publish_topic.clone(), payload);
        env.set_content_type(content_type.as_str());
        // Schema validation (`Node::set_validation`), as on the gateway: an enforced invalid
        // message fails the stage, so the runner dead-letters it with the errors.
        let verdict = validator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|v| v.check_summary(&env));
        async move {
            if let Some(verdict) = verdict
                && let Some(text) = verdict.describe()
            {
                if !verdict.deliver() {
                    return Err(StageError::new(
                        StageErrorKind::Invalid,
                        format!("zeromq ingest: {text}"),
                    ));
                }
                tracing::warn!(topic = %env.topic, "ingested although {text}");
            }
            bus.publish_envelope(env)
                .await
                .map_err(|e| StageError::new(StageErrorKind::Invalid, e.to_string()))
        }
    });
    let monitor = Monitor::new();
    let mut running = Runner::new(Pipeline::new(publish))
        .monitor(monitor.clone())
        .dead_letters(crate::node::dlq_sink(&state.dlq, &state.live))
        .start()
        .await
        .map_err(|e| err(e.to_string()))?;
    // Over the limit, a message is discarded as it arrives and dead-lettered by reference
    // (size, peer, first 256 bytes): a huge frame never sits in memory whole.
    let builder = ZmqSource::pull()
        .name(name.clone())
        .topic(topic)
        .max_message_bytes(limit);
    let source = if c.bind {
        builder.bind(&c.endpoint).await
    } else {
        builder.connect(&c.endpoint).await
    };
    let source = match source {
        Ok(s) => s,
        Err(e) => {
            running.shutdown().await;
            return Err(err(e.to_string()));
        }
    };
    tracing::info!(endpoint = source.endpoint(), topic = %c.topic, limit, "ZeroMQ ingest listening");
    running.spawn_source(source);
    state.metrics.add_monitor(name, monitor);
    Ok(Ingest {
        endpoint: c.endpoint.clone(),
        running,
    })
}
