//! Named consumers: the server keeps a pipeline's filter and position, so that it resumes with
//! only the name after a disconnect, a `kill -9` of a `--data-dir` server or of the cluster node
//! it read through, gets exactly what it had not acknowledged, and never skips an event, even
//! with a second reader waiting.

use std::{path::Path, sync::Arc};

use storywire::{
    auth::Tokens,
    clock::SystemClock,
    consumers::Consumers,
    log::EventLog,
    pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item},
    server::ServerOptions,
    wal::{FsyncMode, WalConfig},
};
use tonic::{Code, Streaming, transport::Channel};

use crate::process::{self, Pipe, Running};
use crate::support::*;

/// How many events the resumption tests publish, and how often their reader acknowledges.
const EVENTS: u64 = 500;
const ACK_EVERY: u64 = 50;
/// Where the reader is cut off: in the middle of the sixth batch, so that 251..=275 were read and
/// not acknowledged.
const CUT_AT: u64 = 275;
/// How long a reader must go on waiting to show that it waits: far longer than a Subscribe on
/// loopback takes to answer.
const NOTHING_HAPPENS: std::time::Duration = std::time::Duration::from_millis(300);

/// Publishes a story and `EVENTS - 1` notes to it: sequences 1..=EVENTS.
async fn publish_events(client: &mut StoryServiceClient<Channel>) {
    let mut requests = vec![open("story", &["desk"])];
    requests.extend((2..=EVENTS).map(|n| note("story", &format!("Update {n}"))));
    assert_eq!(publish_all(client, requests).await as u64, EVENTS);
}

/// Publishes sequences 1..=EVENTS and creates consumer "pipeline" to read them from the start.
async fn publish_events_for_a_pipeline(client: &mut StoryServiceClient<Channel>) {
    publish_events(client).await;
    let created = within(
        "create",
        client.create_consumer(create("pipeline", Some(1))),
    )
    .await;
    created.expect("created");
}

fn create(name: &str, from_sequence: Option<u64>) -> pb::CreateConsumerRequest {
    pb::CreateConsumerRequest {
        name: name.to_owned(),
        from_sequence,
        ..Default::default()
    }
}

/// A Subscribe that reads consumer `name` and gives nothing else.
fn reading(name: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        consumer: name.to_owned(),
        ..Default::default()
    }
}

fn ack_request(name: &str, sequence: u64, log_id: &str) -> pb::AckRequest {
    pb::AckRequest {
        consumer: name.to_owned(),
        sequence,
        log_id: log_id.to_owned(),
    }
}

async fn ack(client: &mut StoryServiceClient<Channel>, name: &str, sequence: u64) -> pb::Consumer {
    within("ack", client.ack(ack_request(name, sequence, "")))
        .await
        .expect("ack accepted")
        .into_inner()
        .consumer
        .expect("consumer set")
}

/// Consumer `name` as GetConsumer answers it.
pub(crate) async fn get(client: &mut StoryServiceClient<Channel>, name: &str) -> pb::Consumer {
    let request = pb::GetConsumerRequest {
        name: name.to_owned(),
    };
    within("get_consumer", client.get_consumer(request))
        .await
        .expect("get_consumer")
        .into_inner()
        .consumer
        .expect("consumer set")
}

/// Reads consumer "pipeline" from the start, acknowledging every `ACK_EVERY` events, and is cut
/// off (drops its stream) after reading `CUT_AT`, mid-batch.
async fn read_and_cut_off(client: &mut StoryServiceClient<Channel>) {
    let mut stream = subscribe(client, reading("pipeline")).await;
    for expected in 1..=CUT_AT {
        let event = next_event(&mut stream).await;
        assert_eq!(event.sequence, expected);
        if expected % ACK_EVERY == 0 {
            let consumer = ack(client, "pipeline", expected).await;
            assert_eq!(consumer.acknowledged_sequence, expected);
        }
    }
    drop(stream);
}

