//! A storywire node of a test cluster (`serve --nats`), and what the cluster tests do through
//! nodes: publish until acknowledged, read every event, subscribe and resume, and check that
//! acknowledged events are in a log exactly once.
//!
//! The cluster tests and the fault harness share it.

use std::{collections::HashMap, time::Duration};

use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use tokio::sync::mpsc;
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    process::{self, Running},
    support::{client_at, open, report, within},
};

/// How long a publisher keeps retrying one update through the nodes before the test fails: long
/// enough for a JetStream leader election and a node's reconnection.
pub const RETRY_PATIENCE: Duration = Duration::from_secs(60);

/// A storywire node of the cluster: the real binary, serving on a loopback port.
pub struct Node {
    /// The process.
    pub process: Running,
    /// Its gRPC URL.
    pub url: String,
}

impl Node {
    /// Starts `storywire serve --nats SERVERS --nats-stream STREAM` with `extra` flags, and waits
    /// until it listens (it may not be SERVING yet).
    pub async fn start(servers: &str, stream: &str, extra: &[&str]) -> Self {
        let mut process = Self::spawn(servers, stream, extra);
        let (address, _) = process.listening_address().await;
        Self {
            process,
            url: format!("http://{address}"),
        }
    }

    /// Spawns `storywire serve --nats SERVERS --nats-stream STREAM` with `extra` flags.
    pub fn spawn(servers: &str, stream: &str, extra: &[&str]) -> Running {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            servers,
            "--nats-stream",
            stream,
        ];
        args.extend_from_slice(extra);
        Running::spawn(process::storywire(&args))
    }

    /// Starts a node and waits until it is SERVING.
    pub async fn serving(servers: &str, stream: &str, extra: &[&str]) -> Self {
        let node = Self::start(servers, stream, extra).await;
        node.until_health(ServingStatus::Serving).await;
        node
    }

    /// A client of this node.
    pub async fn client(&self) -> StoryServiceClient<Channel> {
        client_at(&self.url).await
    }

    /// Waits, by watching gRPC health, until the node reports `status`.
    pub async fn until_health(&self, status: ServingStatus) {
        let channel = Channel::from_shared(self.url.clone())
            .expect("valid url")
            .connect()
            .await
            .expect("connect for health");
        let mut health = HealthClient::new(channel);
        let mut watch = health
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("watch health")
            .into_inner();
        within(&format!("{} to be {status:?}", self.url), async {
            while let Some(reply) = watch.message().await.expect("health stream") {
                if reply.status == i32::from(status) {
                    return;
                }
            }
            panic!("the health stream ended");
        })
        .await;
    }
}

/// A report in `story_id` with a publisher's own event_id, so that it can be retried safely.
pub fn update(story_id: &str, event_id: &str) -> pb::PublishRequest {
    let mut request = report(story_id, event_id);
    request.event_id = event_id.to_owned();
    request
}

/// Opens `story_id` with a publisher's own event_id.
pub fn opening(story_id: &str, event_id: &str) -> pb::PublishRequest {
    let mut request = open(story_id, &["cluster"]);
    request.event_id = event_id.to_owned();
    request
}

