//! What every test file shares: a real server on 127.0.0.1:0 driven through the generated client,
//! and builders for the requests the tests publish.

pub mod grpc_web;
pub mod http1;
pub mod http2;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use storywire::{
    clock::{Clock, SystemClock},
    limits::{Limits, StoryLimits},
    log::EventLog,
    pb::{self, change::Kind, story_service_client::StoryServiceClient, subscribe_response::Item},
    server,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Streaming, codegen::http, transport::Channel};

pub use storywire_testkit::within;

/// A fresh directory of a test's own under the system's temp directory, removed when dropped:
/// named for `what`, this process (unique among running processes) and a count of the
/// directories it has made.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("storywire-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A storywire server running in this process on a loopback port.
pub struct TestServer {
    /// Where it listens.
    pub address: SocketAddr,
    /// The log it serves, shared so that a test can restart a server over the same log.
    pub log: Arc<EventLog>,
    /// Completing it starts the graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    /// The server task; its result is the server's.
    task: Option<JoinHandle<Result<(), server::ServerError>>>,
}

impl TestServer {
    /// A server over a fresh log with default retention and the system clock.
    pub async fn start() -> Self {
        Self::with_retention(storywire::log::DEFAULT_RETAIN_EVENTS).await
    }

    /// A server over a fresh log keeping only `retain` events.
    pub async fn with_retention(retain: usize) -> Self {
        Self::with_clock(retain, Arc::new(SystemClock)).await
    }

    /// A server over a fresh log whose timestamps come from `clock`.
    pub async fn with_clock(retain: usize, clock: Arc<dyn Clock>) -> Self {
        Self::over(Arc::new(EventLog::new(retain, clock))).await
    }

    /// A server over a fresh log with `options` (tokens, limits).
    pub async fn with_options(options: server::ServerOptions) -> Self {
        let log = Arc::new(EventLog::new(
            storywire::log::DEFAULT_RETAIN_EVENTS,
            Arc::new(SystemClock),
        ));
        Self::over_with(log, options).await
    }

    /// A server over a fresh log whose stories may hold what `limits` allow.
    pub async fn with_story_limits(limits: StoryLimits) -> Self {
        let log = Arc::new(EventLog::new(
            storywire::log::DEFAULT_RETAIN_EVENTS,
            Arc::new(SystemClock),
        ));
        log.set_story_limits(limits);
        Self::over(log).await
    }

    /// A server over an existing log, on a new port.
    pub async fn over(log: Arc<EventLog>) -> Self {
        Self::over_with(log, server::ServerOptions::default()).await
    }

    /// A server over an existing log with `options`, on a new port.
    pub async fn over_with(log: Arc<EventLog>, options: server::ServerOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        Self::serve(listener, log, options)
    }

    /// A server over an existing log on a given loopback address (to restart on the same port).
    pub async fn over_at(log: Arc<EventLog>, address: SocketAddr) -> Self {
        let listener = TcpListener::bind(address)
            .await
            .expect("rebind the same port");
        Self::serve(listener, log, server::ServerOptions::default())
    }

