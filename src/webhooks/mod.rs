//! Webhooks (`serve --webhooks FILE`): every event matching an endpoint's filter POSTed to its
//! URL, in sequence order, one event a request, signed as the Standard Webhooks specification
//! says, at least once.
//!
//! Each endpoint is a named consumer ([`crate::consumers`]) of the same name, read by one task
//! inside the server exactly as a Subscribe with `consumer` reads it: attach (one reader at a
//! time), read the log from the consumer's position with its filter, acknowledge. A 2xx answer
//! acknowledges the event; anything else is tried again after a backoff, never skipping to a
//! later one (`deliver`). The position therefore lives where the consumers live: in memory, in
//! the data directory (surviving `kill -9`), or in the cluster's bucket.
//!
//! - `config`: the file, checked at start, and the [`Secret`] that never shows.
//! - `sign`: the `webhook-signature` header.
//! - `client`: one kept HTTP/1.1 connection per endpoint, plain or TLS.
//! - `deliver`: the loop, its timeout and its backoff bounds.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use crate::{consumers::Consumers, log::EventLog, metrics::WebhookState, pb};

mod client;
mod config;
mod deliver;
mod lease;
mod sign;

pub use config::{ConfigError, Endpoint, MAX_ENDPOINTS, SECRET_PREFIX, Secret, load, parse};
pub use deliver::{
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN, DEFAULT_REQUEST_TIMEOUT, MAX_BACKOFF, MAX_TIMEOUT,
};
pub use lease::{HOLD_FOR, LEASE_TTL, Leases, RENEW_EVERY};

/// Where one endpoint's delivery stands, as its task last said.
#[derive(Debug)]
pub struct State(Mutex<StateView>);

/// One endpoint's state at a moment.
#[derive(Debug, Clone)]
pub struct StateView {
    /// Where delivery stands.
    pub state: WebhookState,
    /// Unix seconds of the first failed try of the event being retried.
    pub retrying_since: Option<u64>,
    /// What the last failed try met (never a secret: an HTTP status, a connection error).
    pub last_error: Option<String>,
}

impl State {
    fn new() -> Self {
        Self(Mutex::new(StateView {
            state: WebhookState::Stopped,
            retrying_since: None,
            last_error: None,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateView> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state now.
    pub fn view(&self) -> StateView {
        self.lock().clone()
    }

    fn set(&self, state: WebhookState, retrying_since: Option<u64>) {
        let mut view = self.lock();
        view.state = state;
        view.retrying_since = retrying_since;
    }

    fn failed(&self, error: String) {
        self.lock().last_error = Some(error);
    }
}

/// How long stopping waits for the deliverers to give their leases back: one request to
/// JetStream each, which answers in milliseconds; a lease not given back expires by itself.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Every endpoint's state, by name, for the consumers RPC (`Consumer.webhook`).
#[derive(Debug, Default)]
pub struct WebhookStates(Vec<(String, Arc<State>)>);

impl WebhookStates {
    /// Endpoint `name`'s state, if it is one.
    pub fn state(&self, name: &str) -> Option<StateView> {
        self.0
            .iter()
            .find(|(each, _)| each == name)
            .map(|(_, state)| state.view())
    }

    /// `consumer` with its endpoint's state, when it is an endpoint's consumer.
    pub fn fill(&self, consumer: &mut pb::Consumer) {
        let Some(view) = self.state(&consumer.name) else {
            return;
        };
        let state = match view.state {
            WebhookState::Idle => pb::WebhookState::Idle,
            WebhookState::Delivering => pb::WebhookState::Delivering,
            WebhookState::Retrying => pb::WebhookState::Retrying,
            WebhookState::Stopped => pb::WebhookState::Stopped,
            WebhookState::Standby => pb::WebhookState::Standby,
        };
        consumer.webhook = Some(pb::WebhookStatus {
            state: state.into(),
            retrying_since: view.retrying_since.map(|seconds| pbjson_types::Timestamp {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            last_error: view.last_error.unwrap_or_default(),
        });
    }
}

/// The running deliverers, one task per endpoint; dropping this stops them (an event in flight
/// is sent again by the next start, which is what at least once allows).
#[derive(Debug)]
pub struct Webhooks {
    /// Each endpoint's state.
    states: Arc<WebhookStates>,
    /// The deliverers' tasks.
    tasks: Vec<JoinHandle<()>>,
    /// Tells every deliverer that the server stops.
    stopping: watch::Sender<bool>,
}

impl Webhooks {
    /// Creates each endpoint's consumer where `consumers` keeps them (from the head, when it is
    /// new: an endpoint receives what is published after it was configured) and starts its
    /// deliverer. Fails, naming the endpoint, when its name is a consumer with another filter.
    /// On a cluster, `leases` decides which node delivers each endpoint ([`Leases`]).
    pub async fn start(
        endpoints: Vec<Endpoint>,
        log: Arc<EventLog>,
        consumers: Arc<Consumers>,
        leases: Option<Leases>,
    ) -> Result<Self, String> {
        let names: Vec<String> = endpoints.iter().map(|e| e.name.clone()).collect();
        let metrics = log.metrics().webhooks(&names).clone();
        let mut states = Vec::new();
        let mut tasks = Vec::new();
        let (stopping, stopping_rx) = watch::channel(false);
        for endpoint in endpoints {
            let request = pb::CreateConsumerRequest {
                name: endpoint.name.clone(),
                story_ids: endpoint.story_ids.clone(),
                tags: endpoint.tags.clone(),
                from_sequence: None,
            };
            let (consumer, created) = consumers.create(&log, request).await.map_err(|e| {
                format!(
                    "--webhooks: endpoint {:?}: its consumer: {e}",
                    endpoint.name
                )
            })?;
            tracing::info!(
                endpoint = %endpoint.name,
                origin = %endpoint.url.origin().ascii_serialization(),
                from = consumer.acknowledged_sequence + 1,
                created,
                "webhook: delivering"
            );
            let state = Arc::new(State::new());
            let deliverer = deliver::Deliverer {
                metrics: metrics
                    .endpoint(&endpoint.name)
                    .expect("every endpoint has its metrics"),
                client: client::Client::new(endpoint.url.clone()),
                state: state.clone(),
                log: log.clone(),
                consumers: consumers.clone(),
                leases: leases.clone(),
                stopping: stopping_rx.clone(),
                endpoint,
            };
            states.push((deliverer.endpoint.name.clone(), state));
            tasks.push(tokio::spawn(deliverer.run()));
        }
        Ok(Self {
            states: Arc::new(WebhookStates(states)),
            tasks,
            stopping,
        })
    }

    /// Stops every deliverer (an event in flight is sent again by the next holder or start) and
    /// waits, at most [`STOP_GRACE`], for those holding a lease to give it back.
    pub async fn stop(mut self) {
        self.stopping.send_replace(true);
        let tasks = std::mem::take(&mut self.tasks);
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
            tracing::warn!(
                "webhooks: not every lease was given back in time; they expire by themselves"
            );
        }
    }

    /// Every endpoint's state, for the consumers RPC.
    pub fn states(&self) -> Arc<WebhookStates> {
        self.states.clone()
    }
}

impl Drop for Webhooks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
