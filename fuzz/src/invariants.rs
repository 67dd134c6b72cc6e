//! What must hold of the log whatever it was sent, and what publishing may change.
//!
//! Every check panics with a message naming the broken promise, which is how libFuzzer learns of
//! a finding.

use std::collections::{HashMap, HashSet};

use storywire::{
    log::{EventLog, Filter, LogError},
    pb, service,
};

/// The outcome of one publish, as `service::publish` returns it.
pub type Outcome = Result<pb::PublishResponse, service::Error>;

/// What a publish can change, read at one instant: the head and every story's state.
#[derive(Debug, PartialEq)]
pub struct Observed {
    /// The newest sequence appended.
    pub head: u64,
    /// Every story, in id order.
    pub stories: Vec<pb::Story>,
}

impl Observed {
    /// The log as it stands now.
    pub fn of(log: &EventLog) -> Self {
        let (stories, head) = log.as_appended();
        Self { head, stories }
    }

    fn story(&self, story_id: &str) -> Option<&pb::Story> {
        self.stories.iter().find(|story| story.id == story_id)
    }
}

/// Checks that the retained events run without a gap from the first retained to the head, each
/// under its own sequence and story, and returns them.
pub fn assert_gapless(log: &EventLog) -> Vec<pb::UpdateEvent> {
    let batch = log
        .read_from(0, &Filter::default(), usize::MAX, usize::MAX)
        .expect("every retained event reads from 0");
    let head = log.head();
    let first = log.first_retained();
    let events: Vec<pb::UpdateEvent> = batch.events.iter().map(|entry| entry.event()).collect();
    for (entry, event) in batch.events.iter().zip(&events) {
        assert_eq!(
            entry.sequence, event.sequence,
            "an event under another sequence"
        );
        assert_eq!(
            &*entry.story_id, event.story_id,
            "an event under another story"
        );
    }
    let sequences: Vec<u64> = events.iter().map(|event| event.sequence).collect();
    assert_eq!(
        sequences,
        (first..=head).collect::<Vec<_>>(),
        "sequences are not gapless from the first retained ({first}) to the head ({head})"
    );
    events
}

/// Checks the log as a whole and returns its retained events. The log must be quiet: nothing
/// appended that its writer thread has not yet made visible.
///
/// - sequences run without a gap from the first retained to the head ([`assert_gapless`]);
/// - no event_id is held by two retained events;
/// - each story's retained events carry its newest versions, one apart, the last of them at the
///   story's `last_sequence`; with nothing evicted, a story's version is its count of events;
/// - every event belongs to a story the log knows.
pub fn assert_consistent(log: &EventLog) -> Vec<pb::UpdateEvent> {
    let events = assert_gapless(log);
    let first = log.first_retained();

    let mut event_ids = HashSet::new();
    for event in &events {
        assert!(
            event_ids.insert(event.event_id.as_str()),
            "event_id {} is held by two events (the second at sequence {})",
            event.event_id,
            event.sequence
        );
    }

    let (stories, _) = log.as_appended();
    let mut by_story: HashMap<&str, Vec<&pb::UpdateEvent>> = HashMap::new();
    for event in &events {
        by_story.entry(&event.story_id).or_default().push(event);
    }
    for story in &stories {
        let own = by_story.remove(story.id.as_str()).unwrap_or_default();
        let versions: Vec<u64> = own.iter().map(|event| event.story_version).collect();
        let oldest = story.version + 1 - own.len() as u64;
        assert_eq!(
            versions,
            (oldest..=story.version).collect::<Vec<_>>(),
            "story {} at version {} retains events of other versions",
            story.id,
            story.version
        );
        if first == 1 {
            assert_eq!(
                story.version,
                own.len() as u64,
                "story {}'s version is not its count of events",
                story.id
            );
        }
        match own.last() {
            Some(last) => assert_eq!(
                story.last_sequence, last.sequence,
                "story {}'s last_sequence is not its newest event",
                story.id
            ),
            None => assert!(
                story.last_sequence < first,
                "story {}'s last_sequence {} is retained but none of its events is",
                story.id,
                story.last_sequence
            ),
        }
    }
    assert!(
        by_story.is_empty(),
        "events of stories the log does not know: {:?}",
        by_story.keys()
    );
    events
}

