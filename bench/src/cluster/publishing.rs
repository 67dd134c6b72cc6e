//! The cluster case's publishing table: unary Publish latency, PublishStream to one story and
//! over [`STORIES`] stories, through a node of each journal; and JetStream alone, through
//! async-nats with no storywire in the way, for where the time goes.

use std::collections::VecDeque;

use async_nats::jetstream::{self, context::PublishAckFuture, stream::StorageType};
use prost::Message;
use storywire::log::replicated::Proposal;
use tokio::time::Instant;

use super::{JetStream, Journal, RETAIN, SERVING_TIMEOUT, Servers, cpu_of, start_node};
use crate::{
    error::Result,
    load::{self, Rate, connect_one, open_stories, publish_from, publish_spread, publish_unary},
    report::{Table, cell, histogram, in_turn, ms_at, record},
};

/// Stories the spread PublishStream publishes over: a burst of the server's (up to 256
/// messages) then splits into runs of 64 distinct stories, each run published concurrently.
const STORIES: u64 = 64;
/// Unary publishes, one at a time, whose latency the publishing table gives: enough for a p99
/// that is the 3rd-worst call.
const UNARY_EVENTS: u64 = 300;

/// One run of the publishing table, for one row.
#[derive(Debug, Clone, Copy)]
pub(super) struct Publishing {
    /// Unary Publish, each call from its send to its answer.
    unary_p50_ms: f64,
    unary_p99_ms: f64,
    /// PublishStream to one story, at full speed.
    one_story_per_second: f64,
    /// PublishStream over [`STORIES`] stories, at full speed.
    spread_per_second: f64,
    /// The node's CPU per event while publishing over [`STORIES`] stories (none for JetStream
    /// alone).
    node_cpu_us: Option<f64>,
    /// The nats-servers' CPU per event, all of them together, likewise (none without JetStream).
    nats_cpu_us: Option<f64>,
}

