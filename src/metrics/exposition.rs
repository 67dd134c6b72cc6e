//! The metrics as text: OpenMetrics for Prometheus, the Prometheus text format for everyone
//! else, built from the shared handles once per scrape.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder},
    metrics::{MetricType, gauge::ConstGauge},
    registry::{Registry, Unit},
};

use super::{Metrics, gauge_value};

/// The prefix of every metric's name.
const PREFIX: &str = "storywire";

/// The OpenMetrics text format's content type, which Prometheus asks for first.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format's content type, for every other client (curl, older scrapers).
const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

impl Metrics {
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

/// A metric with a fixed list of label sets, each with its own handle, exposed in this order
/// (prometheus-client's `Family` would look each up in a locked map, and expose them unordered).
#[derive(Debug, Clone)]
pub(super) struct Labeled<M>(pub(super) Arc<[(Labels, M)]>);

/// One series' labels, names and values.
pub(super) type Labels = Vec<(&'static str, &'static str)>;

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
    use tonic::Code;

    use super::*;
    use crate::metrics::{Rpc, Transport};

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
