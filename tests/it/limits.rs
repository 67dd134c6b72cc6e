//! Limits hold, and a client over one gets a clear error while everyone else carries on.

use crate::support;

use std::{
    sync::{Arc, Condvar, Mutex},
    time::{Duration, SystemTime},
};

use prost::Message as _;
use storywire::{
    auth::Tokens,
    clock::Clock,
    limits::Limits,
    log::{DEFAULT_RETAIN_EVENTS, EventLog},
    pb::{self, change::Kind, story_service_client::StoryServiceClient, subscribe_response::Item},
    server::ServerOptions,
};
use support::{
    http2::{self, RawPeer},
    *,
};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn server_with(limits: Limits, tokens: Option<Tokens>) -> TestServer {
    let options = ServerOptions {
        tokens: tokens.map(Arc::new),
        limits,
        ..Default::default()
    };
    TestServer::with_options(options).await
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_and_nothing_is_lost() {
    let limits = Limits {
        max_request_bytes: 16 * 1024,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;

    let quote = "q".repeat(2_000);
    let attributions = (0..20)
        .map(|_| pb::Attribution {
            quote: quote.clone(),
            ..said_by("Kim Min-ki", "South Korean lawmaker", pb::Stance::Asserts)
        })
        .collect();
    let huge = request(
        "story",
        "",
        "Too big to take",
        Kind::FactReported(pb::FactReported {
            fact_id: "fact".into(),
            statement: "A statement.".into(),
            attributions,
        }),
    );
    let status = expect_status(client.publish(huge).await, Code::OutOfRange, &["too large"]);
    assert!(status.message().contains("16384"), "{status:?}");
    assert_eq!(server.log.head(), 1);
    assert_eq!(
        publish(&mut client, note("story", "Still serving"))
            .await
            .sequence,
        2
    );
}

#[tokio::test]
async fn subscriptions_beyond_the_total_are_resource_exhausted_until_one_ends() {
    let limits = Limits {
        max_subscribers: 2,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let mut first = subscribe(&mut client, from(1)).await;
    let second = subscribe(&mut client, from(1)).await;

    expect_status(
        client.subscribe(from(1)).await,
        Code::ResourceExhausted,
        &["limit of 2 subscriptions"],
    );
    // Those already in keep receiving.
    until_caught_up(&mut first).await;
    publish(&mut client, note("story", "For the subscribers in")).await;
    assert_eq!(next_event(&mut first).await.sequence, 2);

    drop(second);
    // The slot comes back once the server sees the stream go; a new subscriber then gets in.
    let third = within("a slot to free up", async {
        loop {
            match client.subscribe(from(1)).await {
                Ok(stream) => break stream,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted);
                    tokio::task::yield_now().await;
                }
            }
        }
    })
    .await;
    drop(third);
}

#[tokio::test]
async fn one_token_cannot_take_every_subscription() {
    let tokens = Tokens::parse(
        "greedy subscribe greedy-token-0123456789\nother subscribe other-token-0123456789\n",
    )
    .expect("tokens");
    let limits = Limits {
        max_subscribers_per_token: 2,
        ..Limits::default()
    };
    let server = server_with(limits, Some(tokens)).await;
    let mut client = server.client().await;
    let as_token = |token: &str| {
        let mut request = Request::new(from(0));
        let value = format!("Bearer {token}").parse().expect("ascii");
        request.metadata_mut().insert("authorization", value);
        request
    };
    let _a = client
        .subscribe(as_token("greedy-token-0123456789"))
        .await
        .expect("first");
    let _b = client
        .subscribe(as_token("greedy-token-0123456789"))
        .await
        .expect("second");
    let refused = client.subscribe(as_token("greedy-token-0123456789")).await;
    expect_status(
        refused,
        Code::ResourceExhausted,
        &["token greedy", "limit of 2"],
    );
    client
        .subscribe(as_token("other-token-0123456789"))
        .await
        .expect("another token is unaffected");
}

#[tokio::test]
async fn a_connection_holds_at_most_its_stream_limit_and_others_are_unaffected() {
    let limits = Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    let first = subscribe(&mut client, pb::SubscribeRequest::default()).await;
    let _second = subscribe(&mut client, pb::SubscribeRequest::default()).await;

    // A third stream on the same connection waits for a free one (HTTP/2 flow, not an error)...
    let mut waiting_client = client.clone();
    let mut third = tokio::spawn(async move {
        waiting_client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .map(|r| r.into_inner())
    });
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut third).await;
    assert!(
        waited.is_err(),
        "the third stream must wait while two are open"
    );
    // ... while another connection is served at once.
    let mut other = server.client().await;
    let mut stream = subscribe(&mut other, pb::SubscribeRequest::default()).await;
    assert!(matches!(next_item(&mut stream).await, Item::CaughtUp(_)));
    // When one ends, the waiting stream opens.
    drop(first);
    within("the third stream", third)
        .await
        .expect("task")
        .expect("opens once a stream is free");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let limits = Limits {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    // An HTTP/2 client that says hello and then never answers again.
    let mut peer = RawPeer::connect(server.address).await;
    // The server's pings go unanswered, so it closes the connection.
    within("the server to hang up", async {
        while peer.next_frame().await.is_some() {}
    })
    .await;
}

#[tokio::test]
async fn a_response_over_the_size_limit_fails_the_call_not_the_server() {
    let limits = Limits {
        max_response_bytes: 256,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    for i in 0..5 {
        publish(&mut client, report("story", &format!("fact-{i}"))).await;
    }
    let request = pb::GetStoryRequest {
        story_id: "story".into(),
        as_of_version: None,
    };
    expect_status(
        client.get_story(request).await,
        Code::OutOfRange,
        &["too large"],
    );
    // Small answers still go out.
    let page = client
        .list_events(pb::ListEventsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("a small page fits");
    assert_eq!(page.into_inner().events.len(), 1);
}

#[tokio::test]
async fn a_connection_older_than_the_age_limit_is_closed() {
    let limits = Limits {
        max_connection_age: Some(Duration::from_millis(300)),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    // A well-behaved idle peer: it acknowledges SETTINGS and answers PINGs, so keepalive (every
    // 30 s here) has no reason to act, and only the age limit can end the connection in time.
    let mut peer = RawPeer::connect(server.address).await;
    within("the server to close the old connection", async {
        while let Some(frame) = peer.next_frame().await {
            peer.answer(&frame).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_call_that_does_not_finish_in_time_is_answered_by_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut peer = RawPeer::connect(server.address).await;
    peer.send(&http2::grpc_call(1, "/storywire.v1.StoryService/GetStory"))
        .await;
    // The request never completes, so only the timeout can make the server answer on stream 1
    // (a HEADERS frame with the status, or a RST_STREAM).
    within("the server to answer stream 1", async {
        loop {
            let frame = peer
                .next_frame()
                .await
                .expect("the connection closed without an answer");
            if frame.stream == 1
                && (frame.kind == http2::HEADERS || frame.kind == http2::RST_STREAM)
            {
                return;
            }
        }
    })
    .await;
}

/// What a server said to a burst of frames followed by a PING: a GOAWAY (with its code), or the
/// PING's acknowledgement, meaning the connection lives on; and the codes of the streams it reset.
#[derive(Debug)]
struct AfterBurst {
    goaway: Option<u32>,
    resets: Vec<u32>,
}

/// Sends `burst` and a PING in one write, then reads until a GOAWAY, or until the PING is
/// acknowledged and `resets` streams have been reset (h2 sends a PING's answer ahead of resets).
async fn send_burst(server: &TestServer, mut burst: Vec<u8>, expected_resets: usize) -> AfterBurst {
    let mut peer = RawPeer::connect(server.address).await;
    burst.extend(http2::ping(*b"burst ok"));
    peer.send(&burst).await;
    within("the server's answer to the burst", async {
        let mut resets = Vec::new();
        let mut acknowledged = false;
        loop {
            if acknowledged && resets.len() >= expected_resets {
                return AfterBurst {
                    goaway: None,
                    resets,
                };
            }
            let frame = peer
                .next_frame()
                .await
                .expect("the server hung up without a GOAWAY");
            match frame.kind {
                http2::RST_STREAM => resets.push(frame.error_code()),
                http2::GOAWAY => {
                    let goaway = Some(frame.error_code());
                    return AfterBurst { goaway, resets };
                }
                http2::PING if frame.flags & http2::ACK != 0 => acknowledged = true,
                _ => peer.answer(&frame).await,
            }
        }
    })
    .await
}

/// `count` gRPC calls, each reset by the client right after opening it, all in one write: the
/// "rapid reset" pattern (CVE-2023-44487), where the server never gets to read the streams.
fn opened_and_reset(count: u32) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            let stream = 2 * i + 1;
            let call = http2::grpc_call(stream, "/storywire.v1.StoryService/GetStory");
            [call, http2::reset(stream, http2::CANCEL)].concat()
        })
        .collect()
}

/// `count` streams whose headers lack `:method`: malformed requests the server must reset itself.
fn malformed(count: u32) -> Vec<u8> {
    (0..count)
        .flat_map(|i| {
            http2::headers(
                2 * i + 1,
                &[
                    (":scheme", "http"),
                    (":path", "/storywire.v1.StoryService/GetStory"),
                    (":authority", "127.0.0.1"),
                ],
            )
        })
        .collect()
}

#[tokio::test]
async fn a_burst_of_streams_reset_before_they_are_read_closes_only_that_connection() {
    let limits = Limits::default();
    assert_eq!(limits.max_pending_accept_reset_streams, 20);
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    let after = send_burst(&server, opened_and_reset(50), 0).await;
    assert_eq!(after.goaway, Some(http2::ENHANCE_YOUR_CALM), "{after:?}");
    // Everyone else carries on.
    publish(&mut client, open("story", &[])).await;
}

#[tokio::test]
async fn the_same_reset_burst_is_tolerated_with_the_pending_reset_limit_raised() {
    let limits = Limits {
        max_pending_accept_reset_streams: 1_000,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let after = send_burst(&server, opened_and_reset(50), 0).await;
    assert_eq!(after.goaway, None, "{after:?}");
}

#[tokio::test]
async fn a_client_whose_streams_the_server_must_keep_resetting_is_cut_off_at_the_limit() {
    let limits = Limits::default();
    assert_eq!(limits.max_local_error_reset_streams, 1_024);
    let server = server_with(limits, None).await;
    let mut client = server.client().await;
    let after = send_burst(&server, malformed(1_100), 1_100).await;
    assert_eq!(after.goaway, Some(http2::ENHANCE_YOUR_CALM), "{after:?}");
    assert!(after.resets.len() <= 1_024, "{} resets", after.resets.len());
    publish(&mut client, open("story", &[])).await;
}

#[tokio::test]
async fn with_the_local_reset_limit_raised_each_malformed_stream_is_only_reset() {
    let limits = Limits {
        max_local_error_reset_streams: 2_000,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let after = send_burst(&server, malformed(1_100), 1_100).await;
    assert_eq!(after.goaway, None, "{after:?}");
    assert_eq!(after.resets.len(), 1_100);
    assert!(
        after
            .resets
            .iter()
            .all(|&code| code == http2::PROTOCOL_ERROR)
    );
}

/// Opens a Publish on `stream` whose request never comes, waits until the server has read it (it
/// answers a PING sent after it), then resets it: one stream wasted, as by a client that resets
/// streams in a loop.
async fn open_and_reset(peer: &mut RawPeer, stream: u32) {
    let mut call = http2::grpc_call(stream, PUBLISH);
    call.extend(http2::ping(u64::from(stream).to_be_bytes()));
    peer.send(&call).await;
    acknowledged(peer).await;
    peer.send(&http2::reset(stream, http2::CANCEL)).await;
}

const PUBLISH: &str = "/storywire.v1.StoryService/Publish";

/// Reads until the server acknowledges a PING, answering its SETTINGS and PINGs meanwhile.
async fn acknowledged(peer: &mut RawPeer) {
    loop {
        let frame = peer.next_frame().await.expect("the connection stays open");
        if frame.kind == http2::PING && frame.flags & http2::ACK != 0 {
            return;
        }
        peer.answer(&frame).await;
    }
}

/// Sends a PING and says whether the server answers it within [`PAUSED_AFTER`] while
/// `neighbour` publishes 50 updates one after another: it does not once it has stopped reading
/// `peer`'s connection.
async fn read_alongside(peer: &mut RawPeer, neighbour: &mut StoryServiceClient<Channel>) -> bool {
    peer.send(&http2::ping(*b"still up")).await;
    let (read, ()) = tokio::join!(
        tokio::time::timeout(PAUSED_AFTER, acknowledged(peer)),
        within(
            "the neighbour's publishes",
            carry_on_publishing(neighbour, 50)
        )
    );
    read.is_ok()
}

#[tokio::test]
async fn a_connection_resetting_streams_before_any_answer_is_paused_and_its_neighbours_are_not() {
    let server = server_with(waste_budget(5), None).await;
    // Both connections come from 127.0.0.1, as clients behind one proxy would.
    let mut neighbour = server.client().await;
    publish(&mut neighbour, open("story", &[])).await;

    // In a loop: open a Publish, wait until the server has read it, then reset it. Count the
    // rounds the server took part in.
    let (rounds_tx, mut rounds) = tokio::sync::watch::channel(0_u32);
    let mut peer = RawPeer::connect(server.address).await;
    let resetting = tokio::spawn(async move {
        for round in 0..1_000_u32 {
            open_and_reset(&mut peer, 2 * round + 1).await;
            rounds_tx.send_replace(round + 1);
        }
    });
    // The burst of 5 gets through...
    // (A borrow of the watch holds a lock the resetting task needs: none is kept.)
    let burst = async { rounds.wait_for(|&n| n >= 5).await.is_ok() };
    assert!(
        within("the burst of wasted streams", burst).await,
        "the resetting task ended"
    );
    // ... and then the server stops reading the resetting connection while the neighbour is
    // answered. A reset is counted once the server has dropped the call, which may let a next
    // few in first.
    let more = async { rounds.wait_for(|&n| n > 10).await.is_ok() };
    let (stalled, ()) = tokio::join!(
        tokio::time::timeout(PAUSED_AFTER, more),
        within(
            "the neighbour's publishes",
            carry_on_publishing(&mut neighbour, 50)
        )
    );
    let paused = stalled.is_err();
    let got_through = *rounds.borrow();
    assert!(
        paused,
        "the resetting connection must be paused: {got_through} rounds got through"
    );
    resetting.abort();
}

#[tokio::test]
async fn a_paused_connection_is_read_again_once_its_budget_refills_and_loses_nothing() {
    let limits = Limits {
        wasted_streams_per_second: 20.0,
        wasted_streams_burst: 2,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    publish(&mut server.client().await, open("story", &[])).await;
    let mut peer = RawPeer::connect(server.address).await;
    for stream in [1, 3, 5] {
        open_and_reset(&mut peer, stream).await;
    }
    // Paused for about 50 ms (one wasted stream at 20 a second); then read, and accepted.
    let mut call = http2::grpc_call(7, PUBLISH);
    call.extend(http2::grpc_message(
        7,
        &note("story", "After the pause").encode_to_vec(),
    ));
    peer.send(&call).await;
    within("the publish's answer", async {
        loop {
            let frame = peer.next_frame().await.expect("the connection stays open");
            if frame.stream == 7
                && frame.kind == http2::HEADERS
                && frame.flags & http2::END_STREAM != 0
            {
                return;
            }
            peer.answer(&frame).await;
        }
    })
    .await;
    assert_eq!(server.log.head(), 2);
}

/// A clock that can be stalled: while it is, telling the time waits until the test lets it go.
/// The log reads the clock under its write lock for every append, so a stalled clock holds up
/// publishes as a disk whose fsync hangs would.
#[derive(Debug, Default)]
struct StallingClock {
    /// Whether the clock is stalled; `changed` is signalled when it is let go.
    stalled: Mutex<bool>,
    changed: Condvar,
}

impl StallingClock {
    fn stall(&self, stalled: bool) {
        *self.stalled.lock().expect("clock lock") = stalled;
        self.changed.notify_all();
    }
}

impl Clock for StallingClock {
    fn now(&self) -> SystemTime {
        // The worker's other tasks move to another thread while this one waits.
        tokio::task::block_in_place(|| {
            let stalled = self.stalled.lock().expect("clock lock");
            drop(self.changed.wait_while(stalled, |stalled| *stalled));
        });
        SystemTime::now()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_deadlines_expire_on_a_slow_server_is_never_paused() {
    let clock = Arc::new(StallingClock::default());
    let log = Arc::new(EventLog::new(DEFAULT_RETAIN_EVENTS, clock.clone()));
    // The server's own window: the 250 ms deadlines below end their calls well after it.
    let options = ServerOptions {
        limits: Limits {
            wasted_stream_window: Limits::default().wasted_stream_window,
            ..waste_budget(5)
        },
        ..Default::default()
    };
    let server = TestServer::over_with(log, options).await;
    let mut neighbour = server.client().await;
    publish(&mut neighbour, open("story", &[])).await;
    let channel = server.channel_from(SECOND_PEER).await;
    let mut hurried = StoryServiceClient::new(channel.clone());
    let mut health = HealthClient::new(channel);
    let mut head = server.log.watch_head();

    // Four times the burst: counted as wasted, they would pause the connection.
    for n in 0..20 {
        clock.stall(true);
        let mut request = Request::new(note("story", &format!("Hurried {n}")));
        request.set_timeout(Duration::from_millis(250));
        let late = within("a publish past its deadline", hurried.publish(request)).await;
        late.expect_err("the deadline passed before the answer");
        // The client reset the stream at its deadline; once a call sent after it on the same
        // connection is answered, the server has read the reset. Only then does the publish go on.
        within(
            "a health check",
            health.check(HealthCheckRequest::default()),
        )
        .await
        .expect("health check");
        clock.stall(false);
        within("the late publish", head.wait_for(|&head| head >= n + 2))
            .await
            .expect("the log is open");
    }
    assert!(
        answered_alongside(&hurried, &mut neighbour).await,
        "a client whose deadlines expired must not be paused"
    );
}

#[tokio::test]
async fn calls_the_server_times_out_never_pause_their_connection() {
    // The server's own window: its timer ends each call 100 ms after it started, past 50 ms
    // however slowly the machine runs, since both are measured by the server from the call's
    // start. (Its timeout's status does not count as an answer: the `grpc-timeout` header is the
    // client's to claim.)
    let limits = Limits {
        wasted_stream_window: Limits::default().wasted_stream_window,
        ..waste_budget(5)
    };
    let server = server_with(limits, None).await;
    let mut neighbour = server.client().await;
    publish(&mut neighbour, open("story", &[])).await;
    // 50 Publishes with 100 ms deadlines whose request messages never come: tonic's timeout
    // answers each, with a status and no message.
    let mut peer = RawPeer::connect_from(server.address, SECOND_PEER).await;
    let calls: Vec<u8> = (0..50)
        .flat_map(|i| http2::grpc_call_with(2 * i + 1, PUBLISH, &[("grpc-timeout", "100m")]))
        .collect();
    peer.send(&calls).await;
    within("50 answers", async {
        let mut answered = 0;
        while answered < 50 {
            let frame = peer.next_frame().await.expect("the connection stays open");
            if frame.kind == http2::HEADERS && frame.flags & http2::END_STREAM != 0 {
                answered += 1;
            }
            peer.answer(&frame).await;
        }
    })
    .await;
    assert!(
        read_alongside(&mut peer, &mut neighbour).await,
        "a connection whose calls timed out must not be paused"
    );
}

#[tokio::test]
async fn refusals_never_pause_a_connection() {
    let limits = Limits {
        max_subscribers: 0,
        max_request_bytes: 1024,
        ..waste_budget(5)
    };
    let server = server_with(limits, None).await;
    let mut neighbour = server.client().await;
    publish(&mut neighbour, open("story", &[])).await;
    let mut refused = server.client_from(SECOND_PEER).await;
    let oversized = note("story", &"x".repeat(2_000));
    within("200 refusals of each kind", async {
        for _ in 0..200 {
            let subscribed = refused.subscribe(from(1)).await;
            expect_status(subscribed, Code::ResourceExhausted, &["limit of 0"]);
            let published = refused.publish(oversized.clone()).await;
            expect_status(published, Code::OutOfRange, &["too large"]);
        }
    })
    .await;
    assert!(
        answered_alongside(&refused, &mut neighbour).await,
        "a client refused must not be paused"
    );
}

#[tokio::test]
async fn a_subscriber_that_reads_and_then_cancels_wastes_nothing() {
    // No burst at all: the first wasted stream would pause the connection.
    let server = server_with(waste_budget(0), None).await;
    let mut neighbour = server.client().await;
    publish(&mut neighbour, open("story", &[])).await;
    let mut reader = server.client_from(SECOND_PEER).await;
    for _ in 0..30 {
        let mut stream = subscribe(&mut reader, from(1)).await;
        until_caught_up(&mut stream).await;
        drop(stream);
    }
    assert!(
        answered_alongside(&reader, &mut neighbour).await,
        "the reader must not be paused"
    );
}

#[tokio::test]
async fn with_the_budget_off_a_connection_may_reset_as_many_streams_as_it_likes() {
    let limits = Limits {
        wasted_streams_per_second: 0.0,
        wasted_streams_burst: 0,
        ..Limits::default()
    };
    let server = server_with(limits, None).await;
    let mut peer = RawPeer::connect(server.address).await;
    within("200 streams opened and reset", async {
        for round in 0..200 {
            open_and_reset(&mut peer, 2 * round + 1).await;
        }
    })
    .await;
}
