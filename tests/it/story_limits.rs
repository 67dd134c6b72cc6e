//! What one story may hold: facts, context notes, attributions per fact and encoded bytes. A
//! publish past a limit is FAILED_PRECONDITION naming the story, the limit and its value, and
//! appends nothing; the history of corrections and status changes has a reserve of a quarter
//! beyond the limit, and a withdrawal always goes through; a story at the limit is still read
//! whole.

use crate::support;

use prost::Message;
use storywire::{limits::StoryLimits, pb};
use support::*;
use tonic::Code;

/// Publishes `request`, expects it refused with FAILED_PRECONDITION mentioning every one of
/// `words`, and checks that the log's head did not move.
async fn expect_refused(server: &TestServer, request: pb::PublishRequest, words: &[&str]) {
    let head = server.log.head();
    let mut client = server.client().await;
    expect_status(
        within("publish", client.publish(request)).await,
        Code::FailedPrecondition,
        words,
    );
    assert_eq!(server.log.head(), head, "a refused publish appends nothing");
}

/// Fact `fact_id` of `story`.
fn fact<'a>(story: &'a pb::Story, fact_id: &str) -> &'a pb::Fact {
    story
        .facts
        .iter()
        .find(|fact| fact.id == fact_id)
        .expect("the fact exists")
}

