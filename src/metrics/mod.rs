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

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{
        MetricType,
        counter::Counter,
        gauge::{ConstGauge, Gauge},
    },
    registry::{Registry, Unit},
};
use tonic::Code;

use crate::codes::code_name;

mod histogram;
mod webhooks;

pub use histogram::Histogram;
use histogram::nanos;
pub use webhooks::{EndpointMetrics, WebhookMetrics, WebhookState};

/// The prefix of every metric's name.
const PREFIX: &str = "storywire";

/// The OpenMetrics text format's content type, which Prometheus asks for first.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format's content type, for every other client (curl, older scrapers).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

/// Which listener a connection came in on: the `face` label of the connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    /// The gRPC port (gRPC and gRPC-Web).
    Grpc,
    /// The HTTP face (`--http`).
    Http,
}

impl Face {
    /// Both faces, in the order of their numbers.
    pub const ALL: [Self; 2] = [Self::Grpc, Self::Http];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// Where a connection stands: the `state` label of `storywire_connections_open` ([`crate::connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepted, no request head completed yet (a TLS handshake counts here).
    Awaiting,
    /// A request or stream in flight (a reader that reads is here).
    Active,
    /// Nothing in flight since its last request ended.
    Idle,
}

impl State {
    /// Every state, in the order of their numbers.
    pub const ALL: [Self; 3] = [Self::Awaiting, Self::Active, Self::Idle];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Awaiting => "awaiting_request",
            Self::Active => "active",
            Self::Idle => "idle",
        }
    }

    /// The state numbered `value` (the last for any larger).
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Awaiting,
            1 => Self::Active,
            _ => Self::Idle,
        }
    }
}

/// Why the server closed a connection: the `reason` label of `storywire_connections_closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete request head within `--header-timeout`.
    HeaderTimeout,
    /// Nothing in flight for `--idle-timeout`.
    Idle,
    /// Its address already held `--max-connections-per-ip`.
    PerAddressLimit,
    /// The server already held `--max-connections`.
    TotalLimit,
    /// Closed to make room, near `--max-connections`.
    Shed,
}

impl CloseReason {
    /// Every reason, in the order of their numbers.
    pub const ALL: [Self; 5] = [
        Self::HeaderTimeout,
        Self::Idle,
        Self::PerAddressLimit,
        Self::TotalLimit,
        Self::Shed,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::Idle => "idle",
            Self::PerAddressLimit => "per_address_limit",
            Self::TotalLimit => "total_limit",
            Self::Shed => "shed",
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

/// The text format a scrape asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text (`# EOF` at the end), which Prometheus prefers.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics if it names it, as Prometheus's does;
    /// the Prometheus text format otherwise.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }
}

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

/// What the connections' lifecycle records ([`crate::connections`]): open connections by face
/// and state, and the connections the server closed, by face and reason. Cloning shares them.
#[derive(Debug, Clone)]
pub struct ConnectionMetrics {
    /// Open connections, indexed `[face][state]`.
    open: Arc<[[Gauge; State::ALL.len()]; Face::ALL.len()]>,
    /// Closes by the server, indexed `[face][reason]`.
    closed: Arc<[[Counter; CloseReason::ALL.len()]; Face::ALL.len()]>,
}

impl Default for ConnectionMetrics {
    fn default() -> Self {
        Self {
            open: Arc::new(Default::default()),
            closed: Arc::new(Default::default()),
        }
    }
}

impl ConnectionMetrics {
    /// A connection was accepted on `face`, in `state`.
    pub fn opened(&self, face: Face, state: State) {
        self.open[face as usize][state as usize].inc();
    }

    /// A connection on `face` moved from one state to another.
    pub fn moved(&self, face: Face, from: State, to: State) {
        self.open[face as usize][from as usize].dec();
        self.open[face as usize][to as usize].inc();
    }

    /// A connection on `face`, last in `state`, closed.
    pub fn left(&self, face: Face, state: State) {
        self.open[face as usize][state as usize].dec();
    }

    /// The server closed (or refused) a connection on `face` for `reason`.
    pub fn closed(&self, face: Face, reason: CloseReason) {
        self.closed[face as usize][reason as usize].inc();
    }

