//! The pinned nats-server itself, in a three-server JetStream cluster on loopback, doing what
//! cluster mode relies on: `Nats-Expected-Last-Subject-Sequence` compares against the story
//! subject's own last message, `Nats-Msg-Id` answers a retried publish with its first sequence,
//! and killing a stream's leader loses nothing it acknowledged.

use crate::support;

use std::error::Error as _;

use async_nats::jetstream::{
    Context, ErrorCode,
    context::{PublishError, PublishErrorKind},
    message::PublishMessage,
    publish::PublishAck,
    stream::{Config, StorageType, Stream},
};
use bytes::Bytes;
use storywire_testkit::nats::Cluster;
use support::within;

/// The stream every test here creates; the cluster node names its subjects the same way,
/// `<stream>.story.<story_id>`.
const STREAM: &str = "T";

/// The JetStream error a publish gets when its expected last sequence does not match.
const WRONG_LAST_SEQUENCE: u64 = 10071;

#[tokio::test]
async fn expected_last_subject_sequence_is_the_subjects_own_last_sequence() {
    let mut cluster = Cluster::start(3).await;
    let (js, stream) = story_stream(&mut cluster, 0).await;

    assert_eq!(publish(&js, "a", expecting(0)).await.unwrap().sequence, 1);
    assert_eq!(publish(&js, "b", expecting(0)).await.unwrap().sequence, 2);
    // The stream's last sequence is 2, story a's is 1: only a's own counts (nats-server 7361).
    refused_as_wrong_last_sequence(publish(&js, "a", expecting(2)).await);
    assert_eq!(publish(&js, "a", expecting(1)).await.unwrap().sequence, 3);
    assert_eq!(publish(&js, "b", expecting(2)).await.unwrap().sequence, 4);
    // 0 means "no message yet": true of a new story in a stream that has others,
    assert_eq!(publish(&js, "c", expecting(0)).await.unwrap().sequence, 5);
    // and false once the story has one.
    refused_as_wrong_last_sequence(publish(&js, "a", expecting(0)).await);
    refused_as_wrong_last_sequence(publish(&js, "c", expecting(6)).await);

    let state = within("stream info", stream.get_info())
        .await
        .unwrap()
        .state;
    assert_eq!(
        (state.messages, state.last_sequence),
        (5, 5),
        "a refused publish stores nothing"
    );
}

#[tokio::test]
async fn a_repeated_msg_id_is_answered_with_the_first_sequence() {
    let mut cluster = Cluster::start(3).await;
    let (js, stream) = story_stream(&mut cluster, 0).await;

    let first = publish(&js, "a", PublishMessage::build().message_id("e-1"))
        .await
        .unwrap();
    let again = publish(&js, "a", PublishMessage::build().message_id("e-1"))
        .await
        .unwrap();
    assert_eq!((first.sequence, first.duplicate), (1, false));
    assert_eq!((again.sequence, again.duplicate), (1, true));

    // A retry of a publish that carried an expectation too: the duplicate check comes first, so
    // the retry is answered with the sequence it got, not refused for the sequence it now expects.
    let guarded = || {
        PublishMessage::build()
            .message_id("e-2")
            .expected_last_subject_sequence(1)
    };
    let first = publish(&js, "a", guarded()).await.unwrap();
    let again = publish(&js, "a", guarded()).await.unwrap();
    assert_eq!((first.sequence, first.duplicate), (2, false));
    assert_eq!((again.sequence, again.duplicate), (2, true));

    let state = within("stream info", stream.get_info())
        .await
        .unwrap()
        .state;
    assert_eq!(state.messages, 2, "a duplicate is not stored");
}

