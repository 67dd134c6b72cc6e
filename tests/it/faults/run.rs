//! One fault run: a testbed, the clients, one fault from a seed, the heal, the resends of every
//! unknown outcome, a few expected_version races, the final logs, the checks, and the figures.

use std::{
    fmt,
    time::{Duration, Instant},
};

use prost::Message as _;
use storywire::pb;

use super::{
    history::{self, History, Outcome, Publish},
    scenario::{self, Kind, Rng},
    testbed::Testbed,
    workload::{self, HealthChange, Workload},
};
use crate::support::{TempDir, open, report, within};

/// The longest a node cut off from every quorum may say SERVING (docs/cluster.md).
const NOT_SERVING_BOUND: Duration = Duration::from_secs(5);

/// How long, at most, the cluster may take to converge after a heal before the run fails.
const CONVERGE_PATIENCE: Duration = Duration::from_secs(60);

/// How many expected_version races each run holds after the heal.
const RACES: usize = 3;

/// The counts a run adds to the soak's totals.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub runs: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub unknown: usize,
    pub events: usize,
    pub resumes: usize,
}

impl Counts {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Self) {
        self.runs += other.runs;
        self.acknowledged += other.acknowledged;
        self.refused += other.refused;
        self.unknown += other.unknown;
        self.events += other.events;
        self.resumes += other.resumes;
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs; publishes: {} acknowledged, {} refused, {} unknown; {} events; {} resumes",
            self.runs, self.acknowledged, self.refused, self.unknown, self.events, self.resumes
        )
    }
}

/// What a passing run measured.
pub struct Report {
    pub description: String,
    pub counts: Counts,
    /// Per node: publishes in flight at some time during the fault (sent before the heal,
    /// answered after the fault began) that were acknowledged, refused, unknown.
    pub during: [[usize; 3]; 2],
    /// Per node: the longest time without an acknowledgement, from the fault's start until both
    /// nodes caught up: how long publishes on that node were refused or waited.
    pub silent: [Duration; 2],
    /// Per node: from the heal to its first acknowledgement after it.
    pub first_ack: [Option<Duration>; 2],
    /// From the heal until both nodes held the stream's head and said SERVING.
    pub caught_up: Duration,
    /// The 99th percentile of the acknowledged publishes among those in flight during the fault.
    pub p99: Option<Duration>,
    /// Per cut-off node: from the fault to NOT_SERVING.
    pub not_serving: Vec<(usize, Option<Duration>)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "   {}", self.description)?;
        writeln!(f, "   {}", self.counts)?;
        writeln!(
            f,
            "   during the fault [acked, refused, unknown]: A {:?}, B {:?}; publish p99 {:?}; longest without an ack: A {:?}, B {:?}",
            self.during[0], self.during[1], self.p99, self.silent[0], self.silent[1]
        )?;
        write!(
            f,
            "   heal -> first ack: A {:?}, B {:?}; heal -> caught up {:?}; NOT_SERVING after {:?}",
            self.first_ack[0], self.first_ack[1], self.caught_up, self.not_serving
        )
    }
}