/// Publishes `request` through the nodes at `urls`, starting with `urls[first]`, moving to the
/// next node and retrying with the same event_id whenever the answer says nothing was promised
/// (the node is gone, cut off, or JetStream did not acknowledge), until it is acknowledged.
pub async fn publish_until_acknowledged(
    urls: &[String],
    first: usize,
    request: &pb::PublishRequest,
) -> pb::PublishResponse {
    let attempt = async {
        let mut at = first;
        loop {
            let answer = match Channel::from_shared(urls[at].clone())
                .expect("valid url")
                .connect()
                .await
            {
                Ok(channel) => StoryServiceClient::new(channel)
                    .publish(request.clone())
                    .await
                    .map(tonic::Response::into_inner),
                Err(error) => Err(tonic::Status::unavailable(error.to_string())),
            };
            match answer {
                Ok(receipt) => return receipt,
                Err(status)
                    if matches!(
                        status.code(),
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                            | Code::Aborted
                    ) =>
                {
                    at = (at + 1) % urls.len();
                    // A node that is gone refuses at once: give the cluster a moment, not a spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("{} refused for good: {status:?}", request.event_id),
            }
        }
    };
    tokio::time::timeout(RETRY_PATIENCE, attempt)
        .await
        .unwrap_or_else(|_| panic!("{} was never acknowledged", request.event_id))
}

/// Every event a node holds, from its first retained sequence, paging through ListEvents.
pub async fn all_events(node: &Node) -> (Vec<pb::UpdateEvent>, u64, String) {
    every_event(&mut node.client().await).await
}

/// Every event the server behind `client` holds, from its first retained sequence, paging
/// through ListEvents; with the first retained sequence and the log_id.
pub async fn every_event(
    client: &mut StoryServiceClient<Channel>,
) -> (Vec<pb::UpdateEvent>, u64, String) {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                from_sequence: from,
                page_size: 1_000,
                ..Default::default()
            })
            .await
            .expect("ListEvents")
            .into_inner();
        events.extend(page.events);
        if page.next_sequence > page.head_sequence || from == page.next_sequence {
            return (events, page.first_retained_sequence, page.log_id);
        }
        from = page.next_sequence;
    }
}

/// Checks that `events` run gaplessly from `first`, and that every event_id in `acknowledged`
/// is among them exactly once, at the sequence its publisher was told.
pub fn assert_exactly_once(
    events: &[pb::UpdateEvent],
    first: u64,
    acknowledged: &HashMap<String, u64>,
) {
    for (offset, event) in events.iter().enumerate() {
        assert_eq!(
            event.sequence,
            first + offset as u64,
            "a gap or a repeat at {offset}"
        );
    }
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for event in events {
        seen.entry(&event.event_id)
            .or_default()
            .push(event.sequence);
    }
    for (event_id, sequence) in acknowledged {
        assert_eq!(
            seen.get(event_id.as_str()),
            Some(&vec![*sequence]),
            "acknowledged {event_id} at {sequence}"
        );
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(
        repeated.is_empty(),
        "event_ids in the log twice: {repeated:?}"
    );
}

/// Reads a subscription's events into `events` until it ends, passing on its log_id first.
pub async fn forward(
    mut stream: Streaming<pb::SubscribeResponse>,
    log_id: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedSender<pb::UpdateEvent>,
) {
    while let Ok(Some(response)) = stream.message().await {
        if let Some(Item::Started(started)) = &response.item {
            let _ = log_id.send(started.log_id.clone());
        }
        if let Some(Item::Event(event)) = response.item
            && events.send(event).is_err()
        {
            return;
        }
    }
}

/// Subscribes on `node` from `from` (with `log_id` when resuming); the events arrive on the
/// returned receiver, which closes when the subscription ends. Returns the log_id it started on.
pub async fn subscribe(
    node: &Node,
    from: u64,
    log_id: &str,
) -> (String, mpsc::UnboundedReceiver<pb::UpdateEvent>) {
    let stream = node
        .client()
        .await
        .subscribe(pb::SubscribeRequest {
            from_sequence: Some(from),
            log_id: log_id.to_owned(),
            ..Default::default()
        })
        .await
        .expect("Subscribe")
        .into_inner();
    let (log_tx, mut log_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward(stream, log_tx, events_tx));
    let started = within("the subscription's log_id", log_rx.recv())
        .await
        .expect("a started item");
    (started, events_rx)
}

/// Receives events until one at `last` or beyond has arrived.
pub async fn receive_through(
    events: &mut mpsc::UnboundedReceiver<pb::UpdateEvent>,
    last: u64,
    into: &mut Vec<pb::UpdateEvent>,
) {
    within(&format!("events through {last}"), async {
        while into.last().is_none_or(|event| event.sequence < last) {
            let event = events.recv().await.expect("the subscription goes on");
            into.push(event);
        }
    })
    .await;
}
