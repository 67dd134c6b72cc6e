//! Webhooks (`serve --webhooks`): every matching event reaches a real HTTP receiver in order, at
//! least once, through failures, a slow receiver and `kill -9` of the server, signed so that the
//! Standard Webhooks reference library (Python, scripts/verify_webhooks.py) verifies it; and a
//! bad webhooks file stops `serve` with a message naming the entry and the field.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
};

use crate::process::{self, Pipe, Running};
use crate::support::{http1, *};

/// The endpoints' secret in the tests, and one that is not it.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WRONG_SECRET: &str = "whsec_dGhpcyBpcyBub3QgdGhlIHJpZ2h0IGtleSE=";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    /// Its headers, by lowercase name.
    headers: BTreeMap<String, String>,
    /// Its body, as sent.
    body: String,
    /// Its `storywire-sequence`.
    sequence: u64,
}

/// How the receiver answers the `attempt`-th request (from 1) for the event at `sequence`.
type Answer =
    Arc<dyn Fn(u64, usize) -> Pin<Box<dyn Future<Output = StatusCode> + Send>> + Send + Sync>;

/// A real HTTP server on 127.0.0.1:0 that records every request, in the order they arrive,
/// before answering it as `answer` says.
struct Receiver {
    address: SocketAddr,
    /// Every request so far.
    deliveries: watch::Receiver<Vec<Delivery>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Recording {
    deliveries: Arc<watch::Sender<Vec<Delivery>>>,
    answer: Answer,
}

async fn record(State(recording): State<Recording>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers: BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let sequence = headers
        .get("storywire-sequence")
        .and_then(|s| s.parse().ok())
        .expect("a storywire-sequence header");
    let mut attempt = 0;
    recording.deliveries.send_modify(|deliveries| {
        deliveries.push(Delivery {
            headers,
            body: String::from_utf8(body.to_vec()).expect("a UTF-8 body"),
            sequence,
        });
        attempt = deliveries.iter().filter(|d| d.sequence == sequence).count();
    });
    (recording.answer)(sequence, attempt).await
}

/// The receiver's routes: `POST /hook` recorded, then answered as `answer` says; and every
/// request so far.
fn recording(answer: Answer) -> (Router, watch::Receiver<Vec<Delivery>>) {
    let (sender, deliveries) = watch::channel(Vec::new());
    let recording = Recording {
        deliveries: Arc::new(sender),
        answer,
    };
    let app = Router::new()
        .route("/hook", post(record))
        .with_state(recording);
    (app, deliveries)
}

impl Receiver {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (app, deliveries) = recording(answer);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Self {
            address,
            deliveries,
            _task: task,
        }
    }