/// Runs `kind` with `seed`; the report, or every violation found.
pub async fn one(kind: Kind, seed: u64) -> Result<Report, Vec<String>> {
    let dir = TempDir::new("faults");
    let mut testbed = Testbed::start(dir.0.clone()).await;
    testbed.start_node(0).await;
    testbed.start_node(1).await;
    converge(&testbed, 0).await;
    let prefix = format!("s{seed}");
    for story in 0..workload::STORIES {
        until_acknowledged(&testbed, story % 2, open(&format!("wire-{story}"), &[])).await;
    }

    let mut workload = Workload::start(&testbed, &prefix);
    within("the clients to get going", async {
        while workload.received[0].load(std::sync::atomic::Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut rng = Rng::new(seed);
    let applied = scenario::apply(kind, &mut rng, &mut testbed).await;
    let heal_head = head(&testbed).await;
    let (caught_up_at, reached) = converge_timed(&testbed, heal_head).await;
    let mut publishes = workload.stop_publishing().await;

    let resends = resend_unknowns(&testbed, &mut publishes).await;
    let races = race(&testbed, &prefix).await;
    let last = head(&testbed).await;
    converge(&testbed, last).await;
    within("the subscribers to read to the head", async {
        while workload
            .received
            .iter()
            .any(|r| r.load(std::sync::atomic::Ordering::Relaxed) < last)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (subscribers, health) = workload.stop_reading().await;
    let logs = vec![read_log(&testbed, 0).await, read_log(&testbed, 1).await];
    let history = History {
        publishes,
        subscribers,
        logs,
        races,
    };

    let mut violations = history::check(&history);
    for (event_id, before, outcome) in &resends {
        // Where the final log holds it. An attempt whose outcome was unknown may still be
        // stored after the log was read before the resends (the NATS client sends what it
        // buffered while cut off once it reconnects): then the resend meets it, and is rightly
        // answered as a duplicate, at the one place the final log holds it.
        let finally = history.logs[0]
            .iter()
            .find(|(_, id, _)| id == event_id)
            .map(|(s, _, _)| *s);
        let expected = match (before, outcome) {
            (Some(sequence), _) => Outcome::Acknowledged {
                sequence: *sequence,
                duplicate: true,
            },
            (
                None,
                Outcome::Acknowledged {
                    sequence,
                    duplicate,
                },
            ) if Some(*sequence) == finally => Outcome::Acknowledged {
                sequence: *sequence,
                duplicate: *duplicate,
            },
            (None, other) => match other {
                Outcome::Acknowledged { sequence, .. } => Outcome::Acknowledged {
                    sequence: finally.unwrap_or(*sequence),
                    duplicate: false,
                },
                other => other.clone(),
            },
        };
        if *outcome != expected {
            violations.push(format!(
                "{event_id} (unknown outcome, in the log at {before:?}) resent: {outcome:?}"
            ));
        }
    }
    let mut not_serving = Vec::new();
    for &node in &applied.cut_off {
        let went = first_change(&health[node], applied.began, false);
        let lasted = applied.healed - applied.began;
        let took = went.map(|at| at - applied.began);
        if lasted > NOT_SERVING_BOUND + Duration::from_millis(500)
            && took.is_none_or(|took| took > NOT_SERVING_BOUND)
        {
            violations.push(format!(
                "node {node} was cut off for {lasted:?} and said NOT_SERVING after {took:?}"
            ));
        }
        not_serving.push((node, took));
    }
    for node in 0..2 {
        if let (Some(back), Some(reached)) = (
            first_change(&health[node], applied.healed, true),
            reached[node],
        ) && back + Duration::from_millis(500) < reached
        {
            violations.push(format!(
                "node {node} said SERVING {:?} before it held the stream's head at the heal",
                reached - back
            ));
        }
    }
    if !violations.is_empty() {
        violations.insert(0, applied.description.clone());
        return Err(violations);
    }
    Ok(figures(
        &history,
        &applied,
        caught_up_at,
        not_serving,
        &resends,
    ))
}

/// The report of a passing run.
fn figures(
    history: &History,
    applied: &scenario::Applied,
    caught_up_at: Instant,
    not_serving: Vec<(usize, Option<Duration>)>,
    resends: &[(String, Option<u64>, Outcome)],
) -> Report {
    let mut counts = Counts {
        runs: 1,
        events: history.logs[0].len(),
        resumes: history
            .subscribers
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .sum(),
        ..Counts::default()
    };
    let mut during = [[0; 3]; 2];
    let mut latencies = Vec::new();
    let mut first_ack = [None; 2];
    for publish in &history.publishes {
        let kind = match publish.outcome {
            Outcome::Acknowledged { .. } => 0,
            Outcome::Refused(_) => 1,
            Outcome::Unknown(_) => 2,
        };
        *[
            &mut counts.acknowledged,
            &mut counts.refused,
            &mut counts.unknown,
        ][kind] += 1;
        if publish.end >= applied.began && publish.start < applied.healed {
            during[publish.node][kind] += 1;
            if kind == 0 {
                latencies.push(publish.end - publish.start);
            }
        }
        if kind == 0 && publish.end >= applied.healed {
            let after = publish.end - applied.healed;
            let first = &mut first_ack[publish.node];
            *first = Some(first.map_or(after, |f: Duration| f.min(after)));
        }
    }
    // The resends answered the unknown outcomes: counted as the unknown they resolved.
    counts.acknowledged -= resends.len().min(counts.acknowledged);
    let mut silent = [Duration::ZERO; 2];
    for (node, longest) in silent.iter_mut().enumerate() {
        let mut acks: Vec<Instant> = history
            .publishes
            .iter()
            .filter(|p| p.node == node && matches!(p.outcome, Outcome::Acknowledged { .. }))
            .map(|p| p.end)
            .filter(|end| *end > applied.began && *end < caught_up_at)
            .collect();
        acks.push(applied.began);
        acks.push(caught_up_at);
        acks.sort();
        *longest = acks
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
    }
    latencies.sort();
    let p99 = (!latencies.is_empty())
        .then(|| latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]);
    Report {
        description: applied.description.clone(),
        counts,
        during,
        silent,
        first_ack,
        caught_up: caught_up_at.saturating_duration_since(applied.healed),
        p99,
        not_serving,
    }
}

/// The first health change to `serving` at or after `since`.
fn first_change(changes: &[HealthChange], since: Instant, serving: bool) -> Option<Instant> {
    changes
        .iter()
        .find(|(at, now)| *at >= since && *now == serving)
        .map(|(at, _)| *at)
}

/// The highest head either node reports now.
async fn head(testbed: &Testbed) -> u64 {
    let mut highest = 0;
    for node in 0..2 {
        highest = highest.max(node_head(testbed, node).await.unwrap_or(0));
    }
    highest
}

/// Node `node`'s head, if it answers.
async fn node_head(testbed: &Testbed, node: usize) -> Option<u64> {
    let mut call = tonic::Request::new(pb::ListEventsRequest {
        page_size: 1,
        ..Default::default()
    });
    call.set_timeout(Duration::from_secs(2));
    let page = testbed.client(node).list_events(call).await.ok()?;
    Some(page.into_inner().head_sequence)
}

/// Waits until both nodes say SERVING and hold the same head, at least `at_least`.
async fn converge(testbed: &Testbed, at_least: u64) {
    converge_timed(testbed, at_least).await;
}

/// [`converge`], returning when it happened and when each node first held `at_least`.
async fn converge_timed(testbed: &Testbed, at_least: u64) -> (Instant, [Option<Instant>; 2]) {
    let mut reached = [None; 2];
    let converged = async {
        loop {
            let heads = [node_head(testbed, 0).await, node_head(testbed, 1).await];
            for node in 0..2 {
                if reached[node].is_none() && heads[node].is_some_and(|h| h >= at_least) {
                    reached[node] = Some(Instant::now());
                }
            }
            if heads[0].is_some()
                && heads[0] == heads[1]
                && heads[0] >= Some(at_least)
                && testbed.serving(0).await
                && testbed.serving(1).await
            {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let at = tokio::time::timeout(CONVERGE_PATIENCE, converged)
        .await
        .unwrap_or_else(|_| panic!("the nodes did not converge within {CONVERGE_PATIENCE:?}"));
    (at, reached)
}

/// Publishes `request` through `node`, then the other, until acknowledged.
async fn until_acknowledged(
    testbed: &Testbed,
    node: usize,
    request: pb::PublishRequest,
) -> pb::PublishResponse {
    let attempt = async {
        for attempt in 0.. {
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(Duration::from_secs(10));
            match testbed.client((node + attempt) % 2).publish(call).await {
                Ok(receipt) => return receipt.into_inner(),
                Err(status) if history::DEFINITE.contains(&status.code()) => {
                    panic!("{} refused: {status:?}", request.event_id)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        unreachable!()
    };
    within("a publish to be acknowledged", attempt).await
}

/// Resends every publish whose outcome stayed unknown, unchanged, through alternating nodes;
/// records each resend, and returns (event_id, where the log held it before, the outcome).
async fn resend_unknowns(
    testbed: &Testbed,
    publishes: &mut Vec<Publish>,
) -> Vec<(String, Option<u64>, Outcome)> {
    let log = read_log(testbed, 0).await;
    let unknown: Vec<Publish> = publishes
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::Unknown(_)))
        .cloned()
        .collect();
    let mut resends = Vec::new();
    for (index, original) in unknown.into_iter().enumerate() {
        let before = log
            .iter()
            .find(|(_, id, _)| *id == original.event_id)
            .map(|(s, _, _)| *s);
        let mut request = report(&original.story, &original.event_id);
        request.event_id = original.event_id.clone();
        let node = index % 2;
        let start = Instant::now();
        let receipt = until_acknowledged(testbed, node, request).await;
        let outcome = Outcome::Acknowledged {
            sequence: receipt.sequence,
            duplicate: receipt.duplicate,
        };
        publishes.push(Publish {
            event_id: original.event_id.clone(),
            story: original.story.clone(),
            node,
            start,
            end: Instant::now(),
            outcome: outcome.clone(),
        });
        resends.push((original.event_id, before, outcome));
    }
    resends
}

/// Races two publishes with the same expected_version, one through each node, [`RACES`] times.
async fn race(testbed: &Testbed, prefix: &str) -> Vec<[Outcome; 2]> {
    let mut races = Vec::new();
    for round in 0..RACES {
        let story = format!("{prefix}-race-{round}");
        until_acknowledged(testbed, round % 2, open(&story, &[])).await;
        let contender = |node: usize| {
            let mut request = report(&story, &format!("{story}-{node}"));
            request.expected_version = Some(1);
            let mut client = testbed.client(node);
            async move {
                let answer = client.publish(request).await;
                Outcome::of(&answer, |r| (r.get_ref().sequence, r.get_ref().duplicate))
            }
        };
        let (a, b) = tokio::join!(contender(0), contender(1));
        races.push([a, b]);
    }
    races
}

/// Every event node `node` holds, as (sequence, event_id, encoded event).
async fn read_log(testbed: &Testbed, node: usize) -> Vec<history::Entry> {
    let mut client = testbed.client(node);
    let (events, _, _) = within("the node's log", crate::node::every_event(&mut client)).await;
    events
        .iter()
        .map(|event| {
            (
                event.sequence,
                event.event_id.clone(),
                event.encode_to_vec(),
            )
        })
        .collect()
}
