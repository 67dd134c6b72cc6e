//! Cluster mode when a publish loses every race, and when a nats-server is paused (SIGSTOP: its
//! connections stay open and nothing on them is answered, as when a server is cut off from the
//! network while the kernel still holds its sockets). Real nats-servers on loopback and the real
//! storywire binary; tests/it/faults/ cuts real links between network namespaces.
//!
//! Every process is stopped by PID when its handle drops, and every wait has a deadline.

use crate::jetstream;
use crate::node;
use crate::support;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use jetstream::Cluster;
use node::{
    Node, all_events, assert_exactly_once, opening, publish_until_acknowledged, receive_through,
    subscribe, update,
};
use storywire::pb;
use support::{client_at, within};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// How many publishers race on one story, half through each node: enough that a publish loses
/// nine races in a row now and then (each race has about one winner in eight).
const RACERS: usize = 8;

/// How many updates each racer publishes.
const RACES: usize = 25;

/// The longest a node cut off from every quorum may keep saying SERVING (docs/cluster.md).
const NOT_SERVING_BOUND: Duration = Duration::from_secs(5);

/// How long a publish may take while the server leading the node's consumer is paused (and the
/// stream's leader is not): the node notices the unended pull within a second and a half and
/// reads from the stream's leader. Runs take 1.5 s; when a pull that had delivered some messages
/// did not count as silent, about one in seven took 4 to 5 s, and a node that waited for a new
/// consumer took 8.4 s.
const APPLY_BOUND: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_after_losing_every_race_appended_nothing() {
    let cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let a = Node::serving(&urls, "RACERS", &[]).await;
    let b = Node::serving(&urls, "RACERS", &[]).await;
    let node_urls = vec![a.url.clone(), b.url.clone()];
    publish_until_acknowledged(&node_urls, 0, &opening("hot", "hot-open")).await;
    until_applied(&b, 1).await;

    let mut racers = Vec::new();
    for racer in 0..RACERS {
        let url = node_urls[racer % 2].clone();
        racers.push(tokio::spawn(async move {
            let mut client = client_at(&url).await;
            let mut outcomes = Vec::new();
            for race in 0..RACES {
                let event_id = format!("hot-{racer}-{race}");
                let answer = client.publish(update("hot", &event_id)).await;
                outcomes.push((event_id, answer.map(tonic::Response::into_inner)));
            }
            outcomes
        }));
    }
    let mut acknowledged = HashMap::from([("hot-open".to_owned(), 1)]);
    let (mut refused, mut unknown) = (HashSet::new(), HashSet::new());
    for racer in racers {
        for (event_id, answer) in within("a racer", racer).await.expect("racer") {
            match answer {
                Ok(receipt) => {
                    assert!(!receipt.duplicate, "{event_id} was sent once: {receipt:?}");
                    acknowledged.insert(event_id, receipt.sequence);
                }
                Err(status) if status.code() == Code::Aborted => {
                    refused.insert(event_id);
                }
                Err(status) if status.code() == Code::Unavailable => {
                    unknown.insert(event_id);
                }
                Err(status) => panic!("{event_id}: {status:?}"),
            }
        }
    }
    assert!(
        !refused.is_empty(),
        "no publish lost every race: the racers did not contend ({} acknowledged)",
        acknowledged.len()
    );
    let newest = *acknowledged.values().max().expect("acknowledged");
    for node in [&a, &b] {
        let events = until_applied(node, newest).await;
        assert_exactly_once(&events, 1, &acknowledged);
        let appended: Vec<&str> = events
            .iter()
            .map(|e| e.event_id.as_str())
            .filter(|id| refused.contains(*id))
            .collect();
        assert!(
            appended.is_empty(),
            "refused with ABORTED, yet in the log: {appended:?} ({} refused)",
            refused.len()
        );
        let unknown_appended = events
            .iter()
            .filter(|e| unknown.contains(&e.event_id))
            .count();
        assert!(unknown_appended <= unknown.len());
    }
    eprintln!(
        "racers: {} acknowledged, {} refused (ABORTED), {} unknown",
        acknowledged.len(),
        refused.len(),
        unknown.len()
    );
}

