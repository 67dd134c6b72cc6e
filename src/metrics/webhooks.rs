//! What each webhook endpoint records (`serve --webhooks`): where its delivery stands, since when
//! it has been retrying, what failed last, and how far it has got. One series set per endpoint,
//! labelled with its name; the endpoints are fixed at start, so the series are too. Nothing here
//! holds an endpoint's URL or secret.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

/// Where an endpoint's delivery stands: the `state` label of `storywire_webhook_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookState {
    /// Every matching event up to the head is delivered; waiting for the next.
    Idle,
    /// Sending an event that has not failed yet.
    Delivering,
    /// The next event failed at least once; trying it again after a backoff, never skipping it.
    Retrying,
    /// Not delivering: the consumer cannot be read (deleted, behind retention, another log), or
    /// a Subscribe stream holds it.
    Stopped,
    /// On a cluster: another node holds the endpoint's lease and delivers it.
    Standby,
}

impl WebhookState {
    /// Every state, in the order of their numbers.
    pub const ALL: [Self; 5] = [
        Self::Idle,
        Self::Delivering,
        Self::Retrying,
        Self::Stopped,
        Self::Standby,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        STATE_LABELS[self as usize]
    }
}

/// The states' labels, indexed like [`WebhookState::ALL`].
const STATE_LABELS: [&str; 5] = ["idle", "delivering", "retrying", "stopped", "standby"];

/// The kinds of failure, the `kind` label of `storywire_webhook_last_error`.
pub const ERROR_KINDS: [&str; 6] = ["status", "timeout", "connect", "tls", "io", "consumer"];

/// One endpoint's handles. Cloning shares them.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    /// The endpoint's name, its `endpoint` label.
    name: Arc<str>,
    /// 1 for the state it is in, 0 for the others; indexed like [`WebhookState::ALL`].
    state: Arc<[Gauge; WebhookState::ALL.len()]>,
    /// Unix seconds of the first failed try of the event being retried; 0 when not retrying.
    retrying_since: Gauge,
    /// 1 for the kind of the last failed try, 0 for the others; indexed like [`ERROR_KINDS`].
    last_error: Arc<[Gauge; ERROR_KINDS.len()]>,
    /// The HTTP status of the last failed try that got an answer; 0 before any.
    last_error_status: Gauge,
    /// The endpoint's consumer's acknowledged sequence.
    acknowledged: Gauge,
    /// Events the receiver acknowledged with a 2xx.
    delivered: Counter,
    /// Tries that failed (a non-2xx answer, a timeout, a refused or broken connection).
    failed: Counter,
}

impl EndpointMetrics {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            state: Arc::default(),
            retrying_since: Gauge::default(),
            last_error: Arc::default(),
            last_error_status: Gauge::default(),
            acknowledged: Gauge::default(),
            delivered: Counter::default(),
            failed: Counter::default(),
        }
    }

    /// The endpoint is now in `state`; `retrying_since` (unix seconds) when retrying.
    pub fn set_state(&self, state: WebhookState, retrying_since: Option<u64>) {
        for (gauge, each) in self.state.iter().zip(WebhookState::ALL) {
            gauge.set(i64::from(each == state));
        }
        self.retrying_since
            .set(retrying_since.map_or(0, super::gauge_value));
    }

    /// A try failed with a failure of `kind` (one of [`ERROR_KINDS`]), with `status` when the
    /// receiver answered.
    pub fn failed(&self, kind: &str, status: Option<u16>) {
        self.failed.inc();
        for (gauge, each) in self.last_error.iter().zip(ERROR_KINDS) {
            gauge.set(i64::from(each == kind));
        }
        if let Some(status) = status {
            self.last_error_status.set(i64::from(status));
        }
    }

    /// The receiver took the event at `sequence`, and the consumer's position moved there.
    pub fn delivered(&self, sequence: u64) {
        self.delivered.inc();
        self.acknowledged(sequence);
    }

    /// The endpoint's consumer stands at `sequence`.
    pub fn acknowledged(&self, sequence: u64) {
        self.acknowledged.set(super::gauge_value(sequence));
    }
}

