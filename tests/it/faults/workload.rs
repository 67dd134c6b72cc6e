//! The clients of a fault run: two publishers per node on one story, a subscriber starting on each
//! node that moves to the other node every so often (and whenever its stream ends), and a watch of
//! each node's health. Each records what it saw for the history.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use storywire::pb::{self, subscribe_response::Item};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    history::{Outcome, Publish, Receipts},
    testbed::Testbed,
};
use crate::support::report;

/// The stories the publishers update, all of them the same one at a time (they race), moving on
/// every [`PER_STORY`] publishes so that no story fills up (a story holds 1,000 facts).
pub const STORIES: usize = 30;

/// How many publishes each publisher sends to one story before the next.
const PER_STORY: usize = 30;

/// The story a publisher's `count`th publish updates.
pub fn story(count: usize) -> String {
    format!("wire-{}", (count / PER_STORY) % STORIES)
}

/// How long one publish may take before the client gives up on it (an unknown outcome).
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

/// How long a client waits after a failed call before its next one, so that a node refusing at
/// once is not asked in a busy loop.
const BACKOFF: Duration = Duration::from_millis(100);

/// How many events a subscriber reads on one node before it resumes on the other.
const EVENTS_PER_NODE: usize = 40;

/// How long a resume may wait for a node that is behind (the node waits, bounded, to catch up).
const RESUME_DEADLINE: Duration = Duration::from_secs(20);

/// A health change of one node: when, and whether it says SERVING.
pub type HealthChange = (Instant, bool);

/// The running clients of a run.
pub struct Workload {
    /// Turns true to stop the publishers.
    stop_publishing: watch::Sender<bool>,
    /// Turns true to stop the subscribers and health watches.
    stop_reading: watch::Sender<bool>,
    publishers: Vec<JoinHandle<Vec<Publish>>>,
    subscribers: Vec<JoinHandle<Vec<Receipts>>>,
    /// The last sequence each subscriber received.
    pub received: Vec<Arc<AtomicU64>>,
    health: Vec<JoinHandle<Vec<HealthChange>>>,
}

impl Workload {
    /// Starts the clients of `testbed`'s two nodes; event_ids begin with `prefix`.
    pub fn start(testbed: &Testbed, prefix: &str) -> Self {
        let (stop_publishing, publishing) = watch::channel(false);
        let (stop_reading, reading) = watch::channel(false);
        let mut publishers = Vec::new();
        for publisher in 0..4 {
            let node = publisher % 2;
            let client = testbed.client(node);
            let prefix = format!("{prefix}-p{publisher}");
            publishers.push(tokio::spawn(publish(
                client,
                node,
                prefix,
                publishing.clone(),
            )));
        }
        let mut subscribers = Vec::new();
        let mut received = Vec::new();
        for first in 0..2 {
            let clients = [testbed.client(0), testbed.client(1)];
            let progress = Arc::new(AtomicU64::new(0));
            received.push(progress.clone());
            subscribers.push(tokio::spawn(subscribe(
                clients,
                first,
                progress,
                reading.clone(),
            )));
        }
        let health = (0..2)
            .map(|node| {
                let client = testbed.health(node);
                tokio::spawn(watch_health(client, reading.clone()))
            })
            .collect();
        Self {
            stop_publishing,
            stop_reading,
            publishers,
            subscribers,
            received,
            health,
        }
    }

    /// Stops the publishers and returns what they did.
    pub async fn stop_publishing(&mut self) -> Vec<Publish> {
        self.stop_publishing.send_replace(true);
        let mut publishes = Vec::new();
        for publisher in self.publishers.drain(..) {
            publishes.extend(publisher.await.expect("a publisher"));
        }
        publishes
    }

    /// Stops the subscribers and health watches and returns what they saw.
    pub async fn stop_reading(self) -> (Vec<Vec<Receipts>>, Vec<Vec<HealthChange>>) {
        self.stop_reading.send_replace(true);
        let mut subscribers = Vec::new();
        for subscriber in self.subscribers {
            subscribers.push(subscriber.await.expect("a subscriber"));
        }
        let mut health = Vec::new();
        for watch in self.health {
            health.push(watch.await.expect("a health watch"));
        }
        (subscribers, health)
    }
}

/// Publishes updates to the [`STORIES`] through `node` until `stop`, each with a new event_id.
async fn publish(
    mut client: pb::story_service_client::StoryServiceClient<tonic::transport::Channel>,
    node: usize,
    prefix: String,
    stop: watch::Receiver<bool>,
) -> Vec<Publish> {
    let mut publishes = Vec::new();
    for count in 0.. {
        if *stop.borrow() {
            break;
        }
        let event_id = format!("{prefix}-{count}");
        let story = story(count);
        let mut request = report(&story, &event_id);
        request.event_id = event_id.clone();
        let mut call = tonic::Request::new(request);
        call.set_timeout(PUBLISH_DEADLINE);
        let start = Instant::now();
        let answer = client.publish(call).await;
        let outcome = Outcome::of(&answer, |receipt| {
            let receipt = receipt.get_ref();
            (receipt.sequence, receipt.duplicate)
        });
        let failed = answer.is_err();
        publishes.push(Publish {
            event_id,
            story,
            node,
            start,
            end: Instant::now(),
            outcome,
        });
        if failed {
            tokio::time::sleep(BACKOFF).await;
        }
    }
    publishes
}

/// Reads every event from sequence 1 on, starting on node `first` and moving to the other node
/// every [`EVENTS_PER_NODE`] events and whenever the subscription ends, until `stop`.
async fn subscribe(
    mut clients: [pb::story_service_client::StoryServiceClient<tonic::transport::Channel>; 2],
    first: usize,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Receipts> {
    let mut subscriptions = Vec::new();
    let (mut node, mut next, mut log_id) = (first, 1, String::new());
    while !*stop.borrow() {
        let mut call = tonic::Request::new(pb::SubscribeRequest {
            from_sequence: Some(next),
            log_id: log_id.clone(),
            ..Default::default()
        });
        call.set_timeout(RESUME_DEADLINE);
        let opened = tokio::select! {
            opened = clients[node].subscribe(call) => opened,
            _ = stop.changed() => break,
        };
        let Ok(stream) = opened else {
            node = 1 - node;
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let mut stream = stream.into_inner();
        let mut receipts = Receipts {
            node,
            from: next,
            events: Vec::new(),
        };
        loop {
            let item = tokio::select! {
                item = stream.message() => item,
                _ = stop.changed() => break,
            };
            match item {
                Ok(Some(pb::SubscribeResponse {
                    item: Some(Item::Started(started)),
                })) => log_id = started.log_id,
                Ok(Some(pb::SubscribeResponse {
                    item: Some(Item::Event(event)),
                })) => {
                    next = event.sequence + 1;
                    progress.store(event.sequence, Ordering::Relaxed);
                    receipts.events.push((event.sequence, event.event_id));
                    if receipts.events.len() >= EVENTS_PER_NODE {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        subscriptions.push(receipts);
        node = 1 - node;
    }
    subscriptions
}

/// Polls `client`'s health every 100 ms until `stop`, recording each change.
async fn watch_health(
    mut client: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    mut stop: watch::Receiver<bool>,
) -> Vec<HealthChange> {
    let mut changes: Vec<HealthChange> = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return changes,
        }
        let mut call = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
        call.set_timeout(Duration::from_secs(1));
        let serving = matches!(client.check(call).await, Ok(reply) if reply.get_ref().status == 1);
        if changes.last().is_none_or(|(_, was)| *was != serving) {
            changes.push((Instant::now(), serving));
        }
    }
}