#[tokio::test]
async fn a_fact_beyond_the_facts_limit_is_refused_and_the_story_takes_other_changes() {
    let server = TestServer::with_story_limits(StoryLimits {
        max_facts_per_story: 2,
        ..StoryLimits::default()
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, report("story", "first")).await;
    publish(&mut client, report("story", "second")).await;

    expect_refused(
        &server,
        report("story", "third"),
        &[
            "story story",
            "2 facts",
            "at most 2",
            "--max-facts-per-story",
        ],
    )
    .await;
    let story = get_story(&mut client, "story", None).await;
    assert_eq!((story.version, story.facts.len()), (3, 2));

    // The full story still takes what is not a new fact; other stories are not affected.
    publish(&mut client, note("story", "Background")).await;
    publish(
        &mut client,
        set_status("story", "first", pb::FactStatus::Confirmed),
    )
    .await;
    publish(&mut client, open("other", &[])).await;
    publish(&mut client, report("other", "third")).await;
}

#[tokio::test]
async fn a_note_beyond_the_notes_limit_is_refused() {
    let server = TestServer::with_story_limits(StoryLimits {
        max_notes_per_story: 1,
        ..StoryLimits::default()
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    publish(&mut client, note("story", "Background")).await;

    expect_refused(
        &server,
        note("story", "More background"),
        &[
            "story story",
            "context notes",
            "at most 1",
            "--max-notes-per-story",
        ],
    )
    .await;
    let story = get_story(&mut client, "story", None).await;
    assert_eq!((story.version, story.context.len()), (2, 1));
    publish(&mut client, report("story", "fact")).await;
}

#[tokio::test]
async fn attributions_beyond_the_per_fact_limit_are_refused_when_reported_or_added_later() {
    let server = TestServer::with_story_limits(StoryLimits {
        max_attributions_per_fact: 2,
        ..StoryLimits::default()
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;

    let mut crowded = report("story", "crowded");
    if let pb::change::Kind::FactReported(reported) = change_mut(&mut crowded) {
        reported.attributions = vec![reported.attributions[0].clone(); 3];
    }
    expect_refused(
        &server,
        crowded,
        &[
            "fact crowded",
            "story story",
            "3 attributions",
            "at most 2",
            "--max-attributions-per-fact",
        ],
    )
    .await;

    // One attribution from the report, one from this status change: the limit, reached.
    publish(&mut client, report("story", "fact")).await;
    publish(
        &mut client,
        set_status("story", "fact", pb::FactStatus::Confirmed),
    )
    .await;
    expect_refused(
        &server,
        set_status("story", "fact", pb::FactStatus::Denied),
        &[
            "fact fact",
            "story story",
            "3 attributions",
            "at most 2",
            "--max-attributions-per-fact",
        ],
    )
    .await;
    // A status change that adds no attribution still goes through.
    publish(
        &mut client,
        bare_status("story", "fact", pb::FactStatus::Denied),
    )
    .await;
    let story = get_story(&mut client, "story", None).await;
    let fact = fact(&story, "fact");
    assert_eq!(fact.attributions.len(), 2);
    assert_eq!(fact.status, i32::from(pb::FactStatus::Denied));
}

#[tokio::test]
async fn a_story_at_the_default_bytes_limit_refuses_more_and_is_read_whole_by_a_default_client() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let max = StoryLimits::default().max_story_bytes;
    publish(&mut client, open("big", &[])).await;
    let mut facts = 0;
    loop {
        let head = server.log.head();
        let fact_id = format!("fact-{facts}");
        match within("publish", client.publish(bulky_fact("big", &fact_id))).await {
            Ok(_) => facts += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                for word in ["story big", &max.to_string(), "--max-story-bytes"] {
                    assert!(status.message().contains(word), "{status:?}");
                }
                assert_eq!(server.log.head(), head, "a refused publish appends nothing");
                break;
            }
        }
        assert!(facts < 10, "the story should have been refused by now");
    }
    // Read by a client with gRPC's default 4 MiB limit on what it accepts.
    let story = get_story(&mut client, "big", None).await;
    let size = story.encoded_len();
    assert_eq!(story.facts.len(), facts);
    assert!(
        size <= max && size + bulky_fact("big", "next").encoded_len() > max,
        "{size} bytes: full, within {max}"
    );
}

/// A correction of `fact_id` in `story_id` to `statement`.
fn correct(story_id: &str, fact_id: &str, statement: &str) -> pb::PublishRequest {
    request(
        story_id,
        "",
        &format!("Fact {fact_id} corrected"),
        pb::change::Kind::FactCorrected(pb::FactCorrected {
            fact_id: fact_id.to_owned(),
            statement: statement.to_owned(),
            reason: "Trimmed".to_owned(),
        }),
    )
}

#[tokio::test]
async fn a_story_past_its_bytes_limit_refuses_growth_and_history_but_is_still_withdrawn() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("big", &[])).await;
    publish(&mut client, bulky_fact("big", "fact-0")).await;
    let size = get_story(&mut client, "big", None).await.encoded_len();
    // As when an operator lowers the limit below a story the log already holds.
    server.log.set_story_limits(StoryLimits {
        max_story_bytes: size / 2,
        ..StoryLimits::default()
    });

    expect_refused(
        &server,
        note("big", "One more line"),
        &[
            "story big",
            &size.to_string(),
            &(size / 2).to_string(),
            "--max-story-bytes",
        ],
    )
    .await;
    // A shorter statement adds no content, but the correction's history is past the reserve too.
    let reserve = size / 2 + size / 2 / 4;
    expect_refused(
        &server,
        correct("big", "fact-0", "Shorter."),
        &[
            "story big",
            "history of corrections and status changes",
            &reserve.to_string(),
            "follow-up story",
        ],
    )
    .await;
    // The withdrawal, which ends the story, always goes through.
    publish(&mut client, withdraw("big")).await;
    let story = get_story(&mut client, "big", None).await;
    assert_eq!(story.status, i32::from(pb::StoryStatus::Withdrawn));
    assert_eq!(story.status_history.len(), 1);
}

#[tokio::test]
async fn a_story_full_of_facts_is_still_corrected_and_concluded_within_its_reserve() {
    let max = 20_000;
    let server = TestServer::with_story_limits(StoryLimits {
        max_story_bytes: max,
        ..StoryLimits::default()
    })
    .await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    // Facts until the content limit refuses one.
    let mut facts = 0;
    loop {
        let fact_id = format!("fact-{facts}");
        match within("publish", client.publish(report("story", &fact_id))).await {
            Ok(_) => facts += 1,
            Err(status) => {
                assert!(status.message().contains("--max-story-bytes"), "{status:?}");
                assert!(!status.message().contains("history"), "{status:?}");
                break;
            }
        }
        assert!(facts < 1_000, "the story should be full by now");
    }
    // Concluded, then corrections no longer than the statement, each leaving its history,
    // until the reserve refuses one.
    publish(
        &mut client,
        request(
            "story",
            "",
            "Concluded",
            pb::change::Kind::StoryStatusChanged(pb::StoryStatusChanged {
                status: pb::StoryStatus::Concluded.into(),
                reason: "No further developments expected".to_owned(),
            }),
        ),
    )
    .await;
    let mut corrections = 0;
    loop {
        let statement = format!("Corrected {corrections:>9}.");
        assert_eq!(statement.len(), "Statement of fact-0.".len());
        match within(
            "publish",
            client.publish(correct("story", "fact-0", &statement)),
        )
        .await
        {
            Ok(_) => corrections += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(status.message().contains("follow-up story"), "{status:?}");
                break;
            }
        }
        assert!(corrections < 1_000, "the reserve should be full by now");
    }
    assert!(
        corrections > 5,
        "{corrections} corrections within the reserve"
    );
    let story = get_story(&mut client, "story", None).await;
    assert_eq!(story.status_history.len(), 1);
    assert_eq!(fact(&story, "fact-0").history.len(), corrections);
    assert!(
        story.encoded_len() <= max + max / 4,
        "{} bytes: within the limit and its reserve",
        story.encoded_len()
    );
    // Withdrawn, whatever the reserve.
    publish(&mut client, withdraw("story")).await;
}
