//! What the server measures, for `GET /metrics` ([`crate::http`]): the handles every component
//! records into, and their exposition as OpenMetrics or Prometheus text.
//!
//! One [`Metrics`] belongs to each [`crate::log::EventLog`]: every component that records into
//! it already holds the log (the service, each subscription, the write-ahead thread, the replica
//! task), so it travels with the log instead of living in a global, and servers started side by
//! side in one process (the tests) never mix their counts.
//!
//! Recording is a few relaxed atomic additions, never a lock: the publish path already holds the
//! log's write lock, and the fan-out runs once per subscriber per batch. prometheus-client's own
//! histogram takes a mutex on every observation, so the histograms here are [`Histogram`]: atomic
//! buckets in a shard per thread, added up only when scraped.
//!
//! Here: the handles and what each records. Beside it: `connections` (the connection metrics and
//! their labels), `exposition` (the text a scrape gets) and `histogram`.

use std::{sync::OnceLock, time::Duration};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tonic::Code;

use crate::codes::code_name;

mod connections;
mod exposition;
mod histogram;
mod webhooks;

pub use connections::{CloseReason, ConnectionMetrics, Face, State};
pub use exposition::Format;
use exposition::Labeled;
pub use histogram::Histogram;
use histogram::nanos;
pub use webhooks::{EndpointMetrics, WebhookMetrics, WebhookState};

/// The RPCs a publish arrives by, the `rpc` label of `storywire_publishes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `Publish`: one request, one answer.
    Publish,
    /// `PublishStream`: each message counts once.
    PublishStream,
}

impl Rpc {
    const ALL: [Self; 2] = [Self::Publish, Self::PublishStream];

    fn label(self) -> &'static str {
        match self {
            Self::Publish => "Publish",
            Self::PublishStream => "PublishStream",
        }
    }
}

/// How a subscriber reads, the `transport` label of `storywire_subscribers_open`. The HTTP face
/// puts [`Transport::Sse`] in the extensions of the Subscribe request it makes; a request without
/// one came over gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A gRPC Subscribe stream.
    Grpc,
    /// `GET /v1/events`: Server-Sent Events.
    Sse,
}

impl Transport {
    const ALL: [Self; 2] = [Self::Grpc, Self::Sse];

    fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Sse => "sse",
        }
    }
}

/// Every gRPC code, in the order of their numbers, so that `code as usize` indexes them.
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// The handles every component records into. One per log ([`crate::log::EventLog::metrics`]).
#[derive(Debug)]
pub struct Metrics {
    /// Events the log appended (on a cluster node: applied from the stream).
    events_appended: Counter,
    /// Publishes answered, by RPC and code; indexed `[rpc][code]`. Shared with `publishes_by`.
    publishes: [[Counter; CODES.len()]; Rpc::ALL.len()],
    /// The same counters with their labels, in order, for the exposition.
    publishes_by: Labeled<Counter>,
    /// Publishes answered with the original receipt (`duplicate: true`).
    duplicates: Counter,
    /// Open subscriptions, by transport; indexed like [`Transport::ALL`].
    subscribers_open: [Gauge; Transport::ALL.len()],
    /// The same gauges with their labels.
    subscribers_open_by: Labeled<Gauge>,
    /// Head minus a subscriber's position after each batch it is handed, in events.
    subscriber_lag: Histogram,
    /// From an event's append to its hand-over to a live subscriber, in nanoseconds.
    delivery_latency: Histogram,
    /// The newest sequence readers may see; set when scraped.
    head_sequence: Gauge,
    /// Events retained for reading; set when scraped.
    retained_events: Gauge,
    /// One fsync of the write-ahead log, in nanoseconds; exists once a write-ahead journal does.
    wal_fsync: OnceLock<Histogram>,
    /// A cluster node's replica; exists once its replica task does.
    replica: OnceLock<ReplicaMetrics>,
    /// Tries to accept a connection that failed for want of a resource.
    accept_failures: AcceptFailures,
    /// Open connections by face and state, and the server's closes by reason.
    connections: ConnectionMetrics,
    /// Event streams cut off because their reader stopped taking its bytes.
    sse_stalls: SseStalls,
    /// The webhook endpoints' state (`serve --webhooks`); exists once their deliverers do.
    webhooks: OnceLock<WebhookMetrics>,
}

/// Counts the Server-Sent Event readers cut off because they stopped taking their bytes, for
/// [`crate::http`].
#[derive(Debug, Clone, Default)]
pub struct SseStalls(Counter);

impl SseStalls {
    /// Counts one reader cut off.
    pub fn stalled(&self) {
        self.0.inc();
    }
}

/// Counts the tries to accept a connection that failed for want of a resource (out of
/// descriptors or memory), for [`crate::listen::Accepting`].
#[derive(Debug, Clone, Default)]
pub struct AcceptFailures(Counter);

