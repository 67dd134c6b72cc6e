//! PublishStream: a session that reads the client's messages in bursts, publishes each burst
//! through the publisher ([`Publisher::publish_all`]: on a server of its own, appended under one
//! lock) and answers in request order.

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use futures_util::{FutureExt, Stream, stream};
use tokio::sync::watch;
use tonic::{Code, Status, Streaming};

use super::{Error, status};
use crate::{
    auth::Caller,
    metrics::Rpc,
    pb,
    publisher::Publisher,
    subscription::End,
    validate::{self, FieldError},
};

/// The most PublishStream messages answered together: those already received when the first is
/// read go into one append under one lock and one wake-up of subscribers. Enough to amortise the
/// lock at a pipeline's full rate; few enough that one burst holds the lock only briefly.
pub const PUBLISH_BURST: usize = 256;

/// Settles the shape of a burst of PublishStream messages: for each message its error, if it
/// has one, and the valid requests in order.
fn check_burst(
    messages: Vec<pb::PublishStreamRequest>,
) -> (Vec<Option<Error>>, Vec<pb::PublishRequest>) {
    let mut checked: Vec<Option<Error>> = Vec::with_capacity(messages.len());
    let mut valid = Vec::with_capacity(messages.len());
    for message in messages {
        let outcome = match message.request {
            Some(request) => validate::publish(&request).map(|()| request),
            None => Err(FieldError {
                field: "request".to_owned(),
                description: "is required: each message carries one PublishRequest".to_owned(),
            }),
        };
        match outcome {
            Ok(request) => {
                valid.push(request);
                checked.push(None);
            }
            Err(invalid) => checked.push(Some(invalid.into())),
        }
    }
    (checked, valid)
}

/// The responses to a burst, in order: each message's shape error, or the outcome of its
/// request, taken in order from `outcomes`.
fn burst_responses(
    checked: Vec<Option<Error>>,
    outcomes: Vec<Result<pb::PublishResponse, Error>>,
) -> VecDeque<pb::PublishStreamResponse> {
    let mut outcomes = outcomes.into_iter();
    checked
        .into_iter()
        .map(|invalid| {
            let outcome = match invalid {
                Some(error) => Err(error),
                None => outcomes.next().expect("one outcome per valid request"),
            };
            publish_response(outcome)
        })
        .collect()
}

/// Publishes a burst of PublishStream messages in order, each accepted or rejected on its own,
/// and answers once the publisher has acknowledged them.
async fn publish_burst(
    publisher: &dyn Publisher,
    messages: Vec<pb::PublishStreamRequest>,
    published_by: &str,
) -> VecDeque<pb::PublishStreamResponse> {
    let (checked, valid) = check_burst(messages);
    let outcomes = publisher
        .publish_all(valid, published_by)
        .await
        .into_iter()
        .map(|outcome| outcome.map_err(Error::from))
        .collect();
    burst_responses(checked, outcomes)
}

/// A PublishStream response: the receipt, or what Publish would have failed with.
fn publish_response(outcome: Result<pb::PublishResponse, Error>) -> pb::PublishStreamResponse {
    use pb::publish_stream_response::Result as Outcome;
    let result = match outcome {
        Ok(receipt) => Outcome::Accepted(receipt),
        Err(error) => {
            let field = error
                .violation()
                .map(|(field, _)| field)
                .unwrap_or_default();
            let status = status(error);
            Outcome::Rejected(pb::PublishError {
                code: status.code().into(),
                message: status.message().to_owned(),
                field,
            })
        }
    };
    pb::PublishStreamResponse {
        result: Some(result),
    }
}

