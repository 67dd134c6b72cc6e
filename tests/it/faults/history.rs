//! What clients saw during a fault run, and the checks it must pass: every publish with its start,
//! end and outcome, every subscriber's receipts, every health change, and each node's final log.
//! [`check`] returns every violation found, each naming the event_id or sequence at fault.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use tonic::Code;

/// How a publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at `sequence`.
    Acknowledged {
        /// Where the node said the event is.
        sequence: u64,
        /// Whether the node called it a resend of an event already in the log.
        duplicate: bool,
    },
    /// Refused with a code promising that nothing was appended.
    Refused(Code),
    /// UNAVAILABLE, DEADLINE_EXCEEDED, a dropped connection: it may or may not be in the log.
    Unknown(String),
}

impl Outcome {
    /// The outcome a call's answer means.
    pub fn of<T>(answer: &Result<T, tonic::Status>, sequence: impl Fn(&T) -> (u64, bool)) -> Self {
        match answer {
            Ok(receipt) => {
                let (sequence, duplicate) = sequence(receipt);
                Self::Acknowledged {
                    sequence,
                    duplicate,
                }
            }
            Err(status) if DEFINITE.contains(&status.code()) => Self::Refused(status.code()),
            Err(status) => Self::Unknown(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// The codes that promise a refused publish appended nothing.
pub const DEFINITE: [Code; 6] = [
    Code::Aborted,
    Code::AlreadyExists,
    Code::FailedPrecondition,
    Code::InvalidArgument,
    Code::ResourceExhausted,
    Code::PermissionDenied,
];

/// One publish call.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The request's event_id.
    pub event_id: String,
    /// The story it updates, so that it can be resent unchanged.
    pub story: String,
    /// The node it went to.
    pub node: usize,
    /// When it was sent and when it was answered.
    pub start: Instant,
    /// When it was answered.
    pub end: Instant,
    /// How it ended.
    pub outcome: Outcome,
}

/// One subscription's receipts: where it started and the (sequence, event_id) of each event, in
/// the order received. A resume is a new subscription starting one past the last receipt.
#[derive(Debug, Clone, Default)]
pub struct Receipts {
    /// The node it was opened on.
    pub node: usize,
    /// The sequence it asked to start from.
    pub from: u64,
    /// The events received.
    pub events: Vec<(u64, String)>,
}

/// One event of a node's final log.
pub type Entry = (u64, String, Vec<u8>);

/// Everything a run recorded.
#[derive(Debug, Default)]
pub struct History {
    /// Every publish, in the order they were answered.
    pub publishes: Vec<Publish>,
    /// Every subscription, grouped per subscriber, in the order opened.
    pub subscribers: Vec<Vec<Receipts>>,
    /// Each node's final log, from its first retained event.
    pub logs: Vec<Vec<Entry>>,
    /// Each race of two publishes with the same expected_version: both outcomes.
    pub races: Vec<[Outcome; 2]>,
}

/// Every violation of the promises in `history`; empty when it passes.
pub fn check(history: &History) -> Vec<String> {
    let mut violations = Vec::new();
    let Some(log) = history.logs.first() else {
        return vec!["no node's log was read".to_owned()];
    };
    for (node, other) in history.logs.iter().enumerate().skip(1) {
        if other != log {
            let diverged = log
                .iter()
                .zip(other)
                .find(|(a, b)| a != b)
                .map(|(a, _)| a.0);
            violations.push(format!(
                "node {node}'s log differs from node 0's (lengths {} and {}, first difference at {diverged:?})",
                other.len(),
                log.len()
            ));
        }
    }
    for pair in log.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            violations.push(format!("the log jumps from {} to {}", pair[0].0, pair[1].0));
        }
    }
    let mut at: HashMap<&str, Vec<u64>> = HashMap::new();
    for (sequence, event_id, _) in log {
        at.entry(event_id).or_default().push(*sequence);
    }
    for (event_id, sequences) in &at {
        if sequences.len() > 1 {
            violations.push(format!(
                "{event_id} is in the log {} times: {sequences:?}",
                sequences.len()
            ));
        }
    }
    let mut sent: HashSet<&str> = HashSet::new();
    let mut by_start: Vec<&Publish> = history.publishes.iter().collect();
    by_start.sort_by_key(|publish| publish.start);
    for publish in by_start {
        let id = publish.event_id.as_str();
        let found = at.get(id).map(Vec::as_slice).unwrap_or_default();
        match &publish.outcome {
            Outcome::Acknowledged {
                sequence,
                duplicate,
            } => {
                if found != [*sequence] {
                    violations.push(format!(
                        "{id} acknowledged at {sequence} by node {}, in the log at {found:?}",
                        publish.node
                    ));
                }
                if *duplicate && !sent.contains(id) {
                    violations.push(format!(
                        "{id} answered duplicate: true by node {}, though sent for the first time",
                        publish.node
                    ));
                }
            }
            Outcome::Refused(code) => {
                if !found.is_empty() {
                    violations.push(format!(
                        "{id} refused with {code:?} by node {}, yet in the log at {found:?}",
                        publish.node
                    ));
                }
            }
            Outcome::Unknown(_) => {}
        }
        sent.insert(id);
    }
    for (subscriber, subscriptions) in history.subscribers.iter().enumerate() {
        let mut expected: Option<u64> = None;
        for receipts in subscriptions {
            if let Some(next) = expected
                && receipts.from != next
            {
                violations.push(format!(
                    "subscriber {subscriber} resumed on node {} from {}, not {next}",
                    receipts.node, receipts.from
                ));
            }
            let mut next = receipts.from;
            for (sequence, event_id) in &receipts.events {
                let logged = log
                    .iter()
                    .find(|(s, _, _)| s == sequence)
                    .map(|(_, id, _)| id);
                if *sequence != next || logged != Some(event_id) {
                    violations.push(format!(
                        "subscriber {subscriber} on node {} got {event_id} at {sequence}, expected {next} ({logged:?} in the log)",
                        receipts.node
                    ));
                    break;
                }
                next += 1;
            }
            expected = Some(next);
        }
    }
    for (round, outcomes) in history.races.iter().enumerate() {
        let won = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Acknowledged { .. }))
            .count();
        let lost = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Refused(Code::Aborted)))
            .count();
        let unknown = outcomes.len() - won - lost;
        if won > 1 || (unknown == 0 && won != 1) {
            violations.push(format!("race {round}: {outcomes:?}"));
        }
    }
    violations
}