    fn open_by(&self) -> Labeled<Gauge> {
        Labeled(
            Face::ALL
                .iter()
                .flat_map(|&face| State::ALL.iter().map(move |&state| (face, state)))
                .map(|(face, state)| {
                    let labels = vec![("face", face.label()), ("state", state.label())];
                    (labels, self.open[face as usize][state as usize].clone())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }

    fn closed_by(&self) -> Labeled<Counter> {
        Labeled(
            Face::ALL
                .iter()
                .flat_map(|&face| CloseReason::ALL.iter().map(move |&reason| (face, reason)))
                .map(|(face, reason)| {
                    let labels = vec![("face", face.label()), ("reason", reason.label())];
                    (labels, self.closed[face as usize][reason as usize].clone())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    }
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

    /// Every metric as text in `format`, with the log's `head` sequence and its `retained`
    /// event count as they stand now.
    pub fn encode(&self, format: Format, head: u64, retained: u64) -> String {
        self.head_sequence.set(gauge_value(head));
        self.retained_events.set(gauge_value(retained));
        let registry = self.registry();
        let mut text = String::new();
        let encoded = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry),
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            }
        };
        // Writing to a String cannot fail, and every metric here encodes.
        encoded.expect("metrics encode to text");
        text
    }

    /// A registry of every handle, built for one scrape: the handles are shared, so this copies
    /// reference counts, and leaves out what this server does not run (the write-ahead log, a
    /// replica). The process's descriptors are read now, and left out where the system does not
    /// say.
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "events_appended",
            "Events this server's log appended since it started (on a cluster node: applied from the stream, whichever node published them)",
            self.events_appended.clone(),
        );
        registry.register(
            "publishes",
            "Publishes answered by the StoryService, by RPC (PublishStream: one per message) and gRPC status code; calls refused before it (tokens, tonic's size limits) are not counted",
            self.publishes_by.clone(),
        );
        registry.register(
            "publish_duplicates",
            "Publishes answered with the original receipt (duplicate: true) because their event_id was already in the log; also counted in publishes with code OK",
            self.duplicates.clone(),
        );
        registry.register(
            "subscribers_open",
            "Open subscriptions, by transport: gRPC Subscribe streams and Server-Sent Event streams (GET /v1/events)",
            self.subscribers_open_by.clone(),
        );
        registry.register_with_unit(
            "subscriber_lag",
            "Events between the log's head and a subscriber's position, observed each time it is handed a batch; 0 at the head",
            Unit::Other("events".to_owned()),
            self.subscriber_lag.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from an event's append to this server's log to its hand-over to a live subscriber's stream (events sent during catch-up are not observed)",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
        registry.register(
            "accept_failures",
            "Tries to accept a connection, on either face, that failed for want of a resource (out of descriptors, or memory); while they fail, new connections wait in the listen backlog",
            self.accept_failures.0.clone(),
        );
        registry.register(
            "connections_open",
            "Open connections, by face (grpc: the gRPC port; http: the HTTP face) and state (awaiting_request: no request head completed yet; active: a request or stream in flight; idle: nothing in flight)",
            self.connections.open_by(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed or refused, by face and reason (header_timeout, idle, per_address_limit, total_limit, shed); a peer's own closes are not counted",
            self.connections.closed_by(),
        );
        registry.register(
            "sse_stalled",
            "Server-Sent Event streams (GET /v1/events) cut off because their reader took none of its bytes for 30 s while more waited; the browser's EventSource reconnects and resumes by itself",
            self.sse_stalls.0.clone(),
        );
        registry.register(
            "head_sequence",
            "The newest sequence readers may see",
            self.head_sequence.clone(),
        );
        registry.register_with_unit(
            "retained",
            "Events retained for catch-up, resumption and ListEvents (at most --retain-events)",
            Unit::Other("events".to_owned()),
            self.retained_events.clone(),
        );
        if let Some(fsync) = self.wal_fsync.get() {
            registry.register_with_unit(
                "wal_fsync",
                "Time one fsync of the write-ahead log takes (--data-dir); publishers waiting together share one",
                Unit::Seconds,
                fsync.clone(),
            );
        }
        if let Some(replica) = self.replica.get() {
            registry.register_with_unit(
                "replica_lag",
                "Messages the stream held past the one this node's replica applied last, as JetStream said with it",
                Unit::Other("events".to_owned()),
                replica.lag_events.clone(),
            );
            registry.register_with_unit(
                "replica_apply_delay",
                "Time from JetStream storing a message to this node applying it to its replica (read from two clocks: the NATS server's and this node's)",
                Unit::Seconds,
                replica.apply_delay.clone(),
            );
        }
        if let Some(webhooks) = self.webhooks.get() {
            webhooks.register(&mut registry);
        }
        if let Some(count) = crate::descriptors::open_files() {
            registry.register(
                "open_files",
                "Descriptors this process holds open; every connection, on either face, is one",
                ConstGauge::new(gauge_value(count)),
            );
        }
        if let Ok(limit) = crate::descriptors::open_files_limit() {
            registry.register(
                "open_files_limit",
                "The most descriptors this process may hold open: its soft limit, which serve raises to the hard one at start",
                ConstGauge::new(gauge_value(limit)),
            );
        }
        registry
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

/// A metric with a fixed list of label sets, each with its own handle, exposed in this order
/// (prometheus-client's `Family` would look each up in a locked map, and expose them unordered).
#[derive(Debug, Clone)]
struct Labeled<M>(Arc<[(Labels, M)]>);

/// One series' labels, names and values.
type Labels = Vec<(&'static str, &'static str)>;

impl<M: EncodeMetric + prometheus_client::metrics::TypedMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in self.0.iter() {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_name_every_series_with_the_prefix_and_openmetrics_ends_with_eof() {
        let metrics = Metrics::new();
        metrics.published(Rpc::Publish, Code::Ok, false);
        metrics.published(Rpc::PublishStream, Code::Ok, true);
        metrics.published(Rpc::Publish, Code::InvalidArgument, false);
        let open = metrics.subscriber_opened(Transport::Sse);
        let open_metrics = metrics.encode(Format::OpenMetrics, 3, 3);
        assert!(open_metrics.ends_with("# EOF\n"), "{open_metrics}");
        let prometheus = metrics.encode(Format::Prometheus, 3, 3);
        for text in [&open_metrics, &prometheus] {
            assert!(
                text.contains(
                    r#"storywire_publishes_total{rpc="Publish",code="INVALID_ARGUMENT"} 1"#
                ),
                "{text}"
            );
            assert!(
                text.contains("storywire_publish_duplicates_total 1"),
                "{text}"
            );
            assert!(
                text.contains(r#"storywire_subscribers_open{transport="sse"} 1"#),
                "{text}"
            );
            assert!(text.contains("storywire_head_sequence 3"), "{text}");
            assert!(
                !text.contains("wal_fsync"),
                "no write-ahead log here: {text}"
            );
        }
        drop(open);
        assert!(
            metrics
                .encode(Format::Prometheus, 3, 3)
                .contains(r#"storywire_subscribers_open{transport="sse"} 0"#)
        );
    }
}