/// One PublishStream call: its incoming messages, answered in order.
pub(super) struct PublishSession {
    /// Who publishes: the name of the client's token.
    published_by: Arc<str>,
    /// The client's messages.
    requests: Streaming<pb::PublishStreamRequest>,
    /// Where they are published.
    publisher: Arc<dyn Publisher>,
    /// Becomes true when the server starts shutting down. The sender belongs to the server.
    shutdown: watch::Receiver<bool>,
    /// Completes once a reload of the tokens file takes away the client's token (or its
    /// publish role), with the status the session then ends with; never without a token.
    revoked: Pin<Box<dyn Future<Output = Status> + Send>>,
    /// Responses to a burst, not yet sent.
    answered: VecDeque<pb::PublishStreamResponse>,
    /// How the stream ends once `answered` is sent: `Some(Err)` with an error, `Some(Ok)` when
    /// the client finished; `None` while it goes on.
    end: Option<Result<(), Status>>,
}

impl PublishSession {
    /// A session publishing `requests` as `published_by` through `publisher`, which stops taking
    /// messages when `shutdown` turns true, or when `caller`'s token is revoked.
    pub(super) fn new(
        published_by: Arc<str>,
        caller: Option<Caller>,
        requests: Streaming<pb::PublishStreamRequest>,
        publisher: Arc<dyn Publisher>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let revoked: Pin<Box<dyn Future<Output = Status> + Send>> = match caller {
            Some(caller) => Box::pin(async move { caller.revoked().await }),
            None => Box::pin(std::future::pending()),
        };
        Self {
            published_by,
            requests,
            publisher,
            shutdown,
            revoked,
            answered: VecDeque::new(),
            end: None,
        }
    }

    /// The session's responses, as the stream PublishStream returns.
    pub(super) fn responses(self) -> PublishResponseStream {
        Box::pin(stream::unfold(self, |mut session| async move {
            let response = session.next().await?;
            Some((response, session))
        }))
    }

    /// The response to the next message; `None` once the client has finished.
    ///
    /// At shutdown the session stops taking messages and ends with UNAVAILABLE: every message
    /// already answered is in the log, and the rest can be resent (safely, with their event_ids)
    /// once the server is back. Once its token is revoked it stops taking messages likewise,
    /// and ends with UNAUTHENTICATED (PERMISSION_DENIED if only the role went).
    async fn next(&mut self) -> Option<Result<pb::PublishStreamResponse, Status>> {
        loop {
            if let Some(response) = self.answered.pop_front() {
                return Some(Ok(response));
            }
            match self.end.take() {
                Some(Err(status)) => {
                    self.end = Some(Ok(()));
                    return Some(Err(status));
                }
                Some(Ok(())) => {
                    self.end = Some(Ok(()));
                    return None;
                }
                None => {}
            }
            let first = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stopping| *stopping) => Err(status(End::ShuttingDown)),
                // Polled no more once it completes: the session ends with its status.
                revoked = &mut self.revoked => Err(revoked),
                next = self.requests.message() => next,
            };
            let mut burst = Vec::new();
            let mut next = first;
            loop {
                match next {
                    Ok(Some(message)) => burst.push(message),
                    Ok(None) => self.end = Some(Ok(())),
                    Err(status) => self.end = Some(Err(status)),
                }
                if self.end.is_some() || burst.len() == PUBLISH_BURST {
                    break;
                }
                // Take what has already arrived, without waiting for more.
                match self.requests.message().now_or_never() {
                    Some(more) => next = more,
                    None => break,
                }
            }
            self.answered = publish_burst(&*self.publisher, burst, &self.published_by).await;
            self.count_answered();
        }
    }

    /// Counts each answer to a burst in the metrics, as Publish counts its one.
    fn count_answered(&self) {
        use pb::publish_stream_response::Result as Outcome;
        let metrics = self.publisher.log().metrics();
        for response in &self.answered {
            let (code, duplicate) = match &response.result {
                Some(Outcome::Accepted(receipt)) => (Code::Ok, receipt.duplicate),
                Some(Outcome::Rejected(error)) => (Code::from(error.code), false),
                None => continue,
            };
            metrics.published(Rpc::PublishStream, code, duplicate);
        }
    }
}

/// The stream type PublishStream returns.
pub type PublishResponseStream =
    Pin<Box<dyn Stream<Item = Result<pb::PublishStreamResponse, Status>> + Send + 'static>>;