#[tokio::test]
async fn killing_the_stream_leader_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(3).await;
    story_stream(&mut cluster, 0).await;
    let leader = cluster.stream_leader(STREAM).await;
    // Publish through a server that stays up, so that only the stream loses its leader.
    let survivor = (leader + 1) % cluster.len();
    let (js, stream) = story_stream(&mut cluster, survivor).await;

    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let story = ["a", "b", "c"][n % 3];
        let ack = publish(&js, story, PublishMessage::build().payload(payload(n)))
            .await
            .unwrap();
        acknowledged.push((ack.sequence, story, payload(n)));
    }

    cluster.kill(leader).await;
    let new_leader = cluster.stream_leader(STREAM).await;
    assert_ne!(new_leader, leader, "a killed server leads nothing");

    for n in 20..25 {
        let story = ["a", "b", "c"][n % 3];
        let ack = publish(&js, story, PublishMessage::build().payload(payload(n)))
            .await
            .unwrap_or_else(|e| panic!("publish {n} under the new leader: {e}"));
        acknowledged.push((ack.sequence, story, payload(n)));
    }
    let sequences: Vec<u64> = acknowledged
        .iter()
        .map(|(sequence, ..)| *sequence)
        .collect();
    assert_eq!(
        sequences,
        (1..=25).collect::<Vec<_>>(),
        "gapless across the kill"
    );

    for (sequence, story, payload) in &acknowledged {
        let message = within("a message by sequence", stream.get_raw_message(*sequence))
            .await
            .unwrap_or_else(|e| panic!("read sequence {sequence}: {e}"));
        assert_eq!(message.subject.as_str(), subject(story));
        assert_eq!(&message.payload, payload, "sequence {sequence}");
    }

    // The killed server comes back on its own store and catches up.
    cluster.restart(leader).await;
    let info = within("stream info", stream.get_info()).await.unwrap();
    let replicas = info.cluster.expect("a clustered stream").replicas;
    assert_eq!(replicas.len(), 2, "the leader and two followers");
    assert!(
        replicas.iter().all(|peer| peer.current && !peer.offline),
        "{replicas:?}"
    );
}

/// A client of server `index` and the R3 file stream [`STREAM`] over `T.story.*`, created if it
/// does not exist yet, once every replica is up.
async fn story_stream(cluster: &mut Cluster, index: usize) -> (Context, Stream) {
    let client = within("a NATS connection", async_nats::connect(cluster.url(index)))
        .await
        .expect("connect to nats-server");
    let js = async_nats::jetstream::new(client);
    let config = Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{STREAM}.story.*")],
        storage: StorageType::File,
        num_replicas: 3,
        ..Default::default()
    };
    let stream = within("the stream", js.get_or_create_stream(config))
        .await
        .expect("create the stream");
    cluster.until_current().await;
    (js, stream)
}

/// Publishes `message` on story `story`'s subject and waits for JetStream's answer.
async fn publish(
    js: &Context,
    story: &str,
    message: PublishMessage,
) -> Result<PublishAck, PublishError> {
    let ack = within(
        "the publish to be sent",
        js.send_publish(subject(story), message),
    )
    .await?;
    within("the publish to be answered", ack.into_future()).await
}

/// A publish that expects story's last message to be at `sequence` (0: no message yet).
fn expecting(sequence: u64) -> PublishMessage {
    PublishMessage::build()
        .payload(Bytes::from_static(b"{}"))
        .expected_last_subject_sequence(sequence)
}

/// Asserts that a publish was refused for its expected last sequence, as the client reports it
/// and with JetStream's own error code underneath.
fn refused_as_wrong_last_sequence(result: Result<PublishAck, PublishError>) {
    let error = result.expect_err("a publish with the wrong expected sequence is refused");
    assert_eq!(error.kind(), PublishErrorKind::WrongLastSequence, "{error}");
    let jetstream = error
        .source()
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .unwrap_or_else(|| panic!("a JetStream error under {error:?}"));
    assert_eq!(jetstream.error_code(), ErrorCode(WRONG_LAST_SEQUENCE));
    assert_eq!(
        jetstream.error_code(),
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE
    );
}

/// Story `story`'s subject in [`STREAM`].
fn subject(story: &str) -> String {
    format!("{STREAM}.story.{story}")
}

/// The `n`th payload a test publishes, different for every `n`.
fn payload(n: usize) -> Bytes {
    Bytes::from(format!("{{\"n\":{n}}}"))
}
