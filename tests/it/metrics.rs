//! `GET /metrics` on the HTTP face of the real binary: the counts move as the server works
//! (appends, publishes by RPC and code, duplicates, open subscribers, their lag and the delivery
//! latency; fsync times with `--data-dir`; replica lag on a cluster node), every scrape passes
//! Python's prometheus_client parsers (scripts/check_metrics.py, OpenMetrics and the Prometheus
//! text format), and a scrape needs a `metrics` token unless `--metrics-public` or
//! `--public-read` opens it. Nothing is skipped: without python3 and prometheus_client the tests
//! fail, naming scripts/test, which installs them.

use crate::process;
use crate::support;

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use process::HttpServer;
use serde_json::Value;
use storywire::pb::{self, publish_stream_response::Result as Outcome};
use support::{
    TempDir, from,
    http1::{EventStream, get},
    next_event, open, report, subscribe, until_caught_up, within,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The checker: exit 0 and the samples as JSON when the scrape passes, 1 when it does not, 2
/// when it cannot run.
const CHECKER: &str = "scripts/check_metrics.py";

/// What Prometheus sends: OpenMetrics first, the Prometheus text format as a fallback.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes `server`'s `/metrics` as Prometheus does (OpenMetrics) and as curl does (the
/// Prometheus text format), checks both with [`CHECKER`], and returns the first after checking
/// that both hold the same series.
async fn scrape(server: &HttpServer) -> Scrape {
    let open_metrics = scrape_as(server.http, Some(PROMETHEUS_ACCEPT), &[]).await;
    let plain = scrape_as(server.http, None, &[]).await;
    assert_eq!(
        open_metrics.series().keys().collect::<Vec<_>>(),
        plain.series().keys().collect::<Vec<_>>(),
        "both formats carry the same series"
    );
    open_metrics
}

/// One checked scrape: its samples, by name and labels.
struct Scrape {
    /// What the checker printed: `{"families": {...}, "samples": [{name, labels, value}]}`.
    checked: Value,
}

impl Scrape {
    /// The value of the sample `name` with exactly `labels`; fails the test if there is none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = series_key(name, labels.iter().map(|(k, v)| (*k, *v)));
        *self
            .series()
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key} in {:#}", self.checked))
    }

    /// Every sample, keyed `name{label="value",...}` with the labels sorted.
    fn series(&self) -> BTreeMap<String, f64> {
        self.checked["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|sample| {
                let labels = sample["labels"].as_object().expect("labels");
                let key = series_key(
                    sample["name"].as_str().expect("a name"),
                    labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str().expect("a label value"))),
                );
                (key, sample["value"].as_f64().expect("a value"))
            })
            .collect()
    }

    /// Whether a family of this name was exposed at all.
    fn has_family(&self, name: &str) -> bool {
        self.checked["families"].get(name).is_some()
    }

    /// `storywire_publishes_total` for one RPC and code.
    fn publishes(&self, rpc: &str, code: &str) -> f64 {
        self.value("storywire_publishes_total", &[("rpc", rpc), ("code", code)])
    }
}

/// `name{a="1",b="2"}`, labels sorted by name. A bucket's bound (`le`) is written as Rust
/// writes the number: the two formats spell it differently (`1.0` and `1`, `1048576.0` and
/// `1.048576e+06`).
fn series_key<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut labels: Vec<_> = labels
        .map(|(k, v)| match v.parse::<f64>() {
            Ok(bound) if k == "le" => format!("{k}=\"{bound}\""),
            _ => format!("{k}={v:?}"),
        })
        .collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// `GET /metrics` with `accept` and `headers`; checks the reply with [`CHECKER`] in the format