    /// The same receiver serving HTTPS with `certificates`' server certificate (for localhost,
    /// signed by their CA), over HTTP/1.1.
    async fn start_tls(answer: Answer, certificates: &crate::tls::Certificates) -> Self {
        let tls = storywire::tls::ServerTls::load(certificates.server_files(None))
            .expect("the test certificates");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (app, deliveries) = recording(answer);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            address,
            deliveries,
            _task: task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    /// Waits (bounded) until the receiver has got a request for every sequence in `expected`.
    async fn until_received(&mut self, expected: &[u64]) -> Vec<Delivery> {
        let what = format!("deliveries of {} events", expected.len());
        within(
            &what,
            self.deliveries.wait_for(|deliveries| {
                expected
                    .iter()
                    .all(|s| deliveries.iter().any(|d| d.sequence == *s))
            }),
        )
        .await
        .expect("the receiver runs")
        .clone()
    }

    /// Waits (bounded) until the receiver has got `attempt` requests for `sequence`.
    async fn until_attempt(&mut self, sequence: u64, attempt: usize) {
        let what = format!("try {attempt} of event {sequence}");
        within(
            &what,
            self.deliveries.wait_for(|deliveries| {
                deliveries.iter().filter(|d| d.sequence == sequence).count() >= attempt
            }),
        )
        .await
        .expect("the receiver runs");
    }
}

/// A webhooks file in `dir` with one endpoint, "alerts", to `url`, for stories tagged "desk",
/// with short bounds so that retries take milliseconds.
fn webhooks_file(dir: &Path, url: &str, timeout_secs: f64) -> PathBuf {
    let path = dir.join("webhooks.json");
    let endpoints = serde_json::json!([{
        "name": "alerts",
        "url": url,
        "secret": SECRET,
        "tags": ["desk"],
        "timeout_secs": timeout_secs,
        "backoff_min_secs": 0.02,
        "backoff_max_secs": 0.1,
    }]);
    std::fs::write(&path, endpoints.to_string()).expect("write the webhooks file");
    path
}

/// Publishes a story tagged "desk" and `notes` notes to it, with a story tagged "sport" (which
/// the endpoint does not take) opened after the first note; returns the sequences of the "desk"
/// story's events, which are the ones the endpoint must get.
async fn publish_desk_and_sport(client: &mut StoryServiceClient, notes: u64) -> Vec<u64> {
    let mut requests = vec![open("desk-story", &["desk"]), note("desk-story", "Note 1")];
    requests.push(open("sport-story", &["sport"]));
    requests.extend((2..=notes).map(|n| note("desk-story", &format!("Note {n}"))));
    let published = publish_all(client, requests).await as u64;
    assert_eq!(published, notes + 2);
    (1..=published).filter(|&s| s != 3).collect()
}

type StoryServiceClient =
    storywire::pb::story_service_client::StoryServiceClient<tonic::transport::Channel>;

/// The sequences in the order they arrived, with each run of repeats (an event sent again after
/// its try failed or was cut off) made one: what a receiver dropping repeats by webhook-id sees.
fn without_repeats(deliveries: &[Delivery]) -> Vec<u64> {
    let mut sequences: Vec<u64> = deliveries.iter().map(|d| d.sequence).collect();
    sequences.dedup();
    sequences
}

fn tries(deliveries: &[Delivery]) -> HashMap<u64, usize> {
    let mut tries = HashMap::new();
    for delivery in deliveries {
        *tries.entry(delivery.sequence).or_default() += 1;
    }
    tries
}

/// Runs scripts/verify_webhooks.py with `secret` over `deliveries`: its exit code and output.
async fn verify_with_standardwebhooks(secret: &str, deliveries: &[Delivery]) -> (i32, String) {
    let input: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| serde_json::json!({"headers": d.headers, "body": d.body}))
        .collect();
    let input = serde_json::Value::Array(input).to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_webhooks.py");
    let mut command = tokio::process::Command::new("python3");
    command.args([script, secret]);
    let finished = process::run_with_input(command, Some(&input)).await;
    assert_ne!(
        finished.status.code(),
        Some(2),
        "verify_webhooks.py could not run (scripts/test installs standardwebhooks): {finished}"
    );
    (finished.status.code().unwrap_or(-1), finished.stdout)
}

