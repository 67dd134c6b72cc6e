//! A property test: random sequences of publishes (new, retried, with reused ids, against the
//! story rules), reads from random positions and a small retention, applied to the real log and to
//! a model simple enough to be obviously right. After every step the two must agree.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use proptest::prelude::*;
use storywire::{
    clock::SystemClock,
    log::{EventLog, Filter, LogError},
    pb::{self, change::Kind},
    story::StoryError,
};

const STORIES: [&str; 3] = ["rome", "seoul", "pyongyang"];
const FACTS: [&str; 3] = ["hiding", "asylum", "family"];

/// One step of a run.
#[derive(Debug, Clone)]
enum Op {
    /// Publish a change to a story, with an event_id from a small pool (or none).
    Publish {
        story: usize,
        change: Change,
        event_id: Option<u8>,
    },
    /// Send again the request of an earlier step.
    Retry { step: usize },
    /// Read everything from a position relative to the head.
    Read { back: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Open,
    Report(usize),
    Deny(usize),
    Withdraw,
    Note,
}

fn op() -> impl Strategy<Value = Op> {
    let change = prop_oneof![
        Just(Change::Open),
        (0..FACTS.len()).prop_map(Change::Report),
        (0..FACTS.len()).prop_map(Change::Deny),
        Just(Change::Withdraw),
        Just(Change::Note),
        Just(Change::Note),
    ];
    prop_oneof![
        6 => (0..STORIES.len(), change, proptest::option::of(0u8..6)).prop_map(
            |(story, change, event_id)| Op::Publish { story, change, event_id }
        ),
        2 => (0usize..64).prop_map(|step| Op::Retry { step }),
        2 => (0u64..12).prop_map(|back| Op::Read { back }),
    ]
}

fn request(story: usize, change: Change, event_id: Option<u8>) -> pb::PublishRequest {
    let kind = match change {
        Change::Open => Kind::StoryOpened(pb::StoryOpened {
            headline: "Opened".into(),
            summary: String::new(),
            tags: Vec::new(),
            language: String::new(),
        }),
        Change::Report(fact) => Kind::FactReported(pb::FactReported {
            fact_id: FACTS[fact].into(),
            statement: "Said.".into(),
            attributions: Vec::new(),
        }),
        Change::Deny(fact) => Kind::FactStatusChanged(pb::FactStatusChanged {
            fact_id: FACTS[fact].into(),
            status: pb::FactStatus::Denied.into(),
            attributions: Vec::new(),
            note: String::new(),
        }),
        Change::Withdraw => Kind::StoryStatusChanged(pb::StoryStatusChanged {
            status: pb::StoryStatus::Withdrawn.into(),
            reason: String::new(),
        }),
        Change::Note => Kind::ContextAdded(pb::ContextAdded {
            text: "Background.".into(),
            attributions: Vec::new(),
        }),
    };
    pb::PublishRequest {
        story_id: STORIES[story].into(),
        event_id: event_id.map(|id| format!("e{id}")).unwrap_or_default(),
        expected_version: None,
        headline: format!("{change:?}"),
        occurred_at: None,
        change: Some(pb::Change { kind: Some(kind) }),
    }
}

/// What the model expects of one publish.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Appended { sequence: u64, version: u64 },
    Duplicate { sequence: u64 },
    Reused,
    Rule(&'static str),
}

#[derive(Debug, Default)]
struct ModelStory {
    version: u64,
    facts: HashSet<usize>,
    withdrawn: bool,
}

/// The obviously right version: a list of events and a few sets.
#[derive(Debug)]
struct Model {
    retain: usize,
    /// Every accepted event: (sequence, story, event_id, request).
    events: Vec<(u64, usize, String, pb::PublishRequest)>,
    stories: HashMap<usize, ModelStory>,
}

impl Model {
    fn first_retained(&self) -> u64 {
        let head = self.events.len() as u64;
        head.saturating_sub(self.retain as u64) + 1
    }