/// Every event `node` holds, once it holds `sequence`.
async fn until_applied(node: &Node, sequence: u64) -> Vec<pb::UpdateEvent> {
    within(&format!("{} to apply {sequence}", node.url), async {
        loop {
            let (events, _, _) = all_events(node).await;
            if events.last().is_some_and(|e| e.sequence >= sequence) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Three servers; node `cut` reaches only the first, node `other` the other two. Returns the
/// cluster, both nodes and the story they publish to, opened.
async fn cut_and_other(stream: &str) -> (Cluster, Node, Node) {
    let cluster = Cluster::start(3).await;
    let cut = Node::serving(&cluster.url(0), stream, &[]).await;
    let other = Node::serving(
        &format!("{},{}", cluster.url(1), cluster.url(2)),
        stream,
        &[],
    )
    .await;
    publish_until_acknowledged(
        std::slice::from_ref(&other.url),
        0,
        &opening("cut", "cut-open"),
    )
    .await;
    (cluster, cut, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_server_is_paused_says_not_serving_within_the_bound_and_serving_once_caught_up()
 {
    let (mut cluster, cut, other) = cut_and_other("PAUSED").await;
    let paused = Instant::now();
    cluster.pause(0);
    tokio::time::timeout(
        NOT_SERVING_BOUND,
        cut.until_health(ServingStatus::NotServing),
    )
    .await
    .unwrap_or_else(|_| panic!("still SERVING {NOT_SERVING_BOUND:?} after its server paused"));
    eprintln!("NOT_SERVING after {:?}", paused.elapsed());

    let mut newest = 0;
    for i in 0..20 {
        let receipt = publish_until_acknowledged(
            std::slice::from_ref(&other.url),
            0,
            &update("cut", &format!("p-{i}")),
        )
        .await;
        newest = receipt.sequence;
    }
    cluster.resume(0);
    cut.until_health(ServingStatus::Serving).await;
    // SERVING means caught up: what the stream held when the quorum answered again is applied.
    let (events, _, _) = all_events(&cut).await;
    assert!(
        events.last().is_some_and(|e| e.sequence >= newest),
        "SERVING at {:?}, the stream at {newest}",
        events.last().map(|e| e.sequence)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resuming_beyond_a_lagging_node_waits_for_it_instead_of_out_of_range() {
    let (mut cluster, cut, other) = cut_and_other("RESUME").await;
    let (log_id, mut on_other) = subscribe(&other, 1, "").await;
    cluster.pause(0);
    let mut acknowledged = HashMap::from([("cut-open".to_owned(), 1)]);
    for i in 0..10 {
        let receipt = publish_until_acknowledged(
            std::slice::from_ref(&other.url),
            0,
            &update("cut", &format!("r-{i}")),
        )
        .await;
        acknowledged.insert(receipt.event_id, receipt.sequence);
    }
    let newest = *acknowledged.values().max().expect("acknowledged");
    let mut received = Vec::new();
    receive_through(&mut on_other, newest, &mut received).await;

    // The subscriber moves to the node that is behind, with the log_id of the one ahead.
    let resuming = tokio::spawn({
        let url = cut.url.clone();
        let log_id = log_id.clone();
        async move {
            client_at(&url)
                .await
                .subscribe(pb::SubscribeRequest {
                    from_sequence: Some(newest + 1),
                    log_id,
                    ..Default::default()
                })
                .await
        }
    });
    // The call waits while the node cannot catch up; it must not have been refused meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if resuming.is_finished() {
        let refused = resuming
            .await
            .expect("join")
            .expect_err("no events to start on");
        panic!("resuming beyond the lagging node's head: {refused:?}");
    }
    cluster.resume(0);
    let mut resumed = within("the resumed subscription", resuming)
        .await
        .expect("join")
        .expect("the resume is accepted once the node caught up")
        .into_inner();
    let receipt = publish_until_acknowledged(
        std::slice::from_ref(&cut.url),
        0,
        &update("cut", "after-resume"),
    )
    .await;
    acknowledged.insert(receipt.event_id, receipt.sequence);
    let mut after = Vec::new();
    within("the event after the resume", async {
        while after.is_empty() {
            match resumed.message().await.expect("the subscription goes on") {
                Some(pb::SubscribeResponse {
                    item: Some(pb::subscribe_response::Item::Event(event)),
                }) => after.push(event),
                Some(_) => {}
                None => panic!("the subscription ended"),
            }
        }
    })
    .await;
    received.extend(after);
    assert_exactly_once(&received, 1, &acknowledged);
    assert_eq!(received.len(), acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_applying_the_stream_while_the_server_leading_its_consumer_is_paused() {
    let mut cluster = Cluster::start(3).await;
    // The node reaches only the third server, so the paused server is never its own.
    let node = Node::serving(&cluster.url(2), "CONSUMER", &[]).await;
    let urls = vec![node.url.clone()];
    publish_until_acknowledged(&urls, 0, &opening("led", "led-open")).await;
    // Pause a server that leads the consumer and not the stream, so that publishes go on being
    // acknowledged at once and only the node's reading is at stake.
    let stream_leader = cluster.stream_leader("CONSUMER").await;
    let target = (0..3)
        .find(|&s| s != 2 && s != stream_leader)
        .expect("a third server");
    let nats = async_nats::connect(cluster.url(target))
        .await
        .expect("connect");
    within(
        "the node's consumer to be led by the paused server",
        async {
            let mut asked_of = None;
            loop {
                match cluster.consumer_leaders("CONSUMER").await.first() {
                    Some((_, leader)) if *leader == target => {
                        cluster.pause(target);
                        // Paused while it led: no answering server claims the consumer now.
                        if cluster.consumer_leaders("CONSUMER").await.is_empty() {
                            return;
                        }
                        cluster.resume(target);
                    }
                    // One step down at a time: each is an election.
                    Some((consumer, leader)) if asked_of != Some(*leader) => {
                        asked_of = Some(*leader);
                        let _ = nats
                            .request(
                                format!("$JS.API.CONSUMER.LEADER.STEPDOWN.CONSUMER.{consumer}"),
                                "".into(),
                            )
                            .await;
                    }
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let sent = Instant::now();
        publish_until_acknowledged(&urls, 0, &update("led", &format!("led-{i}"))).await;
        slowest = slowest.max(sent.elapsed());
    }
    cluster.resume(target);
    assert!(
        slowest < APPLY_BOUND,
        "a publish took {slowest:?} with the server leading the node's consumer paused"
    );
    eprintln!("slowest publish with the consumer's leader paused: {slowest:?}");
}

/// A publish the client sent once is never answered `duplicate: true`, even when the node's own
/// earlier attempt is what the stream holds.
///
/// During a heal, a server that still believes it leads the stream can refuse an attempt
/// ("wrong last sequence") while the real leader stores it: the node takes the refusal as a
/// conflict, catches up, finds the event already in its replica, and must not call that the
/// client's resend. Here a plain NATS client plays the stale server: it answers the attempt with
/// JetStream's conflict error while the stream's leader, paused, has not answered yet; resumed,
/// the leader stores the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_once_is_not_a_duplicate_when_a_stale_server_refused_the_attempt_stored() {
    let mut cluster = Cluster::start(3).await;
    let opener = Node::serving(&cluster.urls(), "STALE", &[]).await;
    publish_until_acknowledged(
        std::slice::from_ref(&opener.url),
        0,
        &opening("stale", "stale-open"),
    )
    .await;
    let leader = cluster.stream_leader("STALE").await;
    // The node and the stale server's stand-in share a server that does not lead the stream, so
    // the stand-in's interest is local and the leader's pause does not hold up the attempt.
    let beside = (leader + 1) % cluster.len();
    let node = Node::serving(&cluster.url(beside), "STALE", &[]).await;
    until_applied(&node, 1).await;

    let stale = async_nats::connect(cluster.url(beside))
        .await
        .expect("a NATS client playing the stale server");
    let mut attempts = stale
        .subscribe("STALE.story.stale")
        .await
        .expect("subscribing to the story's subject");
    stale.flush().await.expect("flushing the subscription");

    cluster.pause(leader);
    let mut client = node.client().await;
    let publishing = tokio::spawn(async move { client.publish(update("stale", "once")).await });
    let attempt = within("the node's attempt to reach the stand-in", attempts.next())
        .await
        .expect("an attempt");
    let reply = attempt
        .reply
        .expect("a publish that asks for an acknowledgement");
    let refusal = r#"{"type":"io.nats.jetstream.api.v1.pub_ack_response","error":{"code":400,"err_code":10071,"description":"wrong last sequence: 0"}}"#;
    stale
        .publish(reply, refusal.into())
        .await
        .expect("answering the attempt");
    stale.flush().await.expect("flushing the refusal");
    drop(attempts);
    cluster.resume(leader);

    let receipt = within("the publish's answer", publishing)
        .await
        .expect("the publishing task")
        .expect("the publish, stored by the leader once resumed")
        .into_inner();
    assert!(
        !receipt.duplicate,
        "the client sent \"once\" once, but it was answered as a duplicate: {receipt:?}"
    );
    let events = until_applied(&node, receipt.sequence).await;
    let acknowledged = HashMap::from([
        ("stale-open".to_owned(), 1),
        ("once".to_owned(), receipt.sequence),
    ]);
    assert_exactly_once(&events, 1, &acknowledged);
}