/// Resumes consumer "pipeline" with only its name and expects exactly the unacknowledged tail,
/// 251..=EVENTS, then caught_up.
async fn expect_the_unacknowledged_tail(client: &mut StoryServiceClient<Channel>) {
    let mut stream = subscribe(client, reading("pipeline")).await;
    let (events, caught_up) = until_caught_up(&mut stream).await;
    let resumed_from = CUT_AT / ACK_EVERY * ACK_EVERY + 1;
    assert_eq!(
        sequences(&events),
        (resumed_from..=EVENTS).collect::<Vec<_>>()
    );
    assert_eq!(caught_up.head_sequence, EVENTS);
}

#[tokio::test]
async fn a_consumer_cut_off_mid_batch_resumes_with_its_name_alone_from_the_unacknowledged_tail() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish_events_for_a_pipeline(&mut client).await;

    read_and_cut_off(&mut client).await;
    let consumer = get(&mut client, "pipeline").await;
    assert_eq!(consumer.acknowledged_sequence, 250);
    assert_eq!(consumer.lag, EVENTS - 250);
    assert!(consumer.last_acknowledged_at.is_some());

    expect_the_unacknowledged_tail(&mut client).await;
    server.stop().await;
}

/// `storywire serve` on `dir`, fsync always, and its URL.
async fn serve_on(dir: &Path) -> (Running, String) {
    let mut command = process::storywire(&["serve", "--listen", "127.0.0.1:0", "--data-dir"]);
    command.arg(dir).args(["--fsync", "always"]);
    let mut serve = Running::spawn(command);
    let (address, _) = serve.listening_address().await;
    (serve, format!("http://{address}"))
}

#[tokio::test]
async fn a_consumer_of_a_data_dir_server_resumes_exactly_after_kill_9() {
    let dir = TempDir::new("consumer-kill9");
    let (mut serve, url) = serve_on(&dir.0).await;
    let mut client = client_at(&url).await;
    publish_events_for_a_pipeline(&mut client).await;
    read_and_cut_off(&mut client).await;
    serve.kill().await;

    let (mut serve, url) = serve_on(&dir.0).await;
    let mut client = client_at(&url).await;
    let consumer = get(&mut client, "pipeline").await;
    assert_eq!(consumer.acknowledged_sequence, 250);
    expect_the_unacknowledged_tail(&mut client).await;
    serve.stop_cleanly().await;
}