#[tokio::test]
async fn a_failing_then_slow_receiver_gets_every_event_in_order_signed_with_repeats_only_of_the_one_in_flight()
 {
    // Event 6 (the desk story's fifth event) fails five times with 500, then is answered too
    // slowly (past the endpoint's 3 s timeout), then taken. The fifth failure is
    // held until the test has read /metrics, so that the endpoint is seen retrying.
    const FAILING: u64 = 6;
    let scraped = Arc::new(Notify::new());
    let held = scraped.clone();
    let answer: Answer = Arc::new(move |sequence, attempt| {
        let held = held.clone();
        Box::pin(async move {
            if sequence != FAILING {
                return StatusCode::NO_CONTENT;
            }
            match attempt {
                1..=4 => StatusCode::INTERNAL_SERVER_ERROR,
                5 => {
                    held.notified().await;
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                // A slow answer, not a wait for anything: the server gives up on it at 3 s.
                6 => {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    StatusCode::OK
                }
                _ => StatusCode::OK,
            }
        })
    });
    let mut receiver = Receiver::start(answer).await;
    let dir = TempDir::new("webhooks-retry");
    let file = webhooks_file(&dir.0, &receiver.url(), 3.0);
    let mut server = process::HttpServer::start(&["--webhooks", file.to_str().unwrap()]).await;
    let mut client = server.client().await;
    let expected = publish_desk_and_sport(&mut client, 20).await;

    receiver.until_attempt(FAILING, 5).await;
    let metrics = http1::get(server.http, "/metrics", &[]).await;
    assert_eq!(metrics.status, 200);
    for series in [
        r#"storywire_webhook_state{endpoint="alerts",state="retrying"} 1"#,
        r#"storywire_webhook_state{endpoint="alerts",state="delivering"} 0"#,
        r#"storywire_webhook_last_error{endpoint="alerts",kind="status"} 1"#,
        r#"storywire_webhook_last_error_status{endpoint="alerts"} 500"#,
        r#"storywire_webhook_failed_attempts_total{endpoint="alerts"} 4"#,
        r#"storywire_webhook_acknowledged_sequence{endpoint="alerts"} 5"#,
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} in {}",
            metrics.body
        );
    }
    let since = metrics
        .body
        .lines()
        .find_map(|line| {
            line.strip_prefix(r#"storywire_webhook_retrying_since_seconds{endpoint="alerts"} "#)
        })
        .expect("retrying_since");
    assert!(since.parse::<u64>().expect("unix seconds") > 1_700_000_000);
    assert!(
        !metrics.body.contains(&SECRET[6..]),
        "no secret in /metrics"
    );
    // The webhook families pass the parsers and promtool's rules, as every other does.
    crate::metrics::check("prometheus", &metrics.body);
    let consumer = crate::consumers::get(&mut client, "alerts").await;
    assert!(
        consumer.reading,
        "the deliverer reads the endpoint's consumer"
    );
    assert_eq!(consumer.acknowledged_sequence, FAILING - 1);
    assert_eq!(consumer.tags, ["desk"]);
    let webhook = consumer
        .webhook
        .expect("the endpoint's state on its consumer");
    assert_eq!(webhook.state(), storywire::pb::WebhookState::Retrying);
    assert!(webhook.last_error.contains("HTTP 500"), "{webhook:?}");
    assert_eq!(
        webhook
            .retrying_since
            .expect("retrying_since")
            .seconds
            .to_string(),
        since
    );
    scraped.notify_one();

    let deliveries = receiver.until_received(&expected).await;
    // Every matching event, in order, none missing, none of the other story's.
    assert_eq!(without_repeats(&deliveries), expected);
    // Repeats only of the event that was failing: 5 refusals, 1 answer too late, 1 taken.
    let tries = tries(&deliveries);
    assert_eq!(tries[&FAILING], 7, "{tries:?}");
    assert!(
        tries.iter().all(|(&s, &n)| s == FAILING || n == 1),
        "{tries:?}"
    );

    // The body is the event as proto3 JSON, and the headers name it.
    for delivery in &deliveries {
        let event: serde_json::Value = serde_json::from_str(&delivery.body).expect("JSON body");
        assert_eq!(event["sequence"], delivery.sequence.to_string());
        assert_eq!(event["eventId"], delivery.headers["webhook-id"]);
        assert_eq!(delivery.headers["content-type"], "application/json");
        assert!(!delivery.headers["storywire-log-id"].is_empty());
    }
    // Every try, retries included, verifies with the reference library; none with another key.
    let (code, output) = verify_with_standardwebhooks(SECRET, &deliveries).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        output.lines().filter(|l| *l == "ok").count(),
        deliveries.len()
    );
    let (code, output) = verify_with_standardwebhooks(WRONG_SECRET, &deliveries).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.lines().all(|l| l.starts_with("bad:")), "{output}");

    server.process.terminate().await;
    let log = server.process.read_to_end(Pipe::Stderr).await;
    assert!(
        log.iter()
            .any(|line| line.contains("webhook: delivery failed") && line.contains("HTTP 500")),
        "{log:#?}"
    );
    assert!(
        log.iter().all(|line| !line.contains(&SECRET[6..])),
        "no secret in the log: {log:#?}"
    );
}

/// The event in flight when the server (or the delivering node) is killed.
const IN_FLIGHT: u64 = 100;

/// An answer that takes every event at once, except the first try of `sequence`, which it holds
/// until the returned `Notify` is notified (the test kills the server meanwhile, so that the
/// kill lands with that event in flight), then takes too.
fn holding_the_first_try_of(sequence: u64) -> (Answer, Arc<Notify>) {
    let killed = Arc::new(Notify::new());
    let held = killed.clone();
    let answer: Answer = Arc::new(move |each, attempt| {
        let held = held.clone();
        Box::pin(async move {
            if each == sequence && attempt == 1 {
                held.notified().await;
            }
            StatusCode::OK
        })
    });
    (answer, killed)
}