    fn serve(listener: TcpListener, log: Arc<EventLog>, options: server::ServerOptions) -> Self {
        let address = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(server::run(listener, log.clone(), options, shutdown));
        Self {
            address,
            log,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A channel to this server.
    pub async fn channel(&self) -> Channel {
        within(
            "a connection",
            Channel::from_shared(self.url())
                .expect("valid url")
                .connect(),
        )
        .await
        .expect("connect to the test server")
    }

    /// A generated client connected to this server.
    pub async fn client(&self) -> StoryServiceClient<Channel> {
        StoryServiceClient::new(self.channel().await)
    }

    /// A generated client whose connection comes from `local`, another loopback address (all of
    /// 127.0.0.0/8 is loopback on Linux): to the server, a peer of its own.
    pub async fn client_from(&self, local: IpAddr) -> StoryServiceClient<Channel> {
        StoryServiceClient::new(self.channel_from(local).await)
    }

    /// A channel to this server from `local`, another loopback address.
    pub async fn channel_from(&self, local: IpAddr) -> Channel {
        let endpoint = Channel::from_shared(self.url())
            .expect("valid url")
            .local_address(Some(local));
        let channel = within("a connection", endpoint.connect()).await;
        channel.expect("connect from another loopback address")
    }

    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            within("the server to stop", task)
                .await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A generated client connected to `url`, a server this test started some other way.
pub async fn client_at(url: &str) -> StoryServiceClient<Channel> {
    let endpoint = Channel::from_shared(url.to_owned()).expect("valid url");
    let channel = within("a connection", endpoint.connect()).await;
    StoryServiceClient::new(channel.expect("connect"))
}

/// A Publish request for `story_id` with `change`, a headline, and an optional event_id.
pub fn request(story_id: &str, event_id: &str, headline: &str, kind: Kind) -> pb::PublishRequest {
    pb::PublishRequest {
        story_id: story_id.to_owned(),
        event_id: event_id.to_owned(),
        expected_version: None,
        headline: headline.to_owned(),
        occurred_at: None,
        change: Some(pb::Change { kind: Some(kind) }),
    }
}

/// The change `request` carries, to edit in place; every request these helpers build has one.
pub fn change_mut(request: &mut pb::PublishRequest) -> &mut Kind {
    request
        .change
        .as_mut()
        .and_then(|change| change.kind.as_mut())
        .expect("a request with a change")
}

/// Opens `story_id` with the given tags.
pub fn open(story_id: &str, tags: &[&str]) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Story opened",
        Kind::StoryOpened(pb::StoryOpened {
            headline: format!("The {story_id} story"),
            summary: String::new(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            language: String::new(),
        }),
    )
}

/// Opens `story_id` with the given tags, in `language` (a BCP 47 tag).
pub fn open_in(story_id: &str, tags: &[&str], language: &str) -> pb::PublishRequest {
    let mut request = open(story_id, tags);
    if let Kind::StoryOpened(opened) = change_mut(&mut request) {
        opened.language = language.to_owned();
    }
    request
}

/// A named source of the given kind.
pub fn source(name: &str, kind: pb::SourceKind, role: &str) -> pb::Source {
    pb::Source {
        name: name.to_owned(),
        kind: kind.into(),
        role: role.to_owned(),
        url: String::new(),
    }
}

/// An attribution of `stance` to a person.
pub fn said_by(name: &str, role: &str, stance: pb::Stance) -> pb::Attribution {
    pb::Attribution {
        source: Some(source(name, pb::SourceKind::Person, role)),
        stance: stance.into(),
        ..Default::default()
    }
}

/// Reports fact `fact_id` in `story_id`.
pub fn report(story_id: &str, fact_id: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        &format!("Fact {fact_id} reported"),
        Kind::FactReported(pb::FactReported {
            fact_id: fact_id.to_owned(),
            statement: format!("Statement of {fact_id}."),
            attributions: vec![said_by(
                "Kim Min-ki",
                "South Korean lawmaker",
                pb::Stance::Asserts,
            )],
        }),
    )
}

/// Reports fact `fact_id` in `story_id` with as much text as one request carries comfortably:
/// about 800 KB encoded (50 attributions, each with a long quote, a long reason and a chain of 30
/// sources), under the server's 1 MiB request limit. A few of these fill a story.
pub fn bulky_fact(story_id: &str, fact_id: &str) -> pb::PublishRequest {
    let via = source(&"v".repeat(200), pb::SourceKind::Person, &"r".repeat(200));
    let attribution = pb::Attribution {
        via: vec![via; 30],
        anonymous: true,
        anonymity_reason: "a".repeat(2_000),
        quote: "q".repeat(2_000),
        ..said_by("An official", "spokesperson", pb::Stance::Asserts)
    };
    request(
        story_id,
        "",
        &format!("Fact {fact_id} reported at length"),
        Kind::FactReported(pb::FactReported {
            fact_id: fact_id.to_owned(),
            statement: "s".repeat(2_000),
            attributions: vec![attribution; 50],
        }),
    )
}

/// Reports `fact_id` in `story_id` as [`report`] does, its source's words at `url`.
pub fn report_from(story_id: &str, fact_id: &str, url: &str) -> pb::PublishRequest {
    let mut request = report(story_id, fact_id);
    if let Kind::FactReported(reported) = change_mut(&mut request) {
        reported.attributions[0]
            .source
            .as_mut()
            .expect("a source")
            .url = url.to_owned();
    }
    request
}

/// Changes the status of fact `fact_id` in `story_id`.
pub fn set_status(story_id: &str, fact_id: &str, status: pb::FactStatus) -> pb::PublishRequest {
    request(
        story_id,
        "",
        &format!("Fact {fact_id} is now {}", status.as_str_name()),
        Kind::FactStatusChanged(pb::FactStatusChanged {
            fact_id: fact_id.to_owned(),
            status: status.into(),
            attributions: vec![said_by(
                "Enzo Moavero Milanesi",
                "foreign minister of Italy",
                pb::Stance::Denies,
            )],
            note: String::new(),
        }),
    )
}

/// Changes the status of fact `fact_id` in `story_id` and adds nothing to it: no attribution.
pub fn bare_status(story_id: &str, fact_id: &str, status: pb::FactStatus) -> pb::PublishRequest {
    let mut request = set_status(story_id, fact_id, status);
    if let Kind::FactStatusChanged(changed) = change_mut(&mut request) {
        changed.attributions.clear();
    }
    request
}

/// Withdraws `story_id`: the one change a story takes that only ends it.
pub fn withdraw(story_id: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        "Story withdrawn",
        Kind::StoryStatusChanged(pb::StoryStatusChanged {
            status: pb::StoryStatus::Withdrawn.into(),
            reason: "Could not be verified".to_owned(),
        }),
    )
}