#[tokio::test]
async fn a_second_reader_waits_for_the_first_and_starts_after_what_it_acknowledged() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish_events_for_a_pipeline(&mut client).await;
    let mut first = subscribe(&mut client, reading("pipeline")).await;
    for _ in 1..=100 {
        next_event(&mut first).await;
    }

    let mut second_client = server.client().await;
    let mut second = tokio::spawn(async move {
        let stream = subscribe(&mut second_client, reading("pipeline")).await;
        (second_client, stream)
    });
    // The first reader goes on undisturbed while the second waits for its turn.
    for expected in 101..=120 {
        assert_eq!(next_event(&mut first).await.sequence, expected);
    }
    ack(&mut client, "pipeline", 120).await;
    assert!(get(&mut client, "pipeline").await.reading);
    // A check that nothing happens, so bounded by a time: the second reader must still be
    // waiting well after the first has read and acknowledged 20 more events.
    let waited = tokio::time::timeout(NOTHING_HAPPENS, &mut second).await;
    assert!(waited.is_err(), "the second reader must wait its turn");
    drop(first);

    let (_second_client, mut stream): (_, Streaming<pb::SubscribeResponse>) =
        within("the second reader's turn", second)
            .await
            .expect("task");
    let (events, _) = until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), (121..=EVENTS).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn consumer_requests_are_refused_with_the_field_the_name_or_the_sequence_at_fault() {
    let server = TestServer::with_retention(100).await;
    let mut client = server.client().await;
    publish_events(&mut client).await;

    let bad_name = client.create_consumer(create("Not A Name", None)).await;
    expect_status(bad_name, Code::InvalidArgument, &["name"]);
    let mut bad_filter = create("tagged", None);
    bad_filter.tags = vec!["Bad Tag".to_owned()];
    let bad_filter = client.create_consumer(bad_filter).await;
    expect_status(bad_filter, Code::InvalidArgument, &["tags"]);
    let evicted = client.create_consumer(create("old", Some(1))).await;
    expect_status(
        evicted,
        Code::OutOfRange,
        &["first retained sequence is 401"],
    );

    // Created from the head when no start is given; again with the same filter, unchanged.
    let created = client
        .create_consumer(create("live", None))
        .await
        .expect("created");
    let created = created.into_inner();
    assert!(created.created);
    assert_eq!(
        created.consumer.as_ref().map(|c| c.acknowledged_sequence),
        Some(EVENTS)
    );
    let again = client
        .create_consumer(create("live", Some(450)))
        .await
        .expect("idempotent");
    assert!(!again.get_ref().created);
    assert_eq!(again.into_inner().consumer, created.consumer);
    let mut other_filter = create("live", None);
    other_filter.story_ids = vec!["story".to_owned()];
    let taken = client.create_consumer(other_filter).await;
    expect_status(taken, Code::AlreadyExists, &["live", "another filter"]);

    let unknown = client
        .get_consumer(pb::GetConsumerRequest {
            name: "nobody".into(),
        })
        .await;
    expect_status(unknown, Code::NotFound, &["nobody"]);
    let unknown = client.subscribe(reading("nobody")).await;
    expect_status(unknown, Code::NotFound, &["nobody"]);
    let mut with_filter = reading("live");
    with_filter.from_sequence = Some(1);
    expect_status(
        client.subscribe(with_filter).await,
        Code::InvalidArgument,
        &["from_sequence"],
    );
    let beyond = client.ack(ack_request("live", EVENTS + 1, "")).await;
    expect_status(beyond, Code::OutOfRange, &["beyond the head"]);
    let zero = client.ack(ack_request("live", 0, "")).await;
    expect_status(zero, Code::InvalidArgument, &["sequence"]);
    let other_log = client.ack(ack_request("live", 1, "another")).await;
    expect_status(other_log, Code::FailedPrecondition, &["another"]);
    // Acknowledgements are cumulative: a lower one leaves the position where it is.
    assert_eq!(
        ack(&mut client, "live", 10).await.acknowledged_sequence,
        EVENTS
    );

    // A consumer left behind by retention: OUT_OF_RANGE naming the first retained sequence.
    let behind = client
        .create_consumer(create("behind", Some(401)))
        .await
        .expect("created");
    assert_eq!(
        behind
            .into_inner()
            .consumer
            .map(|c| c.acknowledged_sequence),
        Some(400)
    );
    let more = (1..=50).map(|n| note("story", &format!("More {n}")));
    publish_all(&mut client, more).await;
    let fell_behind = client.subscribe(reading("behind")).await;
    expect_status(
        fell_behind,
        Code::OutOfRange,
        &["first retained sequence is 451"],
    );

    let names = client
        .list_consumers(pb::ListConsumersRequest {})
        .await
        .expect("list");
    let names: Vec<_> = names
        .into_inner()
        .consumers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["behind", "live"]);
    client
        .delete_consumer(pb::DeleteConsumerRequest {
            name: "behind".into(),
        })
        .await
        .expect("deleted");
    let gone = client
        .delete_consumer(pb::DeleteConsumerRequest {
            name: "behind".into(),
        })
        .await;
    expect_status(gone, Code::NotFound, &["behind"]);
    server.stop().await;
}

/// A server over `log` keeping its consumers in `dir`, with a story published, and a client.
async fn serve_with_consumers_of(
    dir: &Path,
    log: Arc<EventLog>,
) -> (TestServer, StoryServiceClient<Channel>) {
    let consumers = Consumers::open(dir, Arc::new(SystemClock)).expect("consumers");
    let options = ServerOptions {
        consumers: Some(consumers),
        ..Default::default()
    };
    let server = TestServer::over_with(log, options).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    (server, client)
}