    fn publish(&mut self, story: usize, change: Change, request: &pb::PublishRequest) -> Outcome {
        let first = self.first_retained();
        if !request.event_id.is_empty()
            && let Some((sequence, _, _, original)) = self
                .events
                .iter()
                .find(|(seq, _, id, _)| *seq >= first && *id == request.event_id)
        {
            return if original == request {
                Outcome::Duplicate {
                    sequence: *sequence,
                }
            } else {
                Outcome::Reused
            };
        }
        let entry = self.stories.get(&story);
        let rule = match (change, entry) {
            (Change::Open, Some(_)) => Some("already opened"),
            (Change::Open, None) => None,
            (_, None) => Some("not found"),
            (_, Some(s)) if s.withdrawn => Some("withdrawn"),
            (Change::Report(fact), Some(s)) if s.facts.contains(&fact) => Some("fact twice"),
            (Change::Deny(fact), Some(s)) if !s.facts.contains(&fact) => Some("unknown fact"),
            _ => None,
        };
        if let Some(rule) = rule {
            return Outcome::Rule(rule);
        }
        let state = self.stories.entry(story).or_default();
        state.version += 1;
        match change {
            Change::Report(fact) => {
                state.facts.insert(fact);
            }
            Change::Withdraw => state.withdrawn = true,
            _ => {}
        }
        let sequence = self.events.len() as u64 + 1;
        self.events
            .push((sequence, story, request.event_id.clone(), request.clone()));
        Outcome::Appended {
            sequence,
            version: state.version,
        }
    }
}

fn actual(result: Result<pb::PublishResponse, LogError>) -> Outcome {
    match result {
        Ok(receipt) if receipt.duplicate => Outcome::Duplicate {
            sequence: receipt.sequence,
        },
        Ok(receipt) => Outcome::Appended {
            sequence: receipt.sequence,
            version: receipt.story_version,
        },
        Err(LogError::EventIdReused { .. }) => Outcome::Reused,
        Err(LogError::Story(error)) => Outcome::Rule(match error {
            StoryError::AlreadyOpened { .. } => "already opened",
            StoryError::NotFound { .. } => "not found",
            StoryError::Withdrawn { .. } => "withdrawn",
            StoryError::FactAlreadyReported { .. } => "fact twice",
            StoryError::UnknownFact { .. } => "unknown fact",
            StoryError::NoChange => "no change",
            // The model's stories stay far below every default story limit.
            StoryError::TooManyFacts { .. }
            | StoryError::TooManyNotes { .. }
            | StoryError::TooManyAttributions { .. }
            | StoryError::TooLarge { .. }
            | StoryError::HistoryFull { .. } => "story limit",
        }),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_log_agrees_with_a_simple_model(retain in 1usize..12, ops in proptest::collection::vec(op(), 1..64)) {
        let log = EventLog::new(retain, Arc::new(SystemClock));
        let mut model = Model { retain, events: Vec::new(), stories: HashMap::new() };
        let mut sent: Vec<(usize, Change, pb::PublishRequest)> = Vec::new();
        for op in ops {
            match op {
                Op::Publish { story, change, event_id } => {
                    let request = request(story, change, event_id);
                    let expected = model.publish(story, change, &request);
                    prop_assert_eq!(actual(log.append(request.clone(), "test")), expected);
                    sent.push((story, change, request));
                }
                Op::Retry { step } if !sent.is_empty() => {
                    let (story, change, request) = sent[step % sent.len()].clone();
                    let expected = model.publish(story, change, &request);
                    prop_assert_eq!(actual(log.append(request, "test")), expected);
                }
                Op::Retry { .. } => {}
                Op::Read { back } => {
                    let head = model.events.len() as u64;
                    let from = (head + 1).saturating_sub(back).max(1);
                    let first = model.first_retained();
                    let read = log.read_from(from, &Filter::default(), usize::MAX, usize::MAX);
                    if from < first {
                        let not_retained = matches!(read, Err(LogError::NotRetained { .. }));
                        prop_assert!(not_retained, "{:?}", read);
                    } else {
                        let batch = read.expect("a retained position reads");
                        let got: Vec<(u64, String)> = batch
                            .events
                            .iter()
                            .map(|e| (e.sequence, e.event().story_id))
                            .collect();
                        let want: Vec<(u64, String)> = model.events[(from - 1) as usize..]
                            .iter()
                            .map(|(seq, story, _, _)| (*seq, STORIES[*story].to_owned()))
                            .collect();
                        prop_assert_eq!(got, want);
                        prop_assert_eq!(batch.end.next, head + 1);
                    }
                }
            }
            prop_assert_eq!(log.head(), model.events.len() as u64);
            prop_assert_eq!(log.first_retained(), model.first_retained());
            for (index, state) in &model.stories {
                // A log in memory shows every event at once, so the read answers at once.
                let story = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime")
                    .block_on(log.story(STORIES[*index], None))
                    .expect("the story exists");
                prop_assert_eq!(story.version, state.version);
                prop_assert_eq!(story.facts.len(), state.facts.len());
            }
        }
    }
}

/// A filtered read across several holds of the lock: a story published every 3,000th event,
/// among 2.5 chunks of others', is read whole, in order, and stops where it is told to (after
/// so many matches, or so many scanned), saying where the next read starts.
#[test]
fn a_sparse_filter_reads_across_chunks_and_stops_where_told() {
    use storywire::log::SCAN_PER_LOCK;
    let total = SCAN_PER_LOCK as u64 * 5 / 2;
    let log = EventLog::new(total as usize, Arc::new(SystemClock));
    // The others' notes go to a story per 900 events, under the limit on notes per story.
    let mut opened = HashSet::new();
    for sequence in 1..=total {
        let story_id = if sequence % 3_000 == 0 {
            STORIES[0].to_owned()
        } else {
            format!("filler-{}", sequence / 900)
        };
        let change = if opened.insert(story_id.clone()) {
            Change::Open
        } else {
            Change::Note
        };
        let publish = pb::PublishRequest {
            story_id,
            ..request(0, change, None)
        };
        log.append(publish, "test")
            .expect("the publish is accepted");
    }
    let rome = Filter::new(&[STORIES[0].to_owned()], &[]);
    let mut seen = Vec::new();
    let every = log
        .read_each(1, &rome, usize::MAX, usize::MAX, |entry| {
            seen.push(entry.sequence)
        })
        .expect("the log reads");
    let wanted: Vec<u64> = (1..=total).filter(|s| s % 3_000 == 0).collect();
    assert_eq!(seen, wanted);
    assert_eq!(
        (every.next, every.head, every.matched),
        (total + 1, total, wanted.len())
    );
    assert_eq!(every.first_retained, 1);

    let first_two = log
        .read_from(1, &rome, 2, usize::MAX)
        .expect("the log reads");
    let sequences: Vec<u64> = first_two.events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [3_000, 6_000]);
    assert_eq!((first_two.end.next, first_two.end.matched), (6_001, 2));

    let scanned = log
        .read_from(2, &rome, usize::MAX, 5_000)
        .expect("the log reads");
    let sequences: Vec<u64> = scanned.events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [3_000]);
    assert_eq!(scanned.end.next, 5_002);
}