impl AcceptFailures {
    /// Counts one failed try.
    pub fn failed(&self) {
        self.0.inc();
    }
}

/// What a cluster node's replica task records.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    /// Messages the stream holds past the one the replica applied last.
    lag_events: Gauge,
    /// From JetStream storing a message to the replica applying it, in nanoseconds.
    apply_delay: Histogram,
}

impl ReplicaMetrics {
    /// Records that the stream holds `count` messages past the one the replica applied last.
    pub fn behind(&self, count: u64) {
        self.lag_events.set(gauge_value(count));
    }

    /// Records that the replica applied a message `delay` after JetStream stored it.
    pub fn applied_after(&self, delay: Duration) {
        self.apply_delay.observe_duration(delay);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Handles at zero.
    pub fn new() -> Self {
        let publishes: [[Counter; CODES.len()]; Rpc::ALL.len()] = Default::default();
        let publishes_by = Labeled(
            Rpc::ALL
                .iter()
                .flat_map(|&rpc| CODES.iter().map(move |&code| (rpc, code)))
                .map(|(rpc, code)| {
                    let labels = vec![("rpc", rpc.label()), ("code", code_name(code))];
                    (labels, publishes[rpc as usize][code as usize].clone())
                })
                .collect::<Vec<_>>()
                .into(),
        );
        let subscribers_open: [Gauge; Transport::ALL.len()] = Default::default();
        let subscribers_open_by = Labeled(
            Transport::ALL
                .iter()
                .map(|&transport| {
                    (
                        vec![("transport", transport.label())],
                        subscribers_open[transport as usize].clone(),
                    )
                })
                .collect::<Vec<_>>()
                .into(),
        );
        Self {
            events_appended: Counter::default(),
            publishes,
            publishes_by,
            duplicates: Counter::default(),
            subscribers_open,
            subscribers_open_by,
            subscriber_lag: Histogram::events(),
            delivery_latency: Histogram::seconds(),
            head_sequence: Gauge::default(),
            retained_events: Gauge::default(),
            wal_fsync: OnceLock::new(),
            replica: OnceLock::new(),
            accept_failures: AcceptFailures::default(),
            connections: ConnectionMetrics::default(),
            sse_stalls: SseStalls::default(),
            webhooks: OnceLock::new(),
        }
    }

    /// Counts `count` events appended to the log.
    pub fn appended(&self, count: u64) {
        if count > 0 {
            self.events_appended.inc_by(count);
        }
    }

    /// Counts one publish answered with `code` by `rpc`; `duplicate` when the answer was the
    /// original receipt of a repeated event_id.
    pub fn published(&self, rpc: Rpc, code: Code, duplicate: bool) {
        self.publishes[rpc as usize][code as usize].inc();
        if duplicate {
            self.duplicates.inc();
        }
    }

    /// Counts a subscription open over `transport` until the returned guard is dropped.
    pub fn subscriber_opened(&self, transport: Transport) -> OpenSubscriber {
        let gauge = self.subscribers_open[transport as usize].clone();
        gauge.inc();
        OpenSubscriber(gauge)
    }

    /// Records that a subscriber was handed a batch and is now `lag` events behind the head.
    pub fn subscriber_lag(&self, lag: u64) {
        self.subscriber_lag.observe(lag);
    }

    /// Records that a live subscriber was handed an event `latency` after it was appended.
    pub fn delivered(&self, latency: Duration) {
        self.delivery_latency.observe(nanos(latency));
    }

    /// The write-ahead log's fsync times, exposed from the first call on (the journal's opening).
    pub fn wal_fsync(&self) -> &Histogram {
        self.wal_fsync.get_or_init(Histogram::seconds)
    }

    /// The handle that counts failed tries to accept a connection.
    pub fn accept_failures(&self) -> AcceptFailures {
        self.accept_failures.clone()
    }

    /// The handles the connections' lifecycle records into.
    pub fn connections(&self) -> ConnectionMetrics {
        self.connections.clone()
    }

    /// The handle that counts SSE readers cut off for stalling.
    pub fn sse_stalls(&self) -> SseStalls {
        self.sse_stalls.clone()
    }

    /// A cluster node's replica's handles, exposed from the first call on (the replica's start).
    pub fn replica(&self) -> &ReplicaMetrics {
        self.replica.get_or_init(|| ReplicaMetrics {
            lag_events: Gauge::default(),
            apply_delay: Histogram::seconds(),
        })
    }

    /// The webhook endpoints' handles, for endpoints named `names` on the first call (the
    /// deliverers' start), exposed from then on.
    pub fn webhooks(&self, names: &[String]) -> &WebhookMetrics {
        self.webhooks.get_or_init(|| WebhookMetrics::new(names))
    }
}

/// An open subscription, counted in `storywire_subscribers_open` until dropped.
#[derive(Debug)]
pub struct OpenSubscriber(Gauge);

impl Drop for OpenSubscriber {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A sequence or a count as a gauge's value, saturating.
fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