#[tokio::test]
async fn a_consumer_kept_for_another_log_id_is_refused_as_a_failed_precondition() {
    let dir = TempDir::new("consumer-other-log");
    let config = WalConfig::new(&dir.0, FsyncMode::Always);
    let log = EventLog::open(1_000, Arc::new(SystemClock), &config).expect("open");
    let (server, mut client) = serve_with_consumers_of(&dir.0, log).await;
    within(
        "create",
        client.create_consumer(create("pipeline", Some(1))),
    )
    .await
    .expect("created");
    server.stop().await;

    // The same consumers beside a log of another id, as after a repair that cut below the
    // snapshot: their positions mean nothing there.
    let log = Arc::new(EventLog::new(1_000, Arc::new(SystemClock)));
    let (server, mut client) = serve_with_consumers_of(&dir.0, log).await;
    let refused = client.subscribe(reading("pipeline")).await;
    expect_status(
        refused,
        Code::FailedPrecondition,
        &["pipeline", "delete it"],
    );
    let request = ack_request("pipeline", 1, "");
    expect_status(
        client.ack(request).await,
        Code::FailedPrecondition,
        &["pipeline"],
    );
    server.stop().await;
}

#[tokio::test]
async fn consumers_need_the_consume_role() {
    let tokens = Tokens::parse(
        "reader subscribe reader-token-0123456789\npipeline subscribe,consume pipeline-token-0123456789\n",
    )
    .expect("tokens");
    let options = ServerOptions {
        tokens: Some(Arc::new(tokens)),
        ..Default::default()
    };
    let server = TestServer::with_options(options).await;
    let with = |token: &str| {
        let value: tonic::metadata::MetadataValue<_> =
            format!("Bearer {token}").parse().expect("header");
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
            Ok(request)
        }
    };
    let channel = server.channel().await;
    let mut reader =
        StoryServiceClient::with_interceptor(channel.clone(), with("reader-token-0123456789"));
    let mut pipeline =
        StoryServiceClient::with_interceptor(channel, with("pipeline-token-0123456789"));

    let refused = reader.create_consumer(create("pipeline", None)).await;
    expect_status(refused, Code::PermissionDenied, &["consume"]);
    pipeline
        .create_consumer(create("pipeline", None))
        .await
        .expect("created");
    let refused = reader.subscribe(reading("pipeline")).await;
    expect_status(refused, Code::PermissionDenied, &["consume"]);
    let mut stream = pipeline
        .subscribe(reading("pipeline"))
        .await
        .expect("subscribed")
        .into_inner();
    let first = within("started", stream.message())
        .await
        .expect("item")
        .expect("open");
    assert!(matches!(first.item, Some(Item::Started(_))));
    server.stop().await;
}