/// its Content-Type names.
async fn scrape_as(http: SocketAddr, accept: Option<&str>, headers: &[(&str, &str)]) -> Scrape {
    let mut headers = headers.to_vec();
    if let Some(accept) = accept {
        headers.push(("accept", accept));
    }
    let reply = get(http, "/metrics", &headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let content_type = reply.headers["content-type"].to_str().expect("ASCII");
    let format = if content_type.starts_with("application/openmetrics-text; version=1.0.0") {
        "openmetrics"
    } else if content_type.starts_with("text/plain; version=0.0.4") {
        "prometheus"
    } else {
        panic!("unexpected Content-Type {content_type}");
    };
    assert_eq!(
        format == "openmetrics",
        accept.is_some_and(|accept| accept.contains("openmetrics")),
        "OpenMetrics exactly when asked for: {content_type}"
    );
    Scrape {
        checked: check(format, &reply.body),
    }
}

/// Runs [`CHECKER`] over `text` in `format`; its JSON on success, a failed test otherwise.
/// tests/it/webhooks.rs checks its scrapes with it too.
pub(crate) fn check(format: &str, text: &str) -> Value {
    let dir = TempDir::new("metrics-scrape");
    let path = dir.0.join("scrape.txt");
    std::fs::write(&path, text).expect("write the scrape");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("python3")
        .current_dir(root)
        .arg(CHECKER)
        .arg(format)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): the metrics tests need it; scripts/test says what")
        });
    drop(dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => serde_json::from_slice(&output.stdout).expect("the checker prints JSON"),
        Some(1) => panic!("the scrape does not pass {CHECKER}:\n{stderr}\n--- scrape\n{text}"),
        _ => panic!(
            "{CHECKER} could not check the scrape ({}): {stderr}\
             run scripts/test, which installs prometheus-client",
            output.status
        ),
    }
}