/// Adds a line of context to `story_id`: a change that always applies to an open story.
pub fn note(story_id: &str, text: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        text,
        Kind::ContextAdded(pb::ContextAdded {
            text: text.to_owned(),
            attributions: Vec::new(),
        }),
    )
}

/// Publishes story "story" (tagged italy) with fact asylum-italy, which the desk then marks
/// DENIED: sequences 1 to 3. Returns the client, to publish more.
pub async fn publish_a_denied_fact(server: &TestServer) -> StoryServiceClient<Channel> {
    let mut client = server.client().await;
    publish(&mut client, open("story", &["italy"])).await;
    publish(&mut client, report("story", "asylum-italy")).await;
    publish(
        &mut client,
        set_status("story", "asylum-italy", pb::FactStatus::Denied),
    )
    .await;
    client
}

/// A Subscribe request for every story from `from_sequence`.
pub fn from(from_sequence: u64) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        from_sequence: Some(from_sequence),
        ..Default::default()
    }
}

/// Publishes and expects success.
pub async fn publish(
    client: &mut StoryServiceClient<Channel>,
    request: pb::PublishRequest,
) -> pb::PublishResponse {
    within("publish", client.publish(request))
        .await
        .expect("publish accepted")
        .into_inner()
}

/// A story's state (now, or as of a version), which must exist.
pub async fn get_story(
    client: &mut StoryServiceClient<Channel>,
    story_id: &str,
    as_of_version: Option<u64>,
) -> pb::Story {
    let request = pb::GetStoryRequest {
        story_id: story_id.to_owned(),
        as_of_version,
    };
    within("get_story", client.get_story(request))
        .await
        .expect("get_story")
        .into_inner()
        .story
        .expect("story set")
}