/// The publishing table: each log, and JetStream alone, `runs` times in turn.
pub(super) async fn publishing(servers: &Servers, events: u64, runs: usize) -> Result<()> {
    let one_story = (events / 10).max(1);
    let rows = [
        Journal::Memory,
        Journal::JetStream(1),
        Journal::JetStream(3),
        Journal::Alone(1),
        Journal::Alone(3),
    ];
    let mut run = 0;
    let outcome = in_turn(&rows, runs, "cluster publishing", |row| {
        run += 1;
        let stream = format!("PUBLISH-{run}");
        async move {
            match row {
                Journal::Alone(replicas) => {
                    let jetstream = servers.of(replicas);
                    jetstream_alone(jetstream, replicas, &stream, events, one_story).await
                }
                journal => publish_through(journal, servers, &stream, events, one_story).await,
            }
        }
    })
    .await;
    println!(
        "\nPublishing, one client: {UNARY_EVENTS} unary Publish calls one at a time; PublishStream at full speed to one story ({one_story} events) and over {STORIES} stories ({events} events); median (min–max) of {runs} runs. CPU: per event over {STORIES} stories, the node's and the nats-servers' (all of them).\n"
    );
    let mut table = Table::new(&[
        "log".to_owned(),
        "unary p50 ms".into(),
        "unary p99 ms".into(),
        "PublishStream 1 story, events/s".into(),
        format!("PublishStream {STORIES} stories, events/s"),
        "node CPU µs/event".into(),
        "nats-server CPU µs/event".into(),
    ]);
    for (row, results) in rows.iter().zip(&outcome.results) {
        let column = |f: fn(&Publishing) -> f64| -> Vec<f64> { results.iter().map(f).collect() };
        let optional = |f: fn(&Publishing) -> Option<f64>| -> String {
            let values: Option<Vec<f64>> = results.iter().map(f).collect();
            values.map_or("–".to_owned(), |values| cell(&values, 1))
        };
        table.row([
            row.to_string(),
            cell(&column(|r| r.unary_p50_ms), 2),
            cell(&column(|r| r.unary_p99_ms), 2),
            cell(&column(|r| r.one_story_per_second), 0),
            cell(&column(|r| r.spread_per_second), 0),
            optional(|r| r.node_cpu_us),
            optional(|r| r.nats_cpu_us),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// One run of the publishing table through a fresh node of `journal` on stream `stream`.
pub(super) async fn publish_through(
    journal: Journal,
    servers: &Servers,
    stream: &str,
    events: u64,
    one_story: u64,
) -> Result<Publishing> {
    let node = start_node(&servers.node_args(journal, stream), RETAIN, SERVING_TIMEOUT).await?;
    let channel = connect_one(&node.url()).await?;
    let unary = publish_unary(channel.clone(), 1, UNARY_EVENTS).await?;
    let one = publish_from(channel.clone(), UNARY_EVENTS + 1, one_story, Rate::Max).await?;
    open_stories(channel.clone(), STORIES).await?;
    let nats = match journal {
        Journal::JetStream(replicas) => Some(servers.of(replicas)),
        Journal::Memory | Journal::Alone(_) => None,
    };
    let node_cpu = node.cpu_seconds();
    let nats_cpu = nats.map(cpu_of);
    let spread = publish_spread(channel, events, STORIES).await?;
    let per_event = |seconds: f64| seconds * 1e6 / events as f64;
    let node_cpu_us = per_event(node.cpu_seconds() - node_cpu);
    let nats_cpu_us = nats
        .zip(nats_cpu)
        .map(|(nats, before)| per_event(cpu_of(nats) - before));
    node.stop().await;
    Ok(Publishing {
        unary_p50_ms: ms_at(&unary.latency, 0.5),
        unary_p99_ms: ms_at(&unary.latency, 0.99),
        one_story_per_second: one_story as f64 / one.elapsed.as_secs_f64(),
        spread_per_second: events as f64 / spread.as_secs_f64(),
        node_cpu_us: Some(node_cpu_us),
        nats_cpu_us,
    })
}

/// One run of JetStream alone, as a node would use it without the node: a fresh stream `name` of
/// `replicas` on `jetstream`; a bench event's proposal published and its acknowledgement awaited
/// [`UNARY_EVENTS`] times, then `one_story` times; then `events` times with [`STORIES`]
/// acknowledgements outstanding (as many as a cluster node sends at once), spread over as many
/// subjects. No expected-sequence headers, no replica reading the stream back.
pub(super) async fn jetstream_alone(
    jetstream: &JetStream,
    replicas: u8,
    name: &str,
    events: u64,
    one_story: u64,
) -> Result<Publishing> {
    let urls: Vec<async_nats::ServerAddr> = jetstream
        .urls()
        .split(',')
        .map(|url| url.parse().map_err(|e| format!("{url}: {e}")))
        .collect::<Result<_, _>>()?;
    let client = async_nats::connect(urls.as_slice())
        .await
        .map_err(|e| format!("connect to NATS: {e}"))?;
    let context = jetstream::new(client);
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.story.*")],
        storage: StorageType::File,
        num_replicas: usize::from(replicas),
        ..Default::default()
    };
    context
        .create_stream(config)
        .await
        .map_err(|e| format!("create stream {name}: {e}"))?;
    let payload: bytes::Bytes = Proposal {
        request: Some(load::revision(load::STORY.into(), 2)),
        recorded_at: None,
        story_version: 2,
        filter_tags: vec!["bench".into()],
        published_by: storywire::auth::ANONYMOUS.into(),
    }
    .encode_to_vec()
    .into();
    let subject = |n: u64| format!("{name}.story.{}", load::story_id(n));
    let send = async |n: u64| -> Result<PublishAckFuture> {
        let sent = context.publish(subject(n), payload.clone()).await;
        Ok(sent.map_err(|e| format!("JetStream publish: {e}"))?)
    };
    let acked = async |ack: PublishAckFuture| -> Result<()> {
        ack.await
            .map_err(|e| format!("JetStream acknowledgement: {e}"))?;
        Ok(())
    };

    let mut latency = histogram();
    for _ in 0..UNARY_EVENTS {
        let sent = Instant::now();
        acked(send(0).await?).await?;
        record(&mut latency, sent.elapsed());
    }
    let start = Instant::now();
    for _ in 0..one_story {
        acked(send(0).await?).await?;
    }
    let one = start.elapsed();

    let cpu = cpu_of(jetstream);
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(STORIES as usize);
    for i in 0..events {
        if in_flight.len() == STORIES as usize {
            acked(in_flight.pop_front().expect("a publish in flight")).await?;
        }
        in_flight.push_back(send(i % STORIES + 1).await?);
    }
    for ack in in_flight {
        acked(ack).await?;
    }
    let spread = start.elapsed();
    Ok(Publishing {
        unary_p50_ms: ms_at(&latency, 0.5),
        unary_p99_ms: ms_at(&latency, 0.99),
        one_story_per_second: one_story as f64 / one.as_secs_f64(),
        spread_per_second: events as f64 / spread.as_secs_f64(),
        node_cpu_us: None,
        nats_cpu_us: Some((cpu_of(jetstream) - cpu) * 1e6 / events as f64),
    })
}
