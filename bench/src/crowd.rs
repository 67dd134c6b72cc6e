//! A run's readers and its publisher, on any of the three servers: gRPC subscriptions to
//! storywire or bare tonic, subscriptions to the NATS anchor. Each reader is a task counting what
//! it receives with [`crate::load::Tally`]; the connections stay open until the run ends.

use std::time::Duration;

use storywire::pb;
use tokio::{task::JoinHandle, time::Instant};
use tonic::transport::Channel;

use crate::{
    anchor,
    error::Result,
    load::{
        self, Rate, connect, connect_one, gather, receive, subscribe_each_from, subscribe_many,
    },
    process::{ServerProcess, Target, open_descriptors, settle},
    report::{Figure, ms, ms_at},
    tally::{Received, misses, pooled},
};

/// How the readers are connected.
#[derive(Debug, Clone, Copy)]
pub enum Spread {
    /// Each on a connection of its own, from many loopback addresses, as readers' browsers are.
    Each,
    /// All over this many connections, as a few back-end services would subscribe.
    Over(usize),
    /// Each on a connection of its own, the `n`th from this loopback address (gRPC only).
    EachFrom(fn(usize) -> std::net::IpAddr),
}

/// A run's connections, kept open until the end of the run.
enum Connections {
    /// NATS clients.
    Nats(Vec<async_nats::Client>),
    /// tonic channels (HTTP/2 connections).
    Grpc(Vec<Channel>),
}

/// A run's readers, subscribed and reading.
pub struct Crowd {
    /// One task per reader, returning what it saw.
    receivers: Vec<JoinHandle<Received>>,
    /// The connections they read on.
    open: Connections,
    /// Descriptors this process held before the readers connected.
    descriptors: usize,
}

impl Crowd {
    /// Subscribes `count` readers to the `target` server at `url`, connected as `spread` says,
    /// each expecting the events from `first` to `last` until `deadline`; returns once every
    /// subscription is registered.
    pub async fn subscribe(
        target: Target,
        url: &str,
        count: usize,
        spread: Spread,
        (first, last): (u64, u64),
        deadline: Instant,
    ) -> Result<Self> {
        let descriptors = open_descriptors();
        let (receivers, open) = match (target, spread) {
            (Target::Nats, spread) => {
                let (clients, subscribers) = match spread {
                    Spread::Each | Spread::EachFrom(_) => {
                        anchor::subscribe_each(url, count).await?
                    }
                    Spread::Over(n) => {
                        let clients = anchor::connect(url, n).await?;
                        let subscribers = anchor::subscribe_many(&clients, count).await?;
                        (clients, subscribers)
                    }
                };
                let read = |s| tokio::spawn(anchor::receive(s, first, last, deadline));
                let receivers = subscribers.into_iter().map(read).collect();
                (receivers, Connections::Nats(clients))
            }
            (Target::Storywire | Target::Bare, spread) => {
                let (channels, streams) = match spread {
                    Spread::Each => load::subscribe_each(url, count).await?,
                    Spread::EachFrom(source) => subscribe_each_from(url, count, source).await?,
                    Spread::Over(n) => {
                        let channels = connect(url, n).await?;
                        let request = pb::SubscribeRequest::default();
                        let streams = subscribe_many(&channels, count, &request).await?;
                        (channels, streams)
                    }
                };
                let read = |s| tokio::spawn(receive(s, first, last, deadline));
                let receivers = streams.into_iter().map(read).collect();
                (receivers, Connections::Grpc(channels))
            }
        };
        Ok(Self {
            receivers,
            open,
            descriptors,
        })
    }

    /// Ends the run: waits for every reader's tally, reads the server's CPU seconds since
    /// `cpu_before` and its RSS, then closes the clients and waits for their descriptors to come
    /// back before it stops the server. The clients close first and the server stays until they
    /// are gone: killed while an HTTP/2 client was closing gracefully, it left that client's
    /// socket in CLOSE-WAIT for good.
    pub async fn finish(self, server: ServerProcess, cpu_before: f64) -> Result<Finished> {
        let all = gather(self.receivers).await?;
        let cpu = server.cpu_seconds() - cpu_before;
        let rss = server.rss_bytes();
        match self.open {
            Connections::Nats(clients) => anchor::close(clients).await,
            Connections::Grpc(channels) => drop(channels),
        }
        settle(self.descriptors).await;
        server.stop().await;
        Ok(Finished { all, cpu, rss })
    }
}

