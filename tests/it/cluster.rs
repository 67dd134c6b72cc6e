//! Cluster mode (`serve --nats`) against a real three-server JetStream cluster on loopback and
//! real storywire nodes: the same events at the same sequences on every node; clients moving to
//! another node when one is killed; a JetStream leader killed under publishers; two nodes racing
//! on one story; a node that starts after retention evicted events; a node cut off from NATS.
//!
//! Every process is stopped by PID when its handle drops, and every wait has a deadline.

use crate::{node, process, support};

use std::collections::HashMap;

use node::{
    Node, all_events, assert_exactly_once, opening, publish_until_acknowledged, receive_through,
    subscribe, update,
};
use process::Pipe;
use storywire::pb;
use storywire_testkit::nats::Cluster;
use support::{change_mut, client_at, open, report, within};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Starts a node on `stream` that must refuse to start; returns what it said.
async fn refused_start(servers: &str, stream: &str) -> String {
    let mut refused = Node::spawn(servers, stream, &[]);
    let status = refused.wait().await;
    let said = refused.read_to_end(Pipe::Stderr).await.join("\n");
    assert!(!status.success(), "{said}");
    said
}

/// Every story a node holds, paging through ListStories.
async fn all_stories(node: &Node) -> Vec<pb::Story> {
    let mut client = node.client().await;
    let mut stories = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_stories(pb::ListStoriesRequest {
                page_token: page_token.clone(),
                page_size: 500,
                ..Default::default()
            })
            .await
            .expect("ListStories")
            .into_inner();
        stories.extend(page.stories);
        if page.next_page_token.is_empty() {
            return stories;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_any_node_arrive_at_the_same_sequences_on_every_node() {
    let cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let nodes = [
        Node::serving(&urls, "SAME", &[]).await,
        Node::serving(&urls, "SAME", &[]).await,
        Node::serving(&urls, "SAME", &[]).await,
    ];
    let mut subscriptions = Vec::new();
    for node in &nodes {
        subscriptions.push(subscribe(node, 1, "").await);
    }
    let log_ids: Vec<String> = subscriptions
        .iter()
        .map(|(log_id, _)| log_id.clone())
        .collect();
    assert!(log_ids.iter().all(|id| *id == log_ids[0]), "{log_ids:?}");

    let node_urls: Vec<String> = nodes.iter().map(|node| node.url.clone()).collect();
    let mut acknowledged = HashMap::new();
    for story in 0..3 {
        let story_id = format!("story-{story}");
        let receipt = publish_until_acknowledged(
            &node_urls,
            story,
            &opening(&story_id, &format!("open-{story}")),
        )
        .await;
        acknowledged.insert(receipt.event_id, receipt.sequence);
    }
    for i in 0..27 {
        let request = update(&format!("story-{}", i % 3), &format!("fact-{i}"));
        let receipt = publish_until_acknowledged(&node_urls, i % 3, &request).await;
        acknowledged.insert(receipt.event_id, receipt.sequence);
    }
    // A retry through another node is the same event; a different update with its id is refused.
    let retried = update("story-1", "fact-1");
    let original = acknowledged["fact-1"];
    for url in &node_urls {
        let receipt = client_at(url)
            .await
            .publish(retried.clone())
            .await
            .expect("a retry")
            .into_inner();
        assert_eq!((receipt.sequence, receipt.duplicate), (original, true));
        let mut reused = update("story-2", "fact-1");
        reused.headline = "Another update".to_owned();
        let refused = client_at(url)
            .await
            .publish(reused)
            .await
            .expect_err("a reused event_id");
        assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    }

    let mut received = Vec::new();
    for (_, events) in &mut subscriptions {
        let mut into = Vec::new();
        receive_through(events, 30, &mut into).await;
        received.push(into);
    }
    for events in &received {
        assert_exactly_once(events, 1, &acknowledged);
        assert_eq!(events, &received[0], "every node delivers the same events");
    }
    // Who published travels in the stream's messages (these nodes take no tokens).
    assert!(
        received[0].iter().all(|e| e.published_by == "anonymous"),
        "{:?}",
        received[0]
            .iter()
            .map(|e| &e.published_by)
            .collect::<Vec<_>>()
    );
    for node in &nodes {
        let (events, first, log_id) = all_events(node).await;
        assert_eq!((first, &log_id), (1, &log_ids[0]));
        assert_eq!(events, received[0], "ListEvents on {}", node.url);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_node_resume_on_another_without_gap_or_duplicate() {
    let cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let mut doomed = Node::serving(&urls, "KILL", &[]).await;
    let survivor = Node::serving(&urls, "KILL", &[]).await;
    let node_urls = vec![doomed.url.clone(), survivor.url.clone()];

    let (log_id, mut events) = subscribe(&doomed, 1, "").await;
    let publisher = {
        let node_urls = node_urls.clone();
        tokio::spawn(async move {
            let mut acknowledged = HashMap::new();
            let receipt =
                publish_until_acknowledged(&node_urls, 0, &opening("kill", "kill-open")).await;
            acknowledged.insert(receipt.event_id, receipt.sequence);
            for i in 0..150 {
                let receipt = publish_until_acknowledged(
                    &node_urls,
                    0,
                    &update("kill", &format!("kill-{i}")),
                )
                .await;
                acknowledged.insert(receipt.event_id, receipt.sequence);
            }
            acknowledged
        })
    };

    let mut received = Vec::new();
    receive_through(&mut events, 50, &mut received).await;
    doomed.process.kill().await;
    // The subscription on the killed node ends; whatever it delivered before stands.
    while let Some(event) = within("the killed node's stream to end", events.recv()).await {
        received.push(event);
    }
    let last = received.last().expect("events before the kill").sequence;
    let (resumed_log_id, mut events) = subscribe(&survivor, last + 1, &log_id).await;
    assert_eq!(resumed_log_id, log_id);

    let acknowledged = within("the publisher", publisher).await.expect("publisher");
    let newest = *acknowledged.values().max().expect("acknowledged events");
    receive_through(&mut events, newest, &mut received).await;
    assert_exactly_once(&received, 1, &acknowledged);
    let (in_log, first, _) = all_events(&survivor).await;
    assert_exactly_once(&in_log, first, &acknowledged);
    assert_eq!(
        in_log.len(),
        acknowledged.len(),
        "nothing unacknowledged in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_no_acknowledged_publish() {
    let mut cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let nodes = [
        Node::serving(&urls, "LEADER", &[]).await,
        Node::serving(&urls, "LEADER", &[]).await,
    ];
    let node_urls: Vec<String> = nodes.iter().map(|node| node.url.clone()).collect();
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    let mut publishers = Vec::new();
    for publisher in 0..4 {
        let node_urls = node_urls.clone();
        let progress = progress_tx.clone();
        publishers.push(tokio::spawn(async move {
            let story_id = format!("leader-{publisher}");
            let mut acknowledged = HashMap::new();
            let receipt = publish_until_acknowledged(
                &node_urls,
                publisher % 2,
                &opening(&story_id, &format!("{story_id}-open")),
            )
            .await;
            acknowledged.insert(receipt.event_id, receipt.sequence);
            for i in 0..40 {
                let request = update(&story_id, &format!("{story_id}-{i}"));
                let receipt = publish_until_acknowledged(&node_urls, publisher % 2, &request).await;
                acknowledged.insert(receipt.event_id, receipt.sequence);
                let _ = progress.send(());
            }
            acknowledged
        }));
    }
    drop(progress_tx);
    // Kill the leader once the publishers are well under way.
    for _ in 0..40 {
        within("publishers' progress", progress.recv()).await;
    }
    let leader = cluster.stream_leader("LEADER").await;
    cluster.kill(leader).await;

    let mut acknowledged = HashMap::new();
    for publisher in publishers {
        acknowledged.extend(within("a publisher", publisher).await.expect("publisher"));
    }
    assert_eq!(acknowledged.len(), 4 * 41);
    cluster.restart(leader).await;
    let newest = *acknowledged.values().max().expect("acknowledged");
    let mut logs = Vec::new();
    for node in &nodes {
        let (events, first, _) = all_events(node).await;
        assert_eq!(first, 1);
        assert!(events.last().is_some_and(|e| e.sequence >= newest));
        assert_exactly_once(&events, first, &acknowledged);
        assert_eq!(
            events.len(),
            acknowledged.len(),
            "nothing unacknowledged in the log"
        );
        logs.push(events);
    }
    assert_eq!(logs[0], logs[1], "both nodes hold the same log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_on_one_story_have_exactly_one_winner_every_round() {
    let cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let a = Node::serving(&urls, "RACE", &[]).await;
    let b = Node::serving(&urls, "RACE", &[]).await;
    let (mut client_a, mut client_b) = (a.client().await, b.client().await);
    for round in 0..200 {
        let story_id = format!("race-{round}");
        let (first, second) = tokio::join!(
            client_a.publish(open(&story_id, &[])),
            client_b.publish(open(&story_id, &[]))
        );
        let codes = [code(&first), code(&second)];
        assert!(
            codes == [Code::Ok, Code::AlreadyExists] || codes == [Code::AlreadyExists, Code::Ok],
            "round {round}, opening: {first:?} {second:?}"
        );

        let mut on_a = report(&story_id, "a");
        on_a.expected_version = Some(1);
        let mut on_b = report(&story_id, "b");
        on_b.expected_version = Some(1);
        let (first, second) = tokio::join!(client_a.publish(on_a), client_b.publish(on_b));
        let codes = [code(&first), code(&second)];
        assert!(
            codes == [Code::Ok, Code::Aborted] || codes == [Code::Aborted, Code::Ok],
            "round {round}, expected_version: {first:?} {second:?}"
        );
    }
}

/// The code of a call's outcome (OK for a response).
fn code<T>(outcome: &Result<T, tonic::Status>) -> Code {
    outcome
        .as_ref()
        .map_or_else(tonic::Status::code, |_| Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_retention_evicted_events_serves_what_the_others_serve() {
    let cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let retain = ["--retain-events", "20"];
    let a = Node::serving(&urls, "RETAIN", &retain).await;
    let b = Node::serving(&urls, "RETAIN", &retain).await;
    let node_urls = vec![a.url.clone(), b.url.clone()];
    for story in 0..5 {
        let story_id = format!("kept-{story}");
        publish_until_acknowledged(&node_urls, story % 2, &opening(&story_id, &story_id)).await;
    }
    for i in 0..95 {
        let request = update(&format!("kept-{}", i % 5), &format!("kept-fact-{i}"));
        publish_until_acknowledged(&node_urls, i % 2, &request).await;
    }
    let (old_events, first, log_id) = all_events(&a).await;
    assert_eq!((first, old_events.len()), (81, 20), "the stream evicted");

    let late = Node::serving(&urls, "RETAIN", &retain).await;
    let (events, late_first, late_log_id) = all_events(&late).await;
    assert_eq!((late_first, &late_log_id), (first, &log_id));
    assert_eq!(
        events, old_events,
        "the same retained events, byte for byte"
    );
    let stories = all_stories(&a).await;
    assert_eq!(stories.len(), 5);
    assert_eq!(all_stories(&late).await, stories);
    let mut client = late.client().await;
    for story in &stories {
        let got = client
            .get_story(pb::GetStoryRequest {
                story_id: story.id.clone(),
                as_of_version: None,
            })
            .await
            .expect("GetStory")
            .into_inner()
            .story;
        assert_eq!(got.as_ref(), Some(story));
    }

    // Without the snapshots, a new node would hold a hole: it refuses to start, naming both ends.
    let nats = async_nats::connect(cluster.url(0)).await.expect("connect");
    async_nats::jetstream::new(nats)
        .delete_object_store("RETAIN_snapshots")
        .await
        .expect("delete the snapshots");
    let said = refused_start(&urls, "RETAIN").await;
    assert!(
        said.contains("starts at sequence 81") && said.contains("as of sequence 0"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_refuses_publishes_and_resumes_its_subscribers_in_order() {
    let mut cluster = Cluster::start(3).await;
    // The node under test reaches only the first server; the other node the other two.
    let cut_off = Node::serving(&cluster.url(0), "CUT", &[]).await;
    let other = Node::serving(
        &format!("{},{}", cluster.url(1), cluster.url(2)),
        "CUT",
        &[],
    )
    .await;
    let other_url = vec![other.url.clone()];
    publish_until_acknowledged(&other_url, 0, &opening("cut", "cut-open")).await;
    let (log_id, mut events) = subscribe(&cut_off, 1, "").await;
    let mut received = Vec::new();
    receive_through(&mut events, 1, &mut received).await;

    cluster.stop(0).await;
    cut_off.until_health(ServingStatus::NotServing).await;
    let refused = cut_off
        .client()
        .await
        .publish(update("cut", "cut-refused"))
        .await
        .expect_err("no publish without JetStream");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let mut acknowledged = HashMap::from([("cut-open".to_owned(), 1)]);
    for i in 0..10 {
        let receipt =
            publish_until_acknowledged(&other_url, 0, &update("cut", &format!("cut-{i}"))).await;
        acknowledged.insert(receipt.event_id, receipt.sequence);
    }

    cluster.restart(0).await;
    cut_off.until_health(ServingStatus::Serving).await;
    let newest = *acknowledged.values().max().expect("acknowledged");
    receive_through(&mut events, newest, &mut received).await;
    assert_exactly_once(&received, 1, &acknowledged);
    assert_eq!(received.len(), acknowledged.len());
    // The subscription never ended: it is the one opened before the cut, on the same log.
    let (_, first, now) = all_events(&cut_off).await;
    assert_eq!((first, now), (1, log_id));
    let receipt = cut_off
        .client()
        .await
        .publish(update("cut", "cut-after"))
        .await
        .expect("publishes work again")
        .into_inner();
    assert_eq!(receipt.sequence, newest + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fell_behind_retention_while_cut_off_starts_again_from_the_snapshot() {
    let mut cluster = Cluster::start(3).await;
    let retain = ["--retain-events", "8"];
    let behind = Node::serving(&cluster.url(0), "BEHIND", &retain).await;
    let other = Node::serving(
        &format!("{},{}", cluster.url(1), cluster.url(2)),
        "BEHIND",
        &retain,
    )
    .await;
    let other_url = vec![other.url.clone()];
    publish_until_acknowledged(&other_url, 0, &opening("behind", "behind-open")).await;
    let mut stream = behind
        .client()
        .await
        .subscribe(pb::SubscribeRequest {
            from_sequence: Some(1),
            ..Default::default()
        })
        .await
        .expect("Subscribe")
        .into_inner();

    cluster.stop(0).await;
    behind.until_health(ServingStatus::NotServing).await;
    for i in 0..30 {
        publish_until_acknowledged(&other_url, 0, &update("behind", &format!("behind-{i}"))).await;
    }
    cluster.restart(0).await;
    behind.until_health(ServingStatus::Serving).await;

    // The subscriber was behind what the stream still holds: it is told so, as on one server.
    let ended = within("the behind subscription to end", async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended without saying why"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), Code::OutOfRange, "{ended:?}");
    // Everything the stream still holds arrives, from its first retained sequence.
    let (_, mut resumed) = subscribe(&behind, 24, "").await;
    let mut received = Vec::new();
    receive_through(&mut resumed, 31, &mut received).await;
    let (events, first, _) = all_events(&behind).await;
    assert_eq!(received, events);
    assert_eq!((first, events.len()), (24, 8));
    assert_eq!(all_events(&other).await.0, events);
    assert_eq!(all_stories(&behind).await, all_stories(&other).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_names_its_log_after_the_stream_and_refuses_a_stream_it_cannot_serve() {
    let cluster = Cluster::start(1).await;
    let url = cluster.url(0);
    let one = ["--nats-replicas", "1"];
    let mut first = Node::serving(&url, "IDENT", &one).await;
    // PublishStream through a node: pipelined across stories, answered in request order.
    let mut messages = vec![open("left", &[]), open("right", &[])];
    for i in 0..20 {
        messages.push(report(
            if i % 2 == 0 { "left" } else { "right" },
            &format!("f{i}"),
        ));
    }
    messages.push(report("nowhere", "f0"));
    let requests = messages
        .into_iter()
        .map(|request| pb::PublishStreamRequest {
            request: Some(request),
        });
    let mut responses = first
        .client()
        .await
        .publish_stream(tokio_stream::iter(requests))
        .await
        .expect("PublishStream")
        .into_inner();
    let mut answers = Vec::new();
    while let Some(response) = within("PublishStream", responses.message())
        .await
        .expect("ok")
    {
        answers.push(response.result.expect("a result"));
    }
    use pb::publish_stream_response::Result as Outcome;
    let sequences: Vec<u64> = answers
        .iter()
        .filter_map(|answer| match answer {
            Outcome::Accepted(receipt) => Some(receipt.sequence),
            Outcome::Rejected(_) => None,
        })
        .collect();
    assert_eq!(sequences, (1..=22).collect::<Vec<_>>(), "{answers:?}");
    assert!(
        matches!(&answers[22], Outcome::Rejected(e) if e.code == Code::NotFound as i32),
        "{:?}",
        answers[22]
    );
    let (_, _, old_log_id) = all_events(&first).await;
    assert!(old_log_id.starts_with("ident-"), "{old_log_id}");
    first.process.stop_cleanly().await;

    // The stream deleted and created again is another log: its old log_id is refused.
    let nats = async_nats::connect(url.clone()).await.expect("connect");
    let js = async_nats::jetstream::new(nats);
    js.delete_stream("IDENT").await.expect("delete the stream");
    let second = Node::serving(&url, "IDENT", &one).await;
    let stale = second
        .client()
        .await
        .subscribe(pb::SubscribeRequest {
            from_sequence: Some(2),
            log_id: old_log_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a stale log_id");
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    assert!(stale.message().contains(&old_log_id), "{stale:?}");

    // An update larger than NATS takes in one message (1 MiB by default) is refused for its size,
    // not as a failure worth retrying.
    let roomy = Node::serving(
        &url,
        "IDENT",
        &[
            "--nats-replicas",
            "1",
            "--max-request-bytes",
            "4000000",
            "--max-facts-per-story",
            "2",
        ],
    )
    .await;
    let mut client = roomy.client().await;
    // The story limits are checked before the stream is asked, as on a single server.
    client.publish(open("limited", &[])).await.expect("open");
    for fact in ["a", "b"] {
        client
            .publish(report("limited", fact))
            .await
            .expect("a fact");
    }
    let full = client
        .publish(report("limited", "c"))
        .await
        .expect_err("a third fact");
    assert_eq!(full.code(), Code::FailedPrecondition, "{full:?}");
    assert!(full.message().contains("--max-facts-per-story"), "{full:?}");
    client.publish(open("big", &[])).await.expect("open big");
    let mut big = support::bulky_fact("big", "long");
    if let pb::change::Kind::FactReported(reported) = change_mut(&mut big) {
        for attribution in &mut reported.attributions {
            attribution.quote = "\u{1d11e}".repeat(2_000);
        }
    }
    let too_large = client.publish(big).await.expect_err("beyond max_payload");
    assert_eq!(too_large.code(), Code::OutOfRange, "{too_large:?}");
    assert!(too_large.message().contains("max_payload"), "{too_large:?}");

    // A stream kept in memory would lose the log with its servers: the node says so and stops.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "MEM".to_owned(),
        subjects: vec!["MEM.story.*".to_owned()],
        storage: async_nats::jetstream::stream::StorageType::Memory,
        max_messages: 1_000,
        deny_delete: true,
        ..Default::default()
    })
    .await
    .expect("a memory stream");
    let said = refused_start(&url, "MEM").await;
    assert!(said.contains("in memory, not in files"), "{said}");

    // A node keeps its log in the stream or on disk, not both.
    let both = process::run(process::storywire(&[
        "serve",
        "--nats",
        &url,
        "--data-dir",
        "/nonexistent",
    ]))
    .await;
    let said = both.failure(2);
    assert!(
        said.contains("--data-dir") && said.contains("--nats"),
        "{said}"
    );
}