/// Every expected event arrived, in order; the one in flight at the kill twice, every other once
/// (nothing acknowledged before the kill was sent again).
fn assert_every_event_once_but_the_one_in_flight(deliveries: &[Delivery], expected: &[u64]) {
    assert_eq!(without_repeats(deliveries), expected);
    let tries = tries(deliveries);
    assert_eq!(tries[&IN_FLIGHT], 2, "{tries:?}");
    assert!(
        tries.iter().all(|(&s, &n)| s == IN_FLIGHT || n == 1),
        "{tries:?}"
    );
}

/// `storywire serve --data-dir DIR --webhooks FILE`, fsync always.
async fn serve_with_webhooks(dir: &Path, file: &Path) -> (Running, String) {
    let mut command = process::storywire(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command
        .arg(dir)
        .args(["--fsync", "always", "--webhooks"])
        .arg(file);
    let mut serve = Running::spawn(command);
    let (address, _) = serve.listening_address().await;
    (serve, format!("http://{address}"))
}

#[tokio::test]
async fn after_kill_9_during_delivery_a_data_dir_server_delivers_every_event_in_order_with_no_gap()
{
    // The receiver holds its answer to event 100 until the server is dead: the kill lands with
    // that event in flight, and 1..=99 acknowledged.
    let (answer, killed) = holding_the_first_try_of(IN_FLIGHT);
    let mut receiver = Receiver::start(answer).await;
    let data = TempDir::new("webhooks-kill9");
    let config = TempDir::new("webhooks-kill9-config");
    let file = webhooks_file(&config.0, &receiver.url(), 30.0);

    let (mut serve, url) = serve_with_webhooks(&data.0, &file).await;
    let mut client = client_at(&url).await;
    let expected = publish_desk_and_sport(&mut client, 200).await;
    receiver.until_attempt(IN_FLIGHT, 1).await;
    serve.kill().await;
    killed.notify_one();

    let (mut serve, _) = serve_with_webhooks(&data.0, &file).await;
    let deliveries = receiver.until_received(&expected).await;
    assert_every_event_once_but_the_one_in_flight(&deliveries, &expected);
    serve.stop_cleanly().await;
}

#[tokio::test]
async fn an_endpoint_whose_consumer_exists_with_another_filter_stops_serve_naming_it() {
    let data = TempDir::new("webhooks-filter-taken");
    let config = TempDir::new("webhooks-filter-taken-config");
    let file = webhooks_file(&config.0, "http://127.0.0.1:9/hook", 1.0);
    let (mut serve, _) = serve_with_webhooks(&data.0, &file).await;
    serve.stop_cleanly().await;
    // The same endpoint, now for another tag: its kept position means another stream of events.
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace(r#"["desk"]"#, r#"["sport"]"#)).expect("write");
    let mut command = process::storywire(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(&data.0).args(["--webhooks"]).arg(&file);
    let finished = process::run(command).await;
    assert!(!finished.status.success(), "{finished}");
    assert!(
        finished
            .stderr
            .contains(r#"--webhooks: endpoint "alerts": its consumer: consumer alerts already exists with another filter"#),
        "{finished}"
    );
}

#[tokio::test]
async fn a_bad_webhooks_file_stops_serve_naming_the_entry_and_the_field() {
    let dir = TempDir::new("webhooks-bad");
    let good =
        serde_json::json!({"name": "good", "url": "http://127.0.0.1:9/hook", "secret": SECRET});
    let cases = [
        (
            serde_json::json!([good, {"name": "ftp", "url": "ftp://127.0.0.1/hook", "secret": SECRET}]),
            r#"entry 1 ("ftp"): url: must be an http:// or https:// URL"#,
        ),
        (
            serde_json::json!([{"name": "plain", "url": "http://127.0.0.1:9/", "secret": "hunter2-is-not-base64!"}]),
            r#"entry 0 ("plain"): secret: must be whsec_"#,
        ),
        (
            serde_json::json!([good, good.clone(), {"url": "http://127.0.0.1:9/", "secret": SECRET}]),
            "entry 1 (\"good\"): name: entry 0 has the same name",
        ),
        (
            serde_json::json!([good, {"url": "http://127.0.0.1:9/", "secret": SECRET}]),
            "entry 1: name: is required",
        ),
        (
            serde_json::json!([{"name": "odd", "url": "http://127.0.0.1:9/", "secret": "whsec_!!!!"}]),
            r#"entry 0 ("odd"): secret: the part after whsec_ is not standard base64"#,
        ),
    ];
    for (i, (entries, message)) in cases.iter().enumerate() {
        let file = dir.0.join(format!("bad-{i}.json"));
        std::fs::write(&file, entries.to_string()).expect("write");
        let command = process::storywire(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webhooks",
            file.to_str().unwrap(),
        ]);
        let finished = process::run(command).await;
        assert!(!finished.status.success(), "{finished}");
        assert!(finished.stderr.contains(message), "{message} in {finished}");
        assert!(
            !finished.stderr.contains("storywire listening"),
            "refused before listening: {finished}"
        );
        assert!(
            !finished.stderr.contains("hunter2"),
            "no secret echoed: {finished}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_one_node_delivers_another_takes_over_after_kill_9_with_no_gap_and_a_clean_stop_gives_the_lease_back()
 {
    // As for the data directory: event 100 is in flight when the delivering node dies.
    let (answer, killed) = holding_the_first_try_of(IN_FLIGHT);
    let mut receiver = Receiver::start(answer).await;
    let config = TempDir::new("webhooks-cluster");
    let file = webhooks_file(&config.0, &receiver.url(), 30.0);
    let file = file.to_str().unwrap();
    let cluster = storywire_testkit::nats::Cluster::start(3).await;
    let urls = cluster.urls();
    let delivers = "this node delivers the endpoint";
    let mut first = crate::node::Node::serving(&urls, "WEBHOOKS", &["--webhooks", file]).await;
    first.process.read_until(Pipe::Stderr, delivers).await;
    let mut second = crate::node::Node::serving(&urls, "WEBHOOKS", &["--webhooks", file]).await;
    second
        .process
        .read_until(Pipe::Stderr, "another node delivers the endpoint")
        .await;
    let mut client = second.client().await;
    let standing_by = crate::consumers::get(&mut client, "alerts")
        .await
        .webhook
        .expect("the endpoint's state");
    assert_eq!(standing_by.state(), storywire::pb::WebhookState::Standby);
    let expected = publish_desk_and_sport(&mut client, 200).await;
    receiver.until_attempt(IN_FLIGHT, 1).await;
    // Only the lease holder delivers: every try so far came while the second node waited.
    first.process.kill().await;
    killed.notify_one();

    // The second takes the lease once it expires, and goes on from the first's position.
    second.process.read_until(Pipe::Stderr, delivers).await;
    let deliveries = receiver.until_received(&expected).await;
    assert_every_event_once_but_the_one_in_flight(&deliveries, &expected);

    // Stopped cleanly, a node gives its lease back at once rather than letting it expire.
    second.process.stop_cleanly().await;
    let nats = within("a NATS connection", async_nats::connect(cluster.url(0)))
        .await
        .expect("connect");
    let leases = within(
        "the leases bucket",
        async_nats::jetstream::new(nats).get_key_value("WEBHOOKS-webhooks"),
    )
    .await
    .expect("the leases bucket");
    let lease = within("the lease", leases.entry("alerts"))
        .await
        .expect("read the lease");
    assert!(
        lease
            .as_ref()
            .is_none_or(|entry| entry.operation != async_nats::jetstream::kv::Operation::Put),
        "the lease is given back: {lease:?}"
    );
}

#[tokio::test]
async fn an_https_endpoint_is_delivered_over_tls_checked_against_the_system_roots() {
    let certificates = crate::tls::Certificates::new();
    let answer: Answer = Arc::new(|_, _| Box::pin(async { StatusCode::OK }));
    let mut receiver = Receiver::start_tls(answer, &certificates).await;
    let dir = TempDir::new("webhooks-https");
    let url = format!("https://localhost:{}/hook", receiver.address.port());
    let file = webhooks_file(&dir.0, &url, 10.0);
    // The system's roots, as rustls-native-certs reads them, are the test CA alone.
    let mut command = process::storywire(&["serve", "--listen", "127.0.0.1:0", "--webhooks"]);
    command
        .arg(&file)
        .env("SSL_CERT_FILE", certificates.path("ca.pem"));
    let mut serve = Running::spawn(command);
    let (address, _) = serve.listening_address().await;
    let mut client = client_at(&format!("http://{address}")).await;
    let expected = publish_desk_and_sport(&mut client, 3).await;
    let deliveries = receiver.until_received(&expected).await;
    assert_eq!(without_repeats(&deliveries), expected);
    let (code, output) = verify_with_standardwebhooks(SECRET, &deliveries).await;
    assert_eq!(code, 0, "{output}");
    serve.stop_cleanly().await;
}