/// Every endpoint's handles, in the order of the webhooks file.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    endpoints: Arc<[EndpointMetrics]>,
}

impl WebhookMetrics {
    /// Handles at zero for endpoints named `names`.
    pub fn new(names: &[String]) -> Self {
        Self {
            endpoints: names
                .iter()
                .map(|name| EndpointMetrics::new(name))
                .collect(),
        }
    }

    /// The handles of endpoint `name`, if it is one.
    pub fn endpoint(&self, name: &str) -> Option<EndpointMetrics> {
        self.endpoints
            .iter()
            .find(|endpoint| &*endpoint.name == name)
            .cloned()
    }

    /// One series of `pick`'s metric per endpoint, labelled with its name.
    fn per_endpoint<M>(&self, pick: fn(&EndpointMetrics) -> M) -> Owned<M> {
        Owned(
            self.endpoints
                .iter()
                .map(|e| (vec![("endpoint".to_owned(), e.name.to_string())], pick(e)))
                .collect(),
        )
    }

    /// Adds every series to `registry`.
    pub(super) fn register(&self, registry: &mut Registry) {
        let by = |label: &'static str,
                  values: &'static [&'static str],
                  pick: fn(&EndpointMetrics, usize) -> Gauge| {
            Owned(
                self.endpoints
                    .iter()
                    .flat_map(|e| {
                        values.iter().enumerate().map(move |(i, value)| {
                            let labels = vec![
                                ("endpoint".to_owned(), e.name.to_string()),
                                (label.to_owned(), (*value).to_owned()),
                            ];
                            (labels, pick(e, i))
                        })
                    })
                    .collect(),
            )
        };
        registry.register(
            "webhook_state",
            "Where each webhook endpoint's delivery stands, 1 for its state: idle (every matching event delivered), delivering, retrying (the next event failed and is tried again, never skipped), stopped (its consumer cannot be read, or a Subscribe stream holds it), standby (on a cluster, another node delivers it)",
            by("state", &STATE_LABELS, |e, i| e.state[i].clone()),
        );
        registry.register(
            "webhook_retrying_since_seconds",
            "Unix time of the first failed try of the event an endpoint is retrying; 0 when it is not retrying",
            self.per_endpoint(|e| e.retrying_since.clone()),
        );
        registry.register(
            "webhook_last_error",
            "1 for the kind of an endpoint's last failed try (status: a non-2xx answer; timeout; connect; tls; io: the connection broke; consumer: its consumer could not be read or acknowledged)",
            by("kind", &ERROR_KINDS, |e, i| e.last_error[i].clone()),
        );
        registry.register(
            "webhook_last_error_status",
            "The HTTP status of an endpoint's last failed try that got an answer; 0 before any",
            self.per_endpoint(|e| e.last_error_status.clone()),
        );
        registry.register(
            "webhook_acknowledged_sequence",
            "The position of an endpoint's consumer: every matching event up to it was acknowledged by a 2xx",
            self.per_endpoint(|e| e.acknowledged.clone()),
        );
        registry.register_with_unit(
            "webhook_delivered",
            "Events an endpoint acknowledged with a 2xx",
            Unit::Other("events".to_owned()),
            self.per_endpoint(|e| e.delivered.clone()),
        );
        registry.register(
            "webhook_failed_attempts",
            "Tries to deliver to an endpoint that failed: a non-2xx answer, a timeout, a refused or broken connection",
            self.per_endpoint(|e| e.failed.clone()),
        );
    }
}

/// A metric with a fixed list of owned label sets (the endpoints' names come from a file), each
/// with its own handle, exposed in this order.
#[derive(Debug)]
struct Owned<M>(Vec<(Vec<(String, String)>, M)>);

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Owned<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.0 {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}