/// Scrapes until `done` holds of a scrape (the server counts some things after it answers, such
/// as a subscription that ends when its client goes away); returns that scrape.
async fn scrape_until(server: &HttpServer, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    within(what, async {
        loop {
            let scraped = scrape(server).await;
            if done(&scraped) {
                return scraped;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `request` with a publisher's own event_id, so that sending it again is a duplicate.
fn with_event_id(mut request: pb::PublishRequest, event_id: &str) -> pb::PublishRequest {
    request.event_id = event_id.to_owned();
    request
}

#[tokio::test]
async fn scrapes_count_appends_publishes_by_code_duplicates_subscribers_and_their_delivery() {
    let server = HttpServer::start(&[]).await;
    let before = scrape(&server).await;
    assert_eq!(before.value("storywire_events_appended_total", &[]), 0.0);
    assert_eq!(
        before.publishes("Publish", "OK"),
        0.0,
        "every code from the start"
    );
    assert!(
        !before.has_family("storywire_wal_fsync_seconds"),
        "no --data-dir"
    );
    assert!(
        !before.has_family("storywire_replica_lag_events"),
        "no --nats"
    );

    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");
    let fact = with_event_id(report("alpha", "f1"), "desk-f1");
    client.publish(fact.clone()).await.expect("report");
    let again = client.publish(fact).await.expect("a retry").into_inner();
    assert!(again.duplicate);
    let mut bad_id = report("alpha", "f2");
    bad_id.story_id = "Not An Id".to_owned();
    client.publish(bad_id).await.expect_err("INVALID_ARGUMENT");
    client
        .publish(report("alpha", "f1"))
        .await
        .expect_err("FAILED_PRECONDITION: f1 is reported already");
    let mut stale = report("alpha", "f3");
    stale.expected_version = Some(1);
    client.publish(stale).await.expect_err("ABORTED");

    // PublishStream counts each message: one accepted, one rejected.
    let (sender, receiver) = mpsc::channel(4);
    let mut responses = client
        .publish_stream(ReceiverStream::new(receiver))
        .await
        .expect("a stream")
        .into_inner();
    for request in [report("alpha", "f4"), report("nowhere", "f5")] {
        sender
            .send(pb::PublishStreamRequest {
                request: Some(request),
            })
            .await
            .expect("stream open");
    }
    drop(sender);
    let mut outcomes = Vec::new();
    while let Some(response) = within("PublishStream", responses.message())
        .await
        .expect("a response")
    {
        outcomes.push(response.result.expect("a result"));
    }
    assert!(matches!(outcomes[0], Outcome::Accepted(_)), "{outcomes:?}");
    assert!(matches!(outcomes[1], Outcome::Rejected(_)), "{outcomes:?}");

    // One subscriber over gRPC, one over SSE, both at the head; then one live event for both.
    let mut grpc = subscribe(&mut client, from(1)).await;
    let (caught_up_events, _) = until_caught_up(&mut grpc).await;
    assert_eq!(caught_up_events.len(), 3);
    let mut sse = EventStream::open(server.http, "/v1/events?from_sequence=1", &[])
        .await
        .expect("an event stream");
    sse.until(|e| e.event.as_deref() == Some("caught_up")).await;
    client.publish(report("alpha", "f6")).await.expect("live");
    assert_eq!(next_event(&mut grpc).await.sequence, 4);
    let live = sse.next().await.expect("a live event");
    assert_eq!(live.id.as_deref(), Some("4"));

    let after = scrape(&server).await;
    assert_eq!(after.value("storywire_events_appended_total", &[]), 4.0);
    assert_eq!(
        after.publishes("Publish", "OK"),
        4.0,
        "three new, one duplicate"
    );
    assert_eq!(after.publishes("Publish", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(after.publishes("Publish", "FAILED_PRECONDITION"), 1.0);
    assert_eq!(after.publishes("Publish", "ABORTED"), 1.0);
    assert_eq!(after.publishes("PublishStream", "OK"), 1.0);
    assert_eq!(after.publishes("PublishStream", "NOT_FOUND"), 1.0);
    assert_eq!(after.value("storywire_publish_duplicates_total", &[]), 1.0);
    assert_eq!(after.value("storywire_head_sequence", &[]), 4.0);
    assert_eq!(after.value("storywire_retained_events", &[]), 4.0);
    let open = |transport| ("transport", transport);
    assert_eq!(
        after.value("storywire_subscribers_open", &[open("grpc")]),
        1.0
    );
    assert_eq!(
        after.value("storywire_subscribers_open", &[open("sse")]),
        1.0
    );
    // Each was handed its catch-up batch and the live event, each time at the head.
    assert_eq!(
        after.value("storywire_subscriber_lag_events_count", &[]),
        4.0
    );
    assert_eq!(
        after.value("storywire_subscriber_lag_events_bucket", &[("le", "0")]),
        4.0,
        "every batch left its subscriber at the head"
    );
    // Only the live event counts for delivery, once per subscriber.
    assert_eq!(
        after.value("storywire_delivery_latency_seconds_count", &[]),
        2.0
    );
    assert!(after.value("storywire_delivery_latency_seconds_sum", &[]) > 0.0);

    drop((grpc, sse));
    scrape_until(&server, "both subscriptions to close", |scrape| {
        scrape.value("storywire_subscribers_open", &[open("grpc")]) == 0.0
            && scrape.value("storywire_subscribers_open", &[open("sse")]) == 0.0
    })
    .await;
    drop(server.process);
}

#[tokio::test]
async fn a_subscriber_reading_the_log_from_far_behind_shows_its_lag() {
    let server = HttpServer::start(&[]).await;
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");
    for fact in 0..299 {
        client
            .publish(report("alpha", &format!("f{fact}")))
            .await
            .expect("report");
    }
    // 300 events: the first batch (256) leaves the subscriber 44 behind, the next at the head.
    let mut behind = subscribe(&mut client, from(1)).await;
    let (events, _) = until_caught_up(&mut behind).await;
    assert_eq!(events.len(), 300);
    let scraped = scrape(&server).await;
    assert_eq!(
        scraped.value("storywire_subscriber_lag_events_count", &[]),
        2.0
    );
    assert_eq!(
        scraped.value("storywire_subscriber_lag_events_sum", &[]),
        44.0
    );
    assert_eq!(
        scraped.value("storywire_subscriber_lag_events_bucket", &[("le", "16")]),
        1.0
    );
    assert_eq!(
        scraped.value("storywire_subscriber_lag_events_bucket", &[("le", "64")]),
        2.0
    );
    assert_eq!(
        scraped.value("storywire_delivery_latency_seconds_count", &[]),
        0.0,
        "a catch-up is not a delivery"
    );
}

#[tokio::test]
async fn a_scrape_needs_a_metrics_token_unless_metrics_or_reading_are_public() {
    let dir = TempDir::new("metrics-tokens");
    let tokens = dir.0.join("tokens");
    std::fs::write(
        &tokens,
        "reader subscribe reader-token-0123456789\n\
         scraper metrics scraper-token-0123456789\n\
         ops admin ops-token-0123456789abc\n",
    )
    .expect("a tokens file");
    let tokens = tokens.to_str().expect("UTF-8");

    let guarded = HttpServer::start(&["--tokens", tokens]).await;
    let anonymous = get(guarded.http, "/metrics", &[]).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(anonymous.headers["content-type"], "application/json");
    assert_eq!(anonymous.json()["code"], "UNAUTHENTICATED");
    let reader = get(
        guarded.http,
        "/metrics",
        &[("authorization", "Bearer reader-token-0123456789")],
    )
    .await;
    assert_eq!(reader.status, 403, "{reader:?}");
    assert_eq!(reader.json()["code"], "PERMISSION_DENIED");
    assert!(
        reader.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("GET /metrics needs metrics")),
        "{reader:?}"
    );
    for token in ["scraper-token-0123456789", "ops-token-0123456789abc"] {
        let bearer = format!("Bearer {token}");
        scrape_as(guarded.http, None, &[("authorization", &bearer)]).await;
    }
    // The metrics role reads no story.
    let stories = get(
        guarded.http,
        "/v1/stories",
        &[("authorization", "Bearer scraper-token-0123456789")],
    )
    .await;
    assert_eq!(stories.status, 403, "{stories:?}");

    for public in ["--metrics-public", "--public-read"] {
        let server = HttpServer::start(&["--tokens", tokens, public]).await;
        scrape(&server).await;
        let wrong = get(
            server.http,
            "/metrics",
            &[("authorization", "Bearer wrong")],
        )
        .await;
        assert_eq!(
            wrong.status, 401,
            "a token given must still be right: {wrong:?}"
        );
    }
    // --metrics-public opens the metrics only.
    let metrics_public = HttpServer::start(&["--tokens", tokens, "--metrics-public"]).await;
    assert_eq!(
        get(metrics_public.http, "/v1/stories", &[]).await.status,
        401
    );
}

#[tokio::test]
async fn the_write_ahead_log_reports_each_fsync() {
    let dir = TempDir::new("metrics-wal");
    let data = dir.0.to_str().expect("UTF-8");
    let server = HttpServer::start(&["--data-dir", data, "--fsync", "always"]).await;
    let idle = scrape(&server).await;
    assert_eq!(idle.value("storywire_wal_fsync_seconds_count", &[]), 0.0);
    let mut client = server.client().await;
    client.publish(open("alpha", &[])).await.expect("open");
    for fact in ["f1", "f2"] {
        client.publish(report("alpha", fact)).await.expect("report");
    }
    // Each publish waited for its own fsync before the next was sent.
    let scraped = scrape(&server).await;
    assert_eq!(scraped.value("storywire_wal_fsync_seconds_count", &[]), 3.0);
    assert!(scraped.value("storywire_wal_fsync_seconds_sum", &[]) > 0.0);
    assert_eq!(scraped.value("storywire_events_appended_total", &[]), 3.0);
}

#[tokio::test]
async fn a_cluster_node_reports_its_replica_lag_and_apply_delay() {
    let nats = storywire_testkit::nats::Cluster::start(1).await;
    let urls = nats.urls();
    let node = HttpServer::start(&[
        "--nats",
        &urls,
        "--nats-stream",
        "METRICS",
        "--nats-replicas",
        "1",
    ])
    .await;
    let mut client = node.client().await;
    let idle = scrape_until(&node, "the replica to start", |scrape| {
        scrape.has_family("storywire_replica_lag_events")
    })
    .await;
    assert_eq!(
        idle.value("storywire_replica_apply_delay_seconds_count", &[]),
        0.0
    );
    client.publish(open("alpha", &[])).await.expect("open");
    for fact in ["f1", "f2"] {
        client.publish(report("alpha", fact)).await.expect("report");
    }
    // A publish is answered once this node's replica has applied it; the replica task records
    // it right after.
    let scraped = scrape_until(&node, "three messages applied", |scrape| {
        scrape.value("storywire_replica_apply_delay_seconds_count", &[]) == 3.0
    })
    .await;
    assert_eq!(scraped.value("storywire_replica_lag_events", &[]), 0.0);
    assert_eq!(scraped.value("storywire_events_appended_total", &[]), 3.0);
    assert_eq!(scraped.publishes("Publish", "OK"), 3.0);
    drop(node.process);
}