/// Every retained event, read page by page through ListEvents (checking `log_id` when set).
pub async fn all_events(
    client: &mut StoryServiceClient<Channel>,
    log_id: &str,
) -> Vec<pb::UpdateEvent> {
    let mut events = Vec::new();
    let mut from_sequence = 0;
    loop {
        let request = pb::ListEventsRequest {
            from_sequence,
            page_size: 1_000,
            log_id: log_id.to_owned(),
            ..Default::default()
        };
        let page = within("list_events", client.list_events(request))
            .await
            .expect("list_events")
            .into_inner();
        events.extend(page.events);
        from_sequence = page.next_sequence;
        if from_sequence > page.head_sequence {
            return events;
        }
    }
}

/// Publishes `requests` on one PublishStream and expects every one accepted; returns how many.
pub async fn publish_all(
    client: &mut StoryServiceClient<Channel>,
    requests: impl IntoIterator<Item = pb::PublishRequest>,
) -> usize {
    let messages: Vec<_> = requests
        .into_iter()
        .map(|request| pb::PublishStreamRequest {
            request: Some(request),
        })
        .collect();
    let mut acks = within(
        "PublishStream",
        client.publish_stream(tokio_stream::iter(messages)),
    )
    .await
    .expect("stream accepted")
    .into_inner();
    let mut accepted = 0;
    while let Some(ack) = within("an acknowledgement", acks.message())
        .await
        .expect("acknowledgement")
    {
        assert!(
            matches!(
                ack.result,
                Some(pb::publish_stream_response::Result::Accepted(_))
            ),
            "{ack:?}"
        );
        accepted += 1;
    }
    accepted
}

/// Subscribes, expects the stream to open, and reads its first item, which is always `started`;
/// returns the stream positioned after it.
pub async fn subscribe(
    client: &mut StoryServiceClient<Channel>,
    request: pb::SubscribeRequest,
) -> Streaming<pb::SubscribeResponse> {
    subscribe_started(client, request).await.0
}

/// Subscribes, expects the stream to open, and returns it with its first item, `started`.
pub async fn subscribe_started(
    client: &mut StoryServiceClient<Channel>,
    request: pb::SubscribeRequest,
) -> (Streaming<pb::SubscribeResponse>, pb::Started) {
    let mut stream = within("subscribe", client.subscribe(request))
        .await
        .expect("subscription accepted")
        .into_inner();
    match next_item(&mut stream).await {
        Item::Started(started) => (stream, started),
        other => panic!("expected started first, got {other:?}"),
    }
}

/// The next item of a stream, failing the test if the stream ends or errs.
pub async fn next_item(stream: &mut Streaming<pb::SubscribeResponse>) -> Item {
    within("the next stream item", stream.message())
        .await
        .expect("stream item, not an error")
        .expect("stream still open")
        .item
        .expect("item set")
}

