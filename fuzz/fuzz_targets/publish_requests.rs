//! An arbitrary run of publishes through the server's own paths: one at a time as the Publish RPC
//! does (`service::publish`: validate, then append), or in bursts as PublishStream does (validate
//! each, append the valid ones together). After every step the log must be consistent, each
//! outcome must be what the contract says, and a request sent again must get its first answer.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::{
    arbitrary::{self, Arbitrary},
    fuzz_target,
};
use storywire::{
    clock::SystemClock,
    log::{EventLog, LogError},
    pb, service, validate,
};
use storywire_fuzz::{
    invariants::{self, Observed, Outcome},
    request::Publish,
};

/// One run, in the shape the fuzzer picks.
#[derive(Arbitrary, Debug)]
struct Run {
    /// How many events the log retains: all of them, or a few (taken modulo 8), so that eviction
    /// meets deduplication and retries.
    retain: Option<u8>,
    /// What is sent, in order.
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// One Publish RPC.
    Publish(Publish),
    /// The request of an earlier step (index taken modulo the requests so far), sent again
    /// unchanged.
    Retry(u8),
    /// A request the server gave an event_id, sent again with that id (index taken modulo such
    /// requests so far).
    ResendAssigned(u8),
    /// One burst of a PublishStream.
    Burst(Vec<Publish>),
}

/// A request sent and the answer it got.
struct Sent {
    request: pb::PublishRequest,
    outcome: Outcome,
}

fuzz_target!(|run: Run| {
    let retain = run.retain.map_or(usize::MAX, |few| usize::from(few % 8));
    let log = EventLog::new(retain, Arc::new(SystemClock));
    let mut sent: Vec<Sent> = Vec::new();
    for step in run.steps {
        match step {
            Step::Publish(publish) => {
                let request = publish.request(log.log_id(), log.head());
                sent.push(publish_one(&log, request));
            }
            Step::Retry(index) if !sent.is_empty() => {
                let original = &sent[usize::from(index) % sent.len()];
                let retained = retained(&log, &original.outcome);
                let retry = publish_one(&log, original.request.clone());
                match &original.outcome {
                    Ok(receipt) if retained && !original.request.event_id.is_empty() => {
                        invariants::assert_duplicate_of(receipt, &retry.outcome);
                    }
                    Err(service::Error::Invalid(invalid)) => match &retry.outcome {
                        Err(service::Error::Invalid(again)) => assert_eq!(invalid, again),
                        other => panic!("an invalid request became valid: {other:?}"),
                    },
                    Err(service::Error::Log(LogError::EventIdReused { sequence, .. }))
                        if *sequence >= log.first_retained() =>
                    {
                        let reused = matches!(
                            &retry.outcome,
                            Err(service::Error::Log(LogError::EventIdReused { sequence: again, .. }))
                                if again == sequence
                        );
                        assert!(
                            reused,
                            "a reused event_id was let through: {:?}",
                            retry.outcome
                        );
                    }
                    _ => {}
                }
                sent.push(retry);
            }
            Step::Retry(_) => {}
            Step::ResendAssigned(index) => {
                let assigned: Vec<(pb::PublishRequest, pb::PublishResponse)> = sent
                    .iter()
                    .filter(|s| s.request.event_id.is_empty())
                    .filter_map(|s| Some((s.request.clone(), s.outcome.as_ref().ok()?.clone())))
                    .collect();
                if assigned.is_empty() {
                    continue;
                }
                let (mut request, original) = assigned[usize::from(index) % assigned.len()].clone();
                let retained = original.sequence >= log.first_retained();
                request.event_id.clone_from(&original.event_id);
                let retry = publish_one(&log, request);
                if retained {
                    invariants::assert_duplicate_of(&original, &retry.outcome);
                }
                sent.push(retry);
            }
            Step::Burst(publishes) => {
                let head = log.head();
                let requests = publishes
                    .iter()
                    .map(|publish| publish.request(log.log_id(), head))
                    .collect();
                sent.extend(publish_burst(&log, requests));
            }
        }
        invariants::assert_consistent(&log);
    }
});

/// Whether the event a successful outcome names is still retained.
fn retained(log: &EventLog, outcome: &Outcome) -> bool {
    outcome
        .as_ref()
        .is_ok_and(|receipt| receipt.sequence >= log.first_retained())
}

/// Publishes `request` as the Publish RPC does and checks what it changed.
fn publish_one(log: &EventLog, request: pb::PublishRequest) -> Sent {
    let before = Observed::of(log);
    let outcome = service::publish(log, request.clone(), "fuzz");
    let sent = [(request, outcome)];
    invariants::check_outcomes(&before, log, &sent);
    let [(request, outcome)] = sent;
    Sent { request, outcome }
}

/// Publishes a burst as PublishStream does (the service's `publish_burst`): each request is
/// validated on its own, then the valid ones are appended together under one lock.
fn publish_burst(log: &EventLog, requests: Vec<pb::PublishRequest>) -> Vec<Sent> {
    let before = Observed::of(log);
    let checked: Vec<_> = requests.iter().map(validate::publish).collect();
    let valid = requests
        .iter()
        .zip(&checked)
        .filter(|(_, check)| check.is_ok())
        .map(|(request, _)| request.clone());
    let mut appended = log.append_all(valid, "fuzz").into_iter();
    let sent: Vec<(pb::PublishRequest, Outcome)> = requests
        .into_iter()
        .zip(checked)
        .map(|(request, check)| {
            let outcome = match check {
                Ok(()) => appended
                    .next()
                    .expect("one outcome per valid request")
                    .map_err(service::Error::from),
                Err(invalid) => Err(invalid.into()),
            };
            (request, outcome)
        })
        .collect();
    invariants::check_outcomes(&before, log, &sent);
    sent.into_iter()
        .map(|(request, outcome)| Sent { request, outcome })
        .collect()
}
