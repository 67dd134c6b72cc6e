//! Raw bytes as the server receives them: a run of length-delimited `PublishRequest`s, each
//! decoded by prost, validated and appended (`service::publish`, the Publish RPC's path). Nothing
//! may panic; each outcome must be what the contract says; an accepted request sent again with its
//! event_id must come back as a duplicate; and the log must stay consistent.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use storywire::{clock::SystemClock, log::EventLog, pb, service};
use storywire_fuzz::invariants::{self, Observed};

fuzz_target!(|data: &[u8]| {
    let log = EventLog::new(usize::MAX, Arc::new(SystemClock));
    let mut rest = data;
    while !rest.is_empty() {
        let Ok(request) = pb::PublishRequest::decode_length_delimited(&mut rest) else {
            break;
        };
        let before = Observed::of(&log);
        let outcome = service::publish(&log, request.clone(), "fuzz");
        let sent = [(request, outcome)];
        invariants::check_outcomes(&before, &log, &sent);
        let [(mut request, Ok(receipt))] = sent else {
            continue;
        };
        // Sent again with the event_id it was given (the same one, or the one the server assigned).
        request.event_id.clone_from(&receipt.event_id);
        let before = Observed::of(&log);
        let retry = service::publish(&log, request.clone(), "fuzz");
        invariants::assert_duplicate_of(&receipt, &retry);
        invariants::check_outcomes(&before, &log, &[(request, retry)]);
    }
    invariants::assert_consistent(&log);
});
