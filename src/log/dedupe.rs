//! Idempotency: which retained event a publisher's `event_id` names, and whether a request sent
//! again is the same request (answered with the original receipt) or a different one reusing the
//! id (refused). The index shrinks with retention.

use std::collections::HashMap;

use pbjson_types::Timestamp;

use crate::pb;

/// What a retained client event_id needs so that a retry can be recognised as the same request.
#[derive(Debug)]
pub(super) struct Idempotency {
    /// The event that holds the id.
    pub(super) sequence: u64,
    /// The request's `expected_version`.
    pub(super) expected_version: Option<u64>,
    /// The request's `occurred_at` as given (the event's is defaulted when absent).
    pub(super) occurred_at_given: Option<Timestamp>,
}

/// Retained events by the event_id their publisher gave. Server-assigned ids are not indexed:
/// they name their sequence ([`assigned_sequence`]).
#[derive(Debug, Default)]
pub(super) struct EventIds {
    by_client: HashMap<Box<str>, Idempotency>,
}

impl EventIds {
    /// What a retry of the request that used `event_id` must match, if a retained event holds it.
    pub(super) fn get(&self, event_id: &str) -> Option<&Idempotency> {
        self.by_client.get(event_id)
    }

    /// Indexes a publisher's event_id (server-assigned ids, `None`, need no index).
    pub(super) fn insert(&mut self, event_id: Option<&str>, idempotency: Idempotency) {
        if let Some(event_id) = event_id {
            self.by_client.insert(event_id.into(), idempotency);
        }
    }

    /// Forgets `event_id` as the id of the evicted event at `sequence`. Once evicted an id is
    /// free, and may already name a later event (recovery replays both uses): that entry stays.
    pub(super) fn forget(&mut self, event_id: &str, sequence: u64) {
        if self
            .by_client
            .get(event_id)
            .is_some_and(|held| held.sequence == sequence)
        {
            self.by_client.remove(event_id);
        }
    }
}

/// Whether `request` repeats the request that produced `original`: with the publisher's own id
/// (`idempotency`), every field it sent must match; with an id the server assigned, the update
/// must say the same thing (what the first request gave of `expected_version` is not kept, and
/// its `occurred_at` only as the event's).
pub(super) fn is_retry(
    original: &pb::UpdateEvent,
    idempotency: Option<&Idempotency>,
    request: &pb::PublishRequest,
) -> bool {
    let same_update = original.story_id == request.story_id
        && original.headline == request.headline
        && original.change == request.change;
    same_update
        && match idempotency {
            Some(idempotency) => {
                idempotency.expected_version == request.expected_version
                    && idempotency.occurred_at_given == request.occurred_at
            }
            None => request
                .occurred_at
                .is_none_or(|at| Some(at) == original.occurred_at),
        }
}

/// The response Publish gave (or gives again, for a duplicate) for `event`.
pub(super) fn receipt(event: &pb::UpdateEvent, duplicate: bool) -> pb::PublishResponse {
    pb::PublishResponse {
        sequence: event.sequence,
        story_version: event.story_version,
        event_id: event.event_id.clone(),
        duplicate,
        recorded_at: event.recorded_at,
    }
}

/// The event_id the server gives an event published without one: the log's id and the sequence,
/// unique across incarnations and derivable, so it needs no index of its own.
pub(super) fn assigned_event_id(log_id: &str, sequence: u64) -> String {
    format!("{log_id}-{sequence}")
}

/// The sequence an id made by [`assigned_event_id`] names, if it is exactly such an id.
pub(super) fn assigned_sequence(log_id: &str, event_id: &str) -> Option<u64> {
    let digits = event_id.strip_prefix(log_id)?.strip_prefix('-')?;
    let sequence: u64 = digits.parse().ok()?;
    (assigned_event_id(log_id, sequence) == event_id).then_some(sequence)
}
