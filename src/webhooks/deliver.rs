//! One endpoint's delivery loop: attach its consumer, POST each matching event from the
//! consumer's position on, one at a time and in order, acknowledge it on a 2xx, and try the same
//! event again (after a backoff) on anything else.
//!
//! The consumer's position is the only state: it moves only after a 2xx, one event at a time,
//! so a crash, a restart or `kill -9` at any moment resumes with the first event the receiver
//! has not acknowledged. What was sent and not yet acknowledged (at most the one event in
//! flight) may arrive twice; nothing is skipped, and nothing later is sent before it.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::watch;

use super::{
    State,
    client::{Client, Failure},
    config::Endpoint,
    lease::{Leases, RENEW_EVERY},
    sign,
};
use crate::{
    consumers::{Attached, ConsumerError, Consumers},
    log::{EventLog, LogError, LoggedEvent},
    metrics::{EndpointMetrics, WebhookState},
};

/// How long one request may take by default, connecting included: receivers are asked to
/// answer at once and do the work later; ten seconds covers a cold serverless function, and a
/// receiver slower than that holds its endpoint's every later event up anyway.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout_secs` an endpoint may set.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// The first wait after a failed try by default: a receiver restarting is back within seconds.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between tries by default: doubling from one second reaches it after nine
/// failures (about ten minutes of trying), and a receiver down for hours is then tried every
/// five minutes, which costs nothing and finds it back within five minutes of its return.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The longest `backoff_min_secs` or `backoff_max_secs` an endpoint may set.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Matching events read from the log at a time: delivery is one at a time anyway, and this only
/// saves reading the log again for each.
const READ_BATCH: usize = 64;
/// Events scanned for matches per read, as a subscription scans.
const READ_SCAN: usize = 4_096;

/// The wait before the try after the `failures`-th failed one: `min` doubled for each failure
/// after the first, plus a random half of that at most (jitter, so that endpoints failing
/// together do not come back together), never more than `max`. Always within `min..=max`.
pub fn backoff(failures: u32, min: Duration, max: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exponent).min(max);
    // uuid's v4 generator (the OS's randomness) is already here; one draw a failure is nothing.
    let random = uuid::Uuid::new_v4().as_u64_pair().0;
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(1.0 + fraction / 2.0).min(max)
}

/// One endpoint's deliverer. Owned by its task.
pub struct Deliverer {
    /// The endpoint, as configured.
    pub endpoint: Endpoint,
    /// The log events are read from.
    pub log: Arc<EventLog>,
    /// Where the endpoint's consumer is kept.
    pub consumers: Arc<Consumers>,
    /// Where its state is shown in `/metrics`.
    pub metrics: EndpointMetrics,
    /// Its state as the consumers RPC shows it; written here only.
    pub state: Arc<State>,
    /// Its kept connection.
    pub client: Client,
    /// On a cluster: the leases, of which this deliverer must hold its endpoint's to deliver.
    pub leases: Option<Leases>,
    /// Turns true when the server stops ([`super::Webhooks::stop`]): the deliverer ends, and
    /// gives its lease back so that another node takes over at once.
    pub stopping: watch::Receiver<bool>,
}

impl Deliverer {
    /// Delivers until the server stops: each time the consumer is given up (deleted, behind
    /// retention, another log), says why and attaches it again after the longest backoff. On a
    /// cluster, delivers only while this node holds the endpoint's lease, and tries to take it
    /// every [`RENEW_EVERY`] while another node does.
    pub async fn run(mut self) {
        let mut stopping = self.stopping.clone();
        // Until the server stops, or the handle that would say so is gone.
        while !*stopping.borrow() && stopping.has_changed().is_ok() {
            let Some(leases) = self.leases.clone() else {
                tokio::select! {
                    stopped = self.attach_and_deliver() => self.stopped(stopped).await,
                    _ = until_stopping(&mut stopping) => return,
                }
                continue;
            };
            let name = self.endpoint.name.clone();
            let held = match leases.take(&name).await {
                Ok(Some(held)) => held,
                Ok(None) => {
                    if self.state.view().state != WebhookState::Standby {
                        tracing::info!(endpoint = %name, "webhook: another node delivers the endpoint; this one stands by");
                    }
                    self.show(WebhookState::Standby, None);
                    let _ = tokio::time::timeout(RENEW_EVERY, until_stopping(&mut stopping)).await;
                    continue;
                }
                Err(error) => {
                    self.show(WebhookState::Stopped, None);
                    self.state.failed(format!("lease: {error}"));
                    tracing::warn!(endpoint = %name, %error, "webhook: cannot reach the leases bucket");
                    let _ = tokio::time::timeout(RENEW_EVERY, until_stopping(&mut stopping)).await;
                    continue;
                }
            };
            tracing::info!(endpoint = %name, "webhook: this node delivers the endpoint (it holds the lease)");
            let outcome = tokio::select! {
                stopped = self.attach_and_deliver() => Err(stopped),
                lost = leases.keep(&name, held, &mut stopping) => Ok(lost),
            };
            match outcome {
                Err(stopped) => self.stopped(stopped).await,
                Ok(lost) => {
                    self.show(WebhookState::Stopped, None);
                    tracing::warn!(endpoint = %name, reason = %lost, "webhook: this node stopped delivering the endpoint");
                }
            }
        }
    }

    /// Attaches the endpoint's consumer and delivers from it; returns why it stopped.
    async fn attach_and_deliver(&mut self) -> ConsumerError {
        // Until attached: a Subscribe stream reading the consumer holds it meanwhile.
        self.show(WebhookState::Stopped, None);
        match self.consumers.attach(&self.log, &self.endpoint.name).await {
            Ok(attached) => self.deliver_from(attached).await,
            Err(error) => error,
        }
    }

