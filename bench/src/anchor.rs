//! The client side of the NATS anchor: core NATS publish/subscribe carrying the same
//! bench events storywire sends, so that a figure of storywire's can be read against what a
//! mature broker needs to fan the same bytes out to the same subscribers.
//!
//! The publisher sends each event already as storywire's subscribers receive it (an encoded
//! `SubscribeResponse` with the event's sequence and its send time in `occurred_at`), and each
//! subscriber decodes it and counts it with the same [`Tally`] as a gRPC subscriber: the same
//! bytes on the wire, the same latency, gaps and duplicates. Core NATS keeps nothing and stamps
//! nothing: it is the floor of fan-out, not a log.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use async_nats::{Client, Subscriber};
use futures_util::StreamExt;
use prost::Message;
use storywire::pb::{self, subscribe_response::Item};
use tokio::time::Instant;

use crate::{
    error::{Error, Result},
    load::{CONNECT_WAVE, Rate, patiently, source_address, update_event},
    tally::{Received, Tally},
};

/// The subject every bench event is published to and every subscriber listens on.
const SUBJECT: &str = "bench.story";

/// Connects one client to `url` (from the loopback address `from`, when given), trying again
/// as patiently as a gRPC subscriber would.
async fn connect_one(url: &str, from: Option<IpAddr>) -> Result<Client> {
    let connect = || {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(address) = from {
            options = options.local_address(SocketAddr::new(address, 0));
        }
        options.connect(url)
    };
    patiently(connect, url).await
}

/// Connects `count` clients to `url`, one connection each.
pub async fn connect(url: &str, count: usize) -> Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(connect_one(url, None).await?);
    }
    Ok(clients)
}

/// Subscribes `count` times to the bench subject, spread over `clients`, and waits until the
/// server has registered every subscription (a flush is a PING answered after every SUB before
/// it).
pub async fn subscribe_many(clients: &[Client], count: usize) -> Result<Vec<Subscriber>> {
    let mut subscribers = Vec::with_capacity(count);
    for i in 0..count {
        let client = &clients[i % clients.len()];
        let subscriber = client.subscribe(SUBJECT).await;
        subscribers.push(subscriber.map_err(|e| format!("NATS subscribe: {e}"))?);
    }
    for client in clients {
        client
            .flush()
            .await
            .map_err(|e| format!("NATS flush: {e}"))?;
    }
    Ok(subscribers)
}

/// Opens `count` subscriptions to `url`, each on a client (a connection) of its own, and waits
/// until the server has registered each. The clients come back too, for [`close`].
pub async fn subscribe_each(url: &str, count: usize) -> Result<(Vec<Client>, Vec<Subscriber>)> {
    let opened: Vec<_> = futures_util::stream::iter(0..count)
        .map(|_| async move {
            let client = connect_one(url, Some(source_address())).await?;
            let subscribers = subscribe_many(std::slice::from_ref(&client), 1).await?;
            Ok::<_, Error>((client, subscribers))
        })
        .buffer_unordered(CONNECT_WAVE)
        .collect()
        .await;
    let mut clients = Vec::with_capacity(count);
    let mut subscribers = Vec::with_capacity(count);
    for pair in opened {
        let (client, mut one) = pair?;
        clients.push(client);
        subscribers.append(&mut one);
    }
    Ok((clients, subscribers))
}

/// How long [`close`] waits for a client to drain before dropping it anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes `clients` and waits until their connections are gone. Dropping a client is not enough:
/// its connection task lives on, and once the server is gone it keeps reconnecting, holding a
/// descriptor each; a drain ends the task.
pub async fn close(clients: Vec<Client>) {
    futures_util::stream::iter(clients)
        .map(|client| async move {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, client.drain()).await;
        })
        .buffer_unordered(CONNECT_WAVE)
        .collect::<Vec<()>>()
        .await;
}

/// The `n`th bench event (sequence `n`) as a storywire subscriber receives it, stamped now.
fn message(n: u64) -> bytes::Bytes {
    pb::SubscribeResponse {
        item: Some(Item::Event(update_event(n, n))),
    }
    .encode_to_vec()
    .into()
}

/// Publishes bench events `first` to `first + events - 1` at `rate` from `client`, and returns
/// how long it took from the first publish to the flush after the last. Core NATS acknowledges
/// nothing, so at full speed this is how fast the client hands events to the server, not how
/// fast it accepts them.
pub async fn publish(client: &Client, first: u64, events: u64, rate: Rate) -> Result<Duration> {
    let mut ticks = match rate {
        Rate::Max => None,
        Rate::PerSecond(per_second) => Some(tokio::time::interval(Duration::from_secs_f64(
            1.0 / per_second as f64,
        ))),
    };
    let start = Instant::now();
    for n in first..first + events {
        if let Some(ticks) = ticks.as_mut() {
            ticks.tick().await;
        }
        let published = client.publish(SUBJECT, message(n)).await;
        published.map_err(|e| format!("NATS publish: {e}"))?;
    }
    client
        .flush()
        .await
        .map_err(|e| format!("NATS flush: {e}"))?;
    Ok(start.elapsed())
}

/// Reads `subscriber`, whose events should run from `first` to `last`, until `last` arrives, the
/// subscription ends, or `deadline`.
pub async fn receive(
    mut subscriber: Subscriber,
    first: u64,
    last: u64,
    deadline: Instant,
) -> Received {
    let mut tally = Tally::new(first, last);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscriber.next()).await {
        let Ok(pb::SubscribeResponse {
            item: Some(Item::Event(event)),
        }) = pb::SubscribeResponse::decode(message.payload)
        else {
            continue;
        };
        if tally.count(&event) {
            break;
        }
    }
    tally.finish()
}