/// What a run's readers saw, and what the server spent on them.
pub struct Finished {
    /// Each reader's tally.
    pub all: Vec<Received>,
    /// The server's CPU seconds from the moment the run named.
    pub cpu: f64,
    /// The server's RSS in bytes once every reader was done, connections still open.
    pub rss: u64,
}

/// One publisher of bench events, on a connection of its own.
pub enum Publisher {
    Grpc(Channel),
    Nats(async_nats::Client),
}

impl Publisher {
    /// Connects a publisher to the `target` server at `url`.
    pub async fn connect(target: Target, url: &str) -> Result<Self> {
        Ok(match target {
            Target::Nats => Self::Nats(anchor::connect(url, 1).await?.remove(0)),
            Target::Storywire | Target::Bare => Self::Grpc(connect_one(url).await?),
        })
    }

    /// Publishes bench events `first` to `first + events - 1` at `rate` (PublishStream; a NATS
    /// publish each), and returns how long it took from the first send to the last
    /// acknowledgement (NATS: the flush after the last publish).
    pub async fn publish(&self, first: u64, events: u64, rate: Rate) -> Result<Duration> {
        match self {
            Self::Grpc(channel) => load::publish_from(channel.clone(), first, events, rate).await,
            Self::Nats(client) => anchor::publish(client, first, events, rate).await,
        }
    }

    /// Closes the publisher's connection (a NATS client's task would otherwise live on).
    pub async fn close(self) {
        if let Self::Nats(client) = self {
            anchor::close(vec![client]).await;
        }
    }
}

/// What a run of many readers measured, on any server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    /// From the first connect to the last subscription registered.
    pub subscribe_all_seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub cpu_us_per_delivery: f64,
    /// Server RSS with every reader connected, less its RSS before the first, per reader.
    pub rss_kib_per_reader: f64,
    /// Sequences missed, and seen twice, over all readers.
    pub misses: (u64, u64),
}

impl Delivery {
    /// The figures a table of many readers shows, one row each; `rss` names the memory row.
    pub fn figures(rss: &'static str) -> [Figure<Self>; 6] {
        [
            (
                "time to connect and subscribe all, s",
                |r| r.subscribe_all_seconds,
                3,
            ),
            ("delivery p50, ms", |r| r.p50_ms, 2),
            ("delivery p99, ms", |r| r.p99_ms, 2),
            ("delivery max, ms", |r| r.max_ms, 2),
            ("server CPU per delivery, µs", |r| r.cpu_us_per_delivery, 2),
            (rss, |r| r.rss_kib_per_reader, 1),
        ]
    }

    /// The figures of `all` readers, connected in `subscribe_all`, that cost the server `cpu`
    /// seconds and `rss_growth` bytes.
    pub fn of(
        all: &[Received],
        subscribe_all: Duration,
        cpu: f64,
        rss_growth: u64,
    ) -> Result<Self> {
        let (latency, delivered) = pooled(all)?;
        Ok(Self {
            subscribe_all_seconds: subscribe_all.as_secs_f64(),
            p50_ms: ms_at(&latency, 0.5),
            p99_ms: ms_at(&latency, 0.99),
            max_ms: ms(latency.max()),
            cpu_us_per_delivery: cpu * 1e6 / delivered.max(1) as f64,
            rss_kib_per_reader: rss_growth as f64 / all.len().max(1) as f64 / 1024.0,
            misses: misses(all),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Crowd, Finished, Publisher, Spread};
    use crate::{
        load::Rate,
        process::{ServerProcess, Target, tests::nats_server_at_hand},
    };

    #[tokio::test]
    async fn nats_subscribers_sharing_a_connection_each_get_every_event_once() {
        if !nats_server_at_hand() {
            return;
        }
        let server = ServerProcess::start(Target::Nats, 0).await.unwrap();
        let url = server.url();
        let deadline = Instant::now() + Duration::from_secs(10);
        let crowd = Crowd::subscribe(Target::Nats, &url, 3, Spread::Over(1), (1, 20), deadline);
        let crowd = crowd.await.unwrap();
        let publisher = Publisher::connect(Target::Nats, &url).await.unwrap();
        publisher.publish(1, 20, Rate::Max).await.unwrap();
        let Finished { all, .. } = crowd.finish(server, 0.0).await.unwrap();
        publisher.close().await;
        assert_eq!(all.len(), 3);
        for received in all {
            let sequences = received.sequences;
            assert_eq!(
                (sequences.events, sequences.gaps, sequences.duplicates),
                (20, 0, 0)
            );
            assert_eq!(received.latency.len(), 20);
        }
    }
}