    /// Shows that the consumer could not be read, and waits the longest backoff.
    async fn stopped(&mut self, stopped: ConsumerError) {
        self.metrics.failed("consumer", None);
        self.show(WebhookState::Stopped, None);
        self.state.failed(format!("consumer: {stopped}"));
        tracing::error!(
            endpoint = %self.endpoint.name,
            error = %stopped,
            "webhook: cannot read the endpoint's consumer; trying again later"
        );
        tokio::time::sleep(self.endpoint.backoff_max).await;
    }

    /// Delivers the consumer's events from its position on, waiting at the head for more;
    /// returns only when the consumer can no longer be read or acknowledged.
    async fn deliver_from(&mut self, attached: Attached) -> ConsumerError {
        let mut head = self.log.watch_head();
        let mut next = attached.from;
        self.metrics.acknowledged(next - 1);
        loop {
            // On a cluster node the replica may be behind where the consumer stands.
            let visible = head.wait_for(|head| *head + 1 >= next).await.is_ok();
            if !visible {
                return ConsumerError::Storage("the log closed".to_owned());
            }
            let batch = match self
                .log
                .read_from(next, &attached.filter, READ_BATCH, READ_SCAN)
            {
                Ok(batch) => batch,
                Err(error) => return error.into(),
            };
            if batch.events.is_empty() {
                next = batch.end.next;
                if next > batch.end.head {
                    self.show(WebhookState::Idle, None);
                    let moved = head.wait_for(|head| *head >= next).await.is_ok();
                    if !moved {
                        return ConsumerError::Storage("the log closed".to_owned());
                    }
                }
                continue;
            }
            for event in &batch.events {
                if let Err(error) = self.deliver(event).await {
                    return error;
                }
            }
            next = batch.end.next;
        }
    }

    /// Sends `event` until the receiver answers 2xx, then acknowledges it on the consumer.
    async fn deliver(&mut self, event: &LoggedEvent) -> Result<(), ConsumerError> {
        let update = event.event();
        let body = Bytes::from(update.to_json());
        let sequence = event.sequence.to_string();
        let mut failures = 0u32;
        let mut since = None;
        loop {
            let state = if failures == 0 {
                WebhookState::Delivering
            } else {
                WebhookState::Retrying
            };
            self.show(state, since);
            let timestamp = unix_seconds(SystemTime::now());
            let signature =
                sign::signature(&self.endpoint.secret, &update.event_id, timestamp, &body);
            let headers = [
                ("webhook-id", update.event_id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
                ("storywire-sequence", sequence.clone()),
                ("storywire-log-id", self.log.log_id().to_owned()),
            ];
            match self
                .client
                .post(&headers, body.clone(), self.endpoint.timeout)
                .await
            {
                Ok(_) => break,
                Err(failure) => {
                    failures += 1;
                    since.get_or_insert(timestamp);
                    let status = match failure {
                        Failure::Status(status) => Some(status),
                        _ => None,
                    };
                    self.metrics.failed(failure.kind(), status);
                    let wait = backoff(
                        failures,
                        self.endpoint.backoff_min,
                        self.endpoint.backoff_max,
                    );
                    tracing::warn!(
                        endpoint = %self.endpoint.name,
                        sequence = event.sequence,
                        tries = failures,
                        error = %failure,
                        retry_in_secs = wait.as_secs_f64(),
                        "webhook: delivery failed; the same event is tried again"
                    );
                    self.state.failed(failure.to_string());
                    self.show(WebhookState::Retrying, since);
                    tokio::time::sleep(wait).await;
                }
            }
        }
        self.acknowledge(event.sequence).await?;
        self.metrics.delivered(event.sequence);
        Ok(())
    }

    /// Moves the consumer to `sequence`; a position that cannot be kept (the disk, the cluster's
    /// bucket) is tried again, since going on would deliver events past an unkept position.
    async fn acknowledge(&mut self, sequence: u64) -> Result<(), ConsumerError> {
        let mut failures = 0;
        loop {
            match self
                .consumers
                .ack(&self.log, &self.endpoint.name, sequence)
                .await
            {
                Ok(_) => return Ok(()),
                Err(ConsumerError::Storage(error)) => {
                    failures += 1;
                    self.metrics.failed("consumer", None);
                    self.state
                        .failed(format!("acknowledging {sequence}: {error}"));
                    tracing::error!(
                        endpoint = %self.endpoint.name,
                        sequence,
                        %error,
                        "webhook: cannot keep the endpoint's position; trying again"
                    );
                    let wait = backoff(
                        failures,
                        self.endpoint.backoff_min,
                        self.endpoint.backoff_max,
                    );
                    tokio::time::sleep(wait).await;
                }
                // Beyond the head cannot be: the event was read from the log.
                Err(ConsumerError::Log(LogError::BeyondHead { .. })) => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    }

    /// Shows `state` in the metrics and to the consumers RPC.
    fn show(&self, state: WebhookState, retrying_since: Option<u64>) {
        self.metrics.set_state(state, retrying_since);
        self.state.set(state, retrying_since);
    }
}

/// Returns once `stopping` is true (or its sender is gone).
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

/// Seconds since the Unix epoch.
fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_up_to_half_again_as_jitter_and_stays_within_its_bounds() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            let first = backoff(1, min, max);
            assert!(first >= min && first <= min * 3 / 2, "{first:?}");
            let fourth = backoff(4, min, max);
            assert!(fourth >= min * 8 && fourth <= min * 12, "{fourth:?}");
            assert_eq!(backoff(1_000, min, max), max);
        }
    }
}
