//! A reader in the storm: reads its live stream until the server ends it, reconnects on a new
//! connection every [`RETRY_INTERVAL`] until the server answers, resumes where the run says, and
//! reads to the last event published.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use storywire::pb::{self, story_service_client::StoryServiceClient, subscribe_response::Item};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tonic::{
    Streaming,
    transport::{Channel, Endpoint},
};

use super::RETRY_INTERVAL;
use crate::{
    error::{Result, failed},
    tally::Sequences,
};

/// What the coordinator and the desk tell each subscriber. Each subscriber holds a clone.
#[derive(Clone)]
pub(super) struct Signals {
    /// The highest sequence the desk has had acknowledged; written by the desk alone.
    pub(super) acked: Arc<AtomicU64>,
    /// Where to resume: set by the coordinator once the old server has exited.
    pub(super) resume_from: watch::Receiver<Option<u64>>,
    /// The last sequence published: set once the desk has stopped; each subscriber reads up to
    /// it. The coordinator keeps the sender until every subscriber has returned.
    pub(super) last: watch::Receiver<Option<u64>>,
    /// Each subscriber sends exactly once: when it was complete (caught up and holding every
    /// event acknowledged so far), or `None` when it gave up. The coordinator counts them.
    pub(super) completed: mpsc::UnboundedSender<Option<Instant>>,
    /// When every task of the run gives up.
    pub(super) deadline: Instant,
}

/// What one subscriber saw across the restart.
#[derive(Debug, Default)]
pub(super) struct Follower {
    /// Its live stream before the restart, from the head its `Started` named.
    pub(super) before: Sequences,
    /// Its resumed stream, from [`resume_sequence`] to the last event published.
    pub(super) resumed: Sequences,
    /// Connects and Subscribe calls that failed before the resumed stream opened.
    pub(super) failed_attempts: u64,
    /// Why it gave up, if it did.
    pub(super) error: Option<String>,
}

/// One subscriber: reads its live stream until the server ends it, reconnects on a new
/// connection, resumes, and reads until it has the last event published. Says it gave up (on
/// `completed`) if it did so before it was complete.
pub(super) async fn follow(
    endpoint: Endpoint,
    channel: Channel,
    stream: Streaming<pb::SubscribeResponse>,
    signals: Signals,
) -> Follower {
    let completed = signals.completed.clone();
    let mut follower = Follower::default();
    let mut complete = false;
    let outcome = follow_into(
        &mut follower,
        &mut complete,
        endpoint,
        channel,
        stream,
        signals,
    );
    if let Err(error) = outcome.await {
        follower.error = Some(error.to_string());
    }
    if !complete {
        let _ = completed.send(None);
    }
    follower
}

/// [`follow`]'s work. Once complete, the subscriber says so at once and keeps reading to the
/// last event, for the gaps and duplicates.
pub(super) async fn follow_into(
    follower: &mut Follower,
    complete: &mut bool,
    endpoint: Endpoint,
    channel: Channel,
    mut stream: Streaming<pb::SubscribeResponse>,
    mut signals: Signals,
) -> Result<()> {
    let deadline = signals.deadline;
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return failed!("the live stream did not end before the deadline"),
            Ok(Ok(Some(message))) => match message.item {
                Some(Item::Started(started)) => {
                    follower.before = Sequences::starting_at(started.head_sequence + 1);
                }
                Some(Item::Event(event)) => _ = follower.before.see(event.sequence),
                _ => {}
            },
            // The server ends every stream when it drains: UNAVAILABLE, or a plain end.
            Ok(Ok(None) | Err(_)) => break,
        }
    }
    drop((stream, channel));

    // The channel is kept until the resumed stream has been read to its end.
    let (from, mut stream, _channel) = loop {
        let channel = connect_until(&endpoint, deadline, &mut follower.failed_attempts).await?;
        let wait = signals.resume_from.wait_for(Option::is_some);
        let from = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(from)) => from.expect("waited for"),
            _ => return failed!("no resume point before the deadline"),
        };
        let request = pb::SubscribeRequest {
            from_sequence: Some(from),
            ..Default::default()
        };
        let mut client = StoryServiceClient::new(channel.clone());
        match tokio::time::timeout_at(deadline, client.subscribe(request)).await {
            Ok(Ok(response)) => break (from, response.into_inner(), channel),
            Ok(Err(_)) => {
                follower.failed_attempts += 1;
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
            Err(_) => return failed!("Subscribe did not answer before the deadline"),
        }
    };

    follower.resumed = Sequences::starting_at(from);
    let mut caught_up = false;
    loop {
        if let Some(last) = *signals.last.borrow()
            && follower.resumed.next > last
        {
            break;
        }
        tokio::select! {
            message = stream.message() => match message? {
                Some(message) => match message.item {
                    Some(Item::Event(event)) => _ = follower.resumed.see(event.sequence),
                    Some(Item::CaughtUp(_)) => caught_up = true,
                    _ => {}
                },
                None => return failed!("the resumed stream ended"),
            },
            changed = signals.last.changed() => {
                if changed.is_err() {
                    return failed!("the run ended before the last event was named");
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return failed!("the last event did not arrive before the deadline");
            }
        }
        if caught_up && !*complete && follower.resumed.next > signals.acked.load(Ordering::Acquire)
        {
            *complete = true;
            let _ = signals.completed.send(Some(Instant::now()));
        }
    }
    if let Some(last) = *signals.last.borrow() {
        follower.resumed.end_at(last);
    }
    Ok(())
}

/// Connects to `endpoint` on a connection of its own, trying every [`RETRY_INTERVAL`] until it
/// answers or `deadline`, counting the attempts that failed.
pub(super) async fn connect_until(
    endpoint: &Endpoint,
    deadline: Instant,
    failed: &mut u64,
) -> Result<Channel> {
    loop {
        match tokio::time::timeout_at(deadline, endpoint.connect()).await {
            Ok(Ok(channel)) => return Ok(channel),
            Ok(Err(_)) => *failed += 1,
            Err(_) => break,
        }
        if Instant::now() + RETRY_INTERVAL > deadline {
            break;
        }
        tokio::time::sleep(RETRY_INTERVAL).await;
    }
    failed!("the server did not answer before the deadline")
}
