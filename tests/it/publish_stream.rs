//! PublishStream: one response per request, in order, with Publish's rules, idempotency and
//! errors per message, and a stream that goes on after a rejection.

use crate::support;

use storywire::pb::{self, publish_stream_response::Result as Outcome};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// An open PublishStream: a sender for requests and the stream of responses.
async fn open_stream(
    server: &TestServer,
) -> (
    mpsc::Sender<pb::PublishStreamRequest>,
    Streaming<pb::PublishStreamResponse>,
) {
    let mut client = server.client().await;
    let (sender, receiver) = mpsc::channel(64);
    let responses = within(
        "publish_stream",
        client.publish_stream(ReceiverStream::new(receiver)),
    )
    .await
    .expect("stream accepted")
    .into_inner();
    (sender, responses)
}

fn message(request: pb::PublishRequest) -> pb::PublishStreamRequest {
    pb::PublishStreamRequest {
        request: Some(request),
    }
}

async fn send_all(
    sender: &mpsc::Sender<pb::PublishStreamRequest>,
    requests: Vec<pb::PublishRequest>,
) {
    for request in requests {
        sender.send(message(request)).await.expect("stream open");
    }
}

async fn next_outcome(responses: &mut Streaming<pb::PublishStreamResponse>) -> Outcome {
    within("a response", responses.message())
        .await
        .expect("a response, not an error")
        .expect("the stream is open")
        .result
        .expect("result set")
}

fn accepted(outcome: Outcome) -> pb::PublishResponse {
    match outcome {
        Outcome::Accepted(receipt) => receipt,
        Outcome::Rejected(error) => panic!("expected acceptance, got {error:?}"),
    }
}

fn rejected(outcome: Outcome) -> pb::PublishError {
    match outcome {
        Outcome::Rejected(error) => error,
        Outcome::Accepted(receipt) => panic!("expected a rejection, got {receipt:?}"),
    }
}

#[tokio::test]
async fn responses_come_back_in_order_and_a_rejection_does_not_end_the_stream() {
    let server = TestServer::start().await;
    let (sender, mut responses) = open_stream(&server).await;
    let mut blank_headline = note("story", "x");
    blank_headline.headline = String::new();
    send_all(
        &sender,
        vec![
            open("story", &[]),
            report("story", "asylum"),
            report("story", "asylum"),
            blank_headline,
            report("ghost", "fact"),
            set_status("story", "asylum", pb::FactStatus::Denied),
        ],
    )
    .await;

    assert_eq!(accepted(next_outcome(&mut responses).await).sequence, 1);
    assert_eq!(accepted(next_outcome(&mut responses).await).sequence, 2);
    let twice = rejected(next_outcome(&mut responses).await);
    assert_eq!(twice.code, i32::from(Code::FailedPrecondition));
    assert!(twice.message.contains("already reported"), "{twice:?}");
    let invalid = rejected(next_outcome(&mut responses).await);
    assert_eq!(invalid.code, i32::from(Code::InvalidArgument));
    assert_eq!(invalid.field, "headline");
    let ghost = rejected(next_outcome(&mut responses).await);
    assert_eq!(ghost.code, i32::from(Code::NotFound));
    let last = accepted(next_outcome(&mut responses).await);
    assert_eq!((last.sequence, last.story_version), (3, 3));

    drop(sender);
    let end = within("the end", responses.message()).await;
    assert!(
        matches!(end, Ok(None)),
        "the stream ends when the client finishes: {end:?}"
    );
    assert_eq!(server.log.head(), 3);
}

#[tokio::test]
async fn a_message_without_a_request_is_rejected_naming_the_field() {
    let server = TestServer::start().await;
    let (sender, mut responses) = open_stream(&server).await;
    sender
        .send(pb::PublishStreamRequest { request: None })
        .await
        .expect("stream open");
    let error = rejected(next_outcome(&mut responses).await);
    assert_eq!(error.code, i32::from(Code::InvalidArgument));
    assert_eq!(error.field, "request");
}

#[tokio::test]
async fn resending_after_a_reconnect_appends_nothing_twice() {
    let server = TestServer::start().await;
    let batch: Vec<pb::PublishRequest> = std::iter::once(open("story", &[]))
        .chain((0..4).map(|i| note("story", &format!("Update {i}"))))
        .enumerate()
        .map(|(i, mut request)| {
            request.event_id = format!("pipeline-{i}");
            request
        })
        .collect();

    let (sender, mut responses) = open_stream(&server).await;
    send_all(&sender, batch.clone()).await;
    let mut first = Vec::new();
    for _ in 0..batch.len() {
        first.push(accepted(next_outcome(&mut responses).await));
    }
    drop((sender, responses));

    // The pipeline reconnects and, unsure what landed, resends everything plus two new updates.
    let (sender, mut responses) = open_stream(&server).await;
    let mut resend = batch.clone();
    resend.push(note("story", "New after reconnect"));
    resend.push(note("story", "Another new one"));
    send_all(&sender, resend).await;
    for original in &first {
        let again = accepted(next_outcome(&mut responses).await);
        assert!(again.duplicate);
        assert_eq!(
            (again.sequence, again.event_id.as_str()),
            (original.sequence, original.event_id.as_str())
        );
    }
    assert_eq!(accepted(next_outcome(&mut responses).await).sequence, 6);
    assert_eq!(accepted(next_outcome(&mut responses).await).sequence, 7);
    assert_eq!(server.log.head(), 7);
}

#[tokio::test]
async fn an_open_publish_stream_ends_unavailable_at_shutdown_and_does_not_hold_it_up() {
    let server = TestServer::start().await;
    let (sender, mut responses) = open_stream(&server).await;
    send_all(&sender, vec![open("story", &[])]).await;
    assert_eq!(accepted(next_outcome(&mut responses).await).sequence, 1);

    server.stop().await;

    let end = within("the end", responses.message()).await;
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelines_get_ordered_answers_and_one_gapless_log() {
    const PER_STREAM: u64 = 500;
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, open("story", &[])).await;
    let mut subscriber = subscribe(&mut client, from(1)).await;

    let mut pipelines = Vec::new();
    for p in 0..2 {
        let (sender, mut responses) = open_stream(&server).await;
        pipelines.push(tokio::spawn(async move {
            let sending = tokio::spawn(async move {
                for i in 0..PER_STREAM {
                    let mut request = note("story", &format!("Pipeline {p} update {i}"));
                    request.event_id = format!("p{p}-{i}");
                    sender.send(message(request)).await.expect("stream open");
                }
            });
            let mut sequences = Vec::new();
            for i in 0..PER_STREAM {
                let receipt = accepted(next_outcome(&mut responses).await);
                assert_eq!(
                    receipt.event_id,
                    format!("p{p}-{i}"),
                    "answers come in request order"
                );
                sequences.push(receipt.sequence);
            }
            sending.await.expect("sender");
            sequences
        }));
    }
    let mut all = vec![1];
    for pipeline in pipelines {
        let sequences = within("a pipeline", pipeline).await.expect("pipeline task");
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "one pipeline's events keep their order"
        );
        all.extend(sequences);
    }
    all.sort_unstable();
    let total = 1 + 2 * PER_STREAM;
    assert_eq!(all, (1..=total).collect::<Vec<_>>());

    let mut seen = Vec::new();
    while seen.len() < total as usize {
        if let pb::subscribe_response::Item::Event(event) = next_item(&mut subscriber).await {
            seen.push(event.sequence);
        }
    }
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
}