/// Waits until consumer `name` has acknowledged `sequence`. The acknowledging client is another
/// process, and the server offers nothing to wait on, so this polls, every 10 ms, within the
/// usual bound.
async fn until_acknowledged(client: &mut StoryServiceClient<Channel>, name: &str, sequence: u64) {
    within("the acknowledgement", async {
        while get(client, name).await.acknowledged_sequence < sequence {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The sequences of the event lines `storywire subscribe` printed (`#12    2019-01-03 ...`).
fn printed_sequences(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|line| {
            line.strip_prefix('#')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test]
async fn the_cli_acknowledges_what_it_printed_so_a_rerun_after_kill_9_goes_on_after_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut requests = vec![open("story", &[])];
    requests.extend((2..=20).map(|n| note("story", &format!("Update {n}"))));
    publish_all(&mut client, requests).await;
    let created = client.create_consumer(create("cli", Some(1))).await;
    created.expect("created");
    let url = server.url();
    let subscribe = || process::storywire(&["subscribe", "--consumer", "cli", "--server", &url]);

    let mut first = Running::spawn(subscribe());
    let lines = first.read_until(Pipe::Stdout, "caught up at #20").await;
    assert_eq!(printed_sequences(&lines), (1..=20).collect::<Vec<_>>());
    until_acknowledged(&mut client, "cli", 20).await;
    first.kill().await;

    let more = (21..=25).map(|n| note("story", &format!("Update {n}")));
    publish_all(&mut client, more).await;
    let mut second = Running::spawn(subscribe());
    let lines = second.read_until(Pipe::Stdout, "caught up at #25").await;
    assert_eq!(printed_sequences(&lines), (21..=25).collect::<Vec<_>>());
    until_acknowledged(&mut client, "cli", 25).await;
    second.kill().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_through_another_node_after_kill_9_of_the_first() {
    let cluster = storywire_testkit::nats::Cluster::start(3).await;
    let urls = cluster.urls();
    let mut first = crate::node::Node::serving(&urls, "CONSUMERS", &[]).await;
    let second = crate::node::Node::serving(&urls, "CONSUMERS", &[]).await;
    let mut client = first.client().await;
    publish_events_for_a_pipeline(&mut client).await;
    read_and_cut_off(&mut client).await;
    first.process.kill().await;

    let mut client = second.client().await;
    let consumer = get(&mut client, "pipeline").await;
    assert_eq!(consumer.acknowledged_sequence, 250);
    expect_the_unacknowledged_tail(&mut client).await;
}

#[tokio::test]
async fn a_deliverer_inside_the_server_reads_and_acknowledges_through_the_rust_api() {
    // What a webhook sender in the server would do: the same consumers the gRPC face serves.
    let consumers = Consumers::in_memory(Arc::new(SystemClock));
    let options = ServerOptions {
        consumers: Some(consumers.clone()),
        ..Default::default()
    };
    let server = TestServer::with_options(options).await;
    let mut client = server.client().await;
    publish_events_for_a_pipeline(&mut client).await;
    let log = server.log.clone();

    let mut attached = consumers.attach(&log, "pipeline").await.expect("attached");
    let batch = attached.next_batch(&log, 100).await.expect("a batch");
    let read: Vec<u64> = batch.events.iter().map(|event| event.sequence).collect();
    assert_eq!(read, (1..=100).collect::<Vec<_>>());
    let consumer = consumers.ack(&log, "pipeline", 60).await.expect("ack");
    assert_eq!(consumer.acknowledged_sequence, 60);
    // While this reader holds the consumer, a gRPC reader waits for it.
    assert!(get(&mut client, "pipeline").await.reading);
    drop(attached);

    // The next reader, here a gRPC one, goes on after what was acknowledged.
    let mut stream = subscribe(&mut client, reading("pipeline")).await;
    assert_eq!(next_event(&mut stream).await.sequence, 61);
    drop(stream);

    // A reader at the head waits for the next event, and gets it once published.
    let mut attached = consumers.attach(&log, "pipeline").await.expect("attached");
    within("reading to the head", async {
        let mut last = 0;
        while last < EVENTS {
            let batch = attached.next_batch(&log, 1_000).await.expect("a batch");
            last = batch.events.last().expect("an event").sequence;
        }
    })
    .await;
    let waiting = tokio::spawn(async move {
        let batch = attached.next_batch(&log, 10).await.expect("a batch");
        batch
            .events
            .iter()
            .map(|event| event.sequence)
            .collect::<Vec<_>>()
    });
    publish(&mut client, note("story", "After the head")).await;
    assert_eq!(
        within("the next batch", waiting).await.expect("task"),
        [EVENTS + 1]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_consumers_file_this_build_cannot_read_stops_start_up_naming_it() {
    let dir = TempDir::new("consumers-unknown");
    let file = dir.0.join(storywire::consumers::CONSUMERS_FILE);
    std::fs::write(&file, b"SWCN9999 a later format").expect("write");
    let refused = Consumers::open(&dir.0, Arc::new(SystemClock)).expect_err("refused");
    let said = refused.to_string();
    assert!(said.contains(&file.display().to_string()), "{said}");
    assert!(said.contains("SWCN0001"), "{said}");
}