/// The next item, which must be an event.
pub async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::UpdateEvent {
    match next_item(stream).await {
        Item::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Reads events until `caught_up`, returning the events and the caught-up marker.
pub async fn until_caught_up(
    stream: &mut Streaming<pb::SubscribeResponse>,
) -> (Vec<pb::UpdateEvent>, pb::CaughtUp) {
    let mut events = Vec::new();
    loop {
        match next_item(stream).await {
            Item::Event(event) => events.push(event),
            Item::CaughtUp(caught_up) => return (events, caught_up),
            other => panic!("expected events then caught_up, got {other:?}"),
        }
    }
}

/// The sequences of some events.
pub fn sequences(events: &[pb::UpdateEvent]) -> Vec<u64> {
    events.iter().map(|event| event.sequence).collect()
}

/// Expects `result` to be a gRPC error with `code` whose message mentions every one of `words`.
pub fn expect_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    words: &[&str],
) -> tonic::Status {
    let status = result.expect_err("expected an error status");
    assert_eq!(status.code(), code, "unexpected code: {status:?}");
    for word in words {
        assert!(
            status.message().contains(word),
            "message {:?} should mention {word:?}",
            status.message()
        );
    }
    status
}

/// A second loopback address. The budget tests connect the client under test from it and its
/// neighbour from 127.0.0.1, so that they are two connections whether the server tells peers
/// apart by connection or by address.
pub const SECOND_PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Limits with a budget of `burst` wasted streams per connection that, in effect, never refills
/// during a test, and a window of 30 s: a stream reset before any answer counts however slowly a
/// loaded machine runs the test's round trips (the default 50 ms is the server's, not a test's).
pub fn waste_budget(burst: u32) -> Limits {
    Limits {
        wasted_streams_per_second: 0.001,
        wasted_streams_burst: burst,
        wasted_stream_window: Duration::from_secs(30),
        ..Limits::default()
    }
}

/// How long a test waits for an answer on a connection before calling it paused. On
/// [`waste_budget`]'s refill a paused connection is not read again for the longest pause (10 s),
/// so its call waits well past this; a connection that is read answers in milliseconds even on a
/// loaded machine.
pub const PAUSED_AFTER: Duration = Duration::from_secs(3);

/// Cancels `count` calls on `channel` that the server has started and not answered, one after
/// another, as a client resetting streams in a loop would: each a Publish whose request message
/// never comes, dropped (so reset) once a ListStories sent after it on the same connection has
/// been answered, which shows the server has read the Publish's headers (it reads in order).
pub async fn waste_by_cancelling(channel: &Channel, count: usize) {
    let path = http::uri::PathAndQuery::from_static("/storywire.v1.StoryService/Publish");
    let mut client = StoryServiceClient::new(channel.clone());
    // One round trip first: on a new connection TCP may hold the first answers back for a
    // delayed ACK (40 ms), which would make the first round slower than any abuser's.
    list_stories(&mut client).await;
    for _ in 0..count {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        within("the channel to be ready", grpc.ready())
            .await
            .expect("channel ready");
        let call = grpc.client_streaming::<_, pb::PublishRequest, pb::PublishResponse, _>(
            tonic::Request::new(tokio_stream::pending()),
            path.clone(),
            tonic_prost::ProstCodec::default(),
        );
        let mut call = std::pin::pin!(call);
        // One poll hands the call to the connection; it cannot be answered without its message.
        std::future::poll_fn(|cx| {
            assert!(
                call.as_mut().poll(cx).is_pending(),
                "answered without a message"
            );
            std::task::Poll::Ready(())
        })
        .await;
        list_stories(&mut client).await;
    }
}

async fn list_stories(client: &mut StoryServiceClient<Channel>) {
    within(
        "list_stories",
        client.list_stories(pb::ListStoriesRequest::default()),
    )
    .await
    .expect("list_stories");
}

/// Publishes twice from `peer`, one after the other, while `neighbour`, on another connection,
/// publishes 50 updates one after another, and says whether the server answered both of the
/// peer's within [`PAUSED_AFTER`]: it does not once it has stopped reading `peer`'s connection,
/// and the neighbour's are answered all the same. (The first may be read while the server is
/// still counting a stream `peer` has just wasted.) Story "story" must be open.
pub async fn answered_alongside(
    peer: &StoryServiceClient<Channel>,
    neighbour: &mut StoryServiceClient<Channel>,
) -> bool {
    let mut peer = peer.clone();
    let from_peer = async move {
        peer.publish(note("story", "From the peer")).await?;
        peer.publish(note("story", "From the peer, again")).await
    };
    let (answered, ()) = tokio::join!(
        tokio::time::timeout(PAUSED_AFTER, from_peer),
        within(
            "the neighbour's publishes",
            carry_on_publishing(neighbour, 50)
        )
    );
    match answered {
        Ok(published) => {
            published.expect("publish accepted");
            true
        }
        Err(_) => false,
    }
}

/// Publishes `count` events as a well-behaved peer would, one after another, and checks each
/// landed: proof the server went on serving.
pub async fn carry_on_publishing(client: &mut StoryServiceClient<Channel>, count: usize) {
    for n in 0..count {
        let receipt = publish(client, note("story", &format!("Update {n}"))).await;
        assert!(receipt.sequence > 0);
    }
}