/// Checks what publishing `sent`, in order, from `before` did to the log: each accepted request
/// took the next sequence and its story's next version, met its `expected_version`, and got the
/// event_id it gave (or the one the server assigns); a duplicate names an event that holds its
/// event_id; a refused request changed nothing; no story changed that no accepted request named.
pub fn check_outcomes(before: &Observed, log: &EventLog, sent: &[(pb::PublishRequest, Outcome)]) {
    let mut head = before.head;
    let mut versions: HashMap<&str, u64> = before
        .stories
        .iter()
        .map(|story| (story.id.as_str(), story.version))
        .collect();
    let mut changed = HashSet::new();
    for (request, outcome) in sent {
        let story_id = request.story_id.as_str();
        let version = versions.get(story_id).copied().unwrap_or(0);
        match outcome {
            Err(service::Error::Log(LogError::VersionMismatch {
                expected, current, ..
            })) => {
                assert_eq!(
                    *current, version,
                    "a version mismatch names a wrong version"
                );
                assert_ne!(*expected, version, "refused a matching expected_version");
            }
            Err(_) => {}
            Ok(receipt) if receipt.duplicate => {
                assert_eq!(
                    receipt.event_id, request.event_id,
                    "a duplicate of another event_id"
                );
                assert!(receipt.sequence <= head, "a duplicate of an event to come");
                // Later requests of a burst may have evicted it since.
                if receipt.sequence >= log.first_retained() {
                    let original = log
                        .read_from(receipt.sequence, &Filter::default(), 1, 1)
                        .expect("a duplicate names a retained event")
                        .events[0]
                        .event();
                    assert_eq!(
                        original.event_id, receipt.event_id,
                        "a duplicate of an event that holds another event_id"
                    );
                    assert_eq!(original.story_version, receipt.story_version);
                    assert_eq!(original.recorded_at, receipt.recorded_at);
                }
            }
            Ok(receipt) => {
                assert_eq!(
                    receipt.sequence,
                    head + 1,
                    "an accepted event skipped or reused a sequence"
                );
                assert_eq!(
                    receipt.story_version,
                    version + 1,
                    "an accepted event skipped a story version"
                );
                if let Some(expected) = request.expected_version {
                    assert_eq!(
                        expected, version,
                        "accepted against a mismatched expected_version"
                    );
                }
                let event_id = if request.event_id.is_empty() {
                    format!("{}-{}", log.log_id(), receipt.sequence)
                } else {
                    request.event_id.clone()
                };
                assert_eq!(
                    receipt.event_id, event_id,
                    "an accepted event under another event_id"
                );
                head += 1;
                versions.insert(story_id, version + 1);
                changed.insert(story_id);
            }
        }
    }

    let after = Observed::of(log);
    assert_eq!(
        after.head, head,
        "the head moved by other than the accepted events"
    );
    for story in &before.stories {
        assert!(
            after.story(&story.id).is_some(),
            "story {} disappeared",
            story.id
        );
    }
    for story in &after.stories {
        if changed.contains(story.id.as_str()) {
            assert_eq!(story.version, versions[story.id.as_str()]);
        } else {
            assert_eq!(
                Some(story),
                before.story(&story.id),
                "story {} changed though nothing accepted named it",
                story.id
            );
        }
    }
}

/// Checks the answer to a request sent again with the event_id its first sending got (`original`),
/// while that event is retained: the original receipt again, marked as a duplicate.
pub fn assert_duplicate_of(original: &pb::PublishResponse, retry: &Outcome) {
    match retry {
        Ok(receipt) => {
            assert!(receipt.duplicate, "a retried request was appended again");
            assert_eq!(
                (
                    receipt.sequence,
                    receipt.story_version,
                    &receipt.event_id,
                    receipt.recorded_at
                ),
                (
                    original.sequence,
                    original.story_version,
                    &original.event_id,
                    original.recorded_at
                ),
                "a retried request got another receipt"
            );
        }
        Err(error) => panic!("a retried request was refused: {error}"),
    }
}
