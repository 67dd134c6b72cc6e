//! The demo story: North Korea's acting ambassador to Italy goes into hiding (after "North Korea
//! ambassador to Italy 'goes into hiding'", The Independent, January 2019), as a fixture of
//! PublishRequests in proto3 JSON, one a line.
//!
//! `serve --demo` publishes the seed at once, so a subscriber has a story to catch up on. It waits
//! for the first subscriber, then replays the later updates one every few seconds, so whoever
//! subscribes sees them arrive live however long they took to open a second terminal.

use std::time::Duration;

use crate::{log::EventLog, pb, service};

/// The story as first reported: opened, with its first three facts.
pub const SEED: &str = include_str!("../demo/seed.jsonl");
/// The updates that follow, ending with "Italy denies asylum request" and the background.
pub const LIVE: &str = include_str!("../demo/live.jsonl");
/// The demo story's id, as the fixture opens it.
pub const STORY_ID: &str = "nk-diplomat-italy";
/// The pause between live updates: long enough to read each one as it arrives, short enough that
/// the whole story has played out within a minute.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// The fixture's requests, in order. The fixture is part of the binary, so a line that does not
/// parse is a build mistake, caught by the tests.
pub fn requests(fixture: &str) -> Vec<pb::PublishRequest> {
    fixture
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("demo fixture lines are PublishRequests"))
        .collect()
}

/// Who the demo's events are published by.
pub const DEMO_PUBLISHER: &str = "demo";

/// Publishes the seed story, the same way the Publish RPC would.
pub fn publish_seed(log: &EventLog) -> Result<(), service::Error> {
    for request in requests(SEED) {
        service::publish(log, request, DEMO_PUBLISHER)?;
    }
    Ok(())
}

/// How often the demo looks for its first subscriber. Only the demo polls; nothing else waits on
/// subscriber counts.
const SUBSCRIBER_POLL: Duration = Duration::from_millis(200);

/// Waits until a subscription is open, then publishes the live updates one every `interval`. Run
/// it as a task and abort it to stop early; publishing is idempotent, so running it twice adds
/// nothing.
pub async fn replay_live(log: &EventLog, interval: Duration) -> Result<(), service::Error> {
    if log.subscribers() == 0 {
        tracing::info!("demo: live updates start when the first subscriber connects");
        while log.subscribers() == 0 {
            tokio::time::sleep(SUBSCRIBER_POLL).await;
        }
    }
    for request in requests(LIVE) {
        tokio::time::sleep(interval).await;
        let receipt = service::publish(log, request, DEMO_PUBLISHER)?;
        tracing::info!(sequence = receipt.sequence, "demo: published a live update");
    }
    tracing::info!("demo: every live update is published");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn the_whole_fixture_is_accepted_in_order() {
        let log = EventLog::new(1_000, Arc::new(SystemClock));
        publish_seed(&log).expect("the seed is valid");
        for request in requests(LIVE) {
            service::publish(&log, request, DEMO_PUBLISHER).expect("every live update is valid");
        }
        let story = log
            .story("nk-diplomat-italy", None)
            .await
            .expect("the story exists");
        assert_eq!(story.version, log.head());
        let denied = story
            .facts
            .iter()
            .find(|f| f.id == "asylum-italy")
            .expect("fact");
        assert_eq!(denied.status, i32::from(pb::FactStatus::Denied));
    }
}
