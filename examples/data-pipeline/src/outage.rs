//! Outage injection: a run naming a domain in `outage` finds that domain's upstream
//! unavailable. The processor fails the first delivery of every request message with a
//! retryable `UpstreamUnavailable`; each retry is a new message and fails too, so the error
//! handler gives up and dead-letters the last request. The same message delivered again (the
//! dead letter's replay, once the "outage" is over) succeeds: a failure a replay fixes,
//! deterministically.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use switchyard::MessageId;

use crate::Job;
use crate::modules::ModuleError;

/// Message ids remembered (a replay of an older one fails again).
const REMEMBER: usize = 10_000;

/// The request messages the processors have seen fail in an outage; shared by them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outages(Arc<Mutex<(HashSet<MessageId>, VecDeque<MessageId>)>>);

impl Outages {
    /// The failure of `domain`'s processor on request message `id` carrying `job`: none
    /// unless the job's run has an outage in `domain` and `id` comes for the first time.
    pub(crate) fn failure(&self, domain: &str, job: &Job, id: &MessageId) -> Option<ModuleError> {
        if job.outage.as_deref() != Some(domain) {
            return None;
        }
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.0.insert(id.clone()) {
            return None;
        }
        seen.1.push_back(id.clone());
        if seen.1.len() > REMEMBER
            && let Some(old) = seen.1.pop_front()
        {
            seen.0.remove(&old);
        }
        Some(ModuleError {
            kind: "UpstreamUnavailable".into(),
            message: format!(
                "{domain}: the upstream service is unavailable (simulated outage in run {}, \
                 attempt {}); replay the dead letter to run the step again",
                job.run_id, job.attempt
            ),
            retryable: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(outage: Option<&str>) -> Job {
        Job {
            outage: outage.map(Into::into),
            ..Job::new("r", "d.csv")
        }
    }

    #[test]
    fn a_message_fails_once_in_the_domain_of_the_outage_only() {
        let o = Outages::default();
        let (a, b) = (MessageId::new(), MessageId::new());
        assert!(o.failure("report", &job(None), &a).is_none());
        assert!(o.failure("insight", &job(Some("report")), &a).is_none());
        let e = o.failure("report", &job(Some("report")), &a).unwrap();
        assert_eq!(e.kind, "UpstreamUnavailable");
        assert!(e.retryable);
        assert!(
            o.failure("report", &job(Some("report")), &b).is_some(),
            "a retry is a new message"
        );
        assert!(
            o.failure("report", &job(Some("report")), &a).is_none(),
            "the same message again"
        );
    }
}
